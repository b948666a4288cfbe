"""Structured output's cost per decode token: the next-token mask filled by llguidance and applied
to the logits, the harness's way (``LLGuidanceMatcher.fill_bitmask`` + ``_fast.token_bitmask``)
beside llguidance's own torch path (``llguidance.torch.fill_next_token_bitmask`` +
``apply_token_bitmask_inplace``, a ``torch.compile``d kernel), at vocabularies of 32k, 152k and
262k tokens.

Run: PYTHONPATH=. python -m pytest bench/bench_structured.py --benchmark-enable \
         --benchmark-group-by=group --benchmark-min-rounds=20 --benchmark-max-time=0.2

Tokenizers are synthetic (no 152k vocabulary ships here): the 256 bytes, then seeded random
pieces of 2-8 letters / digits / JSON punctuation, a third with a leading space, and an EOS. The
matcher cycles through five states of a JSON Schema (start, key, inside a string, inside an
integer, inside an enum): one call = one decode token. With ``--benchmark-disable`` (the test
suite) each runs once and both sides' masked logits are checked equal; torch.compile is then
bypassed (eager) so the suite pays no compile.
"""
from __future__ import annotations

import functools
import itertools
import string

import numpy as np
import pytest

from _common import info

VOCABS = (32000, 152064, 262208)
#: With benchmarks disabled (the test suite) only the 32k case runs: building the larger
#: synthetic tokenizers costs seconds and checks nothing new (bench/conftest.py deselects them).
VOCAB_PARAMS = [VOCABS[0]] + [pytest.param(v, marks=pytest.mark.timing_only) for v in VOCABS[1:]]
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"},
    "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}}},
    "required": ["name", "age", "tags"], "additionalProperties": False}
#: Outputs so far: one matcher state each (byte tokens: ids 0-255 are the bytes).
PREFIXES = ("", '{"', '{"name":"Al', '{"name":"Al","age":4', '{"name":"Al","age":42,"tags":["re')


