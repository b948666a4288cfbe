"""The Z-Image parity reference: ZImagePipeline / ZImageImg2ImgPipeline over the harness's modules.

The shared scheme of ``harness.parity.pixel.ReferenceRunner``: the reference runs over the very
modules the harness loaded, draws its own noise from a generator seeded like the request (torch
noise) or takes our start latents (numpy noise), and its per-step latents come from
``callback_on_step_end``.

ZImageImg2ImgPipeline preprocesses the input image at the image's own size floored to 16 (it
ignores height/width there, and a size mismatch then fails in ``scale_noise``). The runner hands it
the user's image as given; only where the user asked for another size, which the pipeline refuses
and the harness accepts (it resizes the image), the reference gets the image already resized to
that size with the Lanczos resize VaeImageProcessor would use, and the report says so (an
extension).

With ``residual_threshold`` the reference runs under diffusers' own FirstBlockCache hooks on the
transformer's ``layers``. diffusers 0.42 registers Z-Image's block but cannot run it unaided: the
hooks look the block input up as ``hidden_states`` (Z-Image's is ``x``, passed positionally) and
ZImagePipeline sets no cache context. The runner supplies both — the input index, and one context
per call kind as the harness names its cache streams ("cfg" for the batched ``[pos; neg]`` call,
"cond" for positive-only calls) — and removes the hooks afterwards.
"""
from __future__ import annotations

import os
from pathlib import Path

from harness.images import load_input_image
from harness.parity.pixel import ReferenceRunner

from ..diffusers_common import assemble_pipeline, offline_env

__all__ = ["reference_pipeline", "ZImageReferenceRunner"]


def reference_pipeline(components: dict, folder: str | os.PathLike, *, img2img: bool):
    """diffusers' ZImagePipeline / ZImageImg2ImgPipeline over the same loaded modules, with the
    folder's scheduler and transformers tokenizer (the parity reference)."""
    offline_env()
    from diffusers import ZImageImg2ImgPipeline, ZImagePipeline
    from transformers import AutoTokenizer

    folder = Path(folder)
    return assemble_pipeline(
        ZImageImg2ImgPipeline if img2img else ZImagePipeline, folder, components,
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True))

def _resized(image, height: int, width: int):
    """``image`` resized to the requested size as VaeImageProcessor would (Lanczos)."""
    from PIL import Image

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


class ZImageReferenceRunner(ReferenceRunner):
    """ZImagePipeline for text-to-image, ZImageImg2ImgPipeline when the context has an input
    image (as the user gave it, or resized where that is an extension: see the module notes)."""

    reference_pipeline = staticmethod(reference_pipeline)
    img2img_pipeline = True
    SETTINGS = ("guidance_scale", "cfg_truncation", "cfg_normalization", "strength")

    def call_kwargs(self, request, ctx) -> dict:
        return self.prepare(request, ctx)[0]

    def prepare(self, request, ctx) -> tuple[dict, str | None]:
        """ZImageImg2ImgPipeline works at the input image's own size (floored to 16): asked for
        another, it fails, so the harness's resized image goes in and that is an extension."""
        kwargs = dict(prompt=request.prompt, num_images_per_prompt=request.num_images_per_prompt,
                      **self.given(request, "negative_prompt", "height", "width",
                                   "num_inference_steps", "guidance_scale", "cfg_normalization",
                                   "cfg_truncation"))
        if not self.is_img2img(ctx):
            return kwargs, None
        image, extension = load_input_image(request.input_image), None
        w, h = image.size
        m = self.rules.size_multiple
        native = (h // m * m, w // m * m)
        if (request.height is not None or request.width is not None) and \
                (ctx.height, ctx.width) != native:
            image = _resized(image, ctx.height, ctx.width)
            extension = (f"ZImageImg2ImgPipeline refuses an input of another size (the image is "
                         f"{w}x{h}, so it works at {native[1]}x{native[0]}; the request asks "
                         f"for {ctx.width}x{ctx.height}); compared on the harness's resized input")
        kwargs.update(image=image, **self.given(request, "strength"))
        return kwargs, extension

    def cache_hook(self, pipe, threshold: float, ctx):
        return _with_fbc_hook(pipe, threshold, ctx.num_images_per_prompt)
