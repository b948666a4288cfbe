"""The Qwen-Image tests' fixtures: ``tests.pixel_fixtures`` for the three tiny Qwen-Image models;
reference runs are memoised per request so that negative controls reuse them."""
from __future__ import annotations

from tests import pixel_fixtures as px
from tests.pixel_fixtures import NEGATIVE, PROMPT, input_image  # noqa: F401

T2I, EDIT, PLUS = "tiny-qwen-image", "tiny-qwen-image-edit", "tiny-qwen-image-edit-plus"
EDIT_PROMPT = "make the chair blue and add a hat"


def resolved(name: str = T2I):
    return px.resolved(name)


def tokenizer(name: str = T2I, dtype: str = "float32"):
    return px.tokenizer(name, dtype)


def denoiser(name: str = T2I, dtype: str = "float32"):
    return px.denoiser(name, dtype)


def reference(name: str = T2I, dtype: str = "float32"):
    """diffusers' own pipeline over the very modules ``denoiser`` loaded."""
    return px.reference(name, dtype)


def request(**kw):
    kw.setdefault("prompt", EDIT_PROMPT if kw.get("input_images") else PROMPT)
    return px.request(**kw)


def portrait(seed: int = 0):
    """A 2:3 picture: its ~1 MP VAE copy (832x1248) is taller than wide, which keeps the tiny 3-D
    VAE's convolutions on the fast mkldnn path on CPU (~2x faster than landscape)."""
    return input_image(90, 60, seed=seed)


def reference_result(name: str, req, ctx, dtype: str = "float32"):
    """The reference run of ``req`` (memoised: it does not depend on harness faults)."""
    return px.reference_result(name, req, ctx, dtype)


def parity(req, name: str = T2I, *, dtype: str = "float32", tokenizer_fault=None,
           loop_fault=None):
    """(context, harness result, reference result, comparison) for one request."""
    return px.parity(name, req, dtype=dtype, tokenizer_fault=tokenizer_fault,
                     loop_fault=loop_fault, memoise=True)
