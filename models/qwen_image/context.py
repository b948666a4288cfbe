"""Qwen-Image request → context: the chat template with expanded image placeholders, the edit
pipelines' two resize targets of each conditioning image, schedule, packed noise and centred ids
(what ``QwenImageRules.build_context`` returns)."""
from __future__ import annotations

from typing import Any

import numpy as np

from _fast.tokens import TokenBuffer
from harness.context import PixelContext
from harness.context.text import new_request_id
from harness.errors import RequestError
from harness.images import load_input_image, preprocess_image

from .rules import MAX_ASPECT_RATIO, ROPE_POSITIONS, QwenImageRules, calculate_dimensions

__all__ = ["TOKENIZER_FAULTS", "build_context"]

#: Deliberately wrong contexts, for the parity tests' negative controls only.
TOKENIZER_FAULTS = ("drop_off_by_one", "no_shift_terminal", "prompt_image_at_vae_size")


def _edit_inputs(rules: QwenImageRules, request, fault: str | None) -> dict:
    """Load the conditioning images and prepare them at the pipeline's two resize targets."""
    from PIL import Image

    spec = rules.spec
    originals = [load_input_image(src) for src in request.input_images]
    prompt_images, vae_images, vae_sizes, cond_sizes = [], [], [], []
    for i, img in enumerate(originals):
        w, h = img.size
        if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
            raise RequestError(f"input image {i} is {w}x{h}: aspect ratios beyond "
                               f"{MAX_ASPECT_RATIO}:1 are not supported")
        vae_w, vae_h = calculate_dimensions(spec.vae_area, w / h)
        cond_area = spec.vae_area if fault == "prompt_image_at_vae_size" else spec.condition_area
        cond_w, cond_h = calculate_dimensions(cond_area, w / h)
        # VaeImageProcessor.resize (Lanczos) for the VL encoder's copy; preprocess for the VAE's.
        prompt_images.append(img.resize((cond_w, cond_h), resample=Image.Resampling.LANCZOS)
                             if img.size != (cond_w, cond_h) else img.copy())
        vae_images.append(preprocess_image(img, vae_h, vae_w)[1])
        vae_sizes.append((vae_w, vae_h))
        cond_sizes.append((cond_w, cond_h))
    processor = rules.image_processor()
    processed = processor(images=prompt_images, return_tensors="np")
    grid = np.asarray(processed["image_grid_thw"], dtype=np.int64)
    merge = int(processor.merge_size)
    return {
        "originals": [np.asarray(im, dtype=np.uint8) for im in originals],
        "prompt_images": [np.asarray(im, dtype=np.uint8) for im in prompt_images],
        "vae_images": vae_images, "vae_sizes": vae_sizes, "cond_sizes": cond_sizes,
        "pixel_values": np.ascontiguousarray(processed["pixel_values"], dtype=np.float32),
        "image_grid_thw": grid,
        "image_tokens": [int(np.prod(g)) // (merge * merge) for g in grid],
    }


def build_context(rules: QwenImageRules, tokenizer, request, opt: dict, fault: str | None = None):
    """Request → PixelContext as QwenImagePipeline / QwenImageEdit(Plus)Pipeline prepare it.

    ``tokens``: the whole chat template (the text encoder sees the prefix; its first ``drop_idx``
    hidden states are dropped afterwards), with ``<|image_pad|>`` expanded for edit models.
    ``latents``: the packed (B, seq, 4C) noise, drawn as (B, 1, C, h, w). ``latent_image_ids``:
    centred (frame, row, col) ids of the noise grid, then of each conditioning image on frames
    1, 2, ...; ``text_ids``: the diagonal ids that follow them. ``extra_model_args``: ``seed``,
    ``mu``, ``t_start`` (0), ``drop_idx``, and for edit models ``pixel_values`` /
    ``image_grid_thw`` (the VL encoder's image input) and the two resize targets.
    """
    from _fast import qwen_image_ids, qwen_text_ids

    if fault is not None and fault not in TOKENIZER_FAULTS:
        raise ValueError(f"unknown tokenizer fault {fault!r}; known: {', '.join(TOKENIZER_FAULTS)}")
    spec = rules.spec
    if request.input_image is not None:
        raise RequestError(
            f"{spec.name} has no img2img mode: "
            + (f"give the image(s) to edit as input_images (1 to {spec.max_images})" if spec.edit
               else "it generates from text only"))
    height, width, steps, seed = opt["height"], opt["width"], opt["steps"], opt["seed"]
    if steps < rules.min_steps:
        raise RequestError(
            f"num_inference_steps must be at least {rules.min_steps} for this model, got {steps}: "
            f"its schedule stretches the last sigma to shift_terminal, which is 0/0 for a single "
            f"step (diffusers returns an all-NaN image)")
    batch = request.num_images_per_prompt
    edit = None
    if spec.edit:
        if not request.input_images:
            raise RequestError(f"{spec.name} edits images: give 1 to {spec.max_images} "
                               f"input image(s)")
        edit = _edit_inputs(rules, request, fault)
        # The output size defaults to the (last) input image's VAE size.
        if request.width is None:
            width = edit["vae_sizes"][-1][0]
        if request.height is None:
            height = edit["vae_sizes"][-1][1]

    image_tokens = edit["image_tokens"] if edit else []
    tokens = rules.encode_text(request.prompt, image_tokens)
    explicit_negative = request.negative_prompt is not None
    true_cfg = rules.uses_true_cfg(opt["true_cfg_scale"], explicit_negative)
    negative = rules.encode_text(request.negative_prompt, image_tokens) if true_cfg else None
    drop = rules.drop_idx - (1 if fault == "drop_off_by_one" else 0)

    timesteps, sigmas, mu = rules.schedule(steps, height, width,
                                           terminal=fault != "no_shift_terminal")
    noise = tokenizer.draw_noise([rules.noise_shape(batch, height, width)], seed,
                               request.noise)[0]
    shapes = [rules.token_grid(height, width)]
    if edit:
        shapes += [rules.token_grid(h, w) for w, h in edit["vae_sizes"]]

    text_ids = qwen_text_ids(len(tokens) - drop, shapes)
    longest = max(len(tokens), len(negative) if negative is not None else 0) - drop
    if int(text_ids[0, 0]) + longest > ROPE_POSITIONS:
        raise RequestError(f"prompt too long: {longest} tokens from rope position "
                           f"{int(text_ids[0, 0])} run past the transformer's {ROPE_POSITIONS} "
                           f"positions")
    extra: dict[str, Any] = {"seed": seed, "mu": mu, "t_start": 0, "drop_idx": drop}
    ctx_kw: dict[str, Any] = {}
    if negative is not None:
        ctx_kw.update(negative_tokens=TokenBuffer(negative),
                      negative_mask=np.ones(len(negative), dtype=bool),
                      negative_text_ids=qwen_text_ids(len(negative) - drop, shapes))
    if edit:
        ctx_kw.update(input_images=edit["originals"], prompt_images=edit["prompt_images"],
                      vae_condition_images=edit["vae_images"])
        extra.update(pixel_values=edit["pixel_values"], image_grid_thw=edit["image_grid_thw"],
                     vae_image_sizes=edit["vae_sizes"], condition_image_sizes=edit["cond_sizes"])
    return PixelContext(
        tokens=TokenBuffer(tokens),
        mask=np.ones(len(tokens), dtype=bool),
        request_id=request.request_id or new_request_id(),
        model_name=tokenizer.model_name,
        explicit_negative_prompt=explicit_negative,
        timesteps=timesteps,
        sigmas=sigmas,
        latents=rules.pack(noise),
        latent_image_ids=qwen_image_ids(shapes),
        text_ids=text_ids,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=opt["guidance"],
        true_cfg_scale=opt["true_cfg_scale"],
        strength=float(request.strength),
        num_images_per_prompt=batch,
        output_format=opt["format"],
        residual_threshold=request.residual_threshold,
        extra_model_args=extra,
        **ctx_kw,
    )
