"""The FLUX.1 parity reference: diffusers' FluxPipeline / FluxImg2ImgPipeline over the harness's
modules, called with the request's arguments (the shared runner adds noise and step recording)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from harness.images import load_input_image
from harness.parity.pixel import ReferenceRunner

from ..diffusers_common import offline_env

__all__ = ["reference_pipeline", "Flux1ReferenceRunner"]


def reference_pipeline(components: dict, folder: str | os.PathLike, *, img2img: bool):
    """diffusers' own FluxPipeline / FluxImg2ImgPipeline over the same loaded modules, with the
    folder's scheduler and transformers tokenizers (the parity reference)."""
    offline_env()
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline, FluxPipeline
    from transformers import CLIPTokenizer, T5TokenizerFast

    folder = Path(folder)
    cls = FluxImg2ImgPipeline if img2img else FluxPipeline
    pipe = cls(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(
            folder / "scheduler", local_files_only=True),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True),
        tokenizer_2=T5TokenizerFast.from_pretrained(folder / "tokenizer_2", local_files_only=True),
        **components,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Flux1ReferenceRunner(ReferenceRunner):
    """FluxPipeline for text-to-image, FluxImg2ImgPipeline when the context has an input image."""

    reference_pipeline = staticmethod(reference_pipeline)

    def pipeline_key(self, ctx) -> dict:
        return {"img2img": "image_nhwc" in ctx.extra_model_args}

    def call_kwargs(self, request, ctx) -> dict:
        kwargs = dict(
            prompt=request.prompt, negative_prompt=request.negative_prompt,
            true_cfg_scale=ctx.true_cfg_scale, height=ctx.height, width=ctx.width,
            num_inference_steps=ctx.num_inference_steps, guidance_scale=ctx.guidance_scale,
            num_images_per_prompt=ctx.num_images_per_prompt,
            max_sequence_length=self.rules.max_text_length)
        if self.pipeline_key(ctx)["img2img"]:
            kwargs.update(image=load_input_image(request.input_image), strength=ctx.strength)
        return kwargs

    def start_latents(self, ctx, initial_latents: np.ndarray | None) -> np.ndarray:
        """img2img given ``latents=`` skips the VAE encode and scale_noise: our mixed start."""
        if not self.pipeline_key(ctx)["img2img"]:
            return ctx.latents
        if initial_latents is None:
            raise ValueError("numpy-noise img2img parity needs the harness's initial latents")
        return initial_latents
