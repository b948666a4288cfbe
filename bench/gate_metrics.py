"""The gate's metrics: each fast path and its reference, built to be timed side by side.

Every builder returns ``(fast_sampler, reference_sampler)``; the ratio is reference time / fast
time (see ``bench/gate.py``). Shapes are the ones RESULTS.md reports (a 1024² FLUX latent, the
tiny models' requests). Heavy imports happen inside the builders, so ``--only`` stays cheap.
One torch thread throughout, as every benchmark assumes.
"""
from __future__ import annotations

import copy

from gate import metric, timed  # bench/ is on sys.path (python -m bench), as for pytest

import bench_structured  # noqa: F401,E402  registers structured_mask_vs_llguidance_torch

_FLUX_DEV = dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                 base_image_seq_len=256, max_image_seq_len=4096, shift=3.0,
                 time_shift_type="exponential")


def _latents(shape=(1, 16, 128, 128)):
    import torch

    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------------------------------
# FLUX kernels (_fast) against the diffusers code they replace


@metric("flux kernels")
def pack_vs_diffusers():
    """Packing a 1024² FLUX latent (1x16x128x128): FluxPipeline._pack_latents time ÷
    _fast.pack_latents time."""
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    from _fast import pack_latents

    x = _latents()
    xn = x.numpy()
    return (timed(lambda: pack_latents(xn)),
            timed(lambda: FluxPipeline._pack_latents(x, 1, 16, 128, 128)))


@metric("flux kernels")
def pack_vs_copy():
    """The same pack against np.copyto of the same bytes (the memory-bound floor): copy time ÷
    pack time, i.e. the fraction of copy speed the permuting pack reaches."""
    import numpy as np

    from _fast import pack_latents

    xn = _latents().numpy()
    dst = np.empty_like(xn)
    return timed(lambda: pack_latents(xn)), timed(lambda: np.copyto(dst, xn))


@metric("flux kernels")
def unpack_vs_diffusers():
    """Unpacking 1024² FLUX tokens (1x4096x64): FluxPipeline._unpack_latents ÷
    _fast.unpack_latents."""
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    from _fast import unpack_latents

    tokens = FluxPipeline._pack_latents(_latents(), 1, 16, 128, 128).contiguous()
    tn = tokens.numpy()
    return (timed(lambda: unpack_latents(tn, 128, 128)),
            timed(lambda: FluxPipeline._unpack_latents(tokens, 1024, 1024, 8)))


@metric("flux kernels")
def image_ids_vs_diffusers():
    """FLUX image ids of a 64x64 token grid (1024²): _prepare_latent_image_ids ÷
    _fast.latent_image_ids."""
    import torch
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    from _fast import latent_image_ids

    return (timed(lambda: latent_image_ids(64, 64)),
            timed(lambda: FluxPipeline._prepare_latent_image_ids(1, 64, 64, "cpu",
                                                                 torch.float32)))


