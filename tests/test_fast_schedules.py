"""Differential tests: _fast.schedules against diffusers' FlowMatchEulerDiscreteScheduler and pipelines."""
import math
import os
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _fast.schedules import calculate_shift, empirical_mu, euler_step, flow_match_sigmas, trim_for_strength
from diffusers.pipelines.flux.pipeline_flux import calculate_shift as ref_calculate_shift
from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps
from diffusers.pipelines.flux.pipeline_flux_img2img import FluxImg2ImgPipeline
from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

FLUX_DEV = dict(
    use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
    max_image_seq_len=4096, shift=3.0, time_shift_type="exponential",
)
QWEN_IMAGE = dict(
    use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
    max_image_seq_len=8192, shift=1.0, shift_terminal=0.02, time_shift_type="exponential",
)
# keys of the scheduler config that flow_match_sigmas takes (the rest only feed calculate_shift)
OURS = ("shift", "use_dynamic_shifting", "time_shift_type", "shift_terminal", "invert_sigmas",
        "num_train_timesteps", "use_karras_sigmas", "use_exponential_sigmas")


def n_examples(default):
    """Hypothesis example count; FAST_TEST_MAX_EXAMPLES caps it (the NUMBA_DISABLE_JIT run sets it)."""
    cap = os.environ.get("FAST_TEST_MAX_EXAMPLES")
    return min(default, int(cap)) if cap else default


def bits(a):
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return a.view({4: np.uint32, 8: np.uint64}[a.itemsize])


def assert_same_bits(ours, ref):
    ref = ref.numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape, (ours.dtype, ours.shape, ref.dtype, ref.shape)
    diff = np.flatnonzero(bits(ours) != bits(ref))
    assert diff.size == 0, f"{diff.size} entries differ, first at {diff[0]}: {ours.flat[diff[0]]!r} vs {ref.flat[diff[0]]!r}"


def reference(config, n, mu=None, sigmas=None):
    """What a FLUX-family pipeline does: retrieve_timesteps with the np.linspace base sigmas."""
    sched = FlowMatchEulerDiscreteScheduler(**config)
    if sigmas is None:
        sigmas = np.linspace(1.0, 1 / n, n)
    with np.errstate(all="ignore"):
        retrieve_timesteps(sched, None, "cpu", sigmas=sigmas, mu=mu)
    return sched


def ours(config, n, mu=None, sigmas=None):
    kw = {k: v for k, v in config.items() if k in OURS}
    with np.errstate(all="ignore"):
        return flow_match_sigmas(n, mu=mu, sigmas=sigmas, **kw)


def check(config, n, mu=None, sigmas=None):
    sched = reference(config, n, mu, sigmas)
    timesteps, sigmas_out = ours(config, n, mu, sigmas)
    assert_same_bits(timesteps, sched.timesteps)
    assert_same_bits(sigmas_out, sched.sigmas)
    return timesteps, sigmas_out


# --- reference values from the spec ----------------------------------------------------------------


def test_flux_dev_1024_four_steps():
    mu = calculate_shift(4096)
    timesteps, sigmas = check(FLUX_DEV, 4, mu)
    assert timesteps.tolist() == np.array([1000, 904.53076, 759.5109, 512.8441], np.float32).tolist()
    assert sigmas.shape == (5,) and sigmas[-1] == 0.0 and sigmas.dtype == np.float32


def test_calculate_shift_reference_values():
    assert calculate_shift(4096) == pytest.approx(1.15)  # 1024² -> (128/2)*(128/2) packed tokens
    assert calculate_shift(1024) == pytest.approx(0.63)  # 512²
    assert calculate_shift(16384) == pytest.approx(3.23)  # 2048²: not clamped to max_shift
    for seq in (256, 1024, 4096, 16384):
        assert calculate_shift(seq) == ref_calculate_shift(seq)


