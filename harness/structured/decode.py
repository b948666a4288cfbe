"""The decode loop's mask step: fill the matcher's bitmask for the next token and apply it to the
logits (``_fast.token_bitmask``) before sampling.

A dead matcher (in its error state, or a mask that allows no token) is handled as MAX does: the
step goes unconstrained from there on and the death is reported once (logged, and kept in
``dead`` for the result and the parity report), never a crash or a draw from an all -inf row.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from _fast.token_bitmask import apply_token_bitmask, bitmask_words

__all__ = ["ConstrainedDecoder"]

log = logging.getLogger("harness.structured")


class ConstrainedDecoder:
    """One request's mask state: a reusable bitmask buffer, the count of steps where the mask
    changed the greedy choice, and the dead-matcher record."""

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher
        self.bitmask = np.full(bitmask_words(matcher.vocab_size), -1, dtype=np.int32)
        #: Steps whose unconstrained argmax the mask disallowed (so the argmax changed).
        self.mask_changed_tokens = 0
        self.masked_steps = 0
        #: None, or {"position": generated-token index, "reason": ...} of the first dead step.
        self.dead: dict | None = None

    def _die(self, position: int, reason: str) -> None:
        self.dead = {"position": int(position), "reason": reason}
        log.warning("structured output: the matcher died at generated token %d (%s); the rest "
                    "of the output is unconstrained", position, reason)

    def mask(self, logits, position: int):
        """The logits to choose the next token from: float32, on ``logits``' device, disallowed
        tokens at -inf (``logits`` itself is written when it already is a float32 CPU tensor),
        or ``logits`` unchanged once the matcher is dead. ``position``: index of the token being
        generated."""
        import torch

        if self.dead is not None:
            return logits
        m = self.matcher
        if m.is_error():
            self._die(position, m.error or "the matcher is in its error state")
            return logits
        m.fill_bitmask(self.bitmask)
        work = logits.detach()
        if work.dtype != torch.float32 or work.device.type != "cpu" or not work.is_contiguous():
            work = work.to("cpu", torch.float32).contiguous()
        arr = work.numpy()
        free = int(np.argmax(arr))
        if not apply_token_bitmask(arr, self.bitmask):
            self._die(position, "the grammar allows no token of the vocabulary here")
            return logits
        self.masked_steps += 1
        words = self.bitmask
        self.mask_changed_tokens += int(free >= 32 * len(words)
                                        or not (int(words[free >> 5]) >> (free & 31)) & 1)
        return work if work.device == logits.device else work.to(logits.device)

    def report(self) -> dict:
        return {"mask_changed_tokens": self.mask_changed_tokens,
                "masked_steps": self.masked_steps, "dead_matcher": self.dead}
