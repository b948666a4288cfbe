"""Differential tests: _fast.latents / _fast.ids against diffusers' FluxPipeline helpers, bit for bit."""
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _fast.ids import latent_image_ids
from _fast.latents import pack_latents, unpack_latents
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

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


def ref_pack(x):
    b, c, h, w = x.shape
    return FluxPipeline._pack_latents(torch.from_numpy(x.copy()), b, c, h, w)


def ref_unpack(tokens, h, w, extra_h=0, extra_w=0):
    """diffusers takes PIXEL sizes: H = h*vsf + extra maps back to latent h when extra < 2*vsf."""
    return FluxPipeline._unpack_latents(
        torch.from_numpy(tokens.copy()), h * VAE_SCALE + extra_h, w * VAE_SCALE + extra_w, VAE_SCALE
    )


shapes = st.tuples(
    st.integers(1, 3), st.integers(1, 8), st.integers(1, 12).map(lambda v: 2 * v), st.integers(1, 12).map(lambda v: 2 * v)
)
float_dtypes = st.sampled_from([np.float32, np.float64])


# --- pack / unpack ---------------------------------------------------------------------------------


@settings(max_examples=n_examples(80), deadline=None)
@given(shape=shapes, dtype=float_dtypes, seed=st.integers(0, 2**32 - 1))
def test_pack_matches_diffusers(shape, dtype, seed):
    x = random_bits(np.random.default_rng(seed), shape, dtype)
    assert_same_bits(pack_latents(x), ref_pack(x))


