"""The FLUX.1 tests' fixtures: ``tests.pixel_fixtures`` bound to the tiny FLUX.1 (its reference is
FluxPipeline / FluxImg2ImgPipeline over the very modules ``denoiser`` loaded)."""
from __future__ import annotations

from tests import pixel_fixtures as px
from tests.pixel_fixtures import NEGATIVE, PROMPT, input_image, request  # noqa: F401

TINY = "tiny-flux1"
resolved, tokenizer, denoiser, reference = px.bound(TINY)


def parity(req, *, dtype: str = "float32", tokenizer_fault=None, loop_fault=None):
    """(context, harness result, reference result, comparison) for one request."""
    return px.parity(TINY, req, dtype=dtype, tokenizer_fault=tokenizer_fault,
                     loop_fault=loop_fault)
