"""UniPC multistep with flow prediction (what Wan's checkpoints ship), bit for bit with diffusers'
``UniPCMultistepScheduler`` (0.42.1) on CPU float32: the flow schedule, a per-step coefficient
table and the fused predictor-corrector step. Plain numpy in and out; no torch.

Schedule (``use_flow_sigmas=True``): ``np.linspace(1, 1/T, N+1)[:-1]`` in float64, shifted in
float64 (static ``flow_shift·s/(1 + (flow_shift−1)·s)``, or dynamic with ``mu``), an optional
``shift_terminal`` stretch, ``s[0] −= 1e-6`` when it is within 1e-6 of 1; timesteps are
``s·T`` truncated to int64 (the pipeline feeds the transformer these integers), sigmas the float32
cast of ``s`` with 0 (or ``s[-1]``) appended.

Coefficients: the scheduler recomputes, at every step, λ = log(α) − log(σ) with α = 1 − σ, the
step h, ``expm1(−h)`` and (order 2 corrector) a 2×2 ``torch.linalg.solve``. Everything but the two
transcendental functions is float32 arithmetic reproduced here (the solve as LAPACK's partially
pivoted LU with reciprocal diagonal in the back substitution, as MKL's sgesv rounds it). ``log``
and ``expm1`` are the only operations whose bits depend on the torch build's math library (MKL VML
in the x86 wheels, SLEEF or libm elsewhere): the caller may pass torch's own as plain
``float32 array -> float32 array`` callables; the default is libm through numba.

Table columns (float32, one row per step, ``COLUMNS`` names them): the convert sigma, the
corrector's and the predictor's ``x`` factor (σ_t/σ_s0), model factor (α_t·hφ₁), residual factor
(α_t·B(h)), rk and ρ values, and both orders (0: no corrector).
"""
import math

import numpy as np
from numba import njit

__all__ = ["unipc_flow_sigmas", "unipc_orders", "unipc_coefficients", "unipc_step",
           "unipc_step_reference", "COLUMNS", "libm_log", "libm_expm1"]

#: Column names of the coefficient table.
COLUMNS = ("sigma", "c_x", "c_m", "c_b", "c_rk", "c_rho0", "c_rho_last",
           "p_x", "p_m", "p_b", "p_rk", "p_rho", "p_order", "c_order")
(SIGMA, C_X, C_M, C_B, C_RK, C_RHO0, C_RHOL, P_X, P_M, P_B, P_RK, P_RHO, P_ORDER,
 C_ORDER) = range(len(COLUMNS))


# --------------------------------------------------------------------------------------------------
# schedule


@njit(cache=True, error_model="numpy")
def _flow_sigmas(n, num_train, dynamic, exponential, mu, flow_shift, use_terminal, terminal, eps,
                 final_min, timesteps, sigmas):
    """float64 flow sigmas of ``set_timesteps`` (see the module notes) into the two outputs."""
    work = np.empty(n, dtype=np.float64)
    start = 1.0
    stop = 1.0 / num_train
    step = (stop - start) / n              # linspace(1, 1/T, n + 1): div = n
    for i in range(n):                     # y = arange * step; y += start (two roundings)
        work[i] = i * step + start
    if dynamic:
        a = math.exp(mu) if exponential else mu
        for i in range(n):
            work[i] = a / (a + (1.0 / work[i] - 1.0))
    else:
        shift_m1 = flow_shift - 1.0
        for i in range(n):
            s = work[i]
            work[i] = flow_shift * s / (1.0 + shift_m1 * s)
    if use_terminal:
        scale = (1.0 - work[n - 1]) / (1.0 - terminal)
        for i in range(n):
            work[i] = 1.0 - ((1.0 - work[i]) / scale)
    if abs(work[0] - 1.0) < eps:
        work[0] -= eps
    for i in range(n):
        timesteps[i] = np.int64(work[i] * num_train)   # float64 → int64 truncates, as torch's .to
        sigmas[i] = np.float32(work[i])
    sigmas[n] = np.float32(work[n - 1]) if final_min else np.float32(0.0)


