"""Flow-matching schedules and the Euler step, bit-identical to diffusers' FlowMatchEulerDiscreteScheduler.

The dtype path is copied from diffusers 0.42.1: the pipelines' base sigmas
``np.linspace(1.0, 1/N, N)`` (float64) are cast to float32 BEFORE shifting; Python-float constants
(``exp(mu)``, ``mu``, ``shift``, ``shift - 1``, ``1 - shift_terminal``) are rounded to float32 once
(numpy 2 treats them as weak scalars) and all arithmetic on the array is float32;
``timesteps = sigmas * num_train_timesteps`` in float32.
"""
import math
import numbers

import numpy as np

from _fast._aot import backend as _backend
from _fast._aot import kernel as _kernel

__all__ = [
    "flow_match_sigmas",
    "calculate_shift",
    "empirical_mu",
    "trim_for_strength",
    "euler_step",
]

_EMPTY_F32 = np.empty(0, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# jitted kernels (trust their inputs; the wrappers below validate). ``_kernel`` marks them for
# ``njit(**options)`` and, via ``exports``, for the ahead-of-time extension (see ``_fast._aot``) with
# the exact argument types the wrappers pass; the wrappers call them through ``_backend(entry)``.


@_kernel(cache=True, error_model="numpy")
def _base_into(n, custom, use_custom, work):
    """work[:n] = custom, or float32(np.linspace(1.0, 1/n, n)) computed exactly as numpy does."""
    if use_custom:
        for i in range(n):
            work[i] = custom[i]
        return
    start = 1.0
    stop = 1.0 / n
    if n == 1:
        work[0] = np.float32(start)  # numpy: arange(1) * delta + start, delta == 0
        return
    step = (stop - start) / (n - 1)
    for i in range(n - 1):
        work[i] = np.float32(i * step + start)  # y = arange(n) * step; y += start (two roundings)
    work[n - 1] = np.float32(stop)  # numpy sets the endpoint exactly


@_kernel(cache=True, error_model="numpy")
def _shift_into(work, n, dynamic, a64, shift64, shift_m1_64, use_terminal, one_minus_terminal64):
    """Shift work[:n] in place in float32: dynamic a/(a + (1/t - 1)), static shift*t/(1 + (shift-1)*t).

    The float64 constants are rounded to float32 once, as numpy 2 does with weak Python floats.
    """
    one = np.float32(1.0)
    a = np.float32(a64)
    shift = np.float32(shift64)
    shift_m1 = np.float32(shift_m1_64)
    one_minus_terminal = np.float32(one_minus_terminal64)
    if dynamic:
        # exponential: a = float32(exp(mu)); linear: a = float32(mu); (1/t - 1) ** 1.0 is exact
        for i in range(n):
            t = work[i]
            work[i] = a / (a + (one / t - one))
    else:
        for i in range(n):
            t = work[i]
            work[i] = (shift * t) / (one + shift_m1 * t)
    if use_terminal:
        scale = (one - work[n - 1]) / one_minus_terminal
        for i in range(n):
            work[i] = one - ((one - work[i]) / scale)


@_kernel(
    exports={"finish_into": "none(float32[::1], int64, boolean, float64, float32[::1], float32[::1])"},
    cache=True,
    error_model="numpy",
)
def _finish_into(work, n, invert, num_train64, timesteps, sigmas):
    """timesteps = s * num_train (float32); sigmas = append(s, 0), or with invert s = 1 - s, append 1."""
    one = np.float32(1.0)
    num_train = np.float32(num_train64)
    if invert:
        for i in range(n):
            s = one - work[i]
            sigmas[i] = s
            timesteps[i] = s * num_train
        sigmas[n] = one
    else:
        for i in range(n):
            s = work[i]
            sigmas[i] = s
            timesteps[i] = s * num_train
        sigmas[n] = np.float32(0.0)


@_kernel(
    exports={
        "schedule": "none(int64, float32[::1], boolean, boolean, float64, float64, float64, boolean, float64,"
        " boolean, float64, float32[::1], float32[::1])"
    },
    cache=True,
    error_model="numpy",
)
def _schedule(
    n, custom, use_custom, dynamic, a, shift, shift_m1, use_terminal, one_minus_terminal, invert,
    num_train, timesteps, sigmas,
):
    """Whole schedule in one call, using sigmas[:n] as the working buffer."""
    _base_into(n, custom, use_custom, sigmas)
    _shift_into(sigmas, n, dynamic, a, shift, shift_m1, use_terminal, one_minus_terminal)
    _finish_into(sigmas, n, invert, num_train, timesteps, sigmas)


@_kernel(
    exports={
        "shifted": "none(int64, float32[::1], boolean, boolean, float64, float64, float64, boolean, float64,"
        " float32[::1])"
    },
    cache=True,
    error_model="numpy",
)
def _shifted(n, custom, use_custom, dynamic, a, shift, shift_m1, use_terminal, one_minus_terminal, work):
    """Base + shift + terminal stretch only (the re-spacing options continue in numpy)."""
    _base_into(n, custom, use_custom, work)
    _shift_into(work, n, dynamic, a, shift, shift_m1, use_terminal, one_minus_terminal)


@_kernel(exports={"euler": "float32[::1](float32[::1], float32[::1], float64, float64, float32[::1])"}, cache=True)
def _euler(sample, model_output, sigma64, sigma_next64, out):
    """out = sample + (sigma_next - sigma) * model_output, all float32, mul and add rounded separately."""
    dt = np.float32(sigma_next64) - np.float32(sigma64)
    for i in range(sample.shape[0]):
        out[i] = sample[i] + dt * model_output[i]
    return out


# --------------------------------------------------------------------------------------------------
# validation helpers


def _is_int(v):
    return type(v) is int or (isinstance(v, numbers.Integral) and not isinstance(v, bool))


def _is_real(v):
    return type(v) is float or (isinstance(v, numbers.Real) and not isinstance(v, bool))


def _positive_int(name, v):
    if (type(v) is int or _is_int(v)) and v >= 1:  # the type() test is the cheap common case
        return int(v)
    raise ValueError(f"{name} must be a positive integer, got {v!r}")


def _finite_real(name, v):
    if (type(v) is float or _is_real(v)) and math.isfinite(v):
        return float(v)
    raise ValueError(f"{name} must be a finite real number, got {v!r}")


# --------------------------------------------------------------------------------------------------
# public API


def flow_match_sigmas(
    num_inference_steps,
    *,
    shift=1.0,
    use_dynamic_shifting=False,
    mu=None,
    time_shift_type="exponential",
    shift_terminal=None,
    invert_sigmas=False,
    sigmas=None,
    num_train_timesteps=1000,
    use_karras_sigmas=False,
    use_exponential_sigmas=False,
):
    """Flow-match schedule: (timesteps float32 (N,), sigmas float32 (N+1,)), same bits as diffusers.

    Equals ``FlowMatchEulerDiscreteScheduler(**config).set_timesteps(sigmas=base, mu=mu)`` where base is
    ``sigmas`` or, when None, the pipelines' ``np.linspace(1.0, 1/N, N)`` (what FluxPipeline passes via
    ``retrieve_timesteps``; the scheduler's own float64 default path for ``sigmas=None`` is not this).
    ``mu`` is taken as a Python float, as ``calculate_shift`` returns it. Beta re-spacing is not offered.
    """
    if sigmas is not None:
        arr = np.array(sigmas)
        if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "fiu":
            raise ValueError(
                f"sigmas must be a non-empty 1-D sequence of real numbers, got shape {arr.shape} dtype {arr.dtype}"
            )
        custom = np.ascontiguousarray(arr.astype(np.float32))
        if num_inference_steps is None:
            num_inference_steps = custom.shape[0]
        elif not _is_int(num_inference_steps) or num_inference_steps != custom.shape[0]:
            raise ValueError(
                f"num_inference_steps={num_inference_steps!r} must equal len(sigmas)={custom.shape[0]} "
                "(or be None when sigmas are given)"
            )
        use_custom = True
    else:
        custom = _EMPTY_F32
        use_custom = False
    n = _positive_int("num_inference_steps", num_inference_steps)
    if time_shift_type not in ("exponential", "linear"):
        raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got {time_shift_type!r}")
    if use_karras_sigmas and use_exponential_sigmas:
        raise ValueError("use_karras_sigmas and use_exponential_sigmas are exclusive; pick at most one")
    nt = _positive_int("num_train_timesteps", num_train_timesteps)
    shift = _finite_real("shift", shift)

    dynamic = bool(use_dynamic_shifting)
    if dynamic:
        if mu is None:
            raise ValueError("mu must be given when use_dynamic_shifting=True (see calculate_shift / empirical_mu)")
        mu = _finite_real("mu", mu)
        if time_shift_type == "exponential":
            try:
                a = math.exp(mu)  # diffusers: math.exp(mu), a weak Python float, rounded to float32
            except OverflowError:
                raise ValueError(f"mu={mu!r} is too large: exp(mu) overflows") from None
        else:
            a = mu
    else:
        a = 0.0  # mu is ignored without dynamic shifting, as in diffusers

    if shift_terminal:  # diffusers: `if self.config.shift_terminal:` (0.0 and None both skip)
        st = _finite_real("shift_terminal", shift_terminal)
        if st == 1.0:
            raise ValueError("shift_terminal must not be 1.0 (the stretch divides by 1 - shift_terminal)")
        use_terminal = True
        omt = 1.0 - st  # taken in double, rounded to float32 in the kernel
    else:
        use_terminal = False
        omt = 1.0

    shift_m1 = shift - 1.0  # (shift - 1) is taken in double, then rounded (not float32(shift) - 1)
    num_train = float(nt)
    invert = bool(invert_sigmas)
    timesteps = np.empty(n, dtype=np.float32)
    out_sigmas = np.empty(n + 1, dtype=np.float32)

    if not (use_karras_sigmas or use_exponential_sigmas):
        _backend("schedule")(n, custom, use_custom, dynamic, a, shift, shift_m1, use_terminal, omt, invert,
                             num_train, timesteps, out_sigmas)
        return timesteps, out_sigmas

    # Karras / exponential re-spacing: float64 numpy exactly as diffusers writes it (numpy's
    # vectorised pow/exp/log may differ from libm, so this part stays in numpy on purpose).
    work = np.empty(n, dtype=np.float32)
    _backend("shifted")(n, custom, use_custom, dynamic, a, shift, shift_m1, use_terminal, omt, work)
    sigma_min = work[-1].item()
    sigma_max = work[0].item()
    if use_karras_sigmas:
        if sigma_min < 0.0 or sigma_max < 0.0:  # NaN passes through, as in diffusers
            raise ValueError(
                f"Karras re-spacing needs non-negative end sigmas, got {sigma_max!r} .. {sigma_min!r}"
            )
        rho = 7.0
        ramp = np.linspace(0, 1, n)
        min_inv_rho = sigma_min ** (1 / rho)
        max_inv_rho = sigma_max ** (1 / rho)
        res = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    else:
        if sigma_min <= 0.0 or sigma_max <= 0.0:  # math.log raises there; NaN passes
            raise ValueError(
                f"exponential re-spacing needs positive end sigmas, got {sigma_max!r} .. {sigma_min!r}"
            )
        res = np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))
    work = np.ascontiguousarray(res.astype(np.float32))
    _backend("finish_into")(work, n, invert, num_train, timesteps, out_sigmas)
    return timesteps, out_sigmas