def test_empirical_mu_reference_values():
    assert empirical_mu(4096, 4) == pytest.approx(2.2912, abs=1e-4)
    assert empirical_mu(4096, 28) == pytest.approx(2.1514, abs=1e-4)
    assert empirical_mu(4096, 50) == pytest.approx(2.0234, abs=1e-4)
    assert empirical_mu(8192, 4) == empirical_mu(8192, 50) == compute_empirical_mu(8192, 4)  # > 4300: no N term


@pytest.mark.parametrize("n, strength, keep", [(50, 0.6, 30), (10, 0.25, 3), (28, 1.0, 28), (4, 0.3, 2), (4, 0.01, 1)])
def test_trim_for_strength_reference_values(n, strength, keep):
    timesteps, sigmas = flow_match_sigmas(n, use_dynamic_shifting=True, mu=1.15, shift=3.0)
    t, s, t_start = trim_for_strength(timesteps, sigmas, n, strength)
    assert len(t) == keep and len(s) == keep + 1 and t_start == n - keep
    assert np.array_equal(t, timesteps[t_start:]) and np.array_equal(s, sigmas[t_start:])


def test_trim_for_strength_zero_steps_error():
    timesteps, sigmas = flow_match_sigmas(10)
    with pytest.raises(ValueError, match=r"strength=0.0 leaves 0 of 10 denoising steps"):
        trim_for_strength(timesteps, sigmas, 10, 0.0)
    with pytest.raises(ValueError, match=r"strength=1e-20 leaves 0 of 10 denoising steps"):
        trim_for_strength(timesteps, sigmas, 10, 1e-20)


# --- schedules against the scheduler --------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 20, 28, 50, 100])
@pytest.mark.parametrize("seq", [256, 1024, 4096, 16384])
def test_flux_dev_sweep(n, seq):
    check(FLUX_DEV, n, calculate_shift(seq))


@pytest.mark.parametrize("n", [1, 4, 28, 50])
def test_flux2_empirical_mu(n):
    config = dict(FLUX_DEV, shift=1.0)
    check(config, n, empirical_mu(4096, n))


@pytest.mark.parametrize("n", [1, 4, 20, 50])
@pytest.mark.parametrize("seq", [1024, 4096, 6144])
def test_qwen_image_shift_terminal(n, seq):
    mu = calculate_shift(seq, 256, 8192, 0.5, 0.9)
    timesteps, sigmas = check(QWEN_IMAGE, n, mu)
    if n > 1:
        assert sigmas[n - 1] == pytest.approx(0.02, abs=1e-6)


@pytest.mark.parametrize("n", [1, 5, 30])
def test_linear_static_invert_and_custom(n):
    check(dict(FLUX_DEV, time_shift_type="linear"), n, 1.15)
    check(dict(shift=3.0), n)  # static shift, mu ignored
    check(dict(shift=1.0), n)
    check(dict(shift=3.0, invert_sigmas=True), n)
    custom = np.linspace(1.0, 0.05, n) ** 2
    check(FLUX_DEV, n, 0.8, sigmas=custom.tolist())
    check(dict(shift=1.7), n, sigmas=custom)


@pytest.mark.parametrize("kind", ["use_karras_sigmas", "use_exponential_sigmas"])
@pytest.mark.parametrize("n", [1, 2, 9, 28])
def test_respacing(kind, n):
    check(dict(FLUX_DEV, **{kind: True}), n, 1.15)
    check(dict(QWEN_IMAGE, **{kind: True}), n, 0.7)
    check(dict(shift=3.0, invert_sigmas=True, **{kind: True}), n)