def unipc_flow_sigmas(num_inference_steps, *, flow_shift=1.0, num_train_timesteps=1000,
                      use_dynamic_shifting=False, mu=None, time_shift_type="exponential",
                      shift_terminal=None, final_sigmas_type="zero"):
    """(timesteps int64 (N,), sigmas float32 (N+1,)) as ``UniPCMultistepScheduler(
    use_flow_sigmas=True, ...).set_timesteps(N, mu=mu)`` makes them."""
    n = int(num_inference_steps)
    if n < 1 or n != num_inference_steps:
        raise ValueError(f"num_inference_steps must be a positive integer, got "
                         f"{num_inference_steps!r}")
    if time_shift_type not in ("exponential", "linear"):
        raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got "
                         f"{time_shift_type!r}")
    if final_sigmas_type not in ("zero", "sigma_min"):
        raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got "
                         f"{final_sigmas_type!r}")
    if use_dynamic_shifting and mu is None:
        raise ValueError("mu must be given when use_dynamic_shifting is on")
    timesteps = np.empty(n, dtype=np.int64)
    sigmas = np.empty(n + 1, dtype=np.float32)
    _flow_sigmas(n, float(int(num_train_timesteps)), bool(use_dynamic_shifting),
                 time_shift_type == "exponential", float(mu or 0.0), float(flow_shift),
                 bool(shift_terminal), float(shift_terminal or 0.0), 1e-6,
                 final_sigmas_type == "sigma_min", timesteps, sigmas)
    return timesteps, sigmas


# --------------------------------------------------------------------------------------------------
# orders and coefficients


def unipc_orders(num_steps, solver_order=2, lower_order_final=True, disable_corrector=()):
    """(predictor order, corrector order) per step as ``step()`` picks them: warm-up from order 1,
    lower orders at the end (``lower_order_final``); the corrector at step i runs with the
    predictor order of step i−1, unless i−1 is in ``disable_corrector`` (0: none)."""
    n = int(num_steps)
    p = np.empty(n, dtype=np.int64)
    c = np.zeros(n, dtype=np.int64)
    for i in range(n):
        order = min(solver_order, n - i) if lower_order_final else solver_order
        p[i] = min(order, i + 1)            # lower_order_nums + 1 (warm-up)
        if i > 0 and (i - 1) not in disable_corrector:
            c[i] = p[i - 1]
    return p, c


@njit(cache=True, error_model="numpy")
def _lambda_args(sigmas, alpha):
    """α = 1 − σ (float32), the argument of the scheduler's first log."""
    for k in range(sigmas.shape[0]):
        alpha[k] = np.float32(1.0) - sigmas[k]


@njit(cache=True, error_model="numpy")
def _neg_h(log_alpha, log_sigma, lam, hh):
    """λ_k = log α_k − log σ_k and hh_k = −(λ_{k+1} − λ_k), float32."""
    for k in range(lam.shape[0]):
        lam[k] = log_alpha[k] - log_sigma[k]
    for k in range(hh.shape[0]):
        hh[k] = -(lam[k + 1] - lam[k])


@njit(cache=True, error_model="numpy")
def _solve2(a00, a01, a10, a11, b0, b1):
    """2×2 ``linalg.solve`` as MKL's sgesv rounds it: partial pivoting, l = a10/a00, plain
    elimination, back substitution multiplying by the reciprocal of each pivot."""
    if abs(a10) > abs(a00):
        a00, a01, a10, a11 = a10, a11, a00, a01
        b0, b1 = b1, b0
    one = np.float32(1.0)
    l = a10 / a00
    u11 = a11 - l * a01
    y1 = b1 - l * b0
    x1 = y1 * (one / u11)
    x0 = (b0 - a01 * x1) * (one / a00)
    return x0, x1


