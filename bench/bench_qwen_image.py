"""Qwen-Image request path beside diffusers' own (same group = one ratio per table).

- ``new_context`` against the same preprocessing done the diffusers way: the chat template
  tokenized by the pipeline's Qwen2Tokenizer (prompt and, with true CFG, negative),
  ``prepare_latents`` (randn (B,1,C,h,w) + pack), ``calculate_shift`` + ``retrieve_timesteps`` with
  shift_terminal, and for the Plus edit pipeline the two resizes, ``VaeImageProcessor.preprocess``
  and the Qwen2-VL processor (placeholders + pixel patches). The models (text encoder, VAE encode)
  are excluded on both sides (new_context does not run models); diffusers builds no ids (its
  transformer makes the rope from shapes), the harness does (centred image and text ids).
- end to end on the tiny text-to-image model: ``new_context`` + the harness loop against
  ``QwenImagePipeline(...)`` on the same loaded modules, prompt in, uint8 images out.

Run (1 torch thread):
    PYTHONPATH=. python -m pytest bench/bench_qwen_image.py --benchmark-enable \
        --benchmark-group-by=group
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
from _common import info

from tests.qwen_fixtures import (EDIT_PROMPT, NEGATIVE, PLUS, PROMPT, T2I, denoiser, portrait,
                                 reference, request, tokenizer)


# --------------------------------------------------------------------------------------------------
# request preprocessing


def diffusers_preprocess(pipe, req, images=None):
    """What QwenImagePipeline / QwenImageEditPlusPipeline compute before their first model call,
    minus the models: tokens (and processor outputs), noise, schedule."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift, retrieve_timesteps
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import (
        CONDITION_IMAGE_SIZE, VAE_IMAGE_SIZE, calculate_dimensions)

    prompts = [req.prompt] + ([req.negative_prompt] if req.negative_prompt is not None
                              and (req.true_cfg_scale is None or req.true_cfg_scale > 1)
                              else [])
    cond = None
    if images is not None:
        cond = []
        for img in images:
            w, h = img.size
            cw, ch = calculate_dimensions(CONDITION_IMAGE_SIZE, w / h)
            vw, vh = calculate_dimensions(VAE_IMAGE_SIZE, w / h)
            cond.append(pipe.image_processor.resize(img, ch, cw))
            pipe.image_processor.preprocess(img, vh, vw).unsqueeze(2)
        labels = "".join(f"Picture {i + 1}: <|vision_start|><|image_pad|><|vision_end|>"
                         for i in range(len(images)))
    for p in prompts:
        if images is None:
            pipe.tokenizer([pipe.prompt_template_encode.format(p)], max_length=1024 + 34,
                           padding=True, truncation=True, return_tensors="pt")
        else:
            pipe.processor(text=[pipe.prompt_template_encode.format(labels + p)], images=cond,
                           padding=True, return_tensors="pt")
    h, w, n, b = req.height, req.width, req.num_inference_steps, req.num_images_per_prompt
    gen = torch.Generator("cpu").manual_seed(req.seed)
    if images is None:
        latents = pipe.prepare_latents(b, 16, h, w, torch.float32, torch.device("cpu"), gen)
    else:  # QwenImageEditPlusPipeline.prepare_latents minus the VAE encode
        latents = pipe.prepare_latents(None, b, 16, h, w, torch.float32, torch.device("cpu"),
                                       gen)[0]
    cfg = pipe.scheduler.config
    mu = calculate_shift(latents.shape[1], cfg.get("base_image_seq_len", 256),
                         cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                         cfg.get("max_shift", 1.15))
    timesteps, _ = retrieve_timesteps(pipe.scheduler, n, "cpu",
                                      sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    return latents, timesteps


CASES = {
    "1024-txt2img": (T2I, dict(height=1024, width=1024, num_inference_steps=50)),
    "1024-true-cfg": (T2I, dict(height=1024, width=1024, num_inference_steps=50,
                                negative_prompt=NEGATIVE, true_cfg_scale=4.0)),
    "edit-plus-2-images": (PLUS, dict(height=1024, width=1024, num_inference_steps=50,
                                      input_images=[portrait(0), portrait(1)])),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("side", ["diffusers", "harness"])
def test_new_context(benchmark, case, side):
    benchmark.group = f"qwen new_context {case}"
    info(benchmark, side)
    name, kw = CASES[case]
    kw = dict(kw)
    req = request(prompt=EDIT_PROMPT if "input_images" in kw else PROMPT, **kw)
    if side == "harness":
        tok = tokenizer(name)
        tok.new_context(req)
        ctx = benchmark(tok.new_context, req)
        assert ctx.latents.shape[1] == (kw["height"] // 16) * (kw["width"] // 16)
    else:
        from PIL import Image

        pipe = reference(name).pipeline()
        images = [Image.fromarray(a) for a in kw["input_images"]] if "input_images" in kw \
            else None
        latents, _ = benchmark(diffusers_preprocess, pipe, req, images)
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
    benchmark.group = f"qwen tiny end-to-end {case}"
    info(benchmark, side)
    kw = dict(E2E[case])
    req = request(prompt=PROMPT, **kw)
    if side == "harness":
        tok, den = tokenizer(T2I), denoiser(T2I)

        def run():
            return den(tok.new_context(req)).images
    else:
        pipe = reference(T2I).pipeline()
        resolved = tokenizer(T2I).new_context(req)  # the model's defaults, as the harness applies
        call = dict(prompt=req.prompt, negative_prompt=req.negative_prompt,
                    true_cfg_scale=resolved.true_cfg_scale, height=req.height, width=req.width,
                    num_inference_steps=req.num_inference_steps, output_type="np")

        def run():
            return pipe(generator=torch.Generator("cpu").manual_seed(req.seed), **call).images

    run()  # warm-up: first-call allocations, numba cache loads
    images = benchmark(run)
    assert images.shape == (1, kw["height"], kw["width"], 3)
