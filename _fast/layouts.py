"""Latent layouts of the other image families, bit-identical to diffusers 0.42.1.

FLUX.2 / Klein (``Flux2Pipeline``):
  * ``patchify_latents``   (B, C, H, W) -> (B, 4C, H/2, W/2), channel = c*4 + dy*2 + dx
    (``_patchify_latents``), and its inverse ``unpatchify_latents`` (``_unpatchify_latents``).
  * ``flux2_pack``         (B, C, h, w) -> tokens (B, h*w, C), token = r*w + c (``_pack_latents``;
    diffusers returns a transposed *view*, this returns the same values C-contiguous).
  * ``scatter_by_ids``     tokens (B, seq, C) + ids (B, seq, 4) -> (B, C, h, w) (``_unpack_latents_with_ids``
    of Flux2Pipeline, and of Flux2KleinPipeline when h/w are given): positions no token names stay 0.0,
    and when two tokens name the same position the later one wins, as torch's CPU ``scatter_`` does.
Qwen-Image (``QwenImagePipeline``): the noise is drawn as (B, 1, C, h, w) but ``_pack_latents`` views it
as (B, C, h, w), so the token layout is FLUX.1's; ``qwen_pack_latents`` / ``qwen_unpack_latents`` reuse
the ``_fast.latents`` kernels and only add the 5-D shapes.

All kernels move bits (floats are viewed as same-size unsigned words): NaN payloads, -0.0 and
subnormals are copied untouched.
"""
import numpy as np
from numba import njit

from _fast.latents import pack_latents, unpack_latents

