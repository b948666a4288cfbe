"""Differential tests: _fast.layouts against Flux2Pipeline / Flux2KleinPipeline / QwenImagePipeline, bit for bit."""
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _fast.layouts import (
    flux2_pack,
    patchify_latents,
    qwen_pack_latents,
    qwen_unpack_latents,
    scatter_by_ids,
    unpatchify_latents,
)
from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline
from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline
from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline

VAE_SCALE = 8


def n_examples(default):
    """Hypothesis example count; FAST_TEST_MAX_EXAMPLES caps it (the NUMBA_DISABLE_JIT run sets it)."""
    cap = os.environ.get("FAST_TEST_MAX_EXAMPLES")
    return min(default, int(cap)) if cap else default


def bits(a):
    a = np.asarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize])


def assert_same_bits(ours, ref):
    ref = ref.numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.dtype == ref.dtype, (ours.dtype, ref.dtype)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert np.array_equal(bits(ours), bits(ref))


def random_bits(rng, shape, dtype):
    """Arbitrary bit patterns (NaN payloads, -0.0, subnormals, infinities included)."""
    if np.dtype(dtype) == np.float32:
        return rng.integers(0, 2**32, size=shape, dtype=np.uint32).view(np.float32)
    return rng.integers(0, 2**64, size=shape, dtype=np.uint64).view(np.float64)


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a).copy())


even = st.integers(1, 10).map(lambda v: 2 * v)
float_dtypes = st.sampled_from([np.float32, np.float64])
seeds = st.integers(0, 2**32 - 1)


# --- FLUX.2 patchify / unpatchify / pack -----------------------------------------------------------


@settings(max_examples=n_examples(60), deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 6), h=even, w=even, dtype=float_dtypes, seed=seeds)
def test_patchify_matches_diffusers(b, c, h, w, dtype, seed):
    x = random_bits(np.random.default_rng(seed), (b, c, h, w), dtype)
    assert_same_bits(patchify_latents(x), Flux2Pipeline._patchify_latents(t(x)))


@settings(max_examples=n_examples(60), deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 6), h=st.integers(1, 12), w=st.integers(1, 12), dtype=float_dtypes,
       seed=seeds)
def test_unpatchify_matches_diffusers(b, c, h, w, dtype, seed):
    x = random_bits(np.random.default_rng(seed), (b, 4 * c, h, w), dtype)
    assert_same_bits(unpatchify_latents(x), Flux2Pipeline._unpatchify_latents(t(x)))
    assert_same_bits(unpatchify_latents(x), Flux2KleinPipeline._unpatchify_latents(t(x)))


@settings(max_examples=n_examples(40), deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 6), h=even, w=even, dtype=float_dtypes, seed=seeds)
def test_patchify_round_trip_and_out(b, c, h, w, dtype, seed):
    x = random_bits(np.random.default_rng(seed), (b, c, h, w), dtype)
    out = np.empty((b, 4 * c, h // 2, w // 2), dtype)
    assert patchify_latents(x, out=out) is out
    back = np.empty_like(x)
    assert unpatchify_latents(out, out=back) is back
    assert np.array_equal(bits(back), bits(x))


def test_patchify_channel_order():
    """channel = c*4 + dy*2 + dx at (r, k) = (y//2, x//2), written out."""
    b, c, h, w = 2, 3, 4, 6
    x = np.arange(b * c * h * w, dtype=np.float32).reshape(b, c, h, w)
    p = patchify_latents(x)
    for bi in range(b):
        for ch in range(c):
            for y in range(h):
                for xx in range(w):
                    assert p[bi, ch * 4 + (y % 2) * 2 + xx % 2, y // 2, xx // 2] == x[bi, ch, y, xx]


@settings(max_examples=n_examples(60), deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 70), h=st.integers(1, 12), w=st.integers(1, 12), dtype=float_dtypes,
       seed=seeds)
def test_flux2_pack_matches_diffusers(b, c, h, w, dtype, seed):
    x = random_bits(np.random.default_rng(seed), (b, c, h, w), dtype)
    ours = flux2_pack(x)
    assert ours.flags.c_contiguous
    assert_same_bits(ours, Flux2Pipeline._pack_latents(t(x)).contiguous())
    out = np.empty_like(ours)
    assert flux2_pack(x, out=out) is out and np.array_equal(bits(out), bits(ours))


def test_flux2_pack_non_contiguous_and_unaligned():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 6, 7)).astype(np.float32)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not xt.flags.c_contiguous
    assert_same_bits(flux2_pack(xt), Flux2Pipeline._pack_latents(t(x)).contiguous())
    xu = np.ndarray(x.shape, np.float32, buffer=np.empty(x.nbytes + 1, np.uint8), offset=1)
    xu[...] = x
    assert not xu.flags.aligned
    assert_same_bits(flux2_pack(xu), Flux2Pipeline._pack_latents(t(x)).contiguous())
    assert_same_bits(patchify_latents(xu[:, :, :6, :6]), Flux2Pipeline._patchify_latents(t(x[:, :, :6, :6])))


