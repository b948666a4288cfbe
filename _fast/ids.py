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
    """out[r*w2+c] = (0, r, c); integers are exact in float32 below 2**24."""
    k = 0
    for r in range(h2):
        for c in range(w2):
            out[k, 0] = 0
            out[k, 1] = r
            out[k, 2] = c
            k += 1
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