def calculate_shift(image_seq_len, base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15):
    """Resolution-dependent mu (float64, not clamped) for the PACKED sequence length (h/2)*(w/2).

    Same as ``diffusers.pipelines.flux.pipeline_flux.calculate_shift``; plain Python (a jitted call
    would only add overhead to four float64 operations).
    """
    seq = _positive_int("image_seq_len", image_seq_len)
    base = _positive_int("base_seq_len", base_seq_len)
    top = _positive_int("max_seq_len", max_seq_len)
    if top == base:
        raise ValueError(f"max_seq_len must differ from base_seq_len, both are {base}")
    lo = _finite_real("base_shift", base_shift)
    hi = _finite_real("max_shift", max_shift)
    m = (hi - lo) / (top - base)
    b = lo - m * base
    return seq * m + b


def empirical_mu(image_seq_len, num_steps):
    """FLUX.2's step-count-dependent mu, same as ``pipeline_flux2.compute_empirical_mu``."""
    seq = _positive_int("image_seq_len", image_seq_len)
    steps = _positive_int("num_steps", num_steps)
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    if seq > 4300:
        return float(a2 * seq + b2)
    m_200 = a2 * seq + b2
    m_10 = a1 * seq + b1
    a = (m_200 - m_10) / 190.0
    b = m_200 - 200.0 * a
    return float(a * steps + b)


