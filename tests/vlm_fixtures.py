"""Shared helpers for the VLM tests: each tiny family is built and loaded once per process."""
from __future__ import annotations

import functools

import numpy as np

TINY_VLMS = ("tiny-llava", "tiny-qwen2-vl", "tiny-pixtral", "tiny-gemma3")
IMAGE_SHAPES = ((40, 52, 3), (36, 30, 3))


@functools.lru_cache(maxsize=None)
def family(name: str):
    """Build (first use) and load a tiny VLM; one instance per test process."""
    import torch

    from models.registry import resolve

    torch.set_num_threads(1)
    resolved = resolve(name)
    return resolved.family.load(resolved.path)


@functools.lru_cache(maxsize=None)
def tokenizer(name: str):
    from harness.tokenizers import TextAndVisionTokenizer

    return TextAndVisionTokenizer(family(name))


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rs = np.random.RandomState(seed)
    return [(rs.rand(*IMAGE_SHAPES[i % 2]) * 255).astype(np.uint8) for i in range(n)]


def request(n_images: int, **kw):
    from harness.tokenizers import TextGenerationRequest

    kw.setdefault("max_new_tokens", 5)
    kw.setdefault("ignore_eos", True)
    return TextGenerationRequest(prompt="Describe the pictures, please.", images=images(n_images),
                                 **kw)


def run(name: str, req, chunk_size=None, *, fam=None, **kw):
    """Harness run of ``req`` on the tiny model (optionally a modified family object)."""
    from harness.pipelines.vlm import VLMPipeline
    from harness.tokenizers import TextAndVisionTokenizer

    fam = fam or family(name)
    ctx = TextAndVisionTokenizer(fam).new_context(req)
    return ctx, VLMPipeline(fam).generate(ctx, chunk_size=chunk_size, keep_logits=True, **kw)
