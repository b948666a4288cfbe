"""torch's float32 ``linspace`` on CPU, bit for bit, and the Z-Image schedule built on it.

torch's CPU kernel (aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp, scalar since the vectorised
path was removed) converts start and end to float, takes ``step = (end - start) / (steps - 1)`` in
float and fills element i from whichever end is nearer::

    i <  steps / 2:  start + step * i
    i >= steps / 2:  end - step * (steps - i - 1)

(``steps == 1`` fills ``start``). The kernel file is compiled once per CPU capability: GCC contracts
``a + b * c`` into one fused multiply-add in the AVX2 and AVX-512 builds (``-mfma``) but not in the
DEFAULT one, so the result depends on ``torch.backends.cpu.get_cpu_capability()``: ``fma=True``
matches AVX2 / AVX512 (what torch picks on any x86-64 CPU with AVX2), ``fma=False`` matches DEFAULT
(``ATEN_CPU_CAPABILITY=default``). Measured against torch 2.13.0+cpu: every N in 1..2000 for several
(start, end) pairs, both capabilities. numpy's ``linspace`` (``start + i*step`` in float64, then
rounded) differs from both in the last bit for many N.

The fused multiply-add is emulated exactly in float64 (Python 3.11's ``math`` has no ``fma``, numba
does not expose one): a float32 product is exact in float64, and the only case where rounding the
float64 sum to float32 differs from rounding the exact sum once is a float64 sum that lies exactly
on a float32 midpoint while the float64 addition was inexact; TwoSum gives that error's sign.
"""
import math
import numbers

import numpy as np
from numba import njit

from _fast.schedules import flow_match_sigmas

__all__ = ["torch_linspace_f32", "z_image_sigmas"]

_F32_MAX = float(np.finfo(np.float32).max)


# --------------------------------------------------------------------------------------------------
# jitted kernels (trust their inputs; the wrapper below validates)


@njit(cache=True)
def _fmaf(a, b, c):
    """float32(a * b + c) rounded once, for float32 a, b, c (exact emulation in float64)."""
    p = np.float64(a) * np.float64(b)  # exact: 24-bit x 24-bit significands
    cc = np.float64(c)
    s = p + cc
    bb = s - p
    err = (p - (s - bb)) + (cc - bb)  # TwoSum: s + err == p + c exactly
    r = np.float32(s)
    if err != 0.0:
        rd = np.float64(r)
        if rd != s:
            if s > rd:
                other = np.nextafter(r, np.float32(np.inf))
            else:
                other = np.nextafter(r, np.float32(-np.inf))
            if (rd + np.float64(other)) * 0.5 == s:  # s is a float32 midpoint: the error decides
                if err > 0.0:
                    r = max(r, other)
                else:
                    r = min(r, other)
    return r


@njit(cache=True)
def _linspace(start, end, steps, fma, out):
    """torch.linspace(start, end, steps, dtype=float32) on CPU; start/end are already float32."""
    if steps == 1:
        out[0] = start
        return out
    step = (end - start) / np.float32(steps - 1)
    halfway = steps // 2
    for i in range(steps):
        if i < halfway:
            k = np.float32(i)
            if fma:
                out[i] = _fmaf(step, k, start)
            else:
                out[i] = start + step * k
        else:
            k = np.float32(steps - i - 1)
            if fma:
                out[i] = _fmaf(-step, k, end)
            else:
                out[i] = end - step * k
    return out


# --------------------------------------------------------------------------------------------------
# public API


def _to_f32(name, v):
    """torch's Scalar.to<float>(): one round-to-nearest of the double (ints below 2**53 convert exactly)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {v!r}")
    if isinstance(v, numbers.Integral) and abs(int(v)) > 2**53:
        raise ValueError(f"{name} must be below 2**53 in magnitude when an integer, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {v!r}")
    with np.errstate(over="ignore"):
        r = np.float32(f)
    if not np.isfinite(r):
        raise ValueError(f"{name}={v!r} overflows float32 (torch refuses it too)")
    return r


def torch_linspace_f32(start, end, steps, fma=True, out=None):
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` on CPU, same bits, as a float32 array.

    ``fma=True`` reproduces torch's AVX2/AVX-512 kernels (fused multiply-add), ``fma=False`` its
    DEFAULT-capability kernel; see the module docstring. ``steps`` may be 0 (empty result).
    """
    s = _to_f32("start", start)
    e = _to_f32("end", end)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    n = int(steps)
    if n > 2**24:
        raise ValueError(f"steps must be at most 2**24 (float32 index arithmetic), got {n}")
    if out is None:
        out = np.empty(n, dtype=np.float32)
    elif not isinstance(out, np.ndarray) or out.shape != (n,) or out.dtype != np.float32:
        raise ValueError(
            f"out must be a float32 numpy array of shape ({n},), got "
            f"{getattr(out, 'shape', type(out).__name__)} {getattr(out, 'dtype', '')}".rstrip()
        )
    elif not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable C-contiguous array")
    if n == 0:
        return out
    return _linspace(s, e, n, bool(fma), out)


def z_image_sigmas(
    num_inference_steps,
    shift=3.0,
    *,
    use_dynamic_shifting=False,
    mu=None,
    time_shift_type="exponential",
    shift_terminal=None,
    invert_sigmas=False,
    num_train_timesteps=1000,
    use_karras_sigmas=False,
    use_exponential_sigmas=False,
    sigmas=None,
    fma=True,
):
    """Z-Image schedule: (timesteps float32 (N,), sigmas float32 (N+1,)), same bits as ZImagePipeline.

    ZImagePipeline (and its img2img variant) passes ``get_default_z_image_sigmas(N)`` =
    ``torch.linspace(1.0, 1/N, N).tolist()`` (float32) and ``mu = calculate_shift(seq)`` to
    ``FlowMatchEulerDiscreteScheduler.set_timesteps``; the scheduler config of Z-Image-Turbo is a static
    ``shift=3.0`` without dynamic shifting, so ``mu`` is ignored there. The keyword options are the
    scheduler config (as in ``flow_match_sigmas``); ``sigmas`` replaces the default base sigmas, as
    the pipeline's own ``sigmas`` argument does. img2img: trim with ``_fast.schedules.trim_for_strength``.
    """
    if sigmas is None:
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) or (
            num_inference_steps < 1
        ):
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        n = int(num_inference_steps)
        sigmas = torch_linspace_f32(1.0, 1.0 / n, n, fma=fma)
    return flow_match_sigmas(
        num_inference_steps,
        shift=shift,
        use_dynamic_shifting=use_dynamic_shifting,
        mu=mu,
        time_shift_type=time_shift_type,
        shift_terminal=shift_terminal,
        invert_sigmas=invert_sigmas,
        sigmas=sigmas,
        num_train_timesteps=num_train_timesteps,
        use_karras_sigmas=use_karras_sigmas,
        use_exponential_sigmas=use_exponential_sigmas,
    )
