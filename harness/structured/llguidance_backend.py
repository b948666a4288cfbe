"""The llguidance backend: constraints compiled to llguidance grammars, one ``LLMatcher`` per
request behind the harness's matcher protocol.

JSON Schemas compile with whitespace pinned (``whitespace_flexible: false``: llguidance's compact
separators, no whitespace between tokens); Lark grammars and regexes compile as written.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

import numpy as np

from harness.errors import RequestError

from .bridge import bridge_by_id, bridge_id, tokenizer_bridge
from .constraint import Constraint

__all__ = ["LLGuidanceBackend", "LLGuidanceMatcher"]

_KIND_WORDS = {"json_schema": "JSON Schema", "grammar": "Lark grammar", "regex": "regex"}


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


class LLGuidanceBackend:
    """Compile constraints with llguidance; create ``LLGuidanceMatcher``s."""

    name = "llguidance"

    def bridge(self, hf_tokenizer: Any, vocab_size: int, eos_token_ids: Iterable[int]) -> Any:
        return tokenizer_bridge(hf_tokenizer, vocab_size, eos_token_ids)

    def grammar(self, constraint: Constraint) -> str:
        """The llguidance grammar (its JSON form) of ``constraint``; nothing checked yet."""
        from llguidance import LLMatcher

        if constraint.kind == "json_schema":
            try:
                return LLMatcher.grammar_from_json_schema(
                    constraint.schema, defaults={"whitespace_flexible": False})
            except ValueError as exc:
                raise RequestError(f"json_schema cannot be compiled: {_one_line(str(exc))}") \
                    from None
        return LLMatcher.grammar_from_lark(constraint.lark)

    def compile(self, constraint: Constraint, bridge: Any = None) -> str:
        """The checked grammar; ``RequestError`` (starting with the field's name) when llguidance
        refuses it: invalid, unsatisfiable or using what it does not implement."""
        from llguidance import LLMatcher

        grammar = self.grammar(constraint)
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, bridge)
        if is_error:
            what = _KIND_WORDS[constraint.kind]
            raise RequestError(f"{constraint.kind} cannot be enforced: llguidance refuses the "
                               f"{what}: {_one_line(messages[0])[:400]}")
        return grammar

    def matcher(self, compiled: str, constraint: Constraint, bridge: Any,
                extra_eos: Iterable[int] = ()) -> "LLGuidanceMatcher":
        from llguidance import LLMatcher

        return LLGuidanceMatcher(LLMatcher(bridge, compiled, log_level=0), constraint, bridge,
                                 compiled, extra_eos)


def _restore_matcher(bid: str, compiled: str, constraint: Constraint, extra_eos: tuple,
                     tokens: list[int]) -> "LLGuidanceMatcher":
    bridge = bridge_by_id(bid) if bid is not None else None
    if bridge is None:
        raise RuntimeError(
            "a structured-output matcher can only be unpickled in the process that built its "
            "tokenizer bridge; send the context's json_schema / grammar and build a new context "
            "(new_context) on the receiving side")
    m = LLGuidanceBackend().matcher(compiled, constraint, bridge, extra_eos)
    for t in tokens:
        m.consume_token(t)
    return m


class LLGuidanceMatcher:
    """One request's llguidance matcher (the protocol in ``harness.structured.protocol``).

    ``extra_eos``: EOS ids of the request that the bridge does not know as EOS (stop token ids):
    their bits follow ``is_accepting()`` like the model's own EOS. ``tokens`` are the tokens
    consumed so far (equality, pickling and the report use them)."""

    def __init__(self, ll_matcher: Any, constraint: Constraint, bridge: Any, compiled: str,
                 extra_eos: Iterable[int] = ()) -> None:
        self._m = ll_matcher
        self._bridge = bridge
        self._compiled = compiled
        self.constraint = constraint
        self.vocab_size = int(bridge.vocab_size)
        known = set(bridge.eos_tokens)
        self._extra_eos = tuple(sorted({int(e) for e in extra_eos
                                        if 0 <= int(e) < self.vocab_size} - known))
        self.tokens: list[int] = []

    # -- the protocol -----------------------------------------------------------------------------
    def fill_bitmask(self, out: np.ndarray) -> None:
        words = (self.vocab_size + 31) // 32
        if out.dtype != np.int32 or out.shape != (words,) or not out.flags.c_contiguous:
            raise ValueError(f"bitmask must be a C-contiguous int32 array of {words} words, got "
                             f"{out.dtype} {out.shape}")
        self._m.unsafe_compute_mask_ptr(out.ctypes.data, out.nbytes)
        if self._extra_eos:
            accepting = self._m.is_accepting()
            for e in self._extra_eos:
                bit = np.int32(1 << (e & 31)) if e & 31 != 31 else np.int32(-2**31)
                if accepting:
                    out[e >> 5] |= bit
                else:
                    out[e >> 5] &= ~bit

    def consume_token(self, token: int) -> bool:
        self.tokens.append(int(token))
        if int(token) in self._extra_eos and self._m.is_accepting():
            token = self._bridge.eos_token  # a stop token ends the output as EOS would
        return bool(self._m.consume_token(int(token)))

    def is_accepting(self) -> bool:
        return bool(self._m.is_accepting())

    def is_stopped(self) -> bool:
        return bool(self._m.is_stopped())

    def is_error(self) -> bool:
        return bool(self._m.is_error())

    @property
    def error(self) -> str:
        return self._m.get_error()

    # -- copies, equality, pickling ---------------------------------------------------------------
    def _clone(self) -> "LLGuidanceMatcher":
        new = copy.copy(self.__dict__)
        obj = LLGuidanceMatcher.__new__(LLGuidanceMatcher)
        obj.__dict__.update(new)
        obj._m = self._m.deep_copy()
        obj.tokens = list(self.tokens)
        return obj

    def __copy__(self) -> "LLGuidanceMatcher":
        return self._clone()  # a shallow copy sharing llguidance's state would be a trap

    def __deepcopy__(self, memo) -> "LLGuidanceMatcher":
        return self._clone()

    def __eq__(self, other) -> bool:
        if not isinstance(other, LLGuidanceMatcher):
            return NotImplemented
        return (self.constraint == other.constraint and self.tokens == other.tokens
                and self._compiled == other._compiled and self.vocab_size == other.vocab_size
                and self.is_error() == other.is_error())

    __hash__ = None

    def __reduce__(self):
        return (_restore_matcher, (bridge_id(self._bridge), self._compiled, self.constraint,
                                   self._extra_eos, list(self.tokens)))

    def __repr__(self) -> str:
        state = ("error" if self.is_error() else "stopped" if self.is_stopped()
                 else "accepting" if self.is_accepting() else "open")
        return (f"LLGuidanceMatcher({self.constraint.kind}, {len(self.tokens)} tokens consumed, "
                f"{state})")
