"""_fast.unipc against diffusers' UniPCMultistepScheduler (flow prediction): schedules, the
coefficient table through the scheduler's own ``step`` bookkeeping, the numpy reference, and
negative controls (a pivot-less solve, libm math where torch uses another library)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from _fast import unipc
from _fast.unipc import (COLUMNS, unipc_coefficients, unipc_flow_sigmas, unipc_orders,
                         unipc_step, unipc_step_reference)


def torch_log(a):
    return torch.log(torch.from_numpy(a)).numpy()


def torch_expm1(a):
    return torch.expm1(torch.from_numpy(a)).numpy()


def scheduler(**cfg):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, **cfg)


SCHEDULE_CASES = [
    dict(flow_shift=3.0), dict(flow_shift=5.0), dict(flow_shift=1.0), dict(flow_shift=12.0),
    dict(flow_shift=3.0, final_sigmas_type="sigma_min"),
    dict(use_dynamic_shifting=True, mu=0.8), dict(use_dynamic_shifting=True, mu=1.3,
                                                   time_shift_type="linear"),
    dict(flow_shift=3.0, shift_terminal=0.1), dict(flow_shift=2.0, num_train_timesteps=500),
]


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide")
@pytest.mark.parametrize("cfg", SCHEDULE_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in
                                                                      c.items()))
def test_schedule_matches_set_timesteps(cfg):
    for n in (1, 2, 3, 7, 10, 25, 50):
        sch = scheduler(**{k: v for k, v in cfg.items() if k != "mu"})
        sch.set_timesteps(n, mu=cfg.get("mu"))
        ts, sg = unipc_flow_sigmas(n, **cfg)
        assert ts.dtype == np.int64 and sg.dtype == np.float32
        assert np.array_equal(ts, sch.timesteps.numpy()), (n, ts, sch.timesteps)
        # (one step with shift_terminal divides by zero: NaN on both sides)
        assert np.array_equal(sg, sch.sigmas.numpy(), equal_nan=True), n


def _run_both(n, cfg, *, log=torch_log, expm1=torch_expm1, shape=(1, 3, 2, 4, 4), seed=0):
    """Latents after every step: the scheduler's ``step`` vs the table + fused kernel, fed the
    same random model outputs."""
    kw = {k: v for k, v in cfg.items() if k in ("flow_shift", "final_sigmas_type")}
    sch = scheduler(**cfg)
    sch.set_timesteps(n)
    ts, sg = unipc_flow_sigmas(n, **kw)
    table = unipc_coefficients(
        sg, solver_order=cfg.get("solver_order", 2), solver_type=cfg.get("solver_type", "bh2"),
        lower_order_final=cfg.get("lower_order_final", True),
        disable_corrector=cfg.get("disable_corrector", ()), log=log, expm1=expm1)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    ours = x.numpy().copy()
    last = m1 = m2 = ours
    sch.set_begin_index(0)
    theirs_all, ours_all = [], []
    for i, t in enumerate(sch.timesteps):
        v = rng.standard_normal(shape).astype(np.float32)
        x = sch.step(torch.from_numpy(v), t, x, return_dict=False)[0]
        ours, last, m = unipc_step(table[i], ours, v, last, m1, m2)
        m2, m1 = m1, m
        theirs_all.append(x.numpy().copy())
        ours_all.append(ours)
    return theirs_all, ours_all, table


STEP_CASES = [
    dict(flow_shift=3.0), dict(flow_shift=5.0, solver_type="bh1", final_sigmas_type="sigma_min"),
    dict(flow_shift=3.0, solver_order=1),
    dict(flow_shift=3.0, lower_order_final=False, final_sigmas_type="sigma_min"),
    dict(flow_shift=8.0, disable_corrector=[0, 3]),
]


@pytest.mark.parametrize("cfg", STEP_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in
                                                                  c.items()))
def test_table_and_step_bitwise_with_scheduler_step(cfg):
    for n in (1, 2, 3, 6, 20):
        theirs, ours, _ = _run_both(n, cfg, seed=n)
        for i, (a, b) in enumerate(zip(theirs, ours)):
            assert np.array_equal(a, b), (n, i, float(np.abs(a - b).max()))


def test_orders_follow_the_scheduler():
    sch = scheduler(flow_shift=3.0)
    sch.set_timesteps(6)
    seen = []
    x = torch.zeros(1, 2)
    sch.set_begin_index(0)
    for t in sch.timesteps:
        before = sch.step_index
        x = sch.step(torch.zeros(1, 2), t, x, return_dict=False)[0]
        seen.append((before, sch.this_order))
    p, c = unipc_orders(6, 2, True, ())
    assert [o for _, o in seen] == list(p) == [1, 2, 2, 2, 2, 1]
    assert list(c) == [0, 1, 2, 2, 2, 2]
    assert list(unipc_orders(4, 2, False, (1,))[1]) == [0, 1, 0, 2]


def test_kernel_equals_numpy_reference():
    _, sg = unipc_flow_sigmas(9, flow_shift=3.0)
    table = unipc_coefficients(sg, log=torch_log, expm1=torch_expm1)
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((2, 5, 7)).astype(np.float32) for _ in range(5)]
    for row in table:
        got = unipc_step(row, *arrays)
        want = unipc_step_reference(row, *arrays)
        for a, b in zip(got, want):
            assert np.array_equal(a, b)


def test_negative_control_unpivoted_solve_changes_coefficients():
    """The solve's rounding matters: Gaussian elimination without the pivot swap and with plain
    division gives other ρ bits than the table (which matches the scheduler, above)."""
    n = 30
    _, sg = unipc_flow_sigmas(n, flow_shift=3.0)
    table = unipc_coefficients(sg, log=torch_log, expm1=torch_expm1)
    f = np.float32
    lam = torch_log(f(1) - sg) - torch_log(sg)
    changed = 0
    for i in range(2, n):
        rk, neg = table[i, unipc.C_RK], f(-(lam[i] - lam[i - 1]))
        em1 = torch_expm1(np.array([neg], np.float32))[0]
        hk = em1 / neg - f(1)
        b0, b1 = hk * f(1) / em1, (hk / neg - f(0.5)) * f(2) / em1
        assert unipc._solve2(f(1), f(1), rk, f(1), b0, b1) == (table[i, unipc.C_RHO0],
                                                                table[i, unipc.C_RHOL])
        x1 = (b1 - rk * b0) / (f(1) - rk)       # no pivot, plain division
        x0 = (b0 - x1) / f(1)
        changed += (x0, x1) != (table[i, unipc.C_RHO0], table[i, unipc.C_RHOL])
    assert changed > 0


def test_negative_control_dropping_lower_order_final_is_detected():
    theirs, _, _ = _run_both(6, dict(flow_shift=3.0))
    _, ours, _ = _run_both(6, dict(flow_shift=3.0, lower_order_final=False,
                                   final_sigmas_type="sigma_min"))
    assert not np.array_equal(theirs[-1], ours[-1])


def test_math_library_is_what_matters():
    """On this torch build, libm's log/expm1 disagree with torch's for some inputs (MKL VML in
    the x86 wheels): with libm math the table differs from the scheduler's numbers somewhere."""
    rng = np.random.default_rng(0)
    x = rng.random(20000).astype(np.float32) + np.float32(1e-6)
    if np.array_equal(unipc.libm_log(x), torch_log(x)):
        pytest.skip("this torch build's CPU log is libm's: nothing to tell apart")
    diffs = 0
    for n in (10, 20, 30, 40, 50):
        _, sg = unipc_flow_sigmas(n, flow_shift=3.0)
        diffs += not np.array_equal(unipc_coefficients(sg),
                                    unipc_coefficients(sg, log=torch_log, expm1=torch_expm1))
    assert diffs > 0


