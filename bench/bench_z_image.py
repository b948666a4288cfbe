"""Z-Image request path beside diffusers' own (same group = one ratio per table).

- ``new_context`` against the same preprocessing done the diffusers way: the chat template and
  padded tokenization by the pipeline's transformers tokenizer (prompt and, with CFG, negative),
  ``prepare_latents`` (randn), ``get_default_z_image_sigmas`` + ``calculate_shift`` +
  ``retrieve_timesteps`` (+ ``get_timesteps`` and ``VaeImageProcessor.preprocess`` for img2img).
  The text encoder is excluded on both sides (new_context does not run models).
- end to end on the tiny model: ``new_context`` + the harness loop against ``ZImagePipeline(...)``
  on the same loaded modules, prompt in, uint8 images out (diffusers with ``output_type="np"``).

Run (1 torch thread):
    PYTHONPATH=. python -m pytest bench/bench_z_image.py --benchmark-enable \
        --benchmark-group-by=group
"""
from __future__ import annotations


import pytest
import torch
from _common import info

from tests.flux_fixtures import input_image
from tests.z_image_fixtures import NEGATIVE, PROMPT, denoiser, reference, request, tokenizer


# --------------------------------------------------------------------------------------------------
# request preprocessing


def diffusers_preprocess(pipe, req, image_pil=None):
    """What ZImagePipeline / ZImageImg2ImgPipeline compute before their first model call, minus
    the text encoder: tokens, noise, schedule (and the img2img image and trimmed schedule)."""
    from diffusers.pipelines.z_image.pipeline_z_image import (calculate_shift,
                                                              get_default_z_image_sigmas,
                                                              retrieve_timesteps)

    prompts = [req.prompt] + ([req.negative_prompt or ""] if req.guidance_scale > 0 else [])
    for p in prompts:
        text = pipe.tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                  tokenize=False, add_generation_prompt=True,
                                                  enable_thinking=True)
        pipe.tokenizer([text], padding="max_length", max_length=512, truncation=True,
                       return_tensors="pt")
    h, w, n, b = req.height, req.width, req.num_inference_steps, req.num_images_per_prompt
    gen = torch.Generator("cpu").manual_seed(req.seed)
    shape = (b, 16, h // 8, w // 8)
    if image_pil is None:
        latents = pipe.prepare_latents(b, 16, h, w, torch.float32, torch.device("cpu"), gen)
    else:
        # ZImageImg2ImgPipeline.prepare_latents minus the VAE encode (model work, excluded).
        pipe.image_processor.preprocess(image_pil)
        torch.randn((1,) + shape[1:], generator=gen)  # the VAE posterior sample
        latents = torch.randn(shape, generator=gen)
    cfg = pipe.scheduler.config
    mu = calculate_shift((h // 16) * (w // 16), cfg.get("base_image_seq_len", 256),
                         cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                         cfg.get("max_shift", 1.15))
    timesteps, _ = retrieve_timesteps(pipe.scheduler, n, "cpu",
                                      sigmas=get_default_z_image_sigmas(n), mu=mu)
    if image_pil is not None:
        timesteps, _ = pipe.get_timesteps(n, req.strength, "cpu")
    return latents, timesteps


CASES = {
    "1024-turbo": dict(height=1024, width=1024, num_inference_steps=9, guidance_scale=0.0),
    "1024-cfg": dict(height=1024, width=1024, num_inference_steps=50, guidance_scale=5.0,
                     negative_prompt=NEGATIVE),
    "512-img2img": dict(height=512, width=512, num_inference_steps=9, guidance_scale=0.0,
                        strength=0.6),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("side", ["diffusers", "harness"])
def test_new_context(benchmark, case, side):
    benchmark.group = f"z-image new_context {case}"
    info(benchmark, side)
    kw = dict(CASES[case])
    img2img = "strength" in kw
    pixels = input_image(kw["height"], kw["width"]) if img2img else None
    shape = (1, 16, kw["height"] // 8, kw["width"] // 8)
    if side == "harness":
        tok = tokenizer()
        req = request(prompt=PROMPT, input_image=pixels, **kw)
        tok.new_context(req)
        ctx = benchmark(tok.new_context, req)
        assert ctx.latents.shape == shape
    else:
        from PIL import Image

        pipe = reference().pipeline(img2img=img2img)
        req = request(prompt=PROMPT, **kw)
        pil = Image.fromarray(pixels) if img2img else None
        latents, _ = benchmark(diffusers_preprocess, pipe, req, pil)
        assert tuple(latents.shape) == shape


# --------------------------------------------------------------------------------------------------
# end to end on the tiny model


E2E = {
    "128-9steps-turbo": dict(height=128, width=128, num_inference_steps=9, guidance_scale=0.0),
    "128-8steps-cfg": dict(height=128, width=128, num_inference_steps=8, guidance_scale=4.0,
                           negative_prompt=NEGATIVE),
}


@pytest.mark.parametrize("case", E2E)
@pytest.mark.parametrize("side", ["diffusers", "harness"])
def test_end_to_end(benchmark, case, side):
    benchmark.group = f"z-image tiny end-to-end {case}"
    info(benchmark, side)
    kw = dict(E2E[case])
    req = request(prompt=PROMPT, **kw)
    if side == "harness":
        tok, den = tokenizer(), denoiser()

        def run():
            return den(tok.new_context(req)).images
    else:
        pipe = reference().pipeline(img2img=False)
        call = dict(prompt=req.prompt, negative_prompt=req.negative_prompt, height=req.height,
                    width=req.width, num_inference_steps=req.num_inference_steps,
                    guidance_scale=req.guidance_scale, output_type="np")

        def run():
            return pipe(generator=torch.Generator("cpu").manual_seed(req.seed), **call).images

    run()  # warm-up: first-call allocations, numba cache loads
    images = benchmark(run)
    assert images.shape == (1, kw["height"], kw["width"], 3)
