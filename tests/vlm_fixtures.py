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


REPLICAS = ("replica-llava-1.5-7b", "replica-qwen2-vl-2b-instruct",
            "replica-qwen2-vl-7b-instruct", "replica-mistral-small-3.1", "replica-pixtral-12b",
            "replica-gemma-3-4b-it")
#: Odd image sizes (height, width, channels): 37×23 and 61×45 pixels (width × height).
ODD_SHAPES = ((23, 37, 3), (45, 61, 3))


def odd_images(n: int, seed: int = 0) -> list[np.ndarray]:
    rs = np.random.RandomState(seed)
    return [(rs.rand(*ODD_SHAPES[i % 2]) * 255).astype(np.uint8) for i in range(n)]


def variant(name: str, tmp_path, *, config: dict | None = None,
            preprocessor: dict | None = None, processor: dict | None = None):
    """A copy of tiny model ``name`` with JSON fields of its config.json /
    preprocessor_config.json / processor_config.json changed (None values delete a key), loaded;
    the folder is ``tmp_path / name``."""
    import json
    import shutil

    import torch

    from models.registry import resolve

    torch.set_num_threads(1)
    resolved = resolve(name)
    folder = tmp_path / name
    shutil.copytree(resolved.path, folder)
    for fname, edits in (("config.json", config), ("preprocessor_config.json", preprocessor),
                         ("processor_config.json", processor)):
        if not edits:
            continue
        path = folder / fname
        data = json.loads(path.read_text()) if path.is_file() else {}
        for key, value in edits.items():
            target, leaf = data, key
            if "." in key:  # "vision_config.image_size"
                head, leaf = key.split(".", 1)
                target = data.setdefault(head, {})
            if value is None:
                target.pop(leaf, None)
            else:
                target[leaf] = value
        path.write_text(json.dumps(data))
    return resolved.family.load(folder)


def parity(fam, req, chunk_size=None):
    """Harness run of ``req`` and its parity report against the folder's own processor."""
    from harness.parity.vlm import run_parity
    from harness.pipelines.vlm import VLMPipeline
    from harness.tokenizers import TextAndVisionTokenizer

    tok = TextAndVisionTokenizer(fam)
    ctx = tok.new_context(req)
    res = VLMPipeline(fam).generate(ctx, chunk_size=chunk_size, keep_logits=True)
    return ctx, res, run_parity(fam, tok, req, res, chunk_size)