@settings(max_examples=n_examples(80), deadline=None)
@given(
    shape=shapes,
    dtype=float_dtypes,
    seed=st.integers(0, 2**32 - 1),
    extra_h=st.integers(0, 2 * VAE_SCALE - 1),
    extra_w=st.integers(0, 2 * VAE_SCALE - 1),
)
def test_unpack_matches_diffusers(shape, dtype, seed, extra_h, extra_w):
    b, c, h, w = shape
    tokens = random_bits(np.random.default_rng(seed), (b, (h // 2) * (w // 2), 4 * c), dtype)
    assert_same_bits(unpack_latents(tokens, h, w), ref_unpack(tokens, h, w, extra_h, extra_w))


@settings(max_examples=n_examples(40), deadline=None)
@given(shape=shapes, dtype=float_dtypes, seed=st.integers(0, 2**32 - 1))
def test_round_trip_and_out(shape, dtype, seed):
    b, c, h, w = shape
    x = random_bits(np.random.default_rng(seed), shape, dtype)
    out = np.empty((b, (h // 2) * (w // 2), 4 * c), dtype=dtype)
    packed = pack_latents(x, out=out)
    assert packed is out
    back = np.empty_like(x)
    assert unpack_latents(packed, h, w, out=back) is back
    assert np.array_equal(bits(back), bits(x))


def test_feature_and_token_layout():
    """feature = c*4 + dy*2 + dx, token = row*(w/2) + col, written out explicitly."""
    b, c, h, w = 2, 3, 4, 6
    x = np.arange(b * c * h * w, dtype=np.float32).reshape(b, c, h, w)
    p = pack_latents(x)
    for bi in range(b):
        for ch in range(c):
            for y in range(h):
                for xx in range(w):
                    tok = (y // 2) * (w // 2) + xx // 2
                    feat = ch * 4 + (y % 2) * 2 + xx % 2
                    assert p[bi, tok, feat] == x[bi, ch, y, xx]


def test_non_contiguous_and_unaligned_inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 10, 8)).astype(np.float32)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # same values, F-ish strides
    assert not xt.flags.c_contiguous
    assert_same_bits(pack_latents(xt), ref_pack(x))
    # a float32 view 4 bytes into an allocation: not 8-byte aligned for the uint64 kernels
    buf = np.empty(x.size + 1, dtype=np.float32)[1:]
    if buf.ctypes.data % 8 == 0:
        buf = np.empty(x.size + 2, dtype=np.float32)[1:-1]
    assert buf.ctypes.data % 8 != 0
    xu = buf.reshape(x.shape)
    xu[...] = x
    assert_same_bits(pack_latents(xu), ref_pack(x))
    tokens = pack_latents(x)
    tbuf = np.empty(tokens.size + 1, dtype=np.float32)[1:]
    if tbuf.ctypes.data % 8 == 0:
        tbuf = np.empty(tokens.size + 2, dtype=np.float32)[1:-1]
    tu = tbuf.reshape(tokens.shape)
    tu[...] = tokens
    assert_same_bits(unpack_latents(tu, 10, 8), ref_unpack(tokens, 10, 8))


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 16, 128, 128), (4, 16, 128, 128), (1, 16, 256, 256)])
def test_pack_unpack_full_size(shape):
    x = random_bits(np.random.default_rng(1), shape, np.float32)
    p = pack_latents(x)
    assert_same_bits(p, ref_pack(x))
    assert_same_bits(unpack_latents(p, shape[2], shape[3]), ref_unpack(p, shape[2], shape[3]))


# --- ids -------------------------------------------------------------------------------------------


@settings(max_examples=n_examples(60), deadline=None)
@given(h2=st.integers(1, 40), w2=st.integers(1, 40), dtype=st.sampled_from([np.float32, np.float64]))
def test_ids_match_diffusers(h2, w2, dtype):
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    ref = FluxPipeline._prepare_latent_image_ids(1, h2, w2, "cpu", tdtype)
    assert_same_bits(latent_image_ids(h2, w2, dtype), ref)


def test_ids_default_dtype_and_flux_1024():
    ids = latent_image_ids(64, 64)
    assert ids.dtype == np.float32 and ids.shape == (4096, 3)
    assert_same_bits(ids, FluxPipeline._prepare_latent_image_ids(1, 64, 64, "cpu", torch.float32))
    assert ids[65].tolist() == [0.0, 1.0, 1.0]


@pytest.mark.slow
def test_ids_large():
    ref = FluxPipeline._prepare_latent_image_ids(1, 256, 320, "cpu", torch.float32)
    assert_same_bits(latent_image_ids(np.int64(256), 320), ref)


# --- validation ------------------------------------------------------------------------------------

F32 = np.zeros((1, 2, 4, 4), dtype=np.float32)
TOK = np.zeros((1, 4, 8), dtype=np.float32)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: pack_latents(F32.tolist()), "x must be a numpy array, got list"),
        (lambda: pack_latents(F32.astype(np.int32)), "x must have dtype float32 or float64, got int32"),
        (lambda: pack_latents(F32.astype(np.float16)), "x must have dtype float32 or float64, got float16"),
        (lambda: pack_latents(F32[0]), r"x must have rank 4 \(B, C, h, w\), got shape \(2, 4, 4\)"),
        (lambda: pack_latents(np.zeros((1, 2, 3, 4), np.float32)), "must be even and positive, got h=3, w=4"),
        (lambda: pack_latents(np.zeros((1, 2, 4, 5), np.float32)), "must be even and positive, got h=4, w=5"),
        (lambda: pack_latents(np.zeros((1, 2, 0, 4), np.float32)), "must be even and positive, got h=0, w=4"),
        (lambda: pack_latents(F32, out=[0]), "out must be a numpy array, got list"),
        (lambda: pack_latents(F32, out=np.zeros((1, 4, 4), np.float32)), r"out must have shape \(1, 4, 8\)"),
        (lambda: pack_latents(F32, out=np.zeros((1, 4, 8), np.float64)), "and dtype float32, got"),
        (
            lambda: pack_latents(F32, out=np.zeros((1, 8, 8), np.float32)[:, ::2]),
            "out must be a writeable, C-contiguous, 8-byte aligned array",
        ),
        (lambda: unpack_latents(TOK.astype(np.int64), 4, 4), "x must have dtype float32 or float64, got int64"),
        (lambda: unpack_latents(TOK[0], 4, 4), r"x must have rank 3 \(B, seq, 4\*C\), got shape \(4, 8\)"),
        (lambda: unpack_latents(TOK, 4.0, 4), r"h and w must be integers \(latent sizes\), got 4.0, 4"),
        (lambda: unpack_latents(TOK, True, 4), "h and w must be integers"),
        (lambda: unpack_latents(TOK, 3, 4), "must be even and positive, got h=3, w=4"),
        (lambda: unpack_latents(TOK, 4, -4), "must be even and positive, got h=4, w=-4"),
        (lambda: unpack_latents(np.zeros((1, 4, 6), np.float32), 4, 4), "multiple of 4 \\(4\\*C\\), got 6"),
        (lambda: unpack_latents(TOK, 4, 8), r"x has 4 tokens but h=4, w=8 needs \(h/2\)\*\(w/2\) = 8"),
        (lambda: unpack_latents(TOK, 4, 4, out=np.zeros((1, 2, 4, 4), np.float64)), r"out must have shape"),
        (lambda: latent_image_ids(0, 4), r"h2 must be a positive integer \(half latent size\), got 0"),
        (lambda: latent_image_ids(4, 2.0), r"w2 must be a positive integer \(half latent size\), got 2.0"),
        (lambda: latent_image_ids(True, 4), "h2 must be a positive integer"),
        (lambda: latent_image_ids(4, 4, np.int64), "dtype must be float32 or float64, got int64"),
        (lambda: latent_image_ids(4, 4, np.float16), "dtype must be float32 or float64, got float16"),
    ],
)
def test_validation_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
