"""The FLUX.1 parity reference: diffusers' FluxPipeline / FluxImg2ImgPipeline over the harness's
modules, called with the request's arguments (the shared runner adds noise and step recording)."""
from __future__ import annotations

import os
from pathlib import Path

from harness.images import load_input_image
from harness.parity.pixel import ReferenceRunner

from ..diffusers_common import assemble_pipeline, offline_env

__all__ = ["reference_pipeline", "Flux1ReferenceRunner"]


def reference_pipeline(components: dict, folder: str | os.PathLike, *, img2img: bool):
    """diffusers' own FluxPipeline / FluxImg2ImgPipeline over the same loaded modules, with the
    folder's scheduler and transformers tokenizers (the parity reference)."""
    offline_env()
    from diffusers import FluxImg2ImgPipeline, FluxPipeline
    from transformers import CLIPTokenizer, T5TokenizerFast

    folder = Path(folder)
    return assemble_pipeline(
        FluxImg2ImgPipeline if img2img else FluxPipeline, folder, components,
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True),
        tokenizer_2=T5TokenizerFast.from_pretrained(folder / "tokenizer_2", local_files_only=True))

class Flux1ReferenceRunner(ReferenceRunner):
    """FluxPipeline for text-to-image, FluxImg2ImgPipeline when the context has an input image."""

    reference_pipeline = staticmethod(reference_pipeline)
    img2img_pipeline = True

    def call_kwargs(self, request, ctx) -> dict:
        kwargs = dict(
            prompt=request.prompt, negative_prompt=request.negative_prompt,
            true_cfg_scale=ctx.true_cfg_scale, height=ctx.height, width=ctx.width,
            num_inference_steps=ctx.num_inference_steps, guidance_scale=ctx.guidance_scale,
            num_images_per_prompt=ctx.num_images_per_prompt,
            max_sequence_length=self.rules.max_text_length)
        if self.is_img2img(ctx):
            kwargs.update(image=load_input_image(request.input_image), strength=ctx.strength)
        return kwargs