def test_mu_is_ignored_without_dynamic_shifting():
    a = flow_match_sigmas(12, shift=2.5)
    b = flow_match_sigmas(12, shift=2.5, mu=7.0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_num_inference_steps_may_be_none_with_custom_sigmas():
    t1, s1 = flow_match_sigmas(None, sigmas=[1.0, 0.6, 0.2], shift=2.0)
    t2, s2 = flow_match_sigmas(3, sigmas=np.array([1.0, 0.6, 0.2], np.float32), shift=2.0)
    assert np.array_equal(t1, t2) and np.array_equal(s1, s2)


@st.composite
def scheduler_case(draw):
    n = draw(st.integers(1, 100))
    dynamic = draw(st.booleans())
    tst = draw(st.sampled_from(["exponential", "linear"]))
    config = dict(
        use_dynamic_shifting=dynamic,
        time_shift_type=tst,
        shift=draw(st.one_of(st.sampled_from([1.0, 3.0, 1.1, 7.0]), st.floats(0.05, 12.0))),
        shift_terminal=draw(st.one_of(st.none(), st.just(0.02), st.floats(0.001, 0.6))),
        invert_sigmas=draw(st.booleans()),
        num_train_timesteps=draw(st.one_of(st.just(1000), st.integers(1, 5000))),
    )
    respace = draw(st.sampled_from([None, None, "use_karras_sigmas", "use_exponential_sigmas"]))
    if respace:
        config[respace] = True
    if dynamic:
        lo = -3.0 if tst == "exponential" else 0.05
        mu = draw(st.one_of(st.floats(lo, 5.0), st.builds(calculate_shift, st.integers(1, 20000))))
    else:
        mu = None
    sigmas = None
    if draw(st.booleans()):
        sigmas = sorted(draw(st.lists(st.floats(0.001, 1.0), min_size=n, max_size=n)), reverse=True)
    return config, n, mu, sigmas


@settings(max_examples=n_examples(300), deadline=None)
@given(case=scheduler_case())
def test_random_scheduler_configs(case):
    config, n, mu, sigmas = case
    check(config, n, mu, sigmas)


def test_shifting_in_float64_would_be_caught():
    """Negative control: skipping the float32 cast before the shift changes bits for some N."""
    mismatched = []
    for n in range(1, 51):
        sched = reference(FLUX_DEV, n, 1.15)
        base = np.linspace(1.0, 1 / n, n)  # float64, NOT cast first
        wrong = (math.exp(1.15) / (math.exp(1.15) + (1 / base - 1))).astype(np.float32)
        if not np.array_equal(bits(wrong), bits(sched.sigmas[:-1])):
            mismatched.append(n)
        assert np.array_equal(bits(flow_match_sigmas(n, use_dynamic_shifting=True, mu=1.15)[1]), bits(sched.sigmas))
    assert mismatched, "float64 shifting matched everywhere: the differential setup would not see the mistake"


# --- mu ---------------------------------------------------------------------------------------------


@settings(max_examples=n_examples(200), deadline=None)
@given(
    seq=st.integers(1, 100000),
    base=st.integers(1, 2048),
    span=st.integers(1, 16384),
    base_shift=st.floats(-2, 3),
    max_shift=st.floats(-2, 5),
)
def test_calculate_shift_matches_diffusers(seq, base, span, base_shift, max_shift):
    ours_mu = calculate_shift(seq, base, base + span, base_shift, max_shift)
    ref = ref_calculate_shift(seq, base, base + span, base_shift, max_shift)
    assert type(ours_mu) is float and bits(np.float64(ours_mu)) == bits(np.float64(ref))


@settings(max_examples=n_examples(200), deadline=None)
@given(seq=st.integers(1, 20000), steps=st.integers(1, 200))
def test_empirical_mu_matches_diffusers(seq, steps):
    ours_mu = empirical_mu(seq, steps)
    assert type(ours_mu) is float and bits(np.float64(ours_mu)) == bits(np.float64(compute_empirical_mu(seq, steps)))


# --- img2img trimming ---------------------------------------------------------------------------------


@settings(max_examples=n_examples(150), deadline=None)
@given(n=st.integers(1, 100), strength=st.floats(0.0, 1.0))
def test_trim_for_strength_matches_get_timesteps(n, strength):
    sched = reference(FLUX_DEV, n, 1.15)
    ref_t, ref_n = FluxImg2ImgPipeline.get_timesteps(types.SimpleNamespace(scheduler=sched), n, strength, "cpu")
    timesteps, sigmas = flow_match_sigmas(n, use_dynamic_shifting=True, mu=1.15)
    if ref_n < 1:  # FluxImg2ImgPipeline raises here too
        with pytest.raises(ValueError, match="denoising steps"):
            trim_for_strength(timesteps, sigmas, n, strength)
        return
    t, s, t_start = trim_for_strength(timesteps, sigmas, n, strength)
    assert t_start == sched.begin_index and len(t) == ref_n
    assert_same_bits(t, ref_t)
    assert_same_bits(s, sched.sigmas[t_start:])


# --- Euler step ------------------------------------------------------------------------------------


def run_euler(n, shape, seed, mu=1.15):
    sched = reference(FLUX_DEV, n, mu)
    timesteps, sigmas = flow_match_sigmas(n, use_dynamic_shifting=True, mu=mu)
    g = torch.Generator().manual_seed(seed)
    x_ref = torch.randn(shape, generator=g)
    x = x_ref.numpy().copy()
    buf = np.empty_like(x)
    for i, t in enumerate(sched.timesteps):
        v = torch.randn(shape, generator=g)
        x_ref = sched.step(v, t, x_ref, return_dict=False)[0]
        if i % 2:
            x = euler_step(x, v.numpy(), sigmas[i], sigmas[i + 1])
        else:  # explicit out, alternating with in-place on the same buffer
            out = buf if i % 4 == 0 else x
            x = euler_step(x, v.numpy(), sigmas[i].item(), float(sigmas[i + 1]), out=out)
        assert_same_bits(x, x_ref)


@settings(max_examples=n_examples(25), deadline=None)
@given(
    n=st.integers(1, 30),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 64), st.sampled_from([4, 64])),
    seed=st.integers(0, 2**31),
)
def test_euler_step_matches_scheduler(n, shape, seed):
    run_euler(n, shape, seed)


