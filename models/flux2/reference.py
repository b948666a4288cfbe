"""The FLUX.2 parity reference: diffusers' Flux2KleinPipeline / Flux2Pipeline over the harness's
modules. With numpy noise it gets our noise unpacked to the (B, 128, h/2, w/2) shape its
``latents=`` argument takes; reference images go in as the same PIL images. The comparison is the
shared one, which already calls identical final latents decoding to different images a mismatch
(a broken decode path, e.g. a skipped BatchNorm de-normalisation), not "close".
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from harness.images import load_input_image
from harness.parity.pixel import ReferenceRunner

from ..diffusers_common import assemble_pipeline, offline_env
from .rules import NO_FIRST_BLOCK_CACHE, rules

__all__ = ["reference_pipeline", "Flux2ReferenceRunner"]


def reference_pipeline(components: dict, folder: str | os.PathLike, *, is_distilled=None):
    """diffusers' own Flux2KleinPipeline / Flux2Pipeline over the same loaded modules, with the
    folder's scheduler and tokenizer (the parity reference)."""
    offline_env()
    from diffusers import Flux2KleinPipeline, Flux2Pipeline

    folder = Path(folder)
    r = rules(folder)
    if r.layout == "klein":
        from transformers import Qwen2TokenizerFast

        tok = Qwen2TokenizerFast.from_pretrained(folder / "tokenizer", local_files_only=True)
        return assemble_pipeline(
            Flux2KleinPipeline, folder, components, tokenizer=tok,
            is_distilled=r.is_distilled if is_distilled is None else is_distilled)
    # The tokenizer stands in for dev's PixtralProcessor (which needs torchvision): for text
    # whose template starts with BOS both encode with add_special_tokens=False.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    return assemble_pipeline(Flux2Pipeline, folder, components, tokenizer=tok)

class Flux2ReferenceRunner(ReferenceRunner):
    """The folder's FLUX.2 pipeline; ``is_distilled=`` (a call keyword) overrides Klein's
    model_index flag."""

    reference_pipeline = staticmethod(reference_pipeline)

    SETTINGS = ("guidance_scale",)

    def call_kwargs(self, request, ctx) -> dict:
        kwargs = dict(prompt=request.prompt, num_images_per_prompt=request.num_images_per_prompt,
                      **self.given(request, "height", "width", "num_inference_steps",
                                   "guidance_scale"))
        if request.input_images:
            kwargs["image"] = [load_input_image(src) for src in request.input_images]
        return kwargs

    def start_latents(self, ctx, initial_latents: np.ndarray | None) -> np.ndarray:
        """Our packed noise tokens (B, h2·w2, C) back in the (B, C, h2, w2) shape it takes."""
        tokens = np.asarray(ctx.latents, dtype=np.float32)
        h2, w2 = self.rules.token_grid(ctx.height, ctx.width)
        return tokens.transpose(0, 2, 1).reshape(tokens.shape[0], tokens.shape[2], h2, w2)

    def cache_hook(self, pipe, threshold: float, ctx):
        return ({"threshold": float(threshold), "applied": False, "contexts": None,
                 "reason": NO_FIRST_BLOCK_CACHE}, pipe)