@njit(cache=True, error_model="numpy")
def _table(sigmas, lam, hh, em1, p_order, c_order, bh1, out):
    """The coefficient table (see ``COLUMNS``) from λ, −h and expm1(−h), float32 throughout."""
    one = np.float32(1.0)
    half = np.float32(0.5)
    n = out.shape[0]
    for i in range(n):
        out[i, :] = np.float32(0.0)
        out[i, SIGMA] = sigmas[i]
        # predictor: t = i + 1, s0 = i
        t = i + 1
        alpha_t = one - sigmas[t]
        h_phi_1 = em1[i]
        b_h = hh[i] if bh1 else em1[i]
        out[i, P_X] = sigmas[t] / sigmas[i]
        out[i, P_M] = alpha_t * h_phi_1
        out[i, P_B] = alpha_t * b_h
        out[i, P_ORDER] = p_order[i]
        if p_order[i] == 2:
            h = lam[t] - lam[i]
            out[i, P_RK] = (lam[i - 1] - lam[i]) / h
            out[i, P_RHO] = half
        # corrector: t = i, s0 = i - 1 (s1 = i - 2 at order 2)
        c = c_order[i]
        out[i, C_ORDER] = c
        if c == 0:
            continue
        s0 = i - 1
        alpha_t = one - sigmas[i]
        h = lam[i] - lam[s0]
        neg = hh[s0]
        h_phi_1 = em1[s0]
        b_h = neg if bh1 else em1[s0]
        out[i, C_X] = sigmas[i] / sigmas[s0]
        out[i, C_M] = alpha_t * h_phi_1
        out[i, C_B] = alpha_t * b_h
        if c == 1:
            out[i, C_RHOL] = half
        else:
            rk = (lam[i - 2] - lam[s0]) / h
            h_phi_k = h_phi_1 / neg - one
            b0 = h_phi_k * one / b_h
            h_phi_k = h_phi_k / neg - half
            b1 = h_phi_k * np.float32(2.0) / b_h
            x0, x1 = _solve2(one, one, rk, one, b0, b1)
            out[i, C_RK] = rk
            out[i, C_RHO0] = x0
            out[i, C_RHOL] = x1


@njit(cache=True, error_model="numpy")
def _libm_log(x, out):
    for i in range(x.shape[0]):
        out[i] = math.log(x[i])


@njit(cache=True, error_model="numpy")
def _libm_expm1(x, out):
    for i in range(x.shape[0]):
        out[i] = math.expm1(x[i])


def libm_log(x):
    """float32 ``log`` through libm (``logf``), elementwise."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    _libm_log(x, out)
    return out


def libm_expm1(x):
    """float32 ``expm1`` through libm (``expm1f``), elementwise."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    _libm_expm1(x, out)
    return out


def _f32_map(fn, x, name):
    y = np.ascontiguousarray(fn(x), dtype=np.float32)
    if y.shape != x.shape:
        raise ValueError(f"{name} returned shape {y.shape} for an input of shape {x.shape}")
    return y


def unipc_coefficients(sigmas, *, solver_order=2, solver_type="bh2", lower_order_final=True,
                       disable_corrector=(), log=None, expm1=None):
    """The float32 coefficient table (N, len(COLUMNS)) of an N-step flow schedule (``sigmas``
    float32 (N+1,)), the numbers ``UniPCMultistepScheduler.step`` computes at each step.

    ``log`` / ``expm1``: float32 array → float32 array (default: libm); pass torch's own for the
    bits of a torch build whose CPU math differs (see the module notes).
    """
    sigmas = np.ascontiguousarray(sigmas, dtype=np.float32)
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be a 1-D float32 array of N+1 >= 2 values, got shape "
                         f"{sigmas.shape}")
    if solver_order not in (1, 2):
        raise ValueError(f"solver_order {solver_order!r} is not supported (1 or 2)")
    if solver_type not in ("bh1", "bh2"):
        raise ValueError(f"solver_type must be 'bh1' or 'bh2', got {solver_type!r}")
    n = sigmas.shape[0] - 1
    p_order, c_order = unipc_orders(n, solver_order, lower_order_final, tuple(disable_corrector))
    alpha = np.empty_like(sigmas)
    _lambda_args(sigmas, alpha)
    log = log or libm_log
    log_alpha = _f32_map(log, alpha, "log")
    log_sigma = _f32_map(log, sigmas, "log")
    lam = np.empty(n + 1, dtype=np.float32)
    hh = np.empty(n, dtype=np.float32)
    _neg_h(log_alpha, log_sigma, lam, hh)
    em1 = _f32_map(expm1 or libm_expm1, hh, "expm1")
    out = np.empty((n, len(COLUMNS)), dtype=np.float32)
    _table(sigmas, lam, hh, em1, p_order, c_order, solver_type == "bh1", out)
    return out


