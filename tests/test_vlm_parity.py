"""End-to-end parity of the harness loop against model.generate() and
model.generate(prefill_chunk_size=k), per family, with negative controls."""
from __future__ import annotations

import dataclasses
import functools

import pytest

from tests.vlm_fixtures import TINY_VLMS, family, request, run, tokenizer

TOL = 1e-4
CHUNKS = (1, 3, 7, 13, None)


@functools.lru_cache(maxsize=None)
def reference(name: str, n_images: int, chunk: int | None):
    from harness.parity.vlm import reference_generate

    return reference_generate(family(name), request(n_images), 5, prefill_chunk_size=chunk)


def _check(result, ref):
    from harness.parity.vlm import compare

    cmp = compare(result.tokens, result.logits, ref)
    return cmp["tokens_equal"], cmp["max_abs_logit_diff"]


@pytest.mark.parametrize("n_images", (1, 2))
@pytest.mark.parametrize("name", TINY_VLMS)
def test_parity_against_both_references(name, n_images):
    """Every chunk size: tokens identical, |Δlogit| <= 1e-4, one encoder call per image."""
    from harness.parity.vlm import fixed_split_cuts

    fam = family(name)
    for chunk in CHUNKS:
        ctx, res = run(name, request(n_images), chunk)
        assert res.encoder_calls == n_images
        assert len(res.tokens) == 5
        equal, diff = _check(res, reference(name, n_images, None))
        assert equal and diff <= TOL, (name, chunk, diff)
        k = chunk or ctx.tokens.prompt_length
        if fam.bidirectional_images and fixed_split_cuts(ctx, k):
            continue  # transformers' own split cuts images here (see the Gemma 3 tests)
        equal, diff = _check(res, reference(name, n_images, k))
        assert equal and diff <= TOL, (name, chunk, "chunked reference", diff)
        if fam.bidirectional_images:
            assert res.chunks_inside_image == 0


def test_chunks_do_cut_images_for_causal_families():
    """The sweep really exercises chunks that end inside images (chunk 7, two images)."""
    for name in ("tiny-llava", "tiny-qwen2-vl", "tiny-pixtral"):
        _, res = run(name, request(2), 7)
        assert res.chunks_inside_image > 0, name


@pytest.mark.parametrize("chunk", (3, 5, 7, 11, 20))
def test_gemma3_planner_aligns_chunks_and_stays_exact(chunk):
    ctx, res = run("tiny-gemma3", request(2), chunk)
    assert res.chunks_inside_image == 0
    for start, end in res.chunks:
        assert ctx.compute_image_aligned_idx(end) == end
    equal, diff = _check(res, reference("tiny-gemma3", 2, None))
    assert equal and diff <= TOL, diff


def test_gemma3_unaligned_chunk_is_detected():
    """Negative control: turning the flag off lets chunks end inside images; parity breaks."""
    fam = dataclasses.replace(family("tiny-gemma3"), bidirectional_images=False)
    _, res = run("tiny-gemma3", request(2), 7, fam=fam)
    assert res.chunks_inside_image > 0
    _, diff = _check(res, reference("tiny-gemma3", 2, None))
    assert diff > 1e-3, diff


def test_gemma3_transformers_fixed_split_has_the_same_defect():
    """transformers' prefill_chunk_size=7 cuts images and drifts; the harness does not."""
    _, diff = _check(run("tiny-gemma3", request(2), 7)[1], reference("tiny-gemma3", 2, 7))
    assert diff > 1e-3, diff


def test_qwen2_vl_one_dimensional_positions_are_detected():
    """Negative control: plain 1-D positions instead of M-RoPE must break parity."""
    import torch

    from models.qwen2_vl import Qwen2VL

    class Flat(Qwen2VL):
        def prompt_positions(self, ctx):
            return torch.arange(ctx.tokens.prompt_length).view(1, 1, -1).expand(4, 1, -1)

        def position_state(self, prompt_positions):
            return 0  # decode positions without the M-RoPE delta

    base = family("tiny-qwen2-vl")
    fam = Flat(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
    _, res = run("tiny-qwen2-vl", request(2), 7, fam=fam)
    equal, diff = _check(res, reference("tiny-qwen2-vl", 2, None))
    assert not equal or diff > 1e-2, diff


def test_qwen2_vl_positions_match_transformers_rope_index():
    """The context-derived M-RoPE ids equal transformers' get_rope_index on the same prompt."""
    import torch

    fam = family("tiny-qwen2-vl")
    ctx = tokenizer("tiny-qwen2-vl").new_context(request(2))
    inputs = fam.context_inputs(ctx)
    ref, delta = fam.model.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"])
    ours = fam.prompt_positions(ctx)
    assert torch.equal(ours[1:], ref)
    assert fam.position_state(ours) == int(delta)
