"""FLUX.1 request path beside diffusers' own (same group = one ratio per table).

- ``new_context`` against the same preprocessing done the diffusers way: tokenization by the
  pipeline's transformers tokenizers (with the untruncated re-tokenization FluxPipeline does for its
  warning), ``prepare_latents`` (randn + pack + ids), ``calculate_shift`` + ``retrieve_timesteps``
  (+ ``get_timesteps`` and ``VaeImageProcessor.preprocess`` for img2img). The text encoders are
  excluded on both sides (new_context does not run models).
- end to end on the tiny model: ``new_context`` + the harness loop against ``FluxPipeline(...)`` on
  the same loaded modules, prompt in, uint8 images out (diffusers with ``output_type="np"``).

Run (1 torch thread):
    PYTHONPATH=. python -m pytest bench/bench_pixel.py --benchmark-enable \
        --benchmark-group-by=group
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
from _common import info

from tests.flux_fixtures import (NEGATIVE, PROMPT, denoiser, input_image, reference, request,
                                 tokenizer)


# --------------------------------------------------------------------------------------------------
# request preprocessing


def diffusers_preprocess(pipe, req, image_pil=None):
    """What FluxPipeline / FluxImg2ImgPipeline compute before their first model call, minus the
    text encoders: tokens, noise, ids, schedule (and the img2img image and trimmed schedule)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    prompts = [req.prompt] + ([req.negative_prompt] if req.negative_prompt else [])
    for p in prompts:
        pipe.tokenizer(p, padding="max_length", max_length=pipe.tokenizer_max_length,
                       truncation=True, return_tensors="pt")
        pipe.tokenizer(p, padding="longest", return_tensors="pt")
        pipe.tokenizer_2(p, padding="max_length", max_length=512, truncation=True,
                         return_tensors="pt")
        pipe.tokenizer_2(p, padding="longest", return_tensors="pt")
        torch.zeros(512, 3)  # text_ids
    h, w, n, b = req.height, req.width, req.num_inference_steps, req.num_images_per_prompt
    gen = torch.Generator("cpu").manual_seed(req.seed)
    if image_pil is None:
        latents, ids = pipe.prepare_latents(b, 16, h, w, torch.float32, torch.device("cpu"), gen)
    else:
        # FluxImg2ImgPipeline.prepare_latents minus the VAE encode (model work, excluded).
        pipe.image_processor.preprocess(image_pil, height=h, width=w)
        torch.randn((1, 16, h // 8, w // 8), generator=gen)  # the VAE posterior sample
        ids = pipe._prepare_latent_image_ids(b, h // 16, w // 16, "cpu", torch.float32)
        noise = torch.randn((b, 16, h // 8, w // 8), generator=gen)
        latents = pipe._pack_latents(noise, b, 16, h // 8, w // 8)
    cfg = pipe.scheduler.config
    mu = calculate_shift(latents.shape[1], cfg.get("base_image_seq_len", 256),
                         cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                         cfg.get("max_shift", 1.15))
    timesteps, _ = retrieve_timesteps(pipe.scheduler, n, "cpu",
                                      sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    if image_pil is not None:
        timesteps, _ = pipe.get_timesteps(n, req.strength, "cpu")
    return latents, ids, timesteps


CASES = {
    "1024-txt2img": dict(height=1024, width=1024, num_inference_steps=28),
    "1024-true-cfg": dict(height=1024, width=1024, num_inference_steps=28,
                          negative_prompt=NEGATIVE, true_cfg_scale=4.0),
    "512-img2img": dict(height=512, width=512, num_inference_steps=28, strength=0.6),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("side", ["diffusers", "harness"])
def test_new_context(benchmark, case, side):
    benchmark.group = f"new_context {case}"
    info(benchmark, side)
    kw = dict(CASES[case])
    img2img = "strength" in kw
    pixels = input_image(600, 640) if img2img else None
    if side == "harness":
        tok = tokenizer()
        req = request(prompt=PROMPT, input_image=pixels, **kw)
        tok.new_context(req)
        ctx = benchmark(tok.new_context, req)
        assert ctx.latents.shape[1] == (kw["height"] // 16) * (kw["width"] // 16)
    else:
        from PIL import Image

        pipe = reference().pipeline(img2img=img2img)
        req = request(prompt=PROMPT, **kw)
        pil = Image.fromarray(pixels) if img2img else None
        latents, _, _ = benchmark(diffusers_preprocess, pipe, req, pil)
        assert latents.shape[1] == (kw["height"] // 16) * (kw["width"] // 16)


# --------------------------------------------------------------------------------------------------
# end to end on the tiny model


E2E = {
    "128-4steps": dict(height=128, width=128, num_inference_steps=4),
    "256-28steps-true-cfg": dict(height=256, width=256, num_inference_steps=28,
                                 negative_prompt=NEGATIVE, true_cfg_scale=4.0),
}


@pytest.mark.parametrize("case", E2E)
@pytest.mark.parametrize("side", ["diffusers", "harness"])
def test_end_to_end(benchmark, case, side):
    benchmark.group = f"tiny end-to-end {case}"
    info(benchmark, side)
    kw = dict(E2E[case])
    req = request(prompt=PROMPT, **kw)
    if side == "harness":
        tok, den = tokenizer(), denoiser()

        def run():
            return den(tok.new_context(req)).images
    else:
        pipe = reference().pipeline(img2img=False)
        resolved = tokenizer().new_context(req)  # the model's defaults, as the harness applies them
        call = dict(prompt=req.prompt, negative_prompt=req.negative_prompt,
                    true_cfg_scale=resolved.true_cfg_scale, height=req.height, width=req.width,
                    num_inference_steps=req.num_inference_steps, guidance_scale=3.5,
                    output_type="np")

        def run():
            return pipe(generator=torch.Generator("cpu").manual_seed(req.seed), **call).images

    run()  # warm-up: first-call allocations, numba cache loads
    images = benchmark(run)
    assert images.shape == (1, kw["height"], kw["width"], 3)
