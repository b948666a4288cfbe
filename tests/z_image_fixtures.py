"""The Z-Image tests' fixtures: ``tests.pixel_fixtures`` bound to the tiny Z-Image (its reference
is ZImagePipeline / ZImageImg2ImgPipeline; requests default to guidance 0, no CFG)."""
from __future__ import annotations

from tests import pixel_fixtures as px
from tests.pixel_fixtures import NEGATIVE, PROMPT  # noqa: F401

TINY = "tiny-z-image"
resolved, tokenizer, denoiser, reference = px.bound(TINY)


def request(**kw):
    kw.setdefault("guidance_scale", 0.0)
    return px.request(**kw)


def faulty_context(req, fault: str, dtype: str = "float32"):
    """A deliberately wrong context (a Z-Image tokenizer fault)."""
    return tokenizer(dtype).new_context(req, fault=fault)


def parity(req, *, dtype: str = "float32", tokenizer_fault=None, loop_fault=None):
    """(context, harness result, reference result, comparison) for one request; the reference
    always gets the correct context."""
    return px.parity(TINY, req, dtype=dtype, tokenizer_fault=tokenizer_fault,
                     loop_fault=loop_fault)
