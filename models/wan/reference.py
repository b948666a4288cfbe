"""The Wan parity reference: WanPipeline / WanImageToVideoPipeline over the harness's modules,
with the folder's own scheduler (UniPC or FlowMatchEuler), tokenizer and CLIP image processor.

The shared scheme of ``harness.parity.pixel.ReferenceRunner``: torch noise comes from a generator
seeded like the request (numpy noise through ``latents=``, which the I2V pipeline also takes as
the noise), per-step latents from ``callback_on_step_end``, and under a first-block cache
diffusers' own hook on ``pipe.transformer`` (the pipelines name their contexts cond/uncond).
"""
from __future__ import annotations

import os
from pathlib import Path

from harness.images import load_input_image
from harness.parity.pixel import ReferenceRunner

from ..diffusers_common import offline_env
from .rules import load_image_processor, rules

__all__ = ["reference_pipeline", "WanReferenceRunner"]


def reference_pipeline(components: dict, folder: str | os.PathLike, **_):
    """diffusers' pipeline of the folder's class over the same loaded modules (the reference)."""
    offline_env()
    import diffusers
    from transformers import AutoTokenizer

    folder = Path(folder)
    r = rules(folder)
    scheduler = getattr(diffusers, r.scheduler_class).from_pretrained(folder / "scheduler",
                                                                      local_files_only=True)
    parts = {"tokenizer": AutoTokenizer.from_pretrained(folder / "tokenizer",
                                                        local_files_only=True),
             "text_encoder": components["text_encoder"], "vae": components["vae"],
             "transformer": components["transformer"],
             "transformer_2": components.get("transformer_2"),
             "boundary_ratio": r.boundary_ratio,
             "expand_timesteps": bool(r.model_index.get("expand_timesteps", False))}
    if r.i2v:
        _ftfy_shim()
        parts["image_encoder"] = components.get("image_encoder")
        parts["image_processor"] = (load_image_processor(str(folder / "image_processor"))
                                    if r.has_image_encoder else None)
    pipe = getattr(diffusers, r.pipeline_class)(scheduler=scheduler, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ftfy_shim() -> None:
    """diffusers 0.42.1's WanImageToVideoPipeline calls ``ftfy.fix_text`` without checking that
    ftfy is installed (WanPipeline checks): without ftfy, give its module the identity, which is
    what WanPipeline does then and what the harness's ``prompt_clean`` does."""
    import types

    from diffusers.pipelines.wan import pipeline_wan_i2v
    from diffusers.utils import is_ftfy_available

    if not is_ftfy_available() and not hasattr(pipeline_wan_i2v, "ftfy"):
        pipeline_wan_i2v.ftfy = types.SimpleNamespace(fix_text=lambda text: text)


class WanReferenceRunner(ReferenceRunner):
    """The folder's Wan pipeline (text-to-video or image-to-video)."""

    reference_pipeline = staticmethod(reference_pipeline)
    SETTINGS = ("guidance_scale", "num_frames", "guidance_scale_2")

    def call_kwargs(self, request, ctx) -> dict:
        kwargs = dict(prompt=request.prompt,
                      num_videos_per_prompt=request.num_images_per_prompt,
                      **self.given(request, "negative_prompt", "height", "width", "num_frames",
                                   "num_inference_steps", "guidance_scale", "guidance_scale_2"))
        if self.rules.i2v:
            kwargs["image"] = load_input_image(request.input_image)
        return kwargs

    def start_latents(self, ctx, initial_latents):
        """``latents=`` is the noise for both pipelines (I2V encodes its image regardless)."""
        return ctx.latents

    def _settings(self, pipe, kwargs: dict, images, record) -> dict:
        """The shared settings, with the pipelines' own names mapped (num_videos_per_prompt) and
        their resolution of guidance_scale_2 (the first scale when the model has two experts)."""
        out = super()._settings(pipe, kwargs, images, record)
        out["num_images_per_prompt"] = kwargs.get("num_videos_per_prompt", 1)
        if pipe.config.boundary_ratio is not None and out.get("guidance_scale_2") is None:
            out["guidance_scale_2"] = out.get("guidance_scale")
        return out
