"""FLUX.1 latent packing kernels: (B, C, h, w) <-> (B, (h/2)*(w/2), 4*C) tokens.

Bit-identical to ``FluxPipeline._pack_latents`` / ``FluxPipeline._unpack_latents`` (pure data
movement: feature = c*4 + dy*2 + dx, token = row*(w/2) + col). The (dx=0, dx=1) pair is adjacent on
both sides, so the kernels move 64-bit words (one per pair in float32, two in float64): bits, NaN
payloads included, are copied untouched; every kernel has one uint64 signature.
"""
import numpy as np

from _fast._aot import backend as _backend
from _fast._aot import kernel as _kernel

__all__ = ["pack_latents", "unpack_latents"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_PACK_SIG = "uint64[:,:,::1](uint64[:,:,:,::1], uint64[:,:,::1])"  # (x words, out words) -> out
_UNPACK_SIG = "uint64[:,:,:,::1](uint64[:,:,::1], uint64[:,:,:,::1])"


@_kernel(exports={"pack1": _PACK_SIG}, cache=True)
def _pack1(x, out):
    """float32: x (B, C, h, w/2) words, out (B, (h/2)*(w/2), 2*C) words; out[b, t, 2ch+dy] = x[b, ch, 2r+dy, c].

    Loop order b, row, channel, dy, col: reads whole rows, writes stay inside one row's token block.
    """
    nb, nc, h, w2 = x.shape
    for b in range(nb):
        for r in range(h // 2):
            base = r * w2
            for ch in range(nc):
                for dy in range(2):
                    f = 2 * ch + dy
                    y = 2 * r + dy
                    for c in range(w2):
                        out[b, base + c, f] = x[b, ch, y, c]
    return out


@_kernel(exports={"pack2": _PACK_SIG}, cache=True)
def _pack2(x, out):
    """float64: as ``_pack1`` with two words per pair, x (B, C, h, w), out (B, (h/2)*(w/2), 4*C)."""
    nb, nc, h, w = x.shape
    w2 = w // 2
    for b in range(nb):
        for r in range(h // 2):
            base = r * w2
            for ch in range(nc):
                for dy in range(2):
                    f = 4 * ch + 2 * dy
                    y = 2 * r + dy
                    for c in range(w2):
                        out[b, base + c, f] = x[b, ch, y, 2 * c]
                        out[b, base + c, f + 1] = x[b, ch, y, 2 * c + 1]
    return out


@_kernel(exports={"unpack1": _UNPACK_SIG}, cache=True)
def _unpack1(x, out):
    """Inverse of ``_pack1``: x (B, seq, 2*C) words, out (B, C, h, w/2) words."""
    nb, nc, h, w2 = out.shape
    for b in range(nb):
        for r in range(h // 2):
            base = r * w2
            for ch in range(nc):
                for dy in range(2):
                    f = 2 * ch + dy
                    y = 2 * r + dy
                    for c in range(w2):
                        out[b, ch, y, c] = x[b, base + c, f]
    return out


@_kernel(exports={"unpack2": _UNPACK_SIG}, cache=True)
def _unpack2(x, out):
    """Inverse of ``_pack2``: x (B, seq, 4*C) words, out (B, C, h, w) words."""
    nb, nc, h, w = out.shape
    w2 = w // 2
    for b in range(nb):
        for r in range(h // 2):
            base = r * w2
            for ch in range(nc):
                for dy in range(2):
                    f = 4 * ch + 2 * dy
                    y = 2 * r + dy
                    for c in range(w2):
                        out[b, ch, y, 2 * c] = x[b, base + c, f]
                        out[b, ch, y, 2 * c + 1] = x[b, base + c, f + 1]
    return out


def _words(a):
    """View a C-contiguous float32/float64 array (even last axis) as uint64 words, copying if unaligned."""
    v = a.view(np.uint64)
    if not v.flags.aligned:
        v = a.copy().view(np.uint64)
    return v


def _as_float_array(x, name):
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    return np.ascontiguousarray(x)


def _check_out(out, shape, dtype):
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != shape or out.dtype != dtype:
        raise ValueError(f"out must have shape {shape} and dtype {dtype}, got {out.shape} {out.dtype}")
    if not out.flags.c_contiguous or not out.flags.writeable or out.ctypes.data % 8:
        raise ValueError("out must be a writeable, C-contiguous, 8-byte aligned array")


def pack_latents(x, out=None):
    """Pack FLUX latents (B, C, h, w) into tokens (B, (h/2)*(w/2), 4*C), dtype preserved.

    Same bits as ``FluxPipeline._pack_latents(x, B, C, h, w)``; ``out`` is filled in place when given.
    """
    x = _as_float_array(x, "x")
    if x.ndim != 4:
        raise ValueError(f"x must have rank 4 (B, C, h, w), got shape {x.shape}")
    nb, nc, h, w = x.shape
    if h % 2 or w % 2 or h == 0 or w == 0:
        raise ValueError(f"latent height and width must be even and positive, got h={h}, w={w}")
    shape = (nb, (h // 2) * (w // 2), 4 * nc)
    if out is None:
        out = np.empty(shape, dtype=x.dtype)
    else:
        _check_out(out, shape, x.dtype)
    _backend("pack1" if x.dtype == np.float32 else "pack2")(_words(x), out.view(np.uint64))
    return out


def unpack_latents(x, h, w, out=None):
    """Unpack FLUX tokens (B, (h/2)*(w/2), 4*C) into latents (B, C, h, w), dtype preserved.

    ``h``/``w`` are LATENT sizes. diffusers' ``_unpack_latents(x, H, W, vsf)`` takes pixel sizes and
    uses h = 2*(H // (2*vsf)), w = 2*(W // (2*vsf)); pass those values here for the same bits.
    """
    x = _as_float_array(x, "x")
    if x.ndim != 3:
        raise ValueError(f"x must have rank 3 (B, seq, 4*C), got shape {x.shape}")
    if isinstance(h, bool) or isinstance(w, bool) or not isinstance(h, (int, np.integer)) or not isinstance(
        w, (int, np.integer)
    ):
        raise ValueError(f"h and w must be integers (latent sizes), got {h!r}, {w!r}")
    h = int(h)
    w = int(w)
    if h % 2 or w % 2 or h <= 0 or w <= 0:
        raise ValueError(f"latent height and width must be even and positive, got h={h}, w={w}")
    nb, seq, feat = x.shape
    if feat % 4 or feat == 0:
        raise ValueError(f"x feature size must be a positive multiple of 4 (4*C), got {feat}")
    if seq != (h // 2) * (w // 2):
        raise ValueError(
            f"x has {seq} tokens but h={h}, w={w} needs (h/2)*(w/2) = {(h // 2) * (w // 2)}"
        )
    shape = (nb, feat // 4, h, w)
    if out is None:
        out = np.empty(shape, dtype=x.dtype)
    else:
        _check_out(out, shape, x.dtype)
    _backend("unpack1" if x.dtype == np.float32 else "unpack2")(_words(x), out.view(np.uint64))
    return out
