"""FLUX.2 / Qwen-Image / Z-Image _fast kernels beside the diffusers / torch code they replace (one group each).

Run: PYTHONPATH=. python -m pytest bench/bench_family_kernels.py --benchmark-enable --benchmark-group-by=group
(1 torch thread; on a shared machine compare runs with --benchmark-compare-fail=min:25%).
"""
import numpy as np
import pytest
import torch
from _common import info

from _fast.ids_nd import flux2_image_ids, flux2_text_ids, qwen_image_ids
from _fast.layouts import (
    flux2_pack,
    patchify_latents,
    qwen_pack_latents,
    qwen_unpack_latents,
    scatter_by_ids,
    unpatchify_latents,
)
from _fast.schedules import calculate_shift
from _fast.schedules_torch_compat import torch_linspace_f32, z_image_sigmas
from diffusers.models.transformers.transformer_qwenimage import QwenEmbedRope
from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline
from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline
from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline
from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas, retrieve_timesteps
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

# 1024² pixels: FLUX.2 VAE latent (B, 32, 128, 128) -> patchified (B, 128, 64, 64) -> 4096 tokens of 128
FLUX2 = {"1024": (1, 32, 128, 128), "1024-b4": (4, 32, 128, 128)}
QWEN = {"1024": (1, 1, 16, 128, 128)}
Z_IMAGE_TURBO = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)


