"""FLUX.1 image position ids: rows (0, r, c) for each packed token, bit-identical to diffusers."""
import numpy as np

from _fast._aot import backend as _backend
from _fast._aot import kernel as _kernel

__all__ = ["latent_image_ids"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@_kernel(
    exports={
        "fill_ids_f32": "float32[:,::1](float32[:,::1], int64, int64)",
        "fill_ids_f64": "float64[:,::1](float64[:,::1], int64, int64)",
    },
    cache=True,
)
def _fill_ids(out, h2, w2):
    """out[r*w2+c] = (0, r, c); integers are exact in float32 below 2**24.

    Each packed-token row is ``template + r * mask`` over contiguous memory, which vectorises;
    a plain (0, r, c) store loop does not (stride 3) and is ~3x slower.
    """
    blk = 3 * w2
    tmpl = np.zeros(blk, out.dtype)  # rows (0, 0, c) of one token row
    mask = np.zeros(blk, out.dtype)  # 1 where the row index goes
    for c in range(w2):
        tmpl[3 * c + 2] = c
        mask[3 * c + 1] = 1
    flat = out.reshape(h2 * blk)
    row = np.empty(1, out.dtype)  # the row index in the output dtype: no float64 detour
    for r in range(h2):
        row[0] = r
        fr = row[0]
        base = r * blk
        for j in range(blk):
            flat[base + j] = tmpl[j] + fr * mask[j]
    return out


def latent_image_ids(h2, w2, dtype=np.float32):
    """Position ids (h2*w2, 3) with rows (0, r, c) for a packed (h2, w2) token grid.

    Same as ``FluxPipeline._prepare_latent_image_ids(B, h2, w2, device, dtype)``, which takes the HALF
    latent size (h//2, w//2); there is no batch dimension.
    """
    for name, v in (("h2", h2), ("w2", w2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer (half latent size), got {v!r}")
    dt = np.dtype(dtype)
    if dt not in _FLOATS:
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    h2 = int(h2)
    w2 = int(w2)
    out = np.empty((h2 * w2, 3), dtype=dt)
    _backend("fill_ids_f32" if dt == np.float32 else "fill_ids_f64")(out, h2, w2)
    return out
