"""Shared helpers for the FLUX.1 tests: the tiny model is built and loaded once per process."""
from __future__ import annotations

import functools

import numpy as np

TINY = "tiny-flux1"
PROMPT = "a photo of a cat sitting on a red chair"
NEGATIVE = "blurry, low quality"


@functools.lru_cache(maxsize=None)
def resolved():
    from models.registry import resolve

    return resolve(TINY)


def tokenizer(dtype: str = "float32"):
    """One shared instance per dtype (``tokenizer()`` and ``tokenizer("float32")`` are the same)."""
    return _tokenizer(dtype)


@functools.lru_cache(maxsize=None)
def _tokenizer(dtype: str):
    from harness.tokenizers import PixelGenerationTokenizer

    return PixelGenerationTokenizer(resolved(), dtype=dtype)


def denoiser(dtype: str = "float32"):
    """One shared instance per dtype (``denoiser()`` and ``denoiser("float32")`` are the same)."""
    return _denoiser(dtype)


@functools.lru_cache(maxsize=None)
def _denoiser(dtype: str):
    """The harness loop over the tiny model (one torch thread, as the parity runs assume)."""
    import torch

    from harness.pipelines.flux import FluxDenoiser

    torch.set_num_threads(1)
    tok = tokenizer(dtype)
    return FluxDenoiser.from_folder(resolved().path, tok.rules, dtype=dtype, progress=False)


def reference(dtype: str = "float32"):
    """One shared instance per dtype (``reference()`` and ``reference("float32")`` are the same)."""
    return _reference(dtype)


@functools.lru_cache(maxsize=None)
def _reference(dtype: str):
    """diffusers' FluxPipeline / FluxImg2ImgPipeline over the very modules ``denoiser`` loaded."""
    from harness.parity.pixel import ReferenceRunner

    r = resolved()
    return ReferenceRunner(r.family, r.path, denoiser(dtype).c, tokenizer(dtype).rules)


def request(**kw):
    from harness.tokenizers import PixelGenerationRequest

    kw.setdefault("prompt", PROMPT)
    kw.setdefault("height", 64)
    kw.setdefault("width", 64)
    kw.setdefault("num_inference_steps", 4)
    kw.setdefault("seed", 0)
    return PixelGenerationRequest(**kw)


def input_image(height: int = 80, width: int = 120, seed: int = 0) -> np.ndarray:
    """A smooth colourful uint8 picture (a different size than requested, so it gets resized)."""
    y, x = np.mgrid[0:height, 0:width]
    rs = np.random.RandomState(seed)
    img = np.stack([127 + 120 * np.sin(x / 9.0 + seed), 127 + 120 * np.cos(y / 7.0),
                    127 + 60 * np.sin((x + y) / 11.0)], axis=-1)
    img = img + rs.randint(-6, 7, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def parity(req, *, dtype: str = "float32", tokenizer_fault=None, loop_fault=None):
    """(context, harness result, reference result, comparison) for one request."""
    from harness.parity.pixel import compare

    ctx = tokenizer(dtype).new_context(req, fault=tokenizer_fault)
    ours = denoiser(dtype)(ctx, record_steps=True, fault=loop_fault)
    ref = reference(dtype)(req, ctx, initial_latents=ours.initial_latents)
    return ctx, ours, ref, compare(ours, ref)
