"""Wan request → VideoPixelContext: the cleaned UMT5 prompt (and the "" or given negative under
CFG), the schedule with UniPC's coefficient table, the 5-D noise in diffusers' draw shape, Wan
2.2's boundary and second guidance scale, and for image-to-video the resized input image (plus
the CLIP processor's pixels where the transformer takes image embeddings)."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from _fast.tokens import TokenBuffer
from harness.context.pixel import VideoPixelContext
from harness.context.text import new_request_id
from harness.errors import RequestError
from harness.images import load_input_image

from ..diffusers_common import negative_and_image_fields
from .rules import WanRules

__all__ = ["TOKENIZER_FAULTS", "build_context"]

#: Deliberately wrong contexts, for the parity tests' negative controls only.
TOKENIZER_FAULTS = ("unshifted_schedule", "noise_frames_last", "no_prompt_clean")


def _encode(rules: WanRules, text: str, fault: str | None):
    if fault == "no_prompt_clean":
        tok = rules.tokenizer
        ids = tok.encode(text).ids[:rules.max_text_length]
        out = np.full(rules.max_text_length, tok.token_to_id(rules.pad_token), np.int64)
        out[:len(ids)] = ids
        mask = np.zeros(rules.max_text_length, bool)
        mask[:len(ids)] = True
        return out, mask
    ids, mask, truncated = rules.encode_prompt(text)
    if truncated:
        warnings.warn(f"prompt truncated to {rules.max_text_length} tokens for the UMT5 text "
                      f"encoder (as WanPipeline's tokenizer call does)", stacklevel=4)
    return ids, mask


def build_context(rules: WanRules, tokenizer, request, opt: dict,
                  fault: str | None = None) -> VideoPixelContext:
    """The VideoPixelContext of a request ``PixelGenerationTokenizer`` has validated."""
    if fault is not None and fault not in TOKENIZER_FAULTS:
        raise ValueError(
            f"unknown Wan tokenizer fault {fault!r}; known: {', '.join(TOKENIZER_FAULTS)}")
    height, width, steps, seed = opt["height"], opt["width"], opt["steps"], opt["seed"]
    frames = opt["num_frames"]
    batch = request.num_images_per_prompt
    if opt["guidance_scale_2"] is not None and rules.boundary_ratio is None:
        raise RequestError("guidance_scale_2 applies to two-expert (Wan 2.2) models only; this "
                           "model has one transformer")
    image = None
    if rules.i2v:
        if request.input_image is None:
            raise RequestError("this image-to-video model animates an input image: give one "
                               "(--image)")
        if rules.has_image_encoder and batch > 1:
            raise RequestError("num_images_per_prompt > 1 is not supported with a CLIP image "
                               "encoder (WanImageToVideoPipeline repeats the image embeddings "
                               "per prompt, not per video, and fails)")
        image = load_input_image(request.input_image)
    elif request.input_image is not None:
        raise RequestError("this text-to-video model takes no input image")

    tokens, mask = _encode(rules, request.prompt, fault)
    cfg = rules.uses_cfg(opt["guidance"])
    negative = _encode(rules, request.negative_prompt or "", fault) if cfg else None

    timesteps, sigmas, table = rules.schedule(steps, fault=fault)
    shape = rules.noise_shape(batch, height, width, frames)
    if fault == "noise_frames_last":  # the frame axis drawn last: same numbers, wrong places
        draw = (shape[0], shape[1], shape[3], shape[4], shape[2])
        noise = tokenizer.draw_noise([draw], seed, request.noise, ["float32"])[0]
        noise = np.ascontiguousarray(np.moveaxis(noise, -1, 2))
    else:  # prepare_latents draws float32 whatever the model dtype
        noise = tokenizer.draw_noise([shape], seed, request.noise, ["float32"])[0]

    g2 = opt["guidance_scale_2"]
    if rules.boundary_ratio is not None and g2 is None:
        g2 = opt["guidance"]  # the pipelines' rule
    extra: dict[str, Any] = {"seed": seed, "mu": None, "t_start": 0,
                             "transformer_2": rules.two_experts}
    ctx_kw = negative_and_image_fields(negative, image, height, width, extra)
    if image is not None and rules.has_image_encoder:
        processed = rules.image_processor()(images=image, return_tensors="np")
        extra["clip_pixel_values"] = np.asarray(processed["pixel_values"], dtype=np.float32)
    return VideoPixelContext(
        tokens=TokenBuffer(tokens), mask=mask,
        request_id=request.request_id or new_request_id(),
        model_name=tokenizer.model_name,
        explicit_negative_prompt=request.negative_prompt is not None,
        timesteps=timesteps, sigmas=sigmas, latents=noise, step_coefficients=table,
        height=height, width=width, num_inference_steps=steps,
        guidance_scale=opt["guidance"], guidance_scale_2=g2,
        boundary_timestep=rules.boundary_timestep,
        true_cfg_scale=opt["true_cfg_scale"], strength=float(request.strength),
        num_images_per_prompt=batch, output_format=opt["format"],
        num_frames=frames, frame_rate=opt["frame_rate"],
        temporal_factor=rules.vae_scale_factor_temporal,
        residual_threshold=request.residual_threshold, extra_model_args=extra, **ctx_kw)
