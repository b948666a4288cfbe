"""Shared helpers for the Z-Image tests: the tiny model is built and loaded once per process."""
from __future__ import annotations

import functools

TINY = "tiny-z-image"
PROMPT = "a photo of a cat sitting on a red chair"
NEGATIVE = "blurry, low quality"


@functools.lru_cache(maxsize=None)
def resolved():
    from models.registry import resolve

    return resolve(TINY)


@functools.lru_cache(maxsize=None)
def tokenizer(dtype: str = "float32"):
    from harness.tokenizers import PixelGenerationTokenizer

    return PixelGenerationTokenizer(resolved(), dtype=dtype)


@functools.lru_cache(maxsize=None)
def denoiser(dtype: str = "float32"):
    """The harness loop over the tiny model (one torch thread, as the parity runs assume)."""
    import torch

    from harness.pipelines.z_image import ZImageDenoiser

    torch.set_num_threads(1)
    return ZImageDenoiser.from_folder(resolved().path, tokenizer(dtype).rules, dtype=dtype,
                                      progress=False)


@functools.lru_cache(maxsize=None)
def reference(dtype: str = "float32"):
    """ZImagePipeline / ZImageImg2ImgPipeline over the very modules ``denoiser`` loaded."""
    from harness.parity.z_image import ReferenceRunner

    r = resolved()
    return ReferenceRunner(r.family, r.path, denoiser(dtype).c, tokenizer(dtype).rules)


def request(**kw):
    from harness.tokenizers import PixelGenerationRequest

    kw.setdefault("prompt", PROMPT)
    kw.setdefault("height", 64)
    kw.setdefault("width", 64)
    kw.setdefault("num_inference_steps", 4)
    kw.setdefault("guidance_scale", 0.0)
    kw.setdefault("seed", 0)
    return PixelGenerationRequest(**kw)


def faulty_context(req, fault: str, dtype: str = "float32"):
    """A deliberately wrong context straight from the family hook (``new_context`` only knows
    the FLUX fault names)."""
    from harness.tokenizers.pixel import _validate

    tok = tokenizer(dtype)
    return tok.rules.build_context(tok, req, _validate(req, tok.rules), fault=fault)


def parity(req, *, dtype: str = "float32", tokenizer_fault=None, loop_fault=None):
    """(context, harness result, reference result, comparison) for one request; the reference
    always gets the correct context."""
    from harness.parity.z_image import compare

    good = tokenizer(dtype).new_context(req)
    ctx = good if tokenizer_fault is None else faulty_context(req, tokenizer_fault, dtype)
    ours = denoiser(dtype)(ctx, record_steps=True, fault=loop_fault)
    ref = reference(dtype)(req, good, initial_latents=ours.initial_latents)
    return ctx, ours, ref, compare(ours, ref)
