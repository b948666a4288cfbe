"""Differential tests: _fast.schedules_torch_compat against torch.linspace (CPU float32) and ZImagePipeline's schedule."""
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _fast.schedules import calculate_shift, flow_match_sigmas
from _fast.schedules_torch_compat import _fmaf, torch_linspace_f32, z_image_sigmas
from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas, retrieve_timesteps
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

ROOT = Path(__file__).resolve().parent.parent
CAPABILITY = torch.backends.cpu.get_cpu_capability()
# torch's CPU kernel is built per capability: the AVX2/AVX-512 builds contract into an FMA, DEFAULT does not
TORCH_FMA = {"DEFAULT": False, "AVX2": True, "AVX512": True}.get(CAPABILITY)
needs_known_capability = pytest.mark.skipif(TORCH_FMA is None, reason=f"unmodelled torch CPU capability {CAPABILITY}")
PAIRS = [(1.0, None), (0.0, 1.0), (-3.7, 11.3), (1000.0, 0.0), (0.1, 0.7), (5, -2)]  # None: end = 1/N (Z-Image)
Z_IMAGE_TURBO = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)


def n_examples(default):
    """Hypothesis example count; FAST_TEST_MAX_EXAMPLES caps it (the NUMBA_DISABLE_JIT run sets it)."""
    cap = os.environ.get("FAST_TEST_MAX_EXAMPLES")
    return min(default, int(cap)) if cap else default


def all_n(top=2000):
    """Every N in 1..top; a sparse sample when the kernels run as Python (NUMBA_DISABLE_JIT run)."""
    if os.environ.get("FAST_TEST_MAX_EXAMPLES"):
        return [1, 2, 3, 4, 7, 10, 31, 64, 101, 257]
    return range(1, top + 1)


def bits(a):
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return a.view({4: np.uint32, 8: np.uint64}[a.itemsize])


def assert_same_bits(ours, ref):
    ref = ref.numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape, (ours.dtype, ours.shape, ref.dtype, ref.shape)
    diff = np.flatnonzero(bits(ours) != bits(ref))
    assert diff.size == 0, f"{diff.size} entries differ, first at {diff[0]}: {ours.flat[diff[0]]!r} vs {ref.flat[diff[0]]!r}"


def mismatches(pairs, ns, fma):
    bad = []
    for start, end in pairs:
        for n in ns:
            e = 1 / n if end is None else end
            ref = torch.linspace(start, e, n, dtype=torch.float32).numpy()
            if not np.array_equal(bits(torch_linspace_f32(start, e, n, fma=fma)), bits(ref)):
                bad.append((start, end, n))
    return bad


# --- torch.linspace ------------------------------------------------------------------------------


@needs_known_capability
def test_linspace_every_n_to_2000():
    assert mismatches(PAIRS, all_n(), TORCH_FMA) == []


@needs_known_capability
@settings(max_examples=n_examples(200), deadline=None)
@given(
    start=st.floats(-1e6, 1e6, allow_subnormal=False) | st.floats(-1.0, 1.0),
    end=st.floats(-1e6, 1e6, allow_subnormal=False) | st.floats(-1.0, 1.0),
    n=st.integers(0, 3000),
)
def test_linspace_random_ranges(start, end, n):
    assert_same_bits(torch_linspace_f32(start, end, n, fma=TORCH_FMA), torch.linspace(start, end, n, dtype=torch.float32))


@needs_known_capability
def test_linspace_integer_and_numpy_arguments():
    for start, end, n in [(0, 10, 7), (np.float32(0.3), np.float64(2.9), 13), (np.int64(-4), 3.5, 9), (2, 2, 5)]:
        ref = torch.linspace(float(start), float(end), n, dtype=torch.float32)
        assert_same_bits(torch_linspace_f32(start, end, n, fma=TORCH_FMA), ref)
    out = np.empty(11, np.float32)
    assert torch_linspace_f32(1.0, 0.1, 11, fma=TORCH_FMA, out=out) is out
    assert_same_bits(out, torch.linspace(1.0, 0.1, 11, dtype=torch.float32))
    assert torch_linspace_f32(1.0, 0.0, 0).shape == (0,)


