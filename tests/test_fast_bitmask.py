"""_fast.token_bitmask: the numba mask kernel against its numpy reference and llguidance's own
numpy apply, bit for bit (random masks, partial words, short and long masks, NaN logits)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _fast.token_bitmask import (allowed_tokens, apply_token_bitmask,
                                 apply_token_bitmask_reference, bitmask_words)

ROOT = Path(__file__).resolve().parent.parent


def n_examples(default):
    """Hypothesis example count; FAST_TEST_MAX_EXAMPLES caps it (the NUMBA_DISABLE_JIT run)."""
    cap = os.environ.get("FAST_TEST_MAX_EXAMPLES")
    return min(default, int(cap)) if cap else default


def pack(allowed: np.ndarray) -> np.ndarray:
    """bool per token -> packed little-endian int32 words (llguidance's layout)."""
    return np.packbits(allowed, bitorder="little").view("<i4").astype(np.int32)


def bits(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32)


@st.composite
def cases(draw):
    vocab = draw(st.integers(1, 700))
    words = draw(st.sampled_from([bitmask_words(vocab), max(1, bitmask_words(vocab) - 1),
                                  bitmask_words(vocab) + 2]))
    kind = draw(st.sampled_from(["random", "sparse", "dense", "none", "all", "runs"]))
    rs = np.random.RandomState(draw(st.integers(0, 2**31 - 1)))
    n = 32 * words
    if kind == "random":
        allowed = rs.rand(n) < rs.rand()
    elif kind == "sparse":
        allowed = np.zeros(n, bool)
        allowed[rs.randint(0, n, size=3)] = True
    elif kind == "dense":
        allowed = rs.rand(n) < 0.98
    elif kind == "none":
        allowed = np.zeros(n, bool)
    elif kind == "all":
        allowed = np.ones(n, bool)
    else:  # whole words on and off, as JSON masks look
        allowed = np.repeat(rs.rand(words) < 0.3, 32)
    logits = rs.randn(vocab).astype(np.float32)
    if draw(st.booleans()):
        logits[rs.randint(0, vocab)] = np.nan
    return logits, pack(allowed)


@settings(max_examples=n_examples(300), deadline=None)
@given(cases())
def test_kernel_equals_reference_bit_for_bit(case):
    logits, mask = case
    ours, ref = logits.copy(), logits.copy()
    applied = apply_token_bitmask(ours, mask)
    assert applied == apply_token_bitmask_reference(ref, mask)
    assert np.array_equal(bits(ours), bits(ref))
    allowed = allowed_tokens(mask, len(logits))
    if applied:
        assert np.array_equal(bits(ours[allowed]), bits(logits[allowed]))  # untouched bits
        assert np.all(ours[~allowed] == -np.inf)
    else:
        assert not allowed.any() and np.array_equal(bits(ours), bits(logits))


@settings(max_examples=n_examples(100), deadline=None)
@given(cases())
def test_kernel_equals_llguidance_numpy_apply(case):
    """llguidance's own numpy apply is the independent reference (where any token is allowed)."""
    from llguidance.numpy import apply_token_bitmask_inplace

    logits, mask = case
    if not allowed_tokens(mask, len(logits)).any():
        return
    ours, theirs = logits.copy(), logits.copy()[None]
    assert apply_token_bitmask(ours, mask)
    apply_token_bitmask_inplace(theirs, mask[None])
    assert np.array_equal(bits(ours), bits(theirs[0]))


def test_worked_example():
    logits = np.arange(40, dtype=np.float32)
    mask = np.array([0b101, 1 << 1], dtype=np.int32)  # tokens 0, 2 and 33
    assert apply_token_bitmask(logits, mask)
    assert np.flatnonzero(np.isfinite(logits)).tolist() == [0, 2, 33]
    assert logits[33] == 33.0
    high = np.zeros(64, np.float32)
    assert apply_token_bitmask(high, np.array([0, np.int32(-2**31)], np.int32))  # bit 63 only
    assert np.flatnonzero(np.isfinite(high)).tolist() == [63]


def test_dead_mask_leaves_logits_untouched():
    logits = np.linspace(-1, 1, 50, dtype=np.float32)
    before = logits.copy()
    # bit 60 is set but lies past the 50 logits: nothing of the vocabulary is allowed
    assert not apply_token_bitmask(logits, np.array([0, 1 << 28], np.int32))
    assert np.array_equal(logits, before)


def test_logits_past_the_mask_are_disallowed():
    logits = np.ones(70, np.float32)
    assert apply_token_bitmask(logits, np.array([-1], np.int32))
    assert np.isfinite(logits[:32]).all() and (logits[32:] == -np.inf).all()


@pytest.mark.parametrize("bad", [np.zeros(4, np.float64), np.zeros((1, 4), np.float32),
                                 np.zeros(8, np.float32)[::2]])
def test_wrong_logits_are_refused(bad):
    with pytest.raises((TypeError, ValueError)):
        apply_token_bitmask(bad, np.zeros(1, np.int32))


def test_wrong_mask_is_refused():
    with pytest.raises(TypeError, match="int32"):
        apply_token_bitmask(np.zeros(4, np.float32), np.zeros(1, np.uint32))
    readonly = np.zeros(4, np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        apply_token_bitmask(readonly, np.zeros(1, np.int32))


def test_kernel_body_without_jit():
    """The kernel body as plain Python (NUMBA_DISABLE_JIT=1) gives the same bits."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", FAST_TEST_MAX_EXAMPLES="20")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        pytest.skip("already running without JIT")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
           "tests/test_fast_bitmask.py", "-k", "not without_jit"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0 and " passed" in proc.stdout, tail
