"""Token-core benchmarks: the compiled context beside the naive pure-Python reference.

Run: ``pytest bench/bench_tokens.py --benchmark-enable --benchmark-group-by=group``.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.context import EOSTracker, ImageMetadata, TextAndVisionContext, TokenBuffer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from naive_tokens import NaiveVisionContext  # noqa: E402

VISION = 98
IMAGE_COUNTS = (0, 16, 256)


def layout(num_images, image_len=8, gap=4, tail=16):
    tokens, images = [], []
    for _ in range(num_images):
        tokens += [5] * gap
        images.append((len(tokens), len(tokens) + image_len))
        tokens += [VISION] * image_len
    tokens += [5] * tail
    return tokens, images


def compiled_ctx(tokens, images, max_length=10**9):
    return TextAndVisionContext(
        max_length=max_length, tokens=TokenBuffer(np.array(tokens, dtype=np.int64)),
        eos_tracker=EOSTracker(eos_token_ids={1, 2}), vision_token_ids=[VISION],
        images=[ImageMetadata(start_idx=s, end_idx=e, pixel_values=np.zeros(1, np.float32))
                for s, e in images])


def naive_ctx(tokens, images, max_length=10**9):
    return NaiveVisionContext(tokens, max_length, images, eos_ids={1, 2})


IMPLS = {"compiled": compiled_ctx, "naive": naive_ctx}


def _info(benchmark, **extra):
    import numba
    benchmark.extra_info.update({"numpy": np.__version__, "numba": numba.__version__, **extra})


UPDATES = 1000  # per timed round: one call is too short for the timer (~100 ns of overhead)


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("num_images", IMAGE_COUNTS)
def test_update_per_token(benchmark, impl, num_images):
    """1000 decode-step ``update()`` calls on a fresh context; divide the times by 1000."""
    benchmark.group = f"{UPDATES} x update(), {num_images} images"
    _info(benchmark, images=num_images, updates_per_round=UPDATES)
    tokens, images = layout(num_images)

    def decode(ctx):
        update = ctx.update
        for _ in range(UPDATES):
            update(7)
        return ctx

    make = IMPLS[impl]
    ctx = benchmark.pedantic(decode, setup=lambda: ((make(tokens, images),), {}), rounds=300)
    assert ctx.tokens.generated_length == UPDATES


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_chunked_prefill(benchmark, impl):
    """Prefill a 64-image prompt (~800 tokens) in chunks of 32: chunk + update per chunk."""
    benchmark.group = "chunk + update during prefill (64 images, chunk 32)"
    tokens, images = layout(64)
    _info(benchmark, prompt=len(tokens))

    def prefill(ctx):
        while ctx.tokens.active_length > 32:
            ctx.tokens.chunk(32)
            ctx.update(0)
        ctx.update(7)
        return ctx

    make = IMPLS[impl]
    ctx = benchmark.pedantic(prefill, setup=lambda: ((make(tokens, images),), {}), rounds=200)
    assert ctx.tokens.generated_length == 1


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_compute_image_aligned_idx(benchmark, impl):
    benchmark.group = "compute_image_aligned_idx (256 images)"
    tokens, images = layout(256)
    ctx = IMPLS[impl](tokens, images)
    probe = images[200][0] + 3
    assert benchmark(ctx.compute_image_aligned_idx, probe) == images[200][0]


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_image_idx(benchmark, impl):
    benchmark.group = "image_idx (256 images)"
    tokens, images = layout(256)
    ctx = IMPLS[impl](tokens, images)
    ctx.tokens.skip_processing(images[200][0] + 1)
    assert benchmark(lambda: ctx.image_idx) == 200
