"""The parity reference's constraint: a ``transformers`` logits processor built from llguidance's
own pieces (its matcher, its bitmask fill and its numpy apply), given to ``model.generate()``.

It shares nothing with the harness's mask step but the compiled grammar and the tokenizer bridge:
the matcher advances from ``input_ids`` (not from a context's ``update()``), the mask is applied
by ``llguidance.numpy.apply_token_bitmask_inplace`` (not ``_fast.token_bitmask``), on a copy, so
``generate(output_logits=True)`` still returns the pre-mask logits.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .constraint import Constraint
from .llguidance_backend import LLGuidanceBackend

__all__ = ["LLGuidanceLogitsProcessor", "reference_processor", "mask_step"]


def mask_step(constraint: Constraint) -> dict:
    """The harness's mask step described as the reference's processor (``describe_processor``
    form), so the parity report's processor lists compare like for like."""
    return {"name": "LLGuidanceLogitsProcessor", "kind": constraint.kind}


def _processor_base():
    from transformers import LogitsProcessor

    return LogitsProcessor


class LLGuidanceLogitsProcessor(_processor_base()):
    """Mask each step's scores to what the grammar allows (batch size 1). Its only public field
    is ``kind`` (what the parity report's processor list shows)."""

    def __init__(self, ll_matcher: Any, vocab_size: int, kind: str) -> None:
        self.kind = kind
        self._matcher = ll_matcher
        self._bitmask = np.full((1, (vocab_size + 31) // 32), -1, dtype=np.int32)
        self._prompt_length: int | None = None
        self._calls = 0

    def __call__(self, input_ids, scores):
        import torch
        from llguidance.numpy import apply_token_bitmask_inplace

        if input_ids.shape[0] != 1:
            raise ValueError("LLGuidanceLogitsProcessor handles one sequence")
        if self._prompt_length is None:
            self._prompt_length = int(input_ids.shape[1])
        else:
            self._matcher.consume_token(int(input_ids[0, -1]))
        self._calls += 1
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
        masked = scores.detach().to("cpu", torch.float32, copy=True)
        apply_token_bitmask_inplace(masked.numpy(), self._bitmask)
        return masked.to(scores.device)


def reference_processor(constraint: Constraint, hf_tokenizer: Any, vocab_size: int,
                        eos_token_ids) -> LLGuidanceLogitsProcessor:
    """A fresh processor for one ``generate()`` call on the model's tokenizer bridge."""
    from llguidance import LLMatcher

    backend = LLGuidanceBackend()
    bridge = backend.bridge(hf_tokenizer, vocab_size, eos_token_ids)
    grammar = backend.compile(constraint, bridge)
    return LLGuidanceLogitsProcessor(LLMatcher(bridge, grammar, log_level=0),
                                     int(bridge.vocab_size), constraint.kind)
