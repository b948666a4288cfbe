"""Z-Image parity: the harness loop against ZImagePipeline / ZImageImg2ImgPipeline.

Same scheme as ``harness.parity.pixel`` (whose comparison and report this module re-exports): the
reference runs over the very modules the harness loaded, draws its own noise from a generator
seeded like the request (torch noise) or takes our start latents (numpy noise), and its per-step
latents come from ``callback_on_step_end``.

ZImageImg2ImgPipeline preprocesses the input image at the image's own size (it ignores
height/width there, and a size mismatch then fails in ``scale_noise``), so the runner hands it the
image already resized to the request's size with the Lanczos resize VaeImageProcessor would use;
the pipeline's own resize is then a no-op copy.

With ``residual_threshold`` the reference runs under diffusers' own FirstBlockCache hooks on the
transformer's ``layers``. diffusers 0.42 registers Z-Image's block but cannot run it unaided: the
hooks look the block input up as ``hidden_states`` (Z-Image's is ``x``, passed positionally) and
ZImagePipeline sets no cache context. The runner supplies both — the input index, and one context
per call kind as the harness names its cache streams ("cfg" for the batched ``[pos; neg]`` call,
"cond" for positive-only calls) — and removes the hooks afterwards.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from .pixel import (ReferenceResult, StepRecorder, compare, first_block_cache_section,
                    parity_report, request_options, run_uncached, write_parity)
from .pixel import ReferenceRunner as _PixelRunner

__all__ = ["ReferenceRunner", "ReferenceResult", "compare", "parity_report", "write_parity",
           "request_options", "run_uncached", "first_block_cache_section"]


def _sized_image(source, height: int, width: int):
    """The request's input image as the RGB PIL image of the requested size."""
    from PIL import Image

    from harness.tokenizers.pixel import load_input_image

    image = load_input_image(source)
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    return image


def _with_fbc_hook(pipe, threshold: float, batch: int):
    """(info, callable): ``pipe`` run under diffusers' FirstBlockCache hooks, removed afterwards
    (see the module notes for the two shims)."""
    import dataclasses

    from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, apply_first_block_cache
    from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    info = {"threshold": float(threshold), "applied": False, "contexts": None, "reason": None}
    transformer = pipe.transformer

    def remove():
        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        registry.remove_hook(_FBC_LEADER_BLOCK_HOOK, recurse=True)
        registry.remove_hook(_FBC_BLOCK_HOOK, recurse=True)

    def install():
        apply_first_block_cache(transformer, FirstBlockCacheConfig(threshold=float(threshold)))
        for block in transformer.layers:
            for hook in HookRegistry.check_if_exists_or_initialize(block).hooks.values():
                meta = dataclasses.replace(hook._metadata)  # not the shared registry entry
                meta._cached_parameter_indices = {"hidden_states": 0}
                hook._metadata = meta

    try:
        install()
    except Exception as exc:  # a diffusers without the block registered, ...
        remove()
        info["reason"] = f"diffusers cannot cache {type(transformer).__name__}: {exc}"
        return info, pipe
    remove()
    info.update(applied=True, contexts="runner")

    def run(**kwargs):
        install()
        plain = transformer.forward

        def named(x, *args, **kw):
            _set_cache_context(transformer, CacheContext("cfg" if len(x) > batch else "cond"))
            return plain(x, *args, **kw)

        had = "forward" in transformer.__dict__
        transformer.forward = named
        try:
            return pipe(**kwargs)
        finally:
            if had:
                transformer.forward = plain
            else:
                del transformer.forward
            remove()

    return info, run


class ReferenceRunner(_PixelRunner):
    """Builds the Z-Image diffusers pipelines once over the harness's modules and runs them."""

    def __call__(self, request, ctx, *, initial_latents: np.ndarray | None = None,
                 residual_threshold: float | None = None) -> ReferenceResult:
        """Run the reference for ``request`` (whose context is ``ctx``); ``residual_threshold``:
        under diffusers' first-block cache hooks at that value."""
        import torch

        img2img = "image_nhwc" in ctx.extra_model_args
        pipe = self.pipeline(img2img)
        record = StepRecorder()

        kwargs: dict[str, Any] = dict(
            prompt=request.prompt, negative_prompt=request.negative_prompt,
            height=ctx.height, width=ctx.width, num_inference_steps=ctx.num_inference_steps,
            guidance_scale=ctx.guidance_scale, cfg_normalization=ctx.cfg_normalization,
            cfg_truncation=ctx.cfg_truncation, num_images_per_prompt=ctx.num_images_per_prompt,
            max_sequence_length=self.rules.max_text_length, output_type="np",
            callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents"])
        if img2img:
            kwargs.update(image=_sized_image(request.input_image, ctx.height, ctx.width),
                          strength=ctx.strength)
        if request.noise == "torch":
            kwargs["generator"] = torch.Generator("cpu").manual_seed(ctx.extra_model_args["seed"])
            inputs = "generator"
        else:
            # img2img given latents= skips the VAE encode and scale_noise: pass our mixed start.
            start = initial_latents if img2img else ctx.latents
            if start is None:
                raise ValueError("numpy-noise img2img parity needs the harness's initial latents")
            kwargs["latents"] = torch.from_numpy(np.array(start, dtype=np.float32))
            inputs = "latents"
        fbc, run = None, pipe
        if residual_threshold is not None:
            fbc, run = _with_fbc_hook(pipe, residual_threshold, ctx.num_images_per_prompt)
        t0 = time.perf_counter()
        out = run(**kwargs)
        total = time.perf_counter() - t0
        decoded = np.asarray(out.images, dtype=np.float32)
        images = (decoded * 255).round().astype(np.uint8)  # VaeImageProcessor.numpy_to_pil
        return ReferenceResult(
            pipeline=type(pipe).__name__, inputs=inputs, images=images, decoded=decoded,
            **record.result_fields(),
            total_s=total, first_block_cache=fbc)
