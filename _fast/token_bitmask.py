"""Structured output's per-token mask: a packed int32 bitmask applied to float32 logits in place.

Layout (llguidance's, xgrammar's and vLLM's): token ``i`` is allowed when bit ``i % 32`` of word
``i // 32`` is set (little-endian bit order inside each int32 word). Disallowed logits become
-inf; logits past the mask's ``32 * len(bitmask)`` bits count as disallowed.

A mask that allows no token of the logits (a dead matcher) is *not* applied: the kernel leaves the
logits untouched and returns False, so the caller decides what to do instead of sampling from an
all -inf row (softmax of it is NaN). Allowed logits keep their bits (NaN payloads included).
"""
import numpy as np
from numba import njit

__all__ = ["apply_token_bitmask", "apply_token_bitmask_reference", "bitmask_words",
           "allowed_tokens"]


def bitmask_words(vocab_size: int) -> int:
    """int32 words of a mask over ``vocab_size`` tokens."""
    return (int(vocab_size) + 31) // 32


@njit(cache=True)
def _any_allowed(bitmask, full, tail_bits):
    """True when a bit is set among the first ``32 * full + tail_bits`` tokens (early exit)."""
    for w in range(full):
        if bitmask[w] != 0:
            return True
    if tail_bits > 0:
        return (np.int64(bitmask[full]) & ((np.int64(1) << tail_bits) - 1)) != 0
    return False


@njit(cache=True)
def _apply(words, bitmask):
    """``words``: the logits' float32 bits as uint32. In place: -inf where the bit is 0. Returns
    False (nothing written) when no bit of the logits' range is set.

    Per 32-token word: all-allowed words are skipped, all-disallowed words are a constant fill,
    mixed words a branchless select (keep = 0 - bit) that LLVM vectorises; a branchy per-bit
    store is ~15x slower on random masks."""
    n = words.shape[0]
    full = min(bitmask.shape[0], n // 32)  # words whose 32 tokens all lie inside the logits
    tail_bits = min(n - 32 * full, 32) if full < bitmask.shape[0] else 0
    if not _any_allowed(bitmask, full, tail_bits):
        return False
    ninf = np.uint32(0xFF800000)  # float32 -inf
    for w in range(full):
        word = bitmask[w]
        if word == -1:
            continue
        base = 32 * w
        if word == 0:
            for i in range(base, base + 32):
                words[i] = ninf
            continue
        uw = np.uint32(word)
        for b in range(32):
            keep = np.uint32(0) - ((uw >> np.uint32(b)) & np.uint32(1))
            words[base + b] = (words[base + b] & keep) | (ninf & ~keep)
    base = 32 * full
    tail_word = np.int64(bitmask[full]) if tail_bits > 0 else np.int64(0)
    for i in range(base, n):
        b = i - base
        if b >= tail_bits or not (tail_word >> b) & 1:
            words[i] = ninf
    return True


def _check(logits, bitmask):
    if not isinstance(logits, np.ndarray) or logits.dtype != np.float32 or logits.ndim != 1:
        raise TypeError(f"logits must be a 1-D float32 numpy array, got "
                        f"{getattr(logits, 'dtype', type(logits).__name__)} "
                        f"{getattr(logits, 'shape', '')}")
    if not logits.flags.c_contiguous or not logits.flags.writeable:
        raise ValueError("logits must be C-contiguous and writeable (the mask is applied in "
                         "place)")
    if not isinstance(bitmask, np.ndarray) or bitmask.dtype != np.int32 or bitmask.ndim != 1:
        raise TypeError(f"bitmask must be a 1-D int32 numpy array, got "
                        f"{getattr(bitmask, 'dtype', type(bitmask).__name__)} "
                        f"{getattr(bitmask, 'shape', '')}")


def apply_token_bitmask(logits: np.ndarray, bitmask: np.ndarray) -> bool:
    """Set ``logits[i] = -inf`` where bit ``i`` of ``bitmask`` is 0, in place; False (logits
    untouched) when the mask allows no token of the logits."""
    _check(logits, bitmask)
    if not bitmask.flags.c_contiguous:
        bitmask = np.ascontiguousarray(bitmask)
    return bool(_apply(logits.view(np.uint32), bitmask))


def allowed_tokens(bitmask: np.ndarray, vocab_size: int) -> np.ndarray:
    """bool array of length ``vocab_size``: which tokens the mask allows (plain numpy)."""
    words = np.ascontiguousarray(bitmask, dtype="<i4")
    bits = np.unpackbits(words.view(np.uint8), bitorder="little").astype(bool)
    out = np.zeros(int(vocab_size), dtype=bool)
    k = min(len(bits), len(out))
    out[:k] = bits[:k]
    return out


def apply_token_bitmask_reference(logits: np.ndarray, bitmask: np.ndarray) -> bool:
    """The plain-numpy reference of ``apply_token_bitmask`` (same contract, same bits)."""
    _check(logits, bitmask)
    allowed = allowed_tokens(bitmask, logits.shape[0])
    if not allowed.any():
        return False
    logits[~allowed] = np.float32(-np.inf)
    return True