def trim_for_strength(timesteps, sigmas, num_inference_steps, strength):
    """img2img: drop the first t_start steps; returns (timesteps[t_start:], sigmas[t_start:], t_start).

    Same arithmetic as ``FluxImg2ImgPipeline.get_timesteps``; start the step index at t_start
    (diffusers' ``set_begin_index``). The slices are views.
    """
    n = _positive_int("num_inference_steps", num_inference_steps)
    if not _is_real(strength) or not (0.0 <= strength <= 1.0):
        raise ValueError(f"strength must be a real number in [0.0, 1.0], got {strength!r}")
    if len(timesteps) != n or len(sigmas) != n + 1:
        raise ValueError(
            f"expected {n} timesteps and {n + 1} sigmas for num_inference_steps={n}, "
            f"got {len(timesteps)} and {len(sigmas)}"
        )
    init_timestep = min(n * strength, n)
    t_start = int(max(n - init_timestep, 0))
    if n - t_start < 1:
        raise ValueError(
            f"strength={strength!r} leaves {n - t_start} of {n} denoising steps; "
            "raise strength or num_inference_steps so at least one step remains"
        )
    return timesteps[t_start:], sigmas[t_start:], t_start


def euler_step(sample, model_output, sigma, sigma_next, out=None):
    """Flow-match Euler step ``sample + (sigma_next - sigma) * model_output`` in float32.

    Same bits as ``FlowMatchEulerDiscreteScheduler.step`` for float32 tensors; sigma values are
    rounded to float32 (take them from the float32 schedule). ``out`` may be ``sample`` (in place).
    """
    for name, arr in (("sample", sample), ("model_output", model_output)):
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"{name} must be a numpy array, got {type(arr).__name__}")
        if arr.dtype != np.float32:
            raise ValueError(f"{name} must have dtype float32, got {arr.dtype}")
    if sample.shape != model_output.shape:
        raise ValueError(f"sample and model_output shapes differ: {sample.shape} vs {model_output.shape}")
    s = _finite_real("sigma", sigma)
    s_next = _finite_real("sigma_next", sigma_next)
    if out is None:
        out = np.empty(sample.shape, dtype=np.float32)
    elif not isinstance(out, np.ndarray) or out.shape != sample.shape or out.dtype != np.float32:
        raise ValueError(
            f"out must be a float32 numpy array of shape {sample.shape}, got "
            f"{getattr(out, 'shape', type(out).__name__)} {getattr(out, 'dtype', '')}".rstrip()
        )
    elif not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable C-contiguous array")
    _backend("euler")(
        np.ascontiguousarray(sample).reshape(-1),
        np.ascontiguousarray(model_output).reshape(-1),
        s,
        s_next,
        out.reshape(-1),
    )
    return out
