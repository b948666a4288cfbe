"""Position ids of FLUX.2 / Klein and Qwen-Image, bit-identical to diffusers 0.42.1.

FLUX.2 (``Flux2Pipeline``, 4 axes (t, h, w, l), int64):
  * ``flux2_image_ids``      rows (t, r, c, 0) of one (h2, w2) token grid: ``_prepare_latent_ids``
    (t = 0, expanded over the batch).
  * ``flux2_reference_ids``  the reference images' grids one after another with t = scale + scale*k
    for the k-th image: ``_prepare_image_ids`` (scale 10: t = 10, 20, ...).
  * ``flux2_text_ids``       rows (t, 0, 0, l) for l in [0, L): ``_prepare_text_ids``.
Qwen-Image (``QwenEmbedRope`` in transformer_qwenimage.py, 3 axes (frame, h, w)): the transformer
builds its rotary table from positions; these are the positions it uses, row for row.
  * ``qwen_image_ids``  for image k of shape (f, h, w): frames k .. k+f-1; with ``scale_rope`` (the
    model's setting) rows -(h - h//2) .. h//2 - 1 and cols -(w - w//2) .. w//2 - 1, else 0.. h-1 / 0..w-1.
  * ``qwen_text_ids``   all three axes m + l for l in [0, L), m = max over images of max(h//2, w//2)
    (``scale_rope``) or max(h, w).
The rotary angle of an id p on an axis of size d is p * (1 / theta ** (arange(0, d, 2) / d)); the model
looks negative positions up in a table built from the negative integers, so the angles agree exactly.
"""
import numpy as np
from numba import njit

__all__ = ["flux2_image_ids", "flux2_reference_ids", "flux2_text_ids", "qwen_image_ids", "qwen_text_ids"]