__all__ = [
    "patchify_latents",
    "unpatchify_latents",
    "flux2_pack",
    "scatter_by_ids",
    "qwen_pack_latents",
    "qwen_unpack_latents",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_WORD = {4: np.uint32, 8: np.uint64}
_TILE = 32  # flux2_pack transpose tile (tokens per tile)


# --------------------------------------------------------------------------------------------------
# jitted kernels (trust their inputs; the wrappers below validate)


@njit(cache=True)
def _patchify(x, out):
    """out[b, 4c + 2dy + dx, r, k] = x[b, c, 2r + dy, 2k + dx]; writes contiguous, reads stride 2."""
    nb, nc, h, w = x.shape
    h2 = h // 2
    w2 = w // 2
    for b in range(nb):
        for c in range(nc):
            for dy in range(2):
                for dx in range(2):
                    f = 4 * c + 2 * dy + dx
                    for r in range(h2):
                        y = 2 * r + dy
                        for k in range(w2):
                            out[b, f, r, k] = x[b, c, y, 2 * k + dx]
    return out


@njit(cache=True)
def _unpatchify(x, out):
    """Inverse of ``_patchify``: out[b, c, 2r + dy, 2k + dx] = x[b, 4c + 2dy + dx, r, k]; writes contiguous."""
    nb, nc, h, w = out.shape
    h2 = h // 2
    w2 = w // 2
    for b in range(nb):
        for c in range(nc):
            for r in range(h2):
                for dy in range(2):
                    y = 2 * r + dy
                    f = 4 * c + 2 * dy
                    for k in range(w2):
                        out[b, c, y, 2 * k] = x[b, f, r, k]
                        out[b, c, y, 2 * k + 1] = x[b, f + 1, r, k]
    return out


@njit(cache=True)
def _transpose(x, out, tile):
    """out[b, t, c] = x[b, c, t] for x (B, C, T): tiles of ``tile`` tokens keep both sides in cache."""
    nb, nc, nt = x.shape
    for b in range(nb):
        for t0 in range(0, nt, tile):
            t1 = min(t0 + tile, nt)
            for c in range(nc):
                for t in range(t0, t1):
                    out[b, t, c] = x[b, c, t]
    return out


@njit(cache=True)
def _id_extent(ids, ext):
    """ext[b] = (min row, max row, min col, max col) over ids[b, :, 1] and ids[b, :, 2]."""
    nb, ns, _ = ids.shape
    for b in range(nb):
        r0 = ids[b, 0, 1]
        r1 = r0
        c0 = ids[b, 0, 2]
        c1 = c0
        for t in range(1, ns):
            r = ids[b, t, 1]
            c = ids[b, t, 2]
            if r < r0:
                r0 = r
            if r > r1:
                r1 = r
            if c < c0:
                c0 = c
            if c > c1:
                c1 = c
        ext[b, 0] = r0
        ext[b, 1] = r1
        ext[b, 2] = c0
        ext[b, 3] = c1
    return ext


@njit(cache=True)
def _scatter(x, ids, w, src, out):
    """out[b, :, r, c] = x[b, t, :] for ids[b, t] = (., r, c, .), later tokens win, unnamed positions 0.

    ``src`` (h*w,) int64 scratch holds the token written to each position (-1: none), so the writes
    run contiguous over each output channel plane.
    """
    nb, ns, nc = x.shape
    npos = src.shape[0]
    for b in range(nb):
        for p in range(npos):
            src[p] = -1
        for t in range(ns):
            src[ids[b, t, 1] * w + ids[b, t, 2]] = t
        for c in range(nc):
            for p in range(npos):
                t = src[p]
                if t >= 0:
                    out[b, c, p] = x[b, t, c]
                else:
                    out[b, c, p] = 0
    return out


# --------------------------------------------------------------------------------------------------
# validation helpers


def _float_array(x, name, ndim, axes):
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have rank {ndim} {axes}, got shape {x.shape}")
    return np.ascontiguousarray(x)


def _out_array(out, shape, dtype):
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != shape or out.dtype != dtype:
        raise ValueError(f"out must have shape {shape} and dtype {dtype}, got {out.shape} {out.dtype}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable, C-contiguous array")
    return out


def _words(a):
    """Same-size unsigned view (moves bits; unaligned arrays are copied first)."""
    if not a.flags.aligned:
        a = a.copy()
    return a.view(_WORD[a.itemsize])


def _size(name, v, minimum=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


# --------------------------------------------------------------------------------------------------
# FLUX.2


def patchify_latents(x, out=None):
    """(B, C, H, W) -> (B, 4C, H/2, W/2) with channel c*4 + dy*2 + dx: ``Flux2Pipeline._patchify_latents``."""
    x = _float_array(x, "x", 4, "(B, C, H, W)")
    nb, nc, h, w = x.shape
    if h % 2 or w % 2 or h == 0 or w == 0:
        raise ValueError(f"latent height and width must be even and positive, got H={h}, W={w}")
    out = _out_array(out, (nb, 4 * nc, h // 2, w // 2), x.dtype)
    _patchify(_words(x), out.view(_WORD[x.itemsize]))
    return out


def unpatchify_latents(x, out=None):
    """(B, 4C, h, w) -> (B, C, 2h, 2w): ``Flux2Pipeline._unpatchify_latents``, inverse of ``patchify_latents``."""
    x = _float_array(x, "x", 4, "(B, 4C, h, w)")
    nb, nc4, h, w = x.shape
    if nc4 % 4 or nc4 == 0:
        raise ValueError(f"x channel count must be a positive multiple of 4 (4*C), got {nc4}")
    if h == 0 or w == 0:
        raise ValueError(f"x height and width must be positive, got h={h}, w={w}")
    out = _out_array(out, (nb, nc4 // 4, 2 * h, 2 * w), x.dtype)
    _unpatchify(_words(x), out.view(_WORD[x.itemsize]))
    return out


def flux2_pack(x, out=None):
    """(B, C, h, w) -> tokens (B, h*w, C), token = r*w + c: ``Flux2Pipeline._pack_latents``.

    diffusers returns ``x.reshape(B, C, h*w).permute(0, 2, 1)``, a non-contiguous view; this returns
    the same values as a C-contiguous array (what a model input or ``euler_step`` wants).
    """
    x = _float_array(x, "x", 4, "(B, C, h, w)")
    nb, nc, h, w = x.shape
    out = _out_array(out, (nb, h * w, nc), x.dtype)
    _transpose(_words(x).reshape(nb, nc, h * w), out.view(_WORD[x.itemsize]), _TILE)
    return out


def scatter_by_ids(tokens, ids, h=None, w=None, out=None):
    """Scatter tokens (B, seq, C) into latents (B, C, h, w) by their ids (B, seq, >=3) rows (t, r, c, ...).

    ``Flux2Pipeline._unpack_latents_with_ids(tokens, ids)`` when h and w are None (then h = max r + 1,
    w = max c + 1, which must agree across the batch), ``Flux2KleinPipeline._unpack_latents_with_ids(
    tokens, ids, h, w)`` when they are given (the half latent size). Positions no token names are 0.0;
    when several tokens name one position the last one wins (torch's CPU scatter order). ids of shape
    (seq, >=3) apply to every batch item. Rows outside [0, h) x [0, w) raise ValueError (diffusers
    would raise, or with explicit w wrap into the next row).
    """
    tokens = _float_array(tokens, "tokens", 3, "(B, seq, C)")
    nb, ns, nc = tokens.shape
    if not isinstance(ids, np.ndarray):
        raise ValueError(f"ids must be a numpy array, got {type(ids).__name__}")
    if ids.dtype.kind not in "iu":
        raise ValueError(f"ids must have an integer dtype, got {ids.dtype}")
    if ids.ndim == 2:
        ids = ids[None]
        if nb > 1:
            ids = np.broadcast_to(ids, (nb,) + ids.shape[1:])
    if ids.ndim != 3 or ids.shape[0] != nb or ids.shape[1] != ns or ids.shape[2] < 3:
        raise ValueError(
            f"ids must have shape ({nb}, {ns}, 4) (or ({ns}, 4)) to match tokens {tokens.shape}, got {ids.shape}"
        )
    if ns == 0:
        raise ValueError("tokens must hold at least one token")
    if ids.dtype != np.int64:
        if ids.dtype == np.uint64 and ids.size and ids.max() > np.iinfo(np.int64).max:
            raise ValueError("ids do not fit in int64")
        ids = ids.astype(np.int64)
    ids = np.ascontiguousarray(ids)
    ext = _id_extent(ids, np.empty((nb, 4), dtype=np.int64))
    if (h is None) != (w is None):
        raise ValueError("give both h and w, or neither (then they are taken from the ids)")
    if ext[:, 0].min() < 0 or ext[:, 2].min() < 0:
        raise ValueError(f"ids hold negative positions (min row {ext[:, 0].min()}, min col {ext[:, 2].min()})")
    if h is None:
        hs = ext[:, 1] + 1
        ws = ext[:, 3] + 1
        if (hs != hs[0]).any() or (ws != ws[0]).any():
            raise ValueError(
                f"ids span different grids per batch item (heights {hs.tolist()}, widths {ws.tolist()}); "
                "diffusers cannot stack them: pass h and w"
            )
        h = int(hs[0])
        w = int(ws[0])
    else:
        h = _size("h", h)
        w = _size("w", w)
        if ext[:, 1].max() >= h or ext[:, 3].max() >= w:
            raise ValueError(
                f"ids reach row {ext[:, 1].max()} / col {ext[:, 3].max()}, outside the h={h} x w={w} grid"
            )
    out = _out_array(out, (nb, nc, h, w), tokens.dtype)
    word = _WORD[tokens.itemsize]
    _scatter(_words(tokens), ids, w, np.empty(h * w, dtype=np.int64), out.view(word).reshape(nb, nc, h * w))
    return out


# --------------------------------------------------------------------------------------------------
# Qwen-Image: FLUX.1's token layout on a 5-D latent


def qwen_pack_latents(x, out=None):
    """(B, 1, C, h, w) (or (B, C, h, w)) -> (B, (h/2)*(w/2), 4C): ``QwenImagePipeline._pack_latents``.

    The singleton frame axis sits before C, so the memory is FLUX.1's (B, C, h, w) and the kernel is
    ``_fast.latents.pack_latents``.
    """
    if isinstance(x, np.ndarray) and x.ndim == 5:
        if x.shape[1] != 1:
            raise ValueError(f"x must have shape (B, 1, C, h, w) (one frame), got {x.shape}")
        x = x.reshape(x.shape[0], x.shape[2], x.shape[3], x.shape[4])
    elif isinstance(x, np.ndarray) and x.ndim != 4:
        raise ValueError(f"x must have rank 5 (B, 1, C, h, w) or 4 (B, C, h, w), got shape {x.shape}")
    return pack_latents(x, out=out)


def qwen_unpack_latents(x, h, w, out=None):
    """Tokens (B, (h/2)*(w/2), 4C) -> (B, C, 1, h, w): ``QwenImagePipeline._unpack_latents``.

    ``h``/``w`` are LATENT sizes: diffusers takes pixel sizes and uses h = 2*(H // (2*vsf)).
    ``out``, when given, has the 5-D shape.
    """
    if out is not None:
        if not isinstance(out, np.ndarray) or out.ndim != 5 or out.shape[2] != 1:
            raise ValueError(
                f"out must be a numpy array of shape (B, C, 1, h, w), got {getattr(out, 'shape', type(out).__name__)}"
            )
        if not out.flags.c_contiguous:
            raise ValueError("out must be a writeable, C-contiguous, 8-byte aligned array")
        unpack_latents(x, h, w, out=out.reshape(out.shape[0], out.shape[1], out.shape[3], out.shape[4]))
        return out
    res = unpack_latents(x, h, w)
    return res.reshape(res.shape[0], res.shape[1], 1, res.shape[2], res.shape[3])