# --------------------------------------------------------------------------------------------------
# the step


@njit(cache=True, error_model="numpy")
def _step(coef, x, v, last, m1, m2, out_x, out_last, out_m):
    """One fused step (convert, corrector, predictor) over flat float32 arrays; the operation
    order and roundings of the scheduler's tensor expressions."""
    zero = np.float32(0.0)
    sig = coef[SIGMA]
    c = int(coef[C_ORDER])
    p = int(coef[P_ORDER])
    cx, cm, cb, crk, c0, cl = coef[C_X], coef[C_M], coef[C_B], coef[C_RK], coef[C_RHO0], coef[C_RHOL]
    px, pm, pb, prk, prho = coef[P_X], coef[P_M], coef[P_B], coef[P_RK], coef[P_RHO]
    p_zero = pb * zero                 # ``alpha_t * B_h * 0`` (pred_res = 0 at order 1)
    for j in range(x.shape[0]):
        m = x[j] - sig * v[j]          # flow_prediction: x0 = sample − σ·v
        if c > 0:
            base = cx * last[j] - cm * m1[j]
            corr = c0 * ((m2[j] - m1[j]) / crk) if c == 2 else zero
            xc = base - cb * (corr + cl * (m - m1[j]))
        else:
            xc = x[j]
        base = px * xc - pm * m
        if p == 2:
            xn = base - pb * (prho * ((m1[j] - m) / prk))
        else:
            xn = base - p_zero
        out_x[j] = xn
        out_last[j] = xc
        out_m[j] = m


def unipc_step(coef_row, sample, model_output, last_sample, m_prev, m_prev2):
    """One UniPC step on float32 arrays of one shape: ``(next sample, corrected sample,
    converted model output)``. ``m_prev`` / ``m_prev2`` are the converted outputs of the two
    previous steps and ``last_sample`` the previous step's corrected sample (ignored when the
    row's orders do not use them; pass ``sample`` then)."""
    arrays = [np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
              for a in (sample, model_output, last_sample, m_prev, m_prev2)]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError("sample, model_output, last_sample and previous outputs must have one "
                         "shape")
    row = np.ascontiguousarray(coef_row, dtype=np.float32)
    if row.shape != (len(COLUMNS),):
        raise ValueError(f"a coefficient row has {len(COLUMNS)} values, got {row.shape}")
    outs = [np.empty_like(arrays[0]) for _ in range(3)]
    _step(row, *arrays, *outs)
    shape = np.shape(sample)
    return tuple(o.reshape(shape) for o in outs)


def unipc_step_reference(coef_row, sample, model_output, last_sample, m_prev, m_prev2):
    """The same step in plain numpy float32 (slow, obviously ordered): the kernel's reference."""
    f = np.float32
    r = [f(v) for v in coef_row]
    x, v, last, m1, m2 = (np.asarray(a, dtype=np.float32) for a in
                          (sample, model_output, last_sample, m_prev, m_prev2))
    m = x - r[SIGMA] * v
    c, p = int(r[C_ORDER]), int(r[P_ORDER])
    if c > 0:
        corr = r[C_RHO0] * ((m2 - m1) / r[C_RK]) if c == 2 else f(0)
        xc = (r[C_X] * last - r[C_M] * m1) - r[C_B] * (corr + r[C_RHOL] * (m - m1))
    else:
        xc = x
    base = r[P_X] * xc - r[P_M] * m
    if p == 2:
        xn = base - r[P_B] * (r[P_RHO] * ((m1 - m) / r[P_RK]))
    else:
        xn = base - r[P_B] * f(0)
    return xn.astype(np.float32), xc.astype(np.float32), m.astype(np.float32)
