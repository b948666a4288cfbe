"""Shared helpers for the FLUX.2 tests: each tiny model is built and loaded once per process."""
from __future__ import annotations

import dataclasses
import functools

from tests.flux_fixtures import input_image  # noqa: F401  (re-exported for the FLUX.2 tests)

KLEIN = "tiny-flux2-klein"
DEV = "tiny-flux2-dev"
PROMPT = "a photo of a cat sitting on a red chair"


@functools.lru_cache(maxsize=None)
def resolved(name: str = KLEIN):
    from models.registry import resolve

    return resolve(name)


@functools.lru_cache(maxsize=None)
def tokenizer(name: str = KLEIN, dtype: str = "float32", distilled: bool = False):
    """The tokenizer; ``distilled=True`` reads Klein as step-distilled (``is_distilled``)."""
    from harness.tokenizers import PixelGenerationTokenizer

    tok = PixelGenerationTokenizer(resolved(name), dtype=dtype)
    if distilled:
        tok.rules = dataclasses.replace(tok.rules, is_distilled=True)
    return tok


@functools.lru_cache(maxsize=None)
def denoiser(name: str = KLEIN, dtype: str = "float32"):
    """The harness loop over the tiny model (one torch thread, as the parity runs assume)."""
    import torch

    from harness.pipelines.flux2 import Flux2Denoiser

    torch.set_num_threads(1)
    return Flux2Denoiser.from_folder(resolved(name).path, tokenizer(name, dtype).rules,
                                     dtype=dtype, progress=False)


@functools.lru_cache(maxsize=None)
def reference(name: str = KLEIN, dtype: str = "float32"):
    """diffusers' Flux2KleinPipeline / Flux2Pipeline over the very modules ``denoiser`` loaded."""
    from harness.parity.flux2 import ReferenceRunner

    r = resolved(name)
    return ReferenceRunner(r.family, r.path, denoiser(name, dtype).c, tokenizer(name, dtype).rules)


def request(**kw):
    from harness.tokenizers import PixelGenerationRequest

    kw.setdefault("prompt", PROMPT)
    kw.setdefault("height", 64)
    kw.setdefault("width", 64)
    kw.setdefault("num_inference_steps", 4)
    kw.setdefault("guidance_scale", 4.0)
    kw.setdefault("seed", 0)
    return PixelGenerationRequest(**kw)


def context(req, *, name: str = KLEIN, dtype: str = "float32", fault=None,
            distilled: bool = False):
    """new_context, or for a FLUX.2-only fault the family's build_context after ``_validate``
    (new_context only knows the shared faults)."""
    from harness.tokenizers.pixel import TOKENIZER_FAULTS, _validate

    tok = tokenizer(name, dtype, distilled)
    if fault is None or fault in TOKENIZER_FAULTS:
        return tok.new_context(req, fault=fault)
    return tok.rules.build_context(tok, req, _validate(req, tok.rules), fault=fault)


def parity(req, *, name: str = KLEIN, dtype: str = "float32", tokenizer_fault=None,
           loop_fault=None, distilled: bool = False):
    """(context, harness result, reference result, comparison) for one request."""
    from harness.parity.flux2 import compare

    ctx = context(req, name=name, dtype=dtype, fault=tokenizer_fault, distilled=distilled)
    ours = denoiser(name, dtype)(ctx, record_steps=True, fault=loop_fault)
    ref = reference(name, dtype)(req, ctx, initial_latents=ours.initial_latents,
                                 is_distilled=True if distilled else None)
    return ctx, ours, ref, compare(ours, ref)
