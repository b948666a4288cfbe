"""Wan beside diffusers' own (same group = one ratio per table).

- ``new_context`` against the same preprocessing done the WanPipeline way: prompt_clean + the
  UMT5 tokenizer call padded to 512 (prompt and, with CFG, the negative), ``prepare_latents``
  (randn of the 5-D shape) and ``scheduler.set_timesteps``; the text encoder is excluded on both
  sides (new_context runs no model). The harness side includes UniPC's coefficient table.
- UniPC: the schedule plus the coefficient table (``_fast.unipc``) against ``set_timesteps``
  plus the scheduler's per-step bookkeeping (``step`` on a one-element sample, where the
  scalar coefficient work is all there is), and an N-step loop on real-sized latents (the fused
  numba step against ``UniPCMultistepScheduler.step``).
- end to end on the tiny model: ``new_context`` + the harness loop against ``WanPipeline`` on
  the same loaded modules, prompt in, uint8 frames out.

Run (1 torch thread):
    PYTHONPATH=. python -m pytest bench/bench_wan.py --benchmark-enable --benchmark-group-by=group
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _common import info

from tests import pixel_fixtures as px

PROMPT = "a red fox runs through fresh snow, cinematic"
NEGATIVE = "static, blurry, low quality"
TINY = "tiny-wan"


def _torch_math(name):
    fn = getattr(torch, name)
    return lambda a: fn(torch.from_numpy(a)).numpy()


def _scheduler(shift: float = 3.0):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                   flow_shift=shift)


# --------------------------------------------------------------------------------------------------
# request preprocessing


def diffusers_preprocess(pipe, req):
    """What WanPipeline computes before its first model call, minus the text encoder."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    prompts = [req.prompt] + ([req.negative_prompt or ""] if req.guidance_scale > 1 else [])
    for p in prompts:
        pipe.tokenizer([prompt_clean(p)], padding="max_length", max_length=512, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    pipe.scheduler.set_timesteps(req.num_inference_steps, device="cpu")
    gen = torch.Generator("cpu").manual_seed(req.seed)
    return pipe.prepare_latents(req.num_images_per_prompt, 16, req.height, req.width,
                                req.num_frames, torch.float32, torch.device("cpu"), gen)


CASES = {
    "480x832-81f-50steps-cfg": dict(height=480, width=832, num_frames=81, num_inference_steps=50,
                                    guidance_scale=5.0, negative_prompt=NEGATIVE),
    "64x64-9f-8steps": dict(height=64, width=64, num_frames=9, num_inference_steps=8,
                            guidance_scale=1.0),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("side", ["diffusers", "harness"])
def test_new_context(benchmark, case, side):
    benchmark.group = f"wan new_context {case}"
    info(benchmark, side)
    kw = dict(CASES[case])
    req = px.request(prompt=PROMPT, seed=0, **kw)
    f = (kw["num_frames"] - 1) // 4 + 1
    shape = (1, 16, f, kw["height"] // 8, kw["width"] // 8)
    if side == "harness":
        tok = px.tokenizer(TINY)
        tok.new_context(req)
        ctx = benchmark(tok.new_context, req)
        assert ctx.latents.shape == shape
    else:
        pipe = px.reference(TINY).pipeline()
        latents = benchmark(diffusers_preprocess, pipe, req)
        assert tuple(latents.shape) == shape


# --------------------------------------------------------------------------------------------------
# UniPC


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("side", ["diffusers", "harness"])
def test_unipc_coefficients(benchmark, steps, side):
    """Schedule + every step's coefficients: the table (harness) against set_timesteps and the
    scheduler's own per-step bookkeeping on a one-element sample (diffusers)."""
    benchmark.group = f"wan unipc schedule+coefficients N={steps}"
    info(benchmark, side)
    if side == "harness":
        from _fast.unipc import unipc_coefficients, unipc_flow_sigmas

        log, expm1 = _torch_math("log"), _torch_math("expm1")

        def run():
            _, sg = unipc_flow_sigmas(steps, flow_shift=3.0)
            return unipc_coefficients(sg, log=log, expm1=expm1)

        assert benchmark(run).shape == (steps, 14)
    else:
        sched = _scheduler()
        x = torch.zeros(1, 1)
        v = torch.full((1, 1), 0.1)

        def run():
            sched.set_timesteps(steps)
            sched.set_begin_index(0)
            out = x
            for t in sched.timesteps:
                out = sched.step(v, t, out, return_dict=False)[0]
            return out

        assert benchmark(run).shape == (1, 1)


LOOP_SHAPE = (1, 16, 6, 30, 52)  # 21 latent frames of 480x832 cut to 6, half the height/width


@pytest.mark.parametrize("side", ["diffusers", "harness"])
def test_unipc_loop(benchmark, side):
    """A 10-step UniPC loop on (1, 16, 6, 30, 52) float32 latents with fixed model outputs."""
    benchmark.group = "wan unipc 10-step loop (1,16,6,30,52)"
    info(benchmark, side)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(LOOP_SHAPE).astype(np.float32)
    vs = [rng.standard_normal(LOOP_SHAPE).astype(np.float32) for _ in range(10)]
    if side == "harness":
        from _fast.unipc import unipc_coefficients, unipc_flow_sigmas, unipc_step

        _, sg = unipc_flow_sigmas(10, flow_shift=3.0)
        table = unipc_coefficients(sg, log=_torch_math("log"), expm1=_torch_math("expm1"))

        def run():
            x = last = m1 = m2 = x0
            for i in range(10):
                x, last, m = unipc_step(table[i], x, vs[i], last, m1, m2)
                m2, m1 = m1, m
            return x
    else:
        sched = _scheduler()
        tv = [torch.from_numpy(v) for v in vs]

        def run():
            sched.set_timesteps(10)
            sched.set_begin_index(0)
            x = torch.from_numpy(x0)
            for i, t in enumerate(sched.timesteps):
                x = sched.step(tv[i], t, x, return_dict=False)[0]
            return x.numpy()

    run()
    assert benchmark(run).shape == LOOP_SHAPE


# --------------------------------------------------------------------------------------------------
# end to end on the tiny model


E2E = {"64x64-9f-8steps-cfg": dict(height=64, width=64, num_frames=9, num_inference_steps=8,
                                   guidance_scale=5.0, negative_prompt=NEGATIVE)}


@pytest.mark.parametrize("case", E2E)
@pytest.mark.parametrize("side", ["diffusers", "harness"])
def test_end_to_end(benchmark, case, side):
    benchmark.group = f"wan tiny end-to-end {case}"
    info(benchmark, side)
    kw = dict(E2E[case])
    req = px.request(prompt=PROMPT, seed=0, **kw)
    if side == "harness":
        tok, den = px.tokenizer(TINY), px.denoiser(TINY)

        def run():
            return den(tok.new_context(req)).images
    else:
        pipe = px.reference(TINY).pipeline()
        call = dict(prompt=req.prompt, negative_prompt=req.negative_prompt, height=req.height,
                    width=req.width, num_frames=req.num_frames,
                    num_inference_steps=req.num_inference_steps,
                    guidance_scale=req.guidance_scale, output_type="np")

        def run():
            return pipe(generator=torch.Generator("cpu").manual_seed(req.seed), **call).frames

    run()
    frames = benchmark(run)
    assert frames.shape == (1, kw["num_frames"], kw["height"], kw["width"], 3)
