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

    SETTINGS = ("guidance_scale", "true_cfg_scale", "strength")

    def call_kwargs(self, request, ctx) -> dict:
        kwargs = dict(prompt=request.prompt, num_images_per_prompt=request.num_images_per_prompt,
                      **self.given(request, "negative_prompt", "true_cfg_scale", "height",
                                   "width", "num_inference_steps", "guidance_scale"))
        if self.is_img2img(ctx):  # the image as the user gave it: the pipeline resizes it
            kwargs.update(image=load_input_image(request.input_image),
                          **self.given(request, "strength"))
        return kwargs
