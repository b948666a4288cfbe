"""Qwen-Image parity: the harness loop against QwenImagePipeline / QwenImageEdit(Plus)Pipeline.

The reference is the folder's own diffusers pipeline built over the very modules the harness loaded
(``models.qwen_image.reference_pipeline``). With torch noise it gets a CPU generator seeded like the
request and draws its own noise, so equal initial latents are part of what is checked; with numpy
noise it gets our packed noise through ``latents=``. Edit pipelines get the request's input images
(they resize them, run the Qwen2-VL processor and encode them with the VAE themselves). The
comparison and the report are the shared ones of ``harness.parity.pixel``; with a
``residual_threshold`` the reference runs under diffusers' own FirstBlockCache hook (the pipelines
name their transformer calls "cond" / "uncond" themselves).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .pixel import (CLOSE_TOLERANCE, ReferenceResult, StepRecorder, _with_fbc_hook, compare,
                    parity_report, request_options, write_parity)

__all__ = ["CLOSE_TOLERANCE", "ReferenceResult", "ReferenceRunner", "compare", "parity_report",
           "write_parity", "request_options"]


class ReferenceRunner:
    """Builds the folder's diffusers pipeline once over the harness's modules and runs it."""

    def __init__(self, family, folder, components: dict, rules):
        self.family = family
        self.folder = Path(folder)
        self.components = components
        self.rules = rules
        self._pipe = None

    def pipeline(self, *_):
        if self._pipe is None:
            self._pipe = self.family.reference_pipeline(self.components, self.folder)
        return self._pipe

    def __call__(self, request, ctx, *, initial_latents: np.ndarray | None = None,
                 residual_threshold: float | None = None) -> ReferenceResult:
        """Run the reference for ``request`` (whose context is ``ctx``); ``residual_threshold``:
        under diffusers' first-block cache hook at that value."""
        import torch

        from harness.tokenizers.pixel import load_input_image

        pipe = self.pipeline()
        record = StepRecorder()

        kwargs: dict[str, Any] = dict(
            prompt=request.prompt, negative_prompt=request.negative_prompt,
            true_cfg_scale=ctx.true_cfg_scale, height=ctx.height, width=ctx.width,
            num_inference_steps=ctx.num_inference_steps, guidance_scale=None,
            num_images_per_prompt=ctx.num_images_per_prompt, output_type="np",
            callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents"])
        if self.rules.spec.edit:
            images = [load_input_image(src) for src in request.input_images]
            # QwenImageEditPipeline takes one image; the Plus pipeline a list.
            kwargs["image"] = images if self.rules.spec.picture_labels else images[0]
        if request.noise == "torch":
            kwargs["generator"] = torch.Generator("cpu").manual_seed(ctx.extra_model_args["seed"])
            inputs = "generator"
        else:
            kwargs["latents"] = torch.from_numpy(np.array(ctx.latents, dtype=np.float32))
            inputs = "latents"
        fbc, run = None, pipe
        if residual_threshold is not None:
            fbc, run = _with_fbc_hook(pipe, residual_threshold, ctx.negative_tokens is not None)
        t0 = time.perf_counter()
        out = run(**kwargs)
        total = time.perf_counter() - t0
        decoded = np.asarray(out.images, dtype=np.float32)
        images = (decoded * 255).round().astype(np.uint8)  # VaeImageProcessor.numpy_to_pil
        return ReferenceResult(
            pipeline=type(pipe).__name__, inputs=inputs, images=images, decoded=decoded,
            **record.result_fields(),
            total_s=total, first_block_cache=fbc)