@pytest.mark.slow
def test_euler_step_full_flux_schedule():
    run_euler(28, (1, 4096, 64), 0)


def test_euler_step_non_contiguous_inputs():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 16, 8)).astype(np.float32)
    v = rng.standard_normal((2, 8, 16)).astype(np.float32).transpose(0, 2, 1)
    sched = reference(FLUX_DEV, 4, 1.15)
    ref = sched.step(torch.from_numpy(v.copy()), sched.timesteps[0], torch.from_numpy(x), return_dict=False)[0]
    _, sigmas = flow_match_sigmas(4, use_dynamic_shifting=True, mu=1.15)
    assert_same_bits(euler_step(x, v, sigmas[0], sigmas[1]), ref)


# --- validation ------------------------------------------------------------------------------------

X = np.zeros((1, 4, 8), dtype=np.float32)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: flow_match_sigmas(0), "num_inference_steps must be a positive integer, got 0"),
        (lambda: flow_match_sigmas(4.0), "num_inference_steps must be a positive integer, got 4.0"),
        (lambda: flow_match_sigmas(True), "num_inference_steps must be a positive integer, got True"),
        (lambda: flow_match_sigmas(None), "num_inference_steps must be a positive integer, got None"),
        (lambda: flow_match_sigmas(4, use_dynamic_shifting=True), "mu must be given when use_dynamic_shifting=True"),
        (lambda: flow_match_sigmas(4, use_dynamic_shifting=True, mu=float("nan")), "mu must be a finite real"),
        (lambda: flow_match_sigmas(4, use_dynamic_shifting=True, mu="1"), "mu must be a finite real number, got '1'"),
        (lambda: flow_match_sigmas(4, use_dynamic_shifting=True, mu=1000.0), r"mu=1000.0 is too large: exp\(mu\)"),
        (lambda: flow_match_sigmas(4, time_shift_type="cosine"), "time_shift_type must be 'exponential' or 'linear'"),
        (lambda: flow_match_sigmas(4, shift=float("inf")), "shift must be a finite real number, got inf"),
        (lambda: flow_match_sigmas(4, shift_terminal=1.0), "shift_terminal must not be 1.0"),
        (lambda: flow_match_sigmas(4, shift_terminal="x"), "shift_terminal must be a finite real number"),
        (lambda: flow_match_sigmas(4, num_train_timesteps=0), "num_train_timesteps must be a positive integer, got 0"),
        (lambda: flow_match_sigmas(3, sigmas=[1.0, 0.5]), r"num_inference_steps=3 must equal len\(sigmas\)=2"),
        (lambda: flow_match_sigmas(None, sigmas=[]), "sigmas must be a non-empty 1-D sequence of real numbers"),
        (lambda: flow_match_sigmas(None, sigmas=[[1.0], [0.5]]), r"got shape \(2, 1\)"),
        (lambda: flow_match_sigmas(None, sigmas=["a", "b"]), "sigmas must be a non-empty 1-D sequence"),
        (
            lambda: flow_match_sigmas(4, use_karras_sigmas=True, use_exponential_sigmas=True),
            "use_karras_sigmas and use_exponential_sigmas are exclusive",
        ),
        (
            lambda: flow_match_sigmas(2, sigmas=[1.0, 0.0], use_exponential_sigmas=True),
            "exponential re-spacing needs positive end sigmas",
        ),
        (
            lambda: flow_match_sigmas(2, sigmas=[1.0, -0.5], use_karras_sigmas=True),
            "Karras re-spacing needs non-negative end sigmas",
        ),
        (lambda: calculate_shift(0), "image_seq_len must be a positive integer, got 0"),
        (lambda: calculate_shift(4096.0), "image_seq_len must be a positive integer, got 4096.0"),
        (lambda: calculate_shift(4096, 256, 256), "max_seq_len must differ from base_seq_len, both are 256"),
        (lambda: calculate_shift(4096, base_shift=None), "base_shift must be a finite real number, got None"),
        (lambda: calculate_shift(4096, max_shift=float("nan")), "max_shift must be a finite real number"),
        (lambda: empirical_mu(-1, 4), "image_seq_len must be a positive integer, got -1"),
        (lambda: empirical_mu(4096, 0), "num_steps must be a positive integer, got 0"),
        (lambda: trim_for_strength(np.zeros(4), np.zeros(5), 4, 1.5), r"strength must be a real number in \[0.0, 1.0\], got 1.5"),
        (lambda: trim_for_strength(np.zeros(4), np.zeros(5), 4, -0.1), "strength must be a real number in"),
        (lambda: trim_for_strength(np.zeros(4), np.zeros(5), 4, None), "strength must be a real number in"),
        (lambda: trim_for_strength(np.zeros(4), np.zeros(5), 0, 0.5), "num_inference_steps must be a positive integer"),
        (lambda: trim_for_strength(np.zeros(4), np.zeros(4), 4, 0.5), "expected 4 timesteps and 5 sigmas .* got 4 and 4"),
        (lambda: euler_step(X.tolist(), X, 1.0, 0.5), "sample must be a numpy array, got list"),
        (lambda: euler_step(X, X.astype(np.float64), 1.0, 0.5), "model_output must have dtype float32, got float64"),
        (lambda: euler_step(X.astype(np.float16), X, 1.0, 0.5), "sample must have dtype float32, got float16"),
        (lambda: euler_step(X, X[0], 1.0, 0.5), r"sample and model_output shapes differ: \(1, 4, 8\) vs \(4, 8\)"),
        (lambda: euler_step(X, X, None, 0.5), "sigma must be a finite real number, got None"),
        (lambda: euler_step(X, X, 1.0, float("nan")), "sigma_next must be a finite real number, got nan"),
        (lambda: euler_step(X, X, 1.0, 0.5, out=np.zeros((1, 4, 8))), r"out must be a float32 numpy array of shape \(1, 4, 8\)"),
        (lambda: euler_step(X, X, 1.0, 0.5, out=np.zeros((1, 8, 8), np.float32)[:, ::2]), "out must be a writeable C-contiguous"),
    ],
)
def test_validation_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
