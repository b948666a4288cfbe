"""FLUX.2 (Klein) request path beside diffusers' own (same group = one ratio per table).

- ``new_context`` against the same preprocessing done the diffusers way: chat template and
  tokenizer (prompt, and "" for CFG), ``prepare_latents`` (patchified randn + pack + 4-axis ids),
  text ids, ``compute_empirical_mu`` + ``retrieve_timesteps``, and for reference images
  ``Flux2ImageProcessor.preprocess(resize_mode="crop")`` + ``_prepare_image_ids``. Models (text
  encoder, VAE) are excluded on both sides.
- end to end on the tiny model: ``new_context`` + the harness loop against
  ``Flux2KleinPipeline(...)`` on the same loaded modules, prompt in, uint8 images out.

Run (1 torch thread):
    PYTHONPATH=. python -m pytest bench/bench_flux2.py --benchmark-enable \
        --benchmark-group-by=group
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
from _common import info

from tests.flux2_fixtures import KLEIN, PROMPT, denoiser, input_image, reference, request, tokenizer


def diffusers_preprocess(pipe, req, images=None):
    """What Flux2KleinPipeline computes before its first model call, minus the text encoder and
    the VAE: tokens, noise, ids, reference pixels and ids, schedule."""
    from diffusers.pipelines.flux2.pipeline_flux2_klein import (compute_empirical_mu,
                                                                 retrieve_timesteps)

    prompts = [req.prompt] + ([""] if req.guidance_scale > 1 else [])
    for p in prompts:
        text = pipe.tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True,
            enable_thinking=False)
        pipe.tokenizer(text, return_tensors="pt", padding="max_length", truncation=True,
                       max_length=512)
        pipe._prepare_text_ids(torch.zeros(req.num_images_per_prompt, 512, 1))
    h, w, n, b = req.height, req.width, req.num_inference_steps, req.num_images_per_prompt
    gen = torch.Generator("cpu").manual_seed(req.seed)
    latents, ids = pipe.prepare_latents(b, 32, h, w, torch.float32, torch.device("cpu"), gen)
    if images:
        grids = []
        for img in images:
            iw, ih = img.size[0] // 16 * 16, img.size[1] // 16 * 16
            pipe.image_processor.preprocess(img, height=ih, width=iw, resize_mode="crop")
            grids.append(torch.zeros(1, 128, ih // 16, iw // 16))
        pipe._prepare_image_ids(grids).repeat(b, 1, 1)
    mu = compute_empirical_mu(latents.shape[1], n)
    timesteps, _ = retrieve_timesteps(pipe.scheduler, n, "cpu",
                                      sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    return latents, ids, timesteps


CASES = {
    "1024-cfg-28steps": dict(height=1024, width=1024, num_inference_steps=28),
    "512-2refs-4steps": dict(height=512, width=512, num_inference_steps=4, guidance_scale=1.0,
                             refs=2),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("side", ["diffusers", "harness"])
def test_new_context(benchmark, case, side):
    from PIL import Image

    benchmark.group = f"flux2 new_context {case}"
    info(benchmark, side)
    kw = dict(CASES[case])
    pixels = [input_image(400, 500, k) for k in range(kw.pop("refs", 0))]
    if side == "harness":
        tok = tokenizer(KLEIN)
        req = request(prompt=PROMPT, input_images=pixels or None, **kw)
        tok.new_context(req)
        ctx = benchmark(tok.new_context, req)
        assert ctx.latents.shape[1] == (kw["height"] // 16) * (kw["width"] // 16)
    else:
        pipe = reference(KLEIN).pipeline()
        req = request(prompt=PROMPT, **kw)
        pils = [Image.fromarray(p) for p in pixels]
        latents, _, _ = benchmark(diffusers_preprocess, pipe, req, pils)
        assert latents.shape[1] == (kw["height"] // 16) * (kw["width"] // 16)


E2E = {
    "128-4steps-cfg": dict(height=128, width=128, num_inference_steps=4),
    "128-4steps-1ref": dict(height=128, width=128, num_inference_steps=4, guidance_scale=1.0,
                            refs=1),
}


@pytest.mark.parametrize("case", E2E)
@pytest.mark.parametrize("side", ["diffusers", "harness"])
def test_end_to_end(benchmark, case, side):
    from PIL import Image

    benchmark.group = f"flux2 tiny end-to-end {case}"
    info(benchmark, side)
    kw = dict(E2E[case])
    pixels = [input_image(128, 160, k) for k in range(kw.pop("refs", 0))]
    req = request(prompt=PROMPT, input_images=pixels or None, **kw)
    if side == "harness":
        tok, den = tokenizer(KLEIN), denoiser(KLEIN)

        def run():
            return den(tok.new_context(req)).images
    else:
        pipe = reference(KLEIN).pipeline()
        call = dict(prompt=req.prompt, height=req.height, width=req.width,
                    num_inference_steps=req.num_inference_steps,
                    guidance_scale=req.guidance_scale, output_type="np")
        if pixels:
            call["image"] = [Image.fromarray(p) for p in pixels]

        def run():
            return pipe(generator=torch.Generator("cpu").manual_seed(req.seed), **call).images

    run()  # warm-up: first-call allocations, numba cache loads
    images = benchmark(run)
    assert images.shape == (1, kw["height"], kw["width"], 3)
