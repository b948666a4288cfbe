"""The FLUX.2 tests' fixtures: ``tests.pixel_fixtures`` for the tiny Klein (default) and dev."""
from __future__ import annotations

from tests import pixel_fixtures as px
from tests.pixel_fixtures import PROMPT, input_image  # noqa: F401

KLEIN = "tiny-flux2-klein"
DEV = "tiny-flux2-dev"


def resolved(name: str = KLEIN):
    return px.resolved(name)


def tokenizer(name: str = KLEIN, dtype: str = "float32", distilled: bool = False):
    """The tokenizer; ``distilled=True`` reads Klein as step-distilled (``is_distilled``)."""
    return px.tokenizer(name, dtype, distilled)


def denoiser(name: str = KLEIN, dtype: str = "float32"):
    return px.denoiser(name, dtype)


def reference(name: str = KLEIN, dtype: str = "float32"):
    """diffusers' Flux2KleinPipeline / Flux2Pipeline over the very modules ``denoiser`` loaded."""
    return px.reference(name, dtype)


def request(**kw):
    kw.setdefault("guidance_scale", 4.0)
    return px.request(**kw)


def context(req, *, name: str = KLEIN, dtype: str = "float32", fault=None,
            distilled: bool = False):
    """new_context, with a shared or a FLUX.2 tokenizer fault."""
    return tokenizer(name, dtype, distilled).new_context(req, fault=fault)


def parity(req, *, name: str = KLEIN, dtype: str = "float32", tokenizer_fault=None,
           loop_fault=None, distilled: bool = False):
    """(context, harness result, reference result, comparison) for one request."""
    return px.parity(name, req, dtype=dtype, tokenizer_fault=tokenizer_fault,
                     loop_fault=loop_fault, distilled=distilled,
                     is_distilled=True if distilled else None)
