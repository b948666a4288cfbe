"""FLUX.2 parity: the harness loop against Flux2KleinPipeline / Flux2Pipeline on the same modules.

With torch noise the pipeline draws its own noise from a CPU generator seeded like the request, so
equal initial latents are part of what is checked; with numpy noise it gets our noise, unpacked to
the (B, 128, h/2, w/2) shape its ``latents=`` argument takes. Reference images go in as the same
PIL images. Comparison and report writing are the shared image-parity ones, with one rule added:
identical final latents that decode to different images are a mismatch (a broken decode path,
e.g. a skipped BatchNorm de-normalisation), not "close".
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from . import pixel as _pixel
from .pixel import (CLOSE_TOLERANCE, ReferenceResult, StepRecorder, request_options,
                    write_parity)

__all__ = ["CLOSE_TOLERANCE", "ReferenceResult", "ReferenceRunner", "compare", "parity_report",
           "write_parity", "request_options"]


class ReferenceRunner:
    """Builds the folder's diffusers FLUX.2 pipeline once over the harness's modules and runs it."""

    def __init__(self, family, folder, components: dict, rules):
        self.family = family
        self.folder = Path(folder)
        self.components = components
        self.rules = rules
        self._pipes: dict[Any, Any] = {}

    def pipeline(self, is_distilled: bool | None = None):
        """The reference pipeline; ``is_distilled`` overrides Klein's model_index flag."""
        if is_distilled not in self._pipes:
            self._pipes[is_distilled] = self.family.reference_pipeline(
                self.components, self.folder, is_distilled=is_distilled)
        return self._pipes[is_distilled]

    def __call__(self, request, ctx, *, initial_latents: np.ndarray | None = None,
                 is_distilled: bool | None = None) -> ReferenceResult:
        """Run the reference for ``request`` (whose context is ``ctx``); see the module notes."""
        import torch

        from harness.tokenizers.pixel import load_input_image

        pipe = self.pipeline(is_distilled)
        record = StepRecorder()

        kwargs: dict[str, Any] = dict(
            prompt=request.prompt, height=ctx.height, width=ctx.width,
            num_inference_steps=ctx.num_inference_steps, guidance_scale=ctx.guidance_scale,
            num_images_per_prompt=ctx.num_images_per_prompt,
            max_sequence_length=self.rules.max_text_length, output_type="np",
            callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents"])
        if request.input_images:
            kwargs["image"] = [load_input_image(src) for src in request.input_images]
        if request.noise == "torch":
            kwargs["generator"] = torch.Generator("cpu").manual_seed(ctx.extra_model_args["seed"])
            inputs = "generator"
        else:
            tokens = np.asarray(ctx.latents, dtype=np.float32)
            h2, w2 = self.rules.token_grid(ctx.height, ctx.width)
            noise = tokens.transpose(0, 2, 1).reshape(tokens.shape[0], tokens.shape[2], h2, w2)
            kwargs["latents"] = torch.from_numpy(np.ascontiguousarray(noise))
            inputs = "latents"
        t0 = time.perf_counter()
        out = pipe(**kwargs)
        total = time.perf_counter() - t0
        decoded = np.asarray(out.images, dtype=np.float32)
        images = (decoded * 255).round().astype(np.uint8)  # VaeImageProcessor.numpy_to_pil
        return ReferenceResult(
            pipeline=type(pipe).__name__, inputs=inputs, images=images, decoded=decoded,
            **record.result_fields(),
            total_s=total)


# The shared comparison already turns "same latents, different images" into a mismatch.
compare = _pixel.compare
parity_report = _pixel.parity_report