def synthetic_vocab(n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct token byte strings: bytes, random pieces, EOS last."""
    rs = np.random.RandomState(seed)
    lower = np.frombuffer(string.ascii_lowercase.encode(), np.uint8)
    other = np.frombuffer((string.ascii_letters + string.digits + ' _-.,:;"{}[]').encode(),
                          np.uint8)
    m = int(n * 1.3) + 1000
    lens = rs.randint(2, 9, m)
    use_lower = rs.rand(m) < 0.7
    chars = np.where(use_lower[:, None], lower[rs.randint(0, len(lower), (m, 8))],
                     other[rs.randint(0, len(other), (m, 8))]).astype(np.uint8)
    space = rs.rand(m) < 0.35
    toks = [bytes([b]) for b in range(256)]
    seen = set(toks)
    raw = chars.tobytes()
    for i in range(m):
        t = (b" " if space[i] else b"") + raw[8 * i: 8 * i + lens[i]]
        if t not in seen:
            seen.add(t)
            toks.append(t)
            if len(toks) == n - 1:
                break
    return toks + [b"<|eos|>"]


class _Table:
    """What ``llguidance.TokenizerWrapper`` reads; encodes text as byte tokens."""

    def __init__(self, tokens: list[bytes]):
        self.tokens = tokens
        self.eos_token_id = len(tokens) - 1
        self.bos_token_id = None
        self.special_token_ids = [len(tokens) - 1]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


@functools.lru_cache(maxsize=None)
def setup(vocab: int):
    """(harness matchers, raw llguidance matchers, float32 logits) at the five states."""
    from llguidance import LLTokenizer, TokenizerWrapper

    from harness.structured import parse_constraint
    from harness.structured.llguidance_backend import LLGuidanceBackend

    bridge = LLTokenizer(TokenizerWrapper(_Table(synthetic_vocab(vocab))), n_vocab=vocab)
    backend = LLGuidanceBackend()
    constraint = parse_constraint(json_schema=SCHEMA)
    compiled = backend.compile(constraint, bridge)
    ours, raw = [], []
    for prefix in PREFIXES:
        m = backend.matcher(compiled, constraint, bridge)
        for b in prefix.encode():
            assert m.consume_token(b), m.error
        ours.append(m)
        raw.append(m._m.deep_copy())
    logits = np.random.RandomState(1).randn(vocab).astype(np.float32)
    return ours, raw, logits


def _harness_step(vocab: int):
    from _fast.token_bitmask import apply_token_bitmask, bitmask_words

    ours, _, logits = setup(vocab)
    logits = logits.copy()
    buf = np.zeros(bitmask_words(vocab), np.int32)
    states = itertools.cycle(ours)

    def step():
        next(states).fill_bitmask(buf)
        apply_token_bitmask(logits, buf)
    return step, logits


def _llguidance_torch_step(vocab: int, compiled: bool):
    import torch
    from llguidance.torch import (allocate_token_bitmask, apply_token_bitmask_inplace,
                                  fill_next_token_bitmask)

    _, raw, logits = setup(vocab)
    logits_t = torch.from_numpy(logits.copy())
    mask = allocate_token_bitmask(1, vocab)
    states = itertools.cycle([m.deep_copy() for m in raw])

    def step():
        fill_next_token_bitmask(next(states), mask)
        apply_token_bitmask_inplace(logits_t, mask)

    if not compiled:
        eager = step

        def step():  # noqa: F811  (the suite's single call skips torch.compile)
            with torch._dynamo.config.patch(disable=True):
                eager()
    return step, logits_t


@pytest.mark.parametrize("vocab", VOCAB_PARAMS)
def test_fill_and_apply_per_token(benchmark, vocab):
    """One decode token's mask: llguidance fill + ``_fast.token_bitmask`` apply."""
    benchmark.group = f"structured mask fill+apply per token, vocab {vocab}"
    info(benchmark, "harness: LLGuidanceMatcher.fill_bitmask + _fast.token_bitmask",
         vocab=vocab, states=len(PREFIXES))
    step, logits = _harness_step(vocab)
    step()  # warm: numba compile / cache load
    benchmark(step)
    assert np.isneginf(logits).any()  # the masks were applied


@pytest.mark.parametrize("vocab", VOCAB_PARAMS)
def test_llguidance_torch_fill_and_apply_per_token(benchmark, vocab):
    """The same with llguidance's own torch functions; in the suite (benchmarks disabled) one
    eager call each, checked against the harness's masked logits state by state."""
    import torch

    benchmark.group = f"structured mask fill+apply per token, vocab {vocab}"
    info(benchmark, "llguidance.torch fill_next_token_bitmask + apply_token_bitmask_inplace "
         "(torch.compile)", vocab=vocab, states=len(PREFIXES))
    enabled = not benchmark.disabled
    step, logits_t = _llguidance_torch_step(vocab, compiled=enabled)
    if enabled:
        step()  # warm-up: torch.compile (seconds), never timed
        benchmark(step)
        return
    ours, raw, logits = setup(vocab)
    from _fast.token_bitmask import apply_token_bitmask, bitmask_words
    from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask

    buf, mask = np.zeros(bitmask_words(vocab), np.int32), allocate_token_bitmask(1, vocab)
    for m, r in zip(ours, raw):
        a, b = logits.copy(), torch.from_numpy(logits.copy())
        m.fill_bitmask(buf)
        assert apply_token_bitmask(a, buf)
        fill_next_token_bitmask(r, mask)
        assert np.array_equal(buf, mask.numpy()[0])
        with torch._dynamo.config.patch(disable=True):
            from llguidance.torch import apply_token_bitmask_inplace

            apply_token_bitmask_inplace(b, mask)
        assert np.array_equal(a.view(np.uint32), b.numpy().view(np.uint32))
    benchmark(step)


@pytest.mark.timing_only  # the kernel's tests are tests/test_fast_bitmask.py
@pytest.mark.parametrize("vocab", (152064,))
def test_apply_only(benchmark, vocab):
    """The apply alone at 152k on the five states' masks (fill excluded)."""
    from _fast.token_bitmask import apply_token_bitmask, bitmask_words

    benchmark.group = f"structured mask apply only, vocab {vocab}"
    info(benchmark, "harness: _fast.token_bitmask", vocab=vocab)
    ours, _, logits = setup(vocab)
    masks = []
    for m in ours:
        buf = np.zeros(bitmask_words(vocab), np.int32)
        m.fill_bitmask(buf)
        masks.append(buf)
    logits = logits.copy()
    cycle = itertools.cycle(masks)
    benchmark(lambda: apply_token_bitmask(logits, next(cycle)))


# -- the speed gate (python -m bench check): one same-run ratio ---------------------------------
try:
    from gate import metric, timed
except ImportError:  # imported from elsewhere than bench/ (the gate is not on the path)
    metric = None

if metric is not None:
    @metric("structured output")
    def structured_mask_vs_llguidance_torch():
        """One decode token's structured-output mask at a 152k vocabulary (llguidance fill,
        five JSON states in turn): llguidance.torch fill + compiled apply time ÷ the harness's
        fill + _fast.token_bitmask apply time."""
        import torch

        torch.set_num_threads(1)
        fast, _ = _harness_step(152064)
        ref, _ = _llguidance_torch_step(152064, compiled=True)
        fast()
        ref()  # torch.compile happens here, before any timing
        return timed(fast), timed(ref)
