"""The chunk planner (pure context logic, no model) and the sampler."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from _fast.tokens import TokenBuffer
from harness.context import ImageMetadata, SamplingParams, TextAndVisionContext
from harness.pipelines.vlm import plan_chunk_length, sample_token

VISION = 98


def _context(total: int, ranges: list[tuple[int, int]]) -> TextAndVisionContext:
    ids = np.arange(total, dtype=np.int64) % 50
    for s, e in ranges:
        ids[s:e] = VISION
    images = [ImageMetadata(start_idx=s, end_idx=e, pixel_values=np.zeros(1)) for s, e in ranges]
    return TextAndVisionContext(max_length=total + 8, tokens=TokenBuffer(ids),
                                vision_token_ids=[VISION], images=images)


def _plan(ctx, chunk, bidirectional) -> list[tuple[int, int]]:
    """Drive the context the way the loop does and record each chunk."""
    out = []
    while True:
        n = plan_chunk_length(ctx, chunk, bidirectional)
        if n < ctx.tokens.active_length:
            ctx.tokens.chunk(n)
        start = ctx.tokens.processed_length
        out.append((start, start + n))
        if not ctx.tokens.actively_chunked:
            return out
        ctx.update(0)


def test_whole_prompt_by_default():
    ctx = _context(24, [(5, 9), (15, 19)])
    assert plan_chunk_length(ctx, None, True) == 24
    assert plan_chunk_length(ctx, 100, False) == 24


def test_causal_models_may_cut_images():
    assert _plan(_context(24, [(5, 9), (15, 19)]), 7, False) == [(0, 7), (7, 14), (14, 21),
                                                                 (21, 24)]


def test_bidirectional_aligns_down_and_takes_whole_images():
    ctx = _context(24, [(5, 9), (15, 19)])
    assert _plan(ctx, 7, True) == [(0, 5), (5, 12), (12, 19), (19, 24)]
    # chunk 3: 6 → 5; from 5 the aligned end (8 → 5) leaves nothing → the whole image (5, 9)
    plan = _plan(_context(24, [(5, 9), (15, 19)]), 3, True)
    assert plan == [(0, 3), (3, 5), (5, 9), (9, 12), (12, 15), (15, 19), (19, 22), (22, 24)]


def test_image_larger_than_chunk_is_taken_whole():
    assert _plan(_context(30, [(2, 20)]), 4, True) == [(0, 2), (2, 20), (20, 24), (24, 28),
                                                       (28, 30)]


def test_touching_images():
    assert _plan(_context(12, [(2, 6), (6, 10)]), 3, True) == [(0, 2), (2, 6), (6, 10),
                                                              (10, 12)]


@st.composite
def _layouts(draw):
    total = draw(st.integers(2, 80))
    cuts = sorted(draw(st.sets(st.integers(0, total), max_size=8)))
    ranges = [(a, b) for a, b in zip(cuts[::2], cuts[1::2]) if b > a]
    return total, ranges


@settings(max_examples=200, deadline=None)
@given(_layouts(), st.integers(1, 40), st.booleans())
def test_plan_properties(layout, chunk, bidirectional):
    total, ranges = layout
    ctx = _context(total, ranges)
    plan = _plan(ctx, chunk, bidirectional)
    assert plan[0][0] == 0 and plan[-1][1] == total
    assert all(a[1] == b[0] and a[1] > a[0] for a, b in zip(plan, plan[1:]))
    for start, end in plan:
        if bidirectional:
            assert ctx.compute_image_aligned_idx(end) == end or end == total
            whole_image = any(s == start and e == end for s, e in ranges)
            assert end - start <= chunk or whole_image
        else:
            assert end - start <= chunk


def test_sampler_greedy_and_seeded():
    import torch

    logits = torch.tensor([0.1, 2.0, 1.9, -1.0])
    assert sample_token(logits, SamplingParams(temperature=0.0), None) == 1
    assert sample_token(logits, SamplingParams(top_k=1), None) == 1
    params = SamplingParams(temperature=1.0, seed=3)
    draws = [sample_token(logits, params, torch.Generator().manual_seed(3)) for _ in range(3)]
    assert len(set(draws)) == 1
    tight = SamplingParams(temperature=1.0, top_p=0.01)
    assert sample_token(logits, tight, torch.Generator().manual_seed(0)) == 1
    topk = SamplingParams(temperature=5.0, top_k=2)
    gen = torch.Generator().manual_seed(0)
    assert {sample_token(logits, topk, gen) for _ in range(50)} == {1, 2}


def test_bad_chunk_size_is_a_request_error():
    from harness.errors import RequestError
    from harness.pipelines.vlm import VLMPipeline

    with pytest.raises(RequestError, match="chunk size"):
        VLMPipeline.generate(object.__new__(VLMPipeline), _context(4, []), chunk_size=0)


def test_encoder_row_mismatch_fails_before_any_language_model_call():
    """A vision tower that returns fewer rows than the prompt has placeholders (model and
    processor disagree) is reported before the language model runs at all."""
    import copy

    from harness.errors import RequestError
    from harness.pipelines.vlm import VLMPipeline
    from harness.tokenizers import TextAndVisionTokenizer
    from tests.vlm_fixtures import family, request

    fam = copy.copy(family("tiny-llava"))
    real_encode = fam.encode
    fam.encode = lambda image: real_encode(image)[:-1]
    ctx = TextAndVisionTokenizer(fam).new_context(request(2))
    pipe = VLMPipeline(fam)
    calls = []
    forward = pipe.model.forward
    pipe.model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    try:
        with pytest.raises(RequestError, match="returned .* rows but the prompt has"):
            pipe.generate(ctx, chunk_size=3)
    finally:
        del pipe.model.forward
    assert calls == []
