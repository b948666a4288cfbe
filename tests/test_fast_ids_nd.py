"""Differential tests: _fast.ids_nd against Flux2Pipeline's id builders and Qwen-Image's QwenEmbedRope."""
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _fast.ids_nd import flux2_image_ids, flux2_reference_ids, flux2_text_ids, qwen_image_ids, qwen_text_ids
from diffusers.models.transformers.transformer_qwenimage import QwenEmbedRope
from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline
from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline

AXES = [16, 56, 56]  # QwenImageTransformer2DModel's axes_dims_rope
TABLE = 4096  # QwenEmbedRope's table length per sign


def n_examples(default):
    """Hypothesis example count; FAST_TEST_MAX_EXAMPLES caps it (the NUMBA_DISABLE_JIT run sets it)."""
    cap = os.environ.get("FAST_TEST_MAX_EXAMPLES")
    return min(default, int(cap)) if cap else default


def assert_same(ours, ref):
    ref = ref.numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.dtype == ref.dtype, (ours.dtype, ref.dtype)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert np.array_equal(ours, ref)


def as_bits(z):
    """complex64 tensor -> uint32 array of its (re, im) bits."""
    return z.contiguous().view(torch.float32).numpy().view(np.uint32)


# --- FLUX.2 ----------------------------------------------------------------------------------------


@settings(max_examples=n_examples(60), deadline=None)
@given(b=st.integers(1, 4), h2=st.integers(1, 40), w2=st.integers(1, 40))
def test_flux2_image_ids_match_diffusers(b, h2, w2):
    ref = Flux2Pipeline._prepare_latent_ids(torch.empty(b, 2, h2, w2))
    assert_same(flux2_image_ids(h2, w2, batch=b), ref)
    assert_same(flux2_image_ids(h2, w2), ref[0])
    assert_same(flux2_image_ids(h2, w2, batch=b), Flux2KleinPipeline._prepare_latent_ids(torch.empty(b, 2, h2, w2)))


def test_flux2_image_ids_1024_and_t_offset():
    ids = flux2_image_ids(64, 64, batch=1)
    assert ids.dtype == np.int64 and ids.shape == (1, 4096, 4)
    assert ids[0, 65].tolist() == [0, 1, 1, 0]
    shifted = flux2_image_ids(3, 5, t_offset=20)
    assert (shifted[:, 0] == 20).all() and np.array_equal(shifted[:, 1:], flux2_image_ids(3, 5)[:, 1:])


@settings(max_examples=n_examples(60), deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=4),
    b=st.integers(1, 3),
    scale=st.sampled_from([10, 1, 7]),
)
def test_flux2_reference_ids_match_diffusers(shapes, b, scale):
    latents = [torch.empty(1, 2, h, w) for h, w in shapes]
    ref = Flux2Pipeline._prepare_image_ids(latents, scale)  # (1, N, 4), t = scale + scale*k
    assert_same(flux2_reference_ids(shapes, batch=1, scale=scale), ref)
    assert_same(flux2_reference_ids(shapes, scale=scale), ref[0])
    assert_same(flux2_reference_ids(shapes, batch=b, scale=scale), ref.repeat(b, 1, 1))  # prepare_image_latents
    if scale == 10:
        assert_same(flux2_reference_ids(shapes, batch=1), Flux2KleinPipeline._prepare_image_ids(latents))


def test_flux2_reference_ids_single_tuple_and_offsets():
    ids = flux2_reference_ids([(2, 3), (1, 2)])
    assert ids[:, 0].tolist() == [10] * 6 + [20] * 2
    assert np.array_equal(flux2_reference_ids((2, 3)), flux2_image_ids(2, 3, t_offset=10))


@settings(max_examples=n_examples(60), deadline=None)
@given(b=st.integers(1, 4), n=st.integers(0, 600), data=st.data())
def test_flux2_text_ids_match_diffusers(b, n, data):
    x = torch.empty(b, n, 3)
    assert_same(flux2_text_ids(b, n), Flux2Pipeline._prepare_text_ids(x))
    assert_same(flux2_text_ids(b, n), Flux2KleinPipeline._prepare_text_ids(x))
    ts = data.draw(st.lists(st.integers(0, 50), min_size=b, max_size=b))
    ref = Flux2Pipeline._prepare_text_ids(x, torch.tensor(ts, dtype=torch.int64).view(b, 1))
    assert_same(flux2_text_ids(b, n, t_coord=ts), ref)


# --- Qwen-Image ------------------------------------------------------------------------------------

_ROPES = {}


def rope(scale_rope):
    if scale_rope not in _ROPES:
        _ROPES[scale_rope] = QwenEmbedRope(theta=10000, axes_dim=AXES, scale_rope=scale_rope)
    return _ROPES[scale_rope]


