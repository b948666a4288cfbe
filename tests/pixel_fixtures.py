"""What the image-family tests share: per tiny model and dtype, one tokenizer, one harness loop and
one reference runner per process (each tiny model is built and loaded once), requests with small
defaults, a test picture, and the parity run. The family fixture modules bind their model names."""
from __future__ import annotations

import dataclasses
import functools
import hashlib

import numpy as np

PROMPT = "a photo of a cat sitting on a red chair"
NEGATIVE = "blurry, low quality"


@functools.lru_cache(maxsize=None)
def resolved(name: str):
    from models.registry import resolve

    return resolve(name)


@functools.lru_cache(maxsize=None)
def tokenizer(name: str, dtype: str = "float32", distilled: bool = False):
    """The tokenizer; ``distilled=True`` reads FLUX.2 Klein as step-distilled (``is_distilled``)."""
    from harness.tokenizers import PixelGenerationTokenizer

    tok = PixelGenerationTokenizer(resolved(name), dtype=dtype)
    if distilled:
        tok.rules = dataclasses.replace(tok.rules, is_distilled=True)
    return tok


@functools.lru_cache(maxsize=None)
def denoiser(name: str, dtype: str = "float32"):
    """The family's harness loop over the tiny model (one torch thread, as parity runs assume)."""
    import torch

    torch.set_num_threads(1)
    r = resolved(name)
    return r.family.Denoiser.from_folder(r.path, tokenizer(name, dtype).rules, dtype=dtype,
                                         progress=False)


@functools.lru_cache(maxsize=None)
def reference(name: str, dtype: str = "float32"):
    """The family's diffusers pipeline(s) over the very modules ``denoiser`` loaded."""
    r = resolved(name)
    return r.family.ReferenceRunner(r.path, denoiser(name, dtype).c, tokenizer(name, dtype).rules)


def bound(name: str):
    """``resolved(), tokenizer(dtype), denoiser(dtype), reference(dtype)`` of one tiny model."""
    return (functools.partial(resolved, name), functools.partial(tokenizer, name),
            functools.partial(denoiser, name), functools.partial(reference, name))


def request(**kw):
    """A PixelGenerationRequest with the tests' small defaults (64x64, 4 steps, seed 0)."""
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
    """The reference run of ``req`` (memoised: only for families whose reference does not depend
    on the harness's start latents, so negative controls can reuse it)."""
    key = _key(name, dtype, req)
    if key not in _REFS:
        _REFS[key] = reference(name, dtype)(req, ctx)
    return _REFS[key]


def parity(name: str, req, *, dtype: str = "float32", tokenizer_fault=None, loop_fault=None,
           distilled: bool = False, memoise: bool = False, **reference_key):
    """(context, harness result, reference result, comparison) for one request. The reference
    always runs on the correct context; ``reference_key`` picks its pipeline (FLUX.2's
    ``is_distilled``)."""
    from harness.parity.pixel import compare

    tok = tokenizer(name, dtype, distilled)
    good = tok.new_context(req)
    ctx = good if tokenizer_fault is None else tok.new_context(req, fault=tokenizer_fault)
    ours = denoiser(name, dtype)(ctx, record_steps=True, fault=loop_fault)
    if memoise:
        ref = reference_result(name, req, good, dtype)
    else:
        ref = reference(name, dtype)(req, good, initial_latents=ours.initial_latents,
                                     **reference_key)
    return ctx, ours, ref, compare(ours, ref)
