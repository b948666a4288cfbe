"""Structured output: a request's JSON Schema, Lark grammar or regex enforced token by token.

``parse_constraint`` checks the request's constraint (no model needed); ``new_matcher`` compiles
it against the model's tokenizer bridge (llguidance, built once per model) into the matcher the
context's ``update()`` advances; ``ConstrainedDecoder`` fills and applies the next token's mask in
the decode loop; ``constraint_result`` is what result.json records. The matcher protocol
(``protocol.py``) keeps the backend replaceable.
"""
from __future__ import annotations

import importlib
from typing import Any, Iterable

_EXPORTS = {
    "Constraint": "constraint", "JSON_WHITESPACE": "constraint", "parse_constraint": "constraint",
    "load_json_schema": "constraint", "ConstrainedDecoder": "decode", "check_json": "output",
    "constraint_result": "output",
}

__all__ = sorted(_EXPORTS) + ["check_constraint", "new_matcher", "backend"]


def __getattr__(name):
    """Lazy exports: parsing a constraint imports neither llguidance nor numba."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness.structured' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"harness.structured.{module}"), name)
    globals()[name] = value
    return value


def backend(name: str = "llguidance"):
    """The structured-output backend by name (only llguidance is built in)."""
    if name != "llguidance":
        raise ValueError(f"unknown structured-output backend {name!r}; known: llguidance")
    from .llguidance_backend import LLGuidanceBackend

    return LLGuidanceBackend()


def check_constraint(constraint) -> None:
    """The checks that need no model: compiles the constraint without a tokenizer
    (``RequestError`` if it cannot be enforced)."""
    backend().compile(constraint, None)


def new_matcher(constraint, hf_tokenizer: Any, vocab_size: int,
                eos_token_ids: Iterable[int], extra_eos: Iterable[int] = ()):
    """A fresh matcher for one request on the model's tokenizer bridge (``eos_token_ids``: the
    model's EOS; ``extra_eos``: the request's further stop ids, allowed only when accepting)."""
    be = backend()
    bridge = be.bridge(hf_tokenizer, vocab_size, eos_token_ids)
    compiled = be.compile(constraint, bridge)
    return be.matcher(compiled, constraint, bridge, extra_eos)