def test_linspace_default_capability_without_fma():
    """ATEN_CPU_CAPABILITY=default selects torch's non-FMA kernel build: fma=False must match it, fma=True not."""
    code = (
        "import sys, numpy as np, torch\n"
        "from _fast.schedules_torch_compat import torch_linspace_f32\n"
        "assert torch.backends.cpu.get_cpu_capability() == 'DEFAULT'\n"
        "diff = {True: 0, False: 0}\n"
        f"for n in {list(all_n(600))!r}:\n"
        "    ref = torch.linspace(1.0, 1 / n, n, dtype=torch.float32).numpy().view(np.uint32)\n"
        "    for fma in diff:\n"
        "        diff[fma] += not np.array_equal(torch_linspace_f32(1.0, 1 / n, n, fma=fma).view(np.uint32), ref)\n"
        "print(diff[False], diff[True])\n"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    no_fma_diff, fma_diff = map(int, proc.stdout.split())
    assert no_fma_diff == 0
    assert fma_diff > 0  # negative control: the two builds really differ


@needs_known_capability
def test_numpy_linspace_differs_where_the_spec_says():
    """Negative control: float32(np.linspace) is not torch's linspace for N = 3, 6, 7, 10-15, ..."""
    differ = [n for n in range(1, 32)
              if not np.array_equal(bits(np.linspace(1.0, 1 / n, n).astype(np.float32)), bits(torch_linspace_f32(1.0, 1 / n, n)))]
    assert {3, 6, 7, 10, 15, 18, 31} <= set(differ)


# --- the exact float32 FMA -------------------------------------------------------------------------


def exact_fmaf(a, b, c):
    """Correctly rounded float32(a*b + c) from exact rationals (ties to even)."""
    q = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    if q == 0:  # the sign of an exact zero: IEEE rules, which float64 arithmetic follows exactly here
        return np.float32(float(a) * float(b) + float(c))
    r = np.float32(float(q))  # within one float32 ulp of q; pick the nearest of r and its neighbours
    cands = [np.nextafter(r, np.float32(-np.inf)), r, np.nextafter(r, np.float32(np.inf))]
    cands = [x for x in cands if np.isfinite(x)]
    best = min(cands, key=lambda x: (abs(Fraction(float(x)) - q), int(np.float32(x).view(np.uint32)) & 1))
    return np.float32(best)


f32s = st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-(2.0**60), max_value=2.0**60)


@settings(max_examples=n_examples(300), deadline=None)
@given(a=f32s, b=f32s, c=f32s)
def test_fmaf_is_correctly_rounded(a, b, c):
    a, b, c = np.float32(a), np.float32(b), np.float32(c)
    assert bits(np.array([_fmaf(a, b, c)], np.float32)) == bits(np.array([exact_fmaf(a, b, c)], np.float32))


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("scale", [1.0, 2.0**-20, 2.0**30])
def test_fmaf_double_rounding_midpoints(sign, scale):
    """a*b = 1 + 2**-24 exactly (a float32 midpoint); a tiny c decides the direction.

    Rounding the float64 sum to float32 gives 1.0 both ways (ties to even); the exact result does not.
    """
    a = np.float32(97 * 257 * scale)
    b = np.float32(673 * 2.0**-24 * sign)
    for tiny in (2.0**-60, -(2.0**-60)):
        c = np.float32(tiny * scale * sign)
        got = _fmaf(a, b, c)
        assert got == exact_fmaf(a, b, c)
        naive = np.float32(float(a) * float(b) + float(c))
        if tiny > 0:
            assert got != naive  # the double-rounding case is really exercised
    assert _fmaf(a, b, np.float32(0.0)) == np.float32((1 + 2.0**-24) * scale * sign)  # exact tie: to even


# --- Z-Image schedule ------------------------------------------------------------------------------


def z_reference(config, n, mu):
    sched = FlowMatchEulerDiscreteScheduler(**config)
    retrieve_timesteps(sched, n, "cpu", sigmas=get_default_z_image_sigmas(n), mu=mu)
    return sched


