"""Shared helpers for the Qwen-Image tests: each tiny model is built and loaded once per process,
and reference runs are memoised per request so that negative controls reuse them."""
from __future__ import annotations

import dataclasses
import functools
import hashlib

import numpy as np

from tests.flux_fixtures import input_image

T2I, EDIT, PLUS = "tiny-qwen-image", "tiny-qwen-image-edit", "tiny-qwen-image-edit-plus"
PROMPT = "a photo of a cat sitting on a red chair"
EDIT_PROMPT = "make the chair blue and add a hat"
NEGATIVE = "blurry, low quality"


@functools.lru_cache(maxsize=None)
def resolved(name: str = T2I):
    from models.registry import resolve

    return resolve(name)


@functools.lru_cache(maxsize=None)
def tokenizer(name: str = T2I, dtype: str = "float32"):
    from harness.tokenizers import PixelGenerationTokenizer

    return PixelGenerationTokenizer(resolved(name), dtype=dtype)


@functools.lru_cache(maxsize=None)
def denoiser(name: str = T2I, dtype: str = "float32"):
    """The harness loop over a tiny model (one torch thread, as the parity runs assume)."""
    import torch

    from harness.pipelines.qwen_image import QwenImageDenoiser

    torch.set_num_threads(1)
    return QwenImageDenoiser.from_folder(resolved(name).path, tokenizer(name, dtype).rules,
                                         dtype=dtype, progress=False)


@functools.lru_cache(maxsize=None)
def reference(name: str = T2I, dtype: str = "float32"):
    """diffusers' own pipeline over the very modules ``denoiser`` loaded."""
    from harness.parity.qwen_image import ReferenceRunner

    r = resolved(name)
    return ReferenceRunner(r.family, r.path, denoiser(name, dtype).c, tokenizer(name, dtype).rules)


def request(**kw):
    from harness.tokenizers import PixelGenerationRequest

    kw.setdefault("prompt", EDIT_PROMPT if kw.get("input_images") else PROMPT)
    kw.setdefault("height", 64)
    kw.setdefault("width", 64)
    kw.setdefault("num_inference_steps", 4)
    kw.setdefault("seed", 0)
    return PixelGenerationRequest(**kw)


def portrait(seed: int = 0) -> np.ndarray:
    """A 2:3 picture: its ~1 MP VAE copy (832x1248) is taller than wide, which keeps the tiny 3-D
    VAE's convolutions on the fast mkldnn path on CPU (~2x faster than landscape)."""
    return input_image(90, 60, seed=seed)


def _key(name: str, dtype: str, req) -> str:
    h = hashlib.sha256(f"{name}|{dtype}".encode())
    for k, v in sorted(dataclasses.asdict(req).items()):
        if k == "request_id":
            continue
        vals = v if isinstance(v, list) else [v]
        for x in vals:
            h.update(f"{k}=".encode())
            h.update(x.tobytes() + str(x.shape).encode() if isinstance(x, np.ndarray)
                     else repr(x).encode())
    return h.hexdigest()


_REFS: dict[str, object] = {}


def reference_result(name: str, req, ctx, dtype: str = "float32"):
    """The reference run of ``req`` (memoised: it does not depend on harness faults)."""
    key = _key(name, dtype, req)
    if key not in _REFS:
        _REFS[key] = reference(name, dtype)(req, ctx)
    return _REFS[key]


def parity(req, name: str = T2I, *, dtype: str = "float32", tokenizer_fault=None,
           loop_fault=None):
    """(context, harness result, reference result, comparison) for one request."""
    from harness.parity.qwen_image import compare

    ctx = tokenizer(name, dtype).new_context(req, fault=tokenizer_fault)
    ours = denoiser(name, dtype)(ctx, record_steps=True, fault=loop_fault)
    ref = reference_result(name, req, ctx, dtype)
    return ctx, ours, ref, compare(ours, ref)