# --- FLUX.2 scatter by ids -------------------------------------------------------------------------


@st.composite
def scatter_case(draw):
    b = draw(st.integers(1, 3))
    c = draw(st.integers(1, 9))
    h = draw(st.integers(1, 9))
    w = draw(st.integers(1, 9))
    mode = draw(st.sampled_from(["canonical", "permuted", "subset", "duplicates"]))
    return b, c, h, w, mode, draw(float_dtypes), draw(seeds)


@settings(max_examples=n_examples(80), deadline=None)
@given(case=scatter_case())
def test_scatter_by_ids_matches_diffusers(case):
    b, c, h, w, mode, dtype, seed = case
    rng = np.random.default_rng(seed)
    ids = Flux2Pipeline._prepare_latent_ids(torch.empty(b, c, h, w)).clone()  # (b, h*w, 4), rows (0, r, c, 0)
    if mode == "permuted":
        ids = torch.stack([ids[i, torch.from_numpy(rng.permutation(h * w))] for i in range(b)])
    elif mode == "subset":  # some positions never named: stay 0.0; keep the corner so max+1 == (h, w)
        keep = np.sort(np.concatenate([[h * w - 1], rng.choice(h * w - 1, size=(h * w - 1) // 2, replace=False)]))
        ids = ids[:, torch.from_numpy(keep)]
    elif mode == "duplicates":  # several tokens name one position: the last one wins
        pick = np.concatenate([rng.integers(0, h * w, size=h * w + 3), [h * w - 1]])
        ids = ids[:, torch.from_numpy(pick)]
    ids = ids.contiguous()
    tokens = random_bits(rng, (b, ids.shape[1], c), dtype)
    ref = Flux2Pipeline._unpack_latents_with_ids(t(tokens), ids)
    assert_same_bits(scatter_by_ids(tokens, ids.numpy()), ref)
    # Klein passes the grid size explicitly, which may be larger than the ids' extent
    ref_k = Flux2KleinPipeline._unpack_latents_with_ids(t(tokens), ids, h + 1, w + 2)
    assert_same_bits(scatter_by_ids(tokens, ids.numpy(), h + 1, w + 2), ref_k)


def test_scatter_inverts_pack_and_accepts_shared_ids():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 16, 6, 4)).astype(np.float32)
    tokens = flux2_pack(x)
    ids = Flux2Pipeline._prepare_latent_ids(torch.from_numpy(x)).numpy()
    assert np.array_equal(scatter_by_ids(tokens, ids), x)
    assert np.array_equal(scatter_by_ids(tokens, ids[0]), x)  # (seq, 4) ids shared by the batch
    assert np.array_equal(scatter_by_ids(tokens, ids.astype(np.int32), 6, 4), x)
    out = np.full_like(x, np.nan)
    assert scatter_by_ids(tokens, ids, out=out) is out and np.array_equal(out, x)


def test_scatter_ignores_t_and_l_columns():
    """FLUX.2 reference tokens carry t = 10, 20, ...; only columns 1 and 2 place a token."""
    tokens = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    ids = np.array([[[10, 0, 0, 0], [20, 0, 1, 5], [30, 1, 0, 0], [40, 1, 1, 7]]] * 2, dtype=np.int64)
    ref = Flux2Pipeline._unpack_latents_with_ids(torch.from_numpy(tokens), torch.from_numpy(ids))
    assert_same_bits(scatter_by_ids(tokens, ids), ref)


# --- Qwen-Image ------------------------------------------------------------------------------------


@settings(max_examples=n_examples(60), deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 6), h=even, w=even, dtype=float_dtypes, seed=seeds)
def test_qwen_pack_matches_diffusers(b, c, h, w, dtype, seed):
    x = random_bits(np.random.default_rng(seed), (b, 1, c, h, w), dtype)
    ref = QwenImagePipeline._pack_latents(t(x), b, c, h, w)
    assert_same_bits(qwen_pack_latents(x), ref)
    assert_same_bits(qwen_pack_latents(x[:, 0]), ref)


@settings(max_examples=n_examples(60), deadline=None)
@given(
    b=st.integers(1, 3), c=st.integers(1, 6), h=even, w=even, dtype=float_dtypes, seed=seeds,
    extra_h=st.integers(0, 2 * VAE_SCALE - 1), extra_w=st.integers(0, 2 * VAE_SCALE - 1),
)
def test_qwen_unpack_matches_diffusers(b, c, h, w, dtype, seed, extra_h, extra_w):
    tokens = random_bits(np.random.default_rng(seed), (b, (h // 2) * (w // 2), 4 * c), dtype)
    ref = QwenImagePipeline._unpack_latents(t(tokens), h * VAE_SCALE + extra_h, w * VAE_SCALE + extra_w, VAE_SCALE)
    assert_same_bits(qwen_unpack_latents(tokens, h, w), ref)
    out = np.empty((b, c, 1, h, w), dtype)
    assert qwen_unpack_latents(tokens, h, w, out=out) is out
    assert_same_bits(out, ref)


# --- validation ------------------------------------------------------------------------------------

X4 = np.zeros((1, 2, 4, 4), np.float32)
TOK = np.zeros((1, 4, 3), np.float32)
IDS = np.array([[[0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 1, 1, 0]]], np.int64)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: patchify_latents(X4.tolist()), "x must be a numpy array, got list"),
        (lambda: patchify_latents(X4.astype(np.float16)), "x must have dtype float32 or float64, got float16"),
        (lambda: patchify_latents(X4[0]), r"x must have rank 4 \(B, C, H, W\), got shape \(2, 4, 4\)"),
        (lambda: patchify_latents(np.zeros((1, 2, 3, 4), np.float32)), "must be even and positive, got H=3, W=4"),
        (lambda: patchify_latents(X4, out=np.zeros((1, 8, 2, 2), np.float64)), r"out must have shape \(1, 8, 2, 2\)"),
        (lambda: patchify_latents(X4, out=np.zeros((1, 8, 2, 4), np.float32)[..., ::2]), "C-contiguous"),
        (lambda: patchify_latents(X4, out="x"), "out must be a numpy array, got str"),
        (lambda: unpatchify_latents(np.zeros((1, 6, 2, 2), np.float32)), r"multiple of 4 \(4\*C\), got 6"),
        (lambda: unpatchify_latents(np.zeros((1, 4, 0, 2), np.float32)), "must be positive, got h=0, w=2"),
        (lambda: flux2_pack(X4.astype(np.int64)), "x must have dtype float32 or float64, got int64"),
        (lambda: flux2_pack(TOK), r"x must have rank 4 \(B, C, h, w\)"),
        (lambda: scatter_by_ids(X4, IDS), r"tokens must have rank 3 \(B, seq, C\)"),
        (lambda: scatter_by_ids(TOK, IDS.tolist()), "ids must be a numpy array, got list"),
        (lambda: scatter_by_ids(TOK, IDS.astype(np.float32)), "ids must have an integer dtype, got float32"),
        (lambda: scatter_by_ids(TOK, IDS[:, :3]), r"ids must have shape \(1, 4, 4\)"),
        (lambda: scatter_by_ids(TOK, IDS[..., :2]), r"ids must have shape \(1, 4, 4\)"),
        (lambda: scatter_by_ids(TOK[:, :0], IDS[:, :0]), "at least one token"),
        (lambda: scatter_by_ids(TOK, IDS - 1), "ids hold negative positions"),
        (lambda: scatter_by_ids(TOK, IDS, 2), "give both h and w, or neither"),
        (lambda: scatter_by_ids(TOK, IDS, 2, 1), r"ids reach row 1 / col 1, outside the h=2 x w=1 grid"),
        (lambda: scatter_by_ids(TOK, IDS, 0, 2), "h must be an integer >= 1, got 0"),
        (lambda: scatter_by_ids(TOK, IDS, 2, 2.0), "w must be an integer >= 1, got 2.0"),
        (lambda: scatter_by_ids(np.zeros((2, 4, 3), np.float32), np.concatenate([IDS, IDS * 2])),
         "ids span different grids per batch item"),
        (lambda: scatter_by_ids(TOK, IDS.astype(np.uint64) + np.uint64(2**63)), "ids do not fit in int64"),
        (lambda: qwen_pack_latents(np.zeros((1, 2, 2, 4, 4), np.float32)), r"\(B, 1, C, h, w\) \(one frame\)"),
        (lambda: qwen_pack_latents(np.zeros((4, 4), np.float32)), "must have rank 5 .* or 4"),
        (lambda: qwen_unpack_latents(np.zeros((1, 4, 8), np.float32), 4, 4, out=np.zeros((1, 2, 4, 4), np.float32)),
         r"out must be a numpy array of shape \(B, C, 1, h, w\)"),
        (lambda: qwen_unpack_latents(np.zeros((1, 4, 8), np.float32), 4, 4,
                                     out=np.zeros((1, 2, 1, 4, 8), np.float32)[..., ::2]), "C-contiguous"),
        (lambda: qwen_unpack_latents(np.zeros((1, 4, 8), np.float32), 4, 4, out=np.zeros((1, 3, 1, 4, 4), np.float32)),
         r"out must have shape \(1, 2, 4, 4\)"),
    ],
)
def test_validation_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
