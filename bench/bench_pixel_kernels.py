"""_fast pixel-pipeline kernels beside the diffusers code they replace (same group = one ratio per table).

Run: PYTHONPATH=. python -m pytest bench/bench_pixel_kernels.py --benchmark-enable --benchmark-group-by=group
(1 torch thread; on a shared machine compare runs with --benchmark-compare-fail=min:25%).
"""
import numpy as np
import pytest
import torch
from _common import info

from _fast.ids import latent_image_ids
from _fast.latents import pack_latents, unpack_latents
from _fast.schedules import calculate_shift, euler_step, flow_match_sigmas
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, retrieve_timesteps
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

FLUX_DEV = dict(
    use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
    max_image_seq_len=4096, shift=3.0, time_shift_type="exponential",
)
# name -> latent shape (B, 16, h, w): 1024² pixels is a 128² latent, 2048² a 256² latent
SIZES = {"1024": (1, 16, 128, 128), "1024-b4": (4, 16, 128, 128), "2048": (1, 16, 256, 256)}


def latents(shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


# --- pack / unpack ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("side", ["diffusers", "fast", "copyto"])
def test_pack(benchmark, size, side):
    benchmark.group = f"pack {size}"
    info(benchmark, side)
    shape = SIZES[size]
    x = latents(shape)
    xn = x.numpy()
    b, c, h, w = shape
    if side == "diffusers":
        out = benchmark(FluxPipeline._pack_latents, x, b, c, h, w).numpy()
    elif side == "fast":
        pack_latents(xn)  # warm the jit / load the cache
        out = benchmark(pack_latents, xn)
    else:  # floor: moving the same bytes with no permutation
        dst = np.empty((b, (h // 2) * (w // 2), 4 * c), np.float32)
        benchmark(np.copyto, dst.reshape(shape), xn)
        return
    assert np.array_equal(out, FluxPipeline._pack_latents(x, b, c, h, w).numpy())


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("side", ["diffusers", "fast"])
def test_unpack(benchmark, size, side):
    benchmark.group = f"unpack {size}"
    info(benchmark, side)
    b, c, h, w = SIZES[size]
    tokens = FluxPipeline._pack_latents(latents(SIZES[size]), b, c, h, w).contiguous()
    if side == "diffusers":
        out = benchmark(FluxPipeline._unpack_latents, tokens, h * 8, w * 8, 8).numpy()
    else:
        tn = tokens.numpy()
        unpack_latents(tn, h, w)
        out = benchmark(unpack_latents, tn, h, w)
    assert np.array_equal(out, FluxPipeline._unpack_latents(tokens, h * 8, w * 8, 8).numpy())


# --- ids ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["1024", "2048"])
@pytest.mark.parametrize("side", ["diffusers", "fast"])
def test_ids(benchmark, size, side):
    benchmark.group = f"ids {size}"
    info(benchmark, side)
    h2 = w2 = SIZES[size][2] // 2
    if side == "diffusers":
        out = benchmark(FluxPipeline._prepare_latent_image_ids, 1, h2, w2, "cpu", torch.float32).numpy()
    else:
        latent_image_ids(h2, w2)
        out = benchmark(latent_image_ids, h2, w2)
    assert np.array_equal(out, FluxPipeline._prepare_latent_image_ids(1, h2, w2, "cpu", torch.float32).numpy())


# --- schedule ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["diffusers-set_timesteps", "diffusers-retrieve_timesteps", "fast"])
def test_schedule(benchmark, side):
    benchmark.group = "schedule N=28 (FLUX.1-dev, 1024²)"
    info(benchmark, side)
    n = 28
    mu = calculate_shift(4096)
    sched = FlowMatchEulerDiscreteScheduler(**FLUX_DEV)
    if side == "diffusers-set_timesteps":
        benchmark(lambda: sched.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu))
    elif side == "diffusers-retrieve_timesteps":
        benchmark(lambda: retrieve_timesteps(sched, None, "cpu", sigmas=np.linspace(1.0, 1 / n, n), mu=mu))
    else:
        flow_match_sigmas(n, use_dynamic_shifting=True, mu=mu, shift=3.0)
        timesteps, sigmas = benchmark(flow_match_sigmas, n, use_dynamic_shifting=True, mu=mu, shift=3.0)
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
        assert np.array_equal(timesteps, sched.timesteps.numpy()) and np.array_equal(sigmas, sched.sigmas.numpy())


# --- Euler step --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("side", ["diffusers", "fast", "fast-out"])
def test_euler_step(benchmark, size, side):
    b, c, h, w = SIZES[size]
    shape = (b, (h // 2) * (w // 2), 4 * c)
    benchmark.group = f"euler step {shape}"
    info(benchmark, side)
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    sched = FlowMatchEulerDiscreteScheduler(**FLUX_DEV)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 28, 28), mu=calculate_shift(4096))
    t0 = sched.timesteps[0]

    def diffusers_step():
        sched._step_index = 0  # the scheduler advances its index on every call
        return sched.step(v, t0, x, return_dict=False)[0]

    ref = diffusers_step().numpy()
    xn, vn = x.numpy(), v.numpy()
    s0, s1 = sched.sigmas[0].item(), sched.sigmas[1].item()
    if side == "diffusers":
        benchmark(diffusers_step)
        return
    buf = np.empty_like(xn)
    euler_step(xn, vn, s0, s1, out=buf)
    if side == "fast":
        out = benchmark(euler_step, xn, vn, s0, s1)
    else:
        out = benchmark(euler_step, xn, vn, s0, s1, out=buf)
    assert np.array_equal(out.view(np.uint32), ref.view(np.uint32))
