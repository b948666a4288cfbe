"""The harness VLM loop beside ``model.generate()`` on the same tiny model and prompt.

Run: PYTHONPATH=. python -m pytest bench/bench_vlm.py --benchmark-enable --benchmark-group-by=group

Groups: ``vlm-generate`` (prefill + 32 decoded tokens: harness vs generate(), same inputs) and
``vlm-step-overhead`` (the decode loop's time outside the model forward).

How the overhead is measured: the top-level HF model's ``forward`` is wrapped (instance
attribute, so ``nn.Module.__call__`` keeps its hook-free fast path) to record ``perf_counter()``
around every call; per decode step, overhead = (decode wall time − time inside the decode
forwards) / steps. It covers sampling, ``ctx.update()``, streaming (``to_generation_output()``),
the position-id column, the step-input tensor and ``nn.Module.__call__`` dispatch. The wrapper
itself adds ~0.5 µs per step, so the figure is a slight over-estimate. Best of 5 requests.
"""
from __future__ import annotations

import copy
import time

import pytest
import torch

from tests.vlm_fixtures import family, request, tokenizer

MODEL = "tiny-llava"
NEW_TOKENS = 32


def _info(benchmark, side):
    import transformers

    benchmark.extra_info.update(side=side, torch=torch.__version__,
                                transformers=transformers.__version__,
                                torch_threads=torch.get_num_threads(), new_tokens=NEW_TOKENS)


def _request():
    return request(1, max_new_tokens=NEW_TOKENS)


@pytest.mark.benchmark(group="vlm-generate")
def test_harness_generate(benchmark):
    from harness.pipelines.vlm import VLMPipeline

    pipe = VLMPipeline(family(MODEL))
    tok = tokenizer(MODEL)
    _info(benchmark, "harness")
    result = benchmark.pedantic(lambda ctx: pipe.generate(ctx),
                                setup=lambda: ((tok.new_context(_request()),), {}),
                                rounds=10, warmup_rounds=1)
    assert len(result.tokens) == NEW_TOKENS


@pytest.mark.benchmark(group="vlm-generate")
def test_hf_generate(benchmark):
    fam = family(MODEL)
    inputs = fam.context_inputs(tokenizer(MODEL).new_context(_request()))
    gc = copy.deepcopy(fam.model.generation_config)
    gc.eos_token_id, gc.do_sample, gc.max_new_tokens = None, False, NEW_TOKENS
    _info(benchmark, "model.generate()")

    def go():
        with torch.inference_mode():
            return fam.model.generate(**inputs, generation_config=gc)

    out = benchmark.pedantic(go, rounds=10, warmup_rounds=1)
    assert out.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS


def decode_overhead_us(pipe, tok, rounds: int = 5) -> tuple[float, float]:
    """(per-step µs outside the forward, per-step µs total) of the harness decode loop."""
    model = pipe.model
    spans: list[float] = []
    original = model.forward

    def timed_forward(*args, **kwargs):
        t = time.perf_counter()
        out = original(*args, **kwargs)
        spans.append(time.perf_counter() - t)
        return out

    best_over, best_total = float("inf"), float("inf")
    model.forward = timed_forward  # an instance attribute: nn.Module.__call__ finds it
    try:
        for _ in range(rounds):
            ctx = tok.new_context(_request())
            spans.clear()
            res = pipe.generate(ctx)
            steps = len(res.tokens) - 1          # decode forwards (the first token is prefill's)
            inside = sum(spans[len(res.chunks):])  # forwards after the prefill chunks
            best_over = min(best_over, (res.decode_s - inside) / steps * 1e6)
            best_total = min(best_total, res.decode_s / steps * 1e6)
    finally:
        del model.forward
    return best_over, best_total


@pytest.mark.benchmark(group="vlm-step-overhead")
def test_decode_step_overhead(benchmark):
    from harness.pipelines.vlm import VLMPipeline

    pipe = VLMPipeline(family(MODEL))
    tok = tokenizer(MODEL)
    _info(benchmark, "harness decode loop")
    over, total = benchmark.pedantic(lambda: decode_overhead_us(pipe, tok), rounds=1,
                                     iterations=1)
    benchmark.extra_info.update(overhead_us_per_step=over, step_us=total)
    print(f"\ndecode step: {total:.1f} µs, outside the forward: {over:.1f} µs")
    assert over < total


# -- issue #14 families: the same rows per family (harness vs generate(), per-step overhead) -------
FAMILY_MODELS = ("tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-llava-onevision", "tiny-idefics3",
                 "tiny-internvl")


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_family_harness_generate(benchmark, name):
    from harness.pipelines.vlm import VLMPipeline

    benchmark.group = f"vlm-generate-{name}"
    pipe, tok = VLMPipeline(family(name)), tokenizer(name)
    _info(benchmark, "harness")
    result = benchmark.pedantic(lambda ctx: pipe.generate(ctx),
                                setup=lambda: ((tok.new_context(_request()),), {}),
                                rounds=10, warmup_rounds=1)
    assert len(result.tokens) == NEW_TOKENS


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_family_hf_generate(benchmark, name):
    benchmark.group = f"vlm-generate-{name}"
    fam = family(name)
    inputs = fam.context_inputs(tokenizer(name).new_context(_request()))
    gc = copy.deepcopy(fam.model.generation_config)
    gc.eos_token_id, gc.do_sample, gc.max_new_tokens = None, False, NEW_TOKENS
    gc.temperature = gc.top_k = gc.top_p = None
    _info(benchmark, "model.generate()")

    def go():
        with torch.inference_mode():
            return fam.model.generate(**inputs, generation_config=gc)

    out = benchmark.pedantic(go, rounds=10, warmup_rounds=1)
    assert out.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_family_decode_step_overhead(benchmark, name):
    from harness.pipelines.vlm import VLMPipeline

    benchmark.group = f"vlm-step-overhead-{name}"
    pipe, tok = VLMPipeline(family(name)), tokenizer(name)
    _info(benchmark, "harness decode loop")
    over, total = benchmark.pedantic(lambda: decode_overhead_us(pipe, tok), rounds=1,
                                     iterations=1)
    benchmark.extra_info.update(overhead_us_per_step=over, step_us=total)
    print(f"\n{name} decode step: {total:.1f} µs, outside the forward: {over:.1f} µs")
    assert over < total