def test_validation():
    with pytest.raises(ValueError, match="solver_order"):
        unipc_coefficients(np.array([1, 0.5, 0], np.float32), solver_order=3)
    with pytest.raises(ValueError, match="N\\+1 >= 2"):
        unipc_coefficients(np.array([1], np.float32))
    with pytest.raises(ValueError, match="mu must be given"):
        unipc_flow_sigmas(4, use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="positive integer"):
        unipc_flow_sigmas(0)
    with pytest.raises(ValueError, match="one shape"):
        a = np.zeros(3, np.float32)
        unipc_step(np.zeros(len(COLUMNS), np.float32), a, a, a, a, np.zeros(4, np.float32))


def test_kernel_bodies_without_jit():
    """The kernels' Python bodies (NUMBA_DISABLE_JIT=1) give the same numbers as the JIT (with
    numpy's log/expm1 on both sides: libm through numba exists only under the JIT)."""
    code = (
        "import numpy as np\n"
        "from _fast.unipc import unipc_flow_sigmas, unipc_coefficients, unipc_step\n"
        "ts, sg = unipc_flow_sigmas(7, flow_shift=3.0)\n"
        "t = unipc_coefficients(sg, log=np.log, expm1=np.expm1)\n"
        "a = [np.linspace(-1, 1, 12, dtype=np.float32) * k for k in range(1, 6)]\n"
        "outs = [o.tobytes().hex() for r in t for o in unipc_step(r, *a)]\n"
        "print(ts.tobytes().hex(), sg.tobytes().hex(), t.tobytes().hex(), ''.join(outs))\n")
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    plain = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, check=True,
                           capture_output=True, text=True).stdout
    jit = subprocess.run([sys.executable, "-c", code], cwd=root, check=True,
                         capture_output=True, text=True).stdout
    assert plain == jit and len(plain) > 100