def gather(r, ids):
    """The rotary rows our ids name, looked up in the model's own tables (negative p: the neg table)."""
    pos = r.pos_freqs.split([d // 2 for d in AXES], dim=1)
    neg = r.neg_freqs.split([d // 2 for d in AXES], dim=1)
    cols = []
    for j in range(3):
        p = torch.from_numpy(ids[:, j])
        cols.append(torch.where((p >= 0)[:, None], pos[j][p.clamp(min=0)], neg[j][(TABLE + p).clamp(max=TABLE - 1)]))
    return torch.cat(cols, dim=1)


def direct(r, ids):
    """The rotary rows recomputed from our ids with the model's formula (no table)."""
    return torch.cat([r.rope_params(torch.from_numpy(ids[:, j]), d, r.theta) for j, d in enumerate(AXES)], dim=1)


qwen_shape = st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40))


@settings(max_examples=n_examples(40), deadline=None)
@given(shapes=st.lists(qwen_shape, min_size=1, max_size=3), length=st.integers(0, 80), scale_rope=st.booleans())
def test_qwen_ids_name_the_models_rotary_rows(shapes, length, scale_rope):
    r = rope(scale_rope)
    vid, txt = r([list(shapes)], max_txt_seq_len=length, device=torch.device("cpu"))
    img_ids = qwen_image_ids(shapes, scale_rope=scale_rope)
    txt_ids = qwen_text_ids(length, shapes, scale_rope=scale_rope)
    assert img_ids.dtype == txt_ids.dtype == np.int64
    assert img_ids.shape == (vid.shape[0], 3) and txt_ids.shape == (txt.shape[0], 3)
    assert np.array_equal(as_bits(gather(r, img_ids)), as_bits(vid))
    assert np.array_equal(as_bits(gather(r, txt_ids)), as_bits(txt))
    assert np.array_equal(as_bits(direct(r, img_ids)), as_bits(vid))
    assert np.array_equal(as_bits(direct(r, txt_ids)), as_bits(txt))


def test_qwen_ids_pipeline_shapes_and_values():
    """QwenImagePipeline passes img_shapes [(1, H//16, W//16)] per sample; 1024² -> 64 x 64 tokens."""
    ids = qwen_image_ids((1, 64, 64))
    assert ids.shape == (4096, 3)
    assert ids[0].tolist() == [0, -32, -32] and ids[-1].tolist() == [0, 31, 31]
    odd = qwen_image_ids((1, 3, 5))
    assert sorted(set(odd[:, 1])) == [-2, -1, 0] and sorted(set(odd[:, 2])) == [-3, -2, -1, 0, 1]
    txt = qwen_text_ids(4, (1, 64, 48))
    assert txt.tolist() == [[32 + i] * 3 for i in range(4)]
    assert qwen_text_ids(2, [(1, 4, 4), (1, 10, 6)]).tolist() == [[5, 5, 5], [6, 6, 6]]
    assert qwen_text_ids(2, (1, 4, 9), scale_rope=False)[0].tolist() == [9, 9, 9]
    assert qwen_image_ids([(1, 2, 2), (2, 1, 1)], scale_rope=False)[:, 0].tolist() == [0, 0, 0, 0, 1, 2]
    f32 = qwen_image_ids((1, 3, 5), dtype=np.float32)
    assert f32.dtype == np.float32 and np.array_equal(f32, odd.astype(np.float32))
    assert qwen_text_ids(3, (1, 2, 2), dtype=np.float64).dtype == np.float64


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: flux2_image_ids(0, 4), "h2 must be an integer >= 1, got 0"),
        (lambda: flux2_image_ids(4, 2.0), "w2 must be an integer >= 1, got 2.0"),
        (lambda: flux2_image_ids(True, 4), "h2 must be an integer >= 1, got True"),
        (lambda: flux2_image_ids(4, 4, batch=0), "batch must be an integer >= 1, got 0"),
        (lambda: flux2_image_ids(4, 4, t_offset=-1), "t_offset must be an integer >= 0, got -1"),
        (lambda: flux2_reference_ids([]), "shapes must be a 2-tuple of sizes or a non-empty list of them"),
        (lambda: flux2_reference_ids("ab"), "shapes must be a 2-tuple"),
        (lambda: flux2_reference_ids([(2, 3, 4)]), r"each entry of shapes must be a 2-tuple of sizes, got \(2, 3, 4\)"),
        (lambda: flux2_reference_ids([(2, 0)]), "shapes sizes must be an integer >= 1, got 0"),
        (lambda: flux2_reference_ids([(2, 2)], scale=-10), "scale must be an integer >= 0"),
        (lambda: flux2_text_ids(0, 4), "batch must be an integer >= 1, got 0"),
        (lambda: flux2_text_ids(1, -1), "length must be an integer >= 0, got -1"),
        (lambda: flux2_text_ids(2, 4, t_coord=[1]), r"t_coord must hold one integer per batch item \(2\)"),
        (lambda: flux2_text_ids(1, 4, t_coord=[1.5]), "t_coord must hold one integer per batch item"),
        (lambda: qwen_image_ids((1, 4)), "shapes must be a 3-tuple of sizes or a non-empty list of them"),
        (lambda: qwen_image_ids([(0, 4, 4)]), "shapes sizes must be an integer >= 1, got 0"),
        (lambda: qwen_image_ids((1, 4, 4), dtype=np.int32), "dtype must be int64, float32 or float64, got int32"),
        (lambda: qwen_text_ids(-1, (1, 4, 4)), "length must be an integer >= 0, got -1"),
        (lambda: qwen_text_ids(4, [(1, 4, 4), (1, 2)]), "each entry of shapes must be a 3-tuple"),
        (lambda: qwen_text_ids(4, (1, 4, 4), dtype=np.float16), "dtype must be int64, float32 or float64"),
    ],
)
def test_validation_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