@needs_known_capability
@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 9, 10, 28, 50, 100])
@pytest.mark.parametrize("seq", [256, 1024, 4096])
def test_z_image_turbo_schedule(n, seq):
    sched = z_reference(Z_IMAGE_TURBO, n, calculate_shift(seq))
    timesteps, sigmas = z_image_sigmas(n, fma=TORCH_FMA)
    assert_same_bits(timesteps, sched.timesteps)
    assert_same_bits(sigmas, sched.sigmas)


@needs_known_capability
@settings(max_examples=n_examples(60), deadline=None)
@given(
    n=st.integers(1, 120),
    shift=st.sampled_from([1.0, 3.0, 6.0]) | st.floats(0.5, 8.0),
    dynamic=st.booleans(),
    seq=st.integers(64, 16384),
    terminal=st.sampled_from([None, 0.02]),
)
def test_z_image_schedule_configs(n, shift, dynamic, seq, terminal):
    config = dict(num_train_timesteps=1000, shift=shift, use_dynamic_shifting=dynamic, shift_terminal=terminal)
    mu = calculate_shift(seq)
    with np.errstate(all="ignore"):  # N=1 with shift_terminal divides 0 by 0 (NaN on both sides)
        sched = z_reference(config, n, mu)
        timesteps, sigmas = z_image_sigmas(n, shift, use_dynamic_shifting=dynamic, mu=mu, shift_terminal=terminal,
                                           fma=TORCH_FMA)
    assert_same_bits(timesteps, sched.timesteps)
    assert_same_bits(sigmas, sched.sigmas)


@needs_known_capability
def test_z_image_numpy_base_would_be_caught():
    """Negative control (spec §6): the FLUX-style np.linspace base gives other sigmas for N = 10."""
    ours = z_image_sigmas(10, fma=TORCH_FMA)[1]
    flux_style = flow_match_sigmas(10, shift=3.0)[1]
    assert not np.array_equal(bits(ours), bits(flux_style))
    assert_same_bits(ours, z_reference(Z_IMAGE_TURBO, 10, 0.5).sigmas)


def test_z_image_custom_sigmas_pass_through():
    custom = [1.0, 0.7, 0.3]
    a = z_image_sigmas(None, sigmas=custom)
    b = flow_match_sigmas(3, shift=3.0, sigmas=custom)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: torch_linspace_f32("0", 1.0, 3), "start must be a real number, got '0'"),
        (lambda: torch_linspace_f32(0.0, True, 3), "end must be a real number, got True"),
        (lambda: torch_linspace_f32(float("nan"), 1.0, 3), "start must be finite, got nan"),
        (lambda: torch_linspace_f32(0.0, float("inf"), 3), "end must be finite, got inf"),
        (lambda: torch_linspace_f32(0.0, 1e39, 3), "end=1e\\+39 overflows float32"),
        (lambda: torch_linspace_f32(2**60, 1.0, 3), "start must be below 2\\*\\*53 in magnitude"),
        (lambda: torch_linspace_f32(0.0, 1.0, -1), "steps must be a non-negative integer, got -1"),
        (lambda: torch_linspace_f32(0.0, 1.0, 3.0), "steps must be a non-negative integer, got 3.0"),
        (lambda: torch_linspace_f32(0.0, 1.0, 2**24 + 1), "steps must be at most 2\\*\\*24"),
        (lambda: torch_linspace_f32(0.0, 1.0, 3, out=np.empty(3, np.float64)), r"out must be a float32 numpy array of shape \(3,\)"),
        (lambda: torch_linspace_f32(0.0, 1.0, 3, out=np.empty(6, np.float32)[::2]), "writeable C-contiguous"),
        (lambda: z_image_sigmas(0), "num_inference_steps must be a positive integer, got 0"),
        (lambda: z_image_sigmas(None), "num_inference_steps must be a positive integer, got None"),
        (lambda: z_image_sigmas(4, use_dynamic_shifting=True), "mu must be given when use_dynamic_shifting=True"),
        (lambda: z_image_sigmas(4, sigmas=[1.0, 0.5]), "must equal len\\(sigmas\\)=2"),
    ],
)
def test_validation_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