def randn(shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def same(a, b):
    b = b.numpy() if isinstance(b, torch.Tensor) else b
    assert a.shape == b.shape and np.array_equal(a.view(np.uint32), np.ascontiguousarray(b).view(np.uint32))


# --- FLUX.2 layouts --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", FLUX2)
@pytest.mark.parametrize("side", ["diffusers", "fast"])
def test_patchify(benchmark, size, side):
    benchmark.group = f"flux2 patchify {size}"
    info(benchmark, side)
    x = randn(FLUX2[size])
    if side == "diffusers":
        out = benchmark(Flux2Pipeline._patchify_latents, x)
    else:
        patchify_latents(x.numpy())
        out = benchmark(patchify_latents, x.numpy())
        same(out, Flux2Pipeline._patchify_latents(x))


@pytest.mark.parametrize("size", FLUX2)
@pytest.mark.parametrize("side", ["diffusers", "fast"])
def test_unpatchify(benchmark, size, side):
    benchmark.group = f"flux2 unpatchify {size}"
    info(benchmark, side)
    x = Flux2Pipeline._patchify_latents(randn(FLUX2[size])).contiguous()
    if side == "diffusers":
        benchmark(Flux2Pipeline._unpatchify_latents, x)
    else:
        unpatchify_latents(x.numpy())
        out = benchmark(unpatchify_latents, x.numpy())
        same(out, Flux2Pipeline._unpatchify_latents(x))


@pytest.mark.parametrize("size", FLUX2)
@pytest.mark.parametrize("side", ["diffusers-view", "diffusers-contiguous", "fast"])
def test_flux2_pack(benchmark, size, side):
    benchmark.group = f"flux2 pack {size}"
    info(benchmark, side)
    x = Flux2Pipeline._patchify_latents(randn(FLUX2[size])).contiguous()
    if side == "diffusers-view":  # diffusers returns a transposed view; its consumer pays for the copy
        benchmark(Flux2Pipeline._pack_latents, x)
    elif side == "diffusers-contiguous":
        benchmark(lambda: Flux2Pipeline._pack_latents(x).contiguous())
    else:
        flux2_pack(x.numpy())
        out = benchmark(flux2_pack, x.numpy())
        same(out, Flux2Pipeline._pack_latents(x))


@pytest.mark.parametrize("size", FLUX2)
@pytest.mark.parametrize("side", ["diffusers-flux2", "diffusers-klein", "fast", "fast-hw"])
def test_scatter_by_ids(benchmark, size, side):
    benchmark.group = f"flux2 unpack with ids {size}"
    info(benchmark, side)
    latents = Flux2Pipeline._patchify_latents(randn(FLUX2[size])).contiguous()
    b, c, h, w = latents.shape
    tokens = Flux2Pipeline._pack_latents(latents).contiguous()
    ids = Flux2Pipeline._prepare_latent_ids(latents).contiguous()
    tn, idn = tokens.numpy(), ids.numpy()
    if side == "diffusers-flux2":
        benchmark(Flux2Pipeline._unpack_latents_with_ids, tokens, ids)
    elif side == "diffusers-klein":
        benchmark(Flux2KleinPipeline._unpack_latents_with_ids, tokens, ids, h, w)
    elif side == "fast":
        scatter_by_ids(tn, idn)
        same(benchmark(scatter_by_ids, tn, idn), latents)
    else:
        scatter_by_ids(tn, idn, h, w)
        same(benchmark(scatter_by_ids, tn, idn, h, w), latents)


# --- FLUX.2 ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["diffusers", "fast"])
def test_flux2_image_ids(benchmark, side):
    benchmark.group = "flux2 image ids 64x64"
    info(benchmark, side)
    latents = torch.empty(1, 128, 64, 64)
    if side == "diffusers":
        benchmark(Flux2Pipeline._prepare_latent_ids, latents)
    else:
        flux2_image_ids(64, 64, batch=1)
        out = benchmark(flux2_image_ids, 64, 64, 1)
        assert np.array_equal(out, Flux2Pipeline._prepare_latent_ids(latents).numpy())


@pytest.mark.parametrize("side", ["diffusers", "fast"])
def test_flux2_text_ids(benchmark, side):
    benchmark.group = "flux2 text ids (1, 512)"
    info(benchmark, side)
    embeds = torch.empty(1, 512, 8)
    if side == "diffusers":
        benchmark(Flux2Pipeline._prepare_text_ids, embeds)
    else:
        flux2_text_ids(1, 512)
        out = benchmark(flux2_text_ids, 1, 512)
        assert np.array_equal(out, Flux2Pipeline._prepare_text_ids(embeds).numpy())


# --- Qwen-Image ------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["diffusers", "fast"])
def test_qwen_pack(benchmark, side):
    benchmark.group = "qwen pack 1024"
    info(benchmark, side)
    x = randn(QWEN["1024"])
    b, _, c, h, w = x.shape
    if side == "diffusers":
        benchmark(QwenImagePipeline._pack_latents, x, b, c, h, w)
    else:
        qwen_pack_latents(x.numpy())
        same(benchmark(qwen_pack_latents, x.numpy()), QwenImagePipeline._pack_latents(x, b, c, h, w))


@pytest.mark.parametrize("side", ["diffusers", "fast"])
def test_qwen_unpack(benchmark, side):
    benchmark.group = "qwen unpack 1024"
    info(benchmark, side)
    b, _, c, h, w = QWEN["1024"]
    tokens = QwenImagePipeline._pack_latents(randn(QWEN["1024"]), b, c, h, w).contiguous()
    if side == "diffusers":
        benchmark(QwenImagePipeline._unpack_latents, tokens, h * 8, w * 8, 8)
    else:
        qwen_unpack_latents(tokens.numpy(), h, w)
        out = benchmark(qwen_unpack_latents, tokens.numpy(), h, w)
        same(out, QwenImagePipeline._unpack_latents(tokens, h * 8, w * 8, 8))


@pytest.mark.parametrize("side", ["diffusers-rope-uncached", "fast-ids"])
def test_qwen_image_positions(benchmark, side):
    """Not the same work: the model turns positions into rotary rows; this shows what the positions cost."""
    benchmark.group = "qwen image positions 64x64"
    info(benchmark, side)
    if side == "diffusers-rope-uncached":
        rope = QwenEmbedRope(theta=10000, axes_dim=[16, 56, 56], scale_rope=True)
        benchmark(rope._compute_video_freqs.__wrapped__, rope, 1, 64, 64, 0, None)
    else:
        qwen_image_ids((1, 64, 64))
        assert benchmark(qwen_image_ids, (1, 64, 64)).shape == (4096, 3)


# --- torch.linspace and the Z-Image schedule -----------------------------------------------------------


@pytest.mark.parametrize("n", [28, 2000])
@pytest.mark.parametrize("side", ["torch", "fast"])
def test_linspace(benchmark, n, side):
    benchmark.group = f"linspace float32 N={n}"
    info(benchmark, side)
    if side == "torch":
        benchmark(torch.linspace, 1.0, 1 / n, n, dtype=torch.float32)
    else:
        torch_linspace_f32(1.0, 1 / n, n)
        out = benchmark(torch_linspace_f32, 1.0, 1 / n, n)
        if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
            same(out, torch.linspace(1.0, 1 / n, n, dtype=torch.float32))


@pytest.mark.parametrize("side", ["diffusers", "fast"])
def test_z_image_schedule(benchmark, side):
    benchmark.group = "z-image schedule N=8 (Turbo)"
    info(benchmark, side)
    n = 8
    mu = calculate_shift(4096)
    sched = FlowMatchEulerDiscreteScheduler(**Z_IMAGE_TURBO)
    if side == "diffusers":
        benchmark(lambda: retrieve_timesteps(sched, n, "cpu", sigmas=get_default_z_image_sigmas(n), mu=mu))
    else:
        z_image_sigmas(n)
        timesteps, sigmas = benchmark(z_image_sigmas, n)
        retrieve_timesteps(sched, n, "cpu", sigmas=get_default_z_image_sigmas(n), mu=mu)
        if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
            same(timesteps, sched.timesteps)
            same(sigmas, sched.sigmas)