_QWEN_DTYPES = (np.dtype(np.int64), np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------------------------------
# jitted kernels (trust their inputs; the wrappers below validate)


@njit(cache=True)
def _fill_grids(out, ts, hs, ws):
    """out (B, N, 4): for each grid k rows (ts[k], r, c, 0) in row-major order, then batch copies."""
    nb = out.shape[0]
    n = 0
    for k in range(ts.shape[0]):
        t = ts[k]
        for r in range(hs[k]):
            for c in range(ws[k]):
                out[0, n, 0] = t
                out[0, n, 1] = r
                out[0, n, 2] = c
                out[0, n, 3] = 0
                n += 1
    for b in range(1, nb):
        for i in range(n):
            for j in range(4):
                out[b, i, j] = out[0, i, j]
    return out


@njit(cache=True)
def _fill_text(out, ts):
    """out (B, L, 4): rows (ts[b], 0, 0, l)."""
    nb, nl, _ = out.shape
    for b in range(nb):
        t = ts[b]
        for i in range(nl):
            out[b, i, 0] = t
            out[b, i, 1] = 0
            out[b, i, 2] = 0
            out[b, i, 3] = i
    return out


@njit(cache=True)
def _fill_qwen(out, fs, hs, ws, scale_rope):
    """out (sum f*h*w, 3): image k rows (k + fi, row, col), rows/cols centred when scale_rope."""
    n = 0
    for k in range(fs.shape[0]):
        h = hs[k]
        w = ws[k]
        r0 = -(h - h // 2) if scale_rope else 0
        c0 = -(w - w // 2) if scale_rope else 0
        for fi in range(fs[k]):
            for r in range(h):
                for c in range(w):
                    out[n, 0] = k + fi
                    out[n, 1] = r0 + r
                    out[n, 2] = c0 + c
                    n += 1
    return out


@njit(cache=True)
def _fill_diag(out, start):
    """out (L, 3): every axis start + l."""
    for i in range(out.shape[0]):
        v = start + i
        out[i, 0] = v
        out[i, 1] = v
        out[i, 2] = v
    return out


# --------------------------------------------------------------------------------------------------
# validation helpers


def _int(name, v, minimum):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _batch(batch):
    return None if batch is None else _int("batch", batch, 1)


def _grid_shapes(name, shapes, arity):
    """A single tuple of `arity` sizes or a non-empty list of them -> int64 columns."""
    flat = isinstance(shapes, tuple) and not any(isinstance(s, (tuple, list)) for s in shapes)
    if flat and len(shapes) == arity:
        shapes = [shapes]
        flat = False
    if flat or not isinstance(shapes, (list, tuple)) or len(shapes) == 0:
        raise ValueError(f"{name} must be a {arity}-tuple of sizes or a non-empty list of them, got {shapes!r}")
    cols = [[] for _ in range(arity)]
    for s in shapes:
        if not isinstance(s, (tuple, list)) or len(s) != arity:
            raise ValueError(f"each entry of {name} must be a {arity}-tuple of sizes, got {s!r}")
        for j, v in enumerate(s):
            cols[j].append(_int(f"{name} sizes", v, 1))
    return [np.array(c, dtype=np.int64) for c in cols]


def _qwen_dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in _QWEN_DTYPES:
        raise ValueError(f"dtype must be int64, float32 or float64, got {dt}")
    return dt


# --------------------------------------------------------------------------------------------------
# FLUX.2


def flux2_image_ids(h2, w2, batch=None, t_offset=0):
    """int64 ids with rows (t_offset, r, c, 0), r < h2, c < w2, row-major: (h2*w2, 4), or (batch, h2*w2, 4).

    ``Flux2Pipeline._prepare_latent_ids(latents)`` for latents (B, 128, h2, w2) is
    ``flux2_image_ids(h2, w2, batch=B)`` (diffusers returns a stride-0 expand; this is a copy).
    """
    h2 = _int("h2", h2, 1)
    w2 = _int("w2", w2, 1)
    nb = _batch(batch)
    t = _int("t_offset", t_offset, 0)
    out = np.empty((1 if nb is None else nb, h2 * w2, 4), dtype=np.int64)
    _fill_grids(out, np.array([t], np.int64), np.array([h2], np.int64), np.array([w2], np.int64))
    return out[0] if nb is None else out


def flux2_reference_ids(shapes, batch=None, scale=10):
    """int64 ids of reference-image grids (h2, w2), concatenated: image k has t = scale + scale*k.

    ``Flux2Pipeline._prepare_image_ids(latents)`` (shape (1, N, 4)) is ``flux2_reference_ids(shapes,
    batch=1)``; ``prepare_image_latents`` repeats it to ``batch=B``; ``batch=None`` gives (N, 4).
    ``shapes`` is one (h2, w2) tuple or a list of them.
    """
    hs, ws = _grid_shapes("shapes", shapes, 2)
    nb = _batch(batch)
    scale = _int("scale", scale, 0)
    ts = scale + scale * np.arange(hs.shape[0], dtype=np.int64)
    out = np.empty((1 if nb is None else nb, int((hs * ws).sum()), 4), dtype=np.int64)
    _fill_grids(out, ts, hs, ws)
    return out[0] if nb is None else out


def flux2_text_ids(batch, length, t_coord=None):
    """int64 (batch, length, 4) rows (t, 0, 0, l): ``Flux2Pipeline._prepare_text_ids(embeds)``.

    ``t_coord`` (one integer per batch item) stands for diffusers' ``t_coord[i]`` of length 1; default 0.
    """
    nb = _int("batch", batch, 1)
    nl = _int("length", length, 0)
    if t_coord is None:
        ts = np.zeros(nb, dtype=np.int64)
    else:
        ts = np.asarray(t_coord)
        if ts.dtype.kind not in "iu" or ts.shape != (nb,):
            raise ValueError(f"t_coord must hold one integer per batch item ({nb}), got {t_coord!r}")
        ts = ts.astype(np.int64)
    return _fill_text(np.empty((nb, nl, 4), dtype=np.int64), ts)


# --------------------------------------------------------------------------------------------------
# Qwen-Image


def qwen_image_ids(shapes, scale_rope=True, dtype=np.int64):
    """Positions (sum f*h*w, 3) rows (frame, row, col) of ``QwenEmbedRope`` for one sample's images.

    ``shapes`` is one (f, h, w) tuple in TOKENS (QwenImagePipeline: (1, H//16, W//16)) or a list of
    them (edit pipelines: image k starts at frame k). ``scale_rope=True`` is QwenImageTransformer2DModel's
    setting: centred rows -(h - h//2) .. h//2 - 1 and cols likewise.
    """
    fs, hs, ws = _grid_shapes("shapes", shapes, 3)
    dt = _qwen_dtype(dtype)
    out = np.empty((int((fs * hs * ws).sum()), 3), dtype=np.int64)
    _fill_qwen(out, fs, hs, ws, bool(scale_rope))
    return out if dt == np.int64 else out.astype(dt)


def qwen_text_ids(length, shapes, scale_rope=True, dtype=np.int64):
    """Positions (length, 3) of the text tokens: every axis m + l, l < length (``QwenEmbedRope.forward``).

    m = max over ``shapes`` of max(h//2, w//2) with ``scale_rope`` (else max(h, w)); ``length`` is the
    text sequence length the model sees (the padded prompt embedding length).
    """
    nl = _int("length", length, 0)
    _, hs, ws = _grid_shapes("shapes", shapes, 3)
    dt = _qwen_dtype(dtype)
    if scale_rope:
        m = int(max((hs // 2).max(), (ws // 2).max(), 0))
    else:
        m = int(max(hs.max(), ws.max(), 0))
    out = _fill_diag(np.empty((nl, 3), dtype=np.int64), m)
    return out if dt == np.int64 else out.astype(dt)
