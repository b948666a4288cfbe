"""The matcher protocol: what the context and the decode loop ask of a structured-output backend.

A backend (llguidance here; xgrammar could be another) compiles a ``Constraint`` against a
tokenizer bridge and creates one matcher per request. The context's ``update()`` calls
``consume_token``; the loop calls ``fill_bitmask`` before each decode step and applies the packed
int32 mask with ``_fast.token_bitmask``. Matchers never raise on a bad token or an unsatisfiable
state: they enter an error state (``is_error``), which the loop reports as a dead matcher.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from .constraint import Constraint

__all__ = ["Matcher", "Backend"]


@runtime_checkable
class Matcher(Protocol):
    """One request's grammar state."""

    constraint: Constraint
    #: Tokens the mask covers (``32 * bitmask_words >= vocab_size``).
    vocab_size: int

    def fill_bitmask(self, out: np.ndarray) -> None:
        """Write the allowed next tokens into ``out`` (int32, ``ceil(vocab_size / 32)`` words)."""

    def consume_token(self, token: int) -> bool:
        """Advance by one sampled token; False (and the error state) if it was not allowed."""

    def is_accepting(self) -> bool:
        """The output so far is a complete match (EOS may follow)."""

    def is_stopped(self) -> bool:
        """Nothing but EOS can follow (also true in the error state)."""

    def is_error(self) -> bool:
        """The matcher is dead: it consumed a token it did not allow, or hit a limit."""

    @property
    def error(self) -> str:
        """Why the matcher is dead ("" when it is not)."""


class Backend(Protocol):
    """Compiles constraints and creates matchers for one tokenizer bridge."""

    name: str

    def bridge(self, hf_tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> Any:
        """The backend's view of a model's tokenizer, built once per model."""

    def compile(self, constraint: Constraint, bridge: Any = None) -> Any:
        """The compiled constraint; ``RequestError`` naming the field if it cannot be enforced
        (invalid, unsatisfiable, unsupported). Without a bridge: the tokenizer-free checks."""

    def matcher(self, compiled: Any, constraint: Constraint, bridge: Any,
                extra_eos: list[int] = ()) -> Matcher:
        """A fresh matcher at the start of the output."""