@metric("flux kernels")
def schedule_vs_diffusers():
    """FLUX.1-dev schedule, 28 steps at 1024² (mu from the packed length): retrieve_timesteps on
    FlowMatchEulerDiscreteScheduler ÷ _fast.flow_match_sigmas."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

    from _fast import calculate_shift, flow_match_sigmas

    n, mu = 28, calculate_shift(4096)
    sched = FlowMatchEulerDiscreteScheduler(**_FLUX_DEV)
    return (timed(lambda: flow_match_sigmas(n, use_dynamic_shifting=True, mu=mu, shift=3.0)),
            timed(lambda: retrieve_timesteps(sched, None, "cpu",
                                             sigmas=np.linspace(1.0, 1 / n, n), mu=mu)))


@metric("flux kernels")
def euler_step_vs_diffusers():
    """One Euler step on (1, 4096, 64): FlowMatchEulerDiscreteScheduler.step ÷ _fast.euler_step."""
    import numpy as np
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from _fast import calculate_shift, euler_step

    g = torch.Generator().manual_seed(0)
    x, v = torch.randn((1, 4096, 64), generator=g), torch.randn((1, 4096, 64), generator=g)
    sched = FlowMatchEulerDiscreteScheduler(**_FLUX_DEV)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 28, 28), mu=calculate_shift(4096))
    t0, s0, s1 = sched.timesteps[0], sched.sigmas[0].item(), sched.sigmas[1].item()
    xn, vn = x.numpy(), v.numpy()

    def diffusers_step():
        sched._step_index = 0  # the scheduler advances its index on every call
        return sched.step(v, t0, x, return_dict=False)

    return timed(lambda: euler_step(xn, vn, s0, s1)), timed(diffusers_step)


# --------------------------------------------------------------------------------------------------
# the token core


@metric("token core")
def update_vs_empty_call():
    """TextContext.update() per decoded token against an empty Python method call with the same
    argument: empty-call time ÷ update() time (the compiled update is a few method calls' worth)."""
    import numpy as np

    from harness.context import EOSTracker, TextContext, TokenBuffer

    prompt = np.arange(4, dtype=np.int64)

    def harness(n: int) -> float:
        import time

        ctx = TextContext(max_length=n + 8, tokens=TokenBuffer(prompt.copy()),
                          eos_tracker=EOSTracker(eos_token_ids={1 << 30}))
        update = ctx.update
        t0 = time.perf_counter()
        for _ in range(n):
            update(7)
        return time.perf_counter() - t0

    class Empty:
        def update(self, token):
            pass

    def empty_calls(n: int) -> float:  # the same loop shape as ``harness``
        import time

        update = Empty().update
        t0 = time.perf_counter()
        for _ in range(n):
            update(7)
        return time.perf_counter() - t0

    return harness, empty_calls


# --------------------------------------------------------------------------------------------------
# requests and loops on the tiny models


@metric("requests")
def new_context_vs_diffusers():
    """FLUX.1 request preprocessing at 1024², 28 steps (tokens, noise, ids, schedule; no model):
    the same done the diffusers way (pipeline tokenizers, prepare_latents, retrieve_timesteps) ÷
    PixelGenerationTokenizer.new_context."""
    from bench_pixel import diffusers_preprocess
    from tests.flux_fixtures import PROMPT, reference, request, tokenizer

    req = request(prompt=PROMPT, height=1024, width=1024, num_inference_steps=28)
    tok, pipe = tokenizer(), reference().pipeline(img2img=False)
    return (timed(lambda: tok.new_context(req)),
            timed(lambda: diffusers_preprocess(pipe, req)))


@metric("loops")
def flux_generate_vs_pipeline():
    """Tiny FLUX.1 end to end, 128², 4 steps (text encoders, loop, VAE decode, uint8 images):
    FluxPipeline(...) on the same loaded modules ÷ new_context + the harness loop."""
    import torch

    from tests.flux_fixtures import PROMPT, denoiser, reference, request, tokenizer

    torch.set_num_threads(1)
    req = request(prompt=PROMPT, height=128, width=128, num_inference_steps=4, seed=0)
    tok, den = tokenizer(), denoiser()
    den.progress = False
    pipe = reference().pipeline(img2img=False)

    def harness():
        return den(tok.new_context(req)).images

    def pipeline():
        return pipe(prompt=req.prompt, height=128, width=128, num_inference_steps=4,
                    generator=torch.Generator("cpu").manual_seed(0), output_type="np").images

    return timed(harness), timed(pipeline)


_VLM_TOKENS = 32


def _vlm():
    import torch

    from harness.pipelines.vlm import VLMPipeline
    from tests.vlm_fixtures import family, request, tokenizer

    torch.set_num_threads(1)
    fam, tok = family("tiny-llava"), tokenizer("tiny-llava")
    return fam, tok, VLMPipeline(fam), lambda n: request(1, max_new_tokens=n)


def _hf_generate(fam, inputs, n: int):
    import torch

    gc = copy.deepcopy(fam.model.generation_config)
    gc.eos_token_id, gc.do_sample, gc.max_new_tokens, gc.min_new_tokens = None, False, n, None
    with torch.inference_mode():
        return fam.model.generate(**inputs, generation_config=gc)


@metric("loops")
def vlm_generate_vs_hf():
    """Tiny LLaVA, one image, prefill + 32 greedy tokens: model.generate() on the same inputs ÷
    the harness loop (new_context + VLMPipeline.generate)."""
    fam, tok, pipe, req = _vlm()
    inputs = fam.context_inputs(tok.new_context(req(_VLM_TOKENS)))
    return (timed(lambda: pipe.generate(tok.new_context(req(_VLM_TOKENS)))),
            timed(lambda: _hf_generate(fam, inputs, _VLM_TOKENS)))


@metric("loops")
def vlm_decode_step_vs_hf():
    """The VLM per-step decode cost (the loop's overhead around the forward included): for each
    side, (32 tokens − 1 token) ÷ 31 — model.generate()'s step ÷ the harness's step."""
    import time

    fam, tok, pipe, req = _vlm()
    inputs = {n: fam.context_inputs(tok.new_context(req(n))) for n in (1, _VLM_TOKENS)}

    def harness(k: int) -> float:
        total = 0.0
        for _ in range(k):
            a, b = tok.new_context(req(_VLM_TOKENS)), tok.new_context(req(1))
            t0 = time.perf_counter()
            pipe.generate(a)
            t1 = time.perf_counter()
            pipe.generate(b)
            total += (t1 - t0) - (time.perf_counter() - t1)
        return max(total, 1e-9)

    def hf(k: int) -> float:
        total = 0.0
        for _ in range(k):
            t0 = time.perf_counter()
            _hf_generate(fam, inputs[_VLM_TOKENS], _VLM_TOKENS)
            t1 = time.perf_counter()
            _hf_generate(fam, inputs[1], 1)
            total += (t1 - t0) - (time.perf_counter() - t1)
        return max(total, 1e-9)

    return harness, hf
