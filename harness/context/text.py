"""TextContext: a text request's tokens, EOS rules, sampling and status (MAX's TextContext).

The per-token ``update()`` path lives in compiled code (``_fast.tokens.ContextCore``); this class
adds the remaining fields and the methods that are not on the per-token hot path. A structured
request's ``_matcher`` (``harness.structured``, built by the tokenizer from ``json_schema`` or
``grammar``) consumes each appended token in ``update()``, never a chunked-prefill step's.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from _fast.tokens import ContextCore, EOSTracker, TokenBuffer

from ._equality import values_equal
from .outputs import TextGenerationOutput
from .sampling import SamplingParams
from .status import FUTURE_TOKEN, GenerationStatus, code_from_status, status_from_code

__all__ = ["TextContext", "SpecDecodingState", "new_request_id"]

# tcp://HOST:PORT[/...] with HOST a name, IPv4 or [IPv6]; the port is range-checked below.
_TCP_ENDPOINT = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(\d{1,5})(/\S*)?$")


def new_request_id() -> str:
    return uuid.uuid4().hex


def _check_target_endpoint(endpoint: Any) -> None:
    """MAX's checks (a ``tcp://`` or ``ipc://`` prefix; tcp needs a port), made strict: a tcp
    host (name, IPv4 or [IPv6]) with a port in 1..65535, an ipc path."""
    if not isinstance(endpoint, str) or not endpoint.startswith(("tcp://", "ipc://")):
        raise ValueError(f"target_endpoint must be prefixed with 'tcp://' or 'ipc://': {endpoint}")
    if endpoint.startswith("tcp://"):
        tcp = _TCP_ENDPOINT.match(endpoint)
        if tcp is None or not 0 < int(tcp.group(2)) <= 65535:
            raise ValueError(
                f"target_endpoint must contain a port if using tcp: {endpoint} (expected "
                f"tcp://HOST:PORT with PORT in 1..65535)")
    elif len(endpoint) == len("ipc://"):
        raise ValueError(f"target_endpoint must name a path after 'ipc://': {endpoint}")


@dataclass
class SpecDecodingState:
    """Per-request speculative-decoding bookkeeping (draft tokens awaiting verification)."""

    draft_tokens: list[int] = field(default_factory=list)
    num_accepted: int = 0


# Python-level fields with their defaults, in the seed page's order (core fields excluded).
_PLAIN_DEFAULTS: dict[str, Any] = {
    "vocab_size": None,
    "log_probabilities": 0,
    "log_probabilities_echo": False,
    "ignore_eos": False,
    "json_schema": None,
    "grammar": None,
    "model_name": "",
    "_draft_offset": 0,
    "_spec_decoding_state": None,
    "in_reasoning_phase": False,
    "target_endpoint": None,
    "external_block_metadata": None,
    "dkv_hint_instance_name": "",
    "cached_prefix_length": None,
    "_cache_metrics_emitted": False,
}
# Fields held in the compiled core (restored through their properties).
_CORE_FIELDS = ("tokens", "max_length", "eos_tracker", "_status_code", "_is_initial_prompt",
                "_log_probabilities_data", "_matcher")


def _restore_context(cls, core_state: dict, plain_state: dict):
    obj = cls.__new__(cls)
    for name, value in core_state.items():
        setattr(obj, name, value)
    obj.__dict__.update(plain_state)
    obj._after_restore()
    return obj


class TextContext(ContextCore):
    """A text-generation request: tokens, EOS rules, sampling parameters and status."""

    def __init__(
        self,
        *,
        max_length: int,
        tokens: TokenBuffer,
        request_id: str | None = None,
        eos_tracker: EOSTracker | None = None,
        vocab_size: int | None = None,
        log_probabilities: int = 0,
        log_probabilities_echo: bool = False,
        ignore_eos: bool = False,
        json_schema: str | None = None,
        grammar: str | None = None,
        grammar_state: Any = None,
        sampling_params: SamplingParams | None = None,
        model_name: str = "",
        _matcher: Any = None,
        status: GenerationStatus = GenerationStatus.ACTIVE,
        _log_probabilities_data: dict[int, Any] | None = None,
        _is_initial_prompt: bool = True,
        _draft_offset: int = 0,
        _spec_decoding_state: SpecDecodingState | None = None,
        in_reasoning_phase: bool = False,
        target_endpoint: str | None = None,
        external_block_metadata: Any = None,
        dkv_hint_instance_name: str = "",
        cached_prefix_length: int | None = None,
        _cache_metrics_emitted: bool = False,
    ) -> None:
        if not isinstance(tokens, TokenBuffer):
            raise TypeError(f"tokens must be a TokenBuffer, got {type(tokens).__name__}")
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) \
                or max_length < 1:
            raise ValueError(f"max_length must be an integer >= 1, got {max_length!r}")
        if vocab_size is not None and (not isinstance(vocab_size, (int, np.integer))
                                       or vocab_size < 1):
            raise ValueError(f"vocab_size must be an integer >= 1 or None, got {vocab_size!r}")
        if not isinstance(log_probabilities, (int, np.integer)) or log_probabilities < 0:
            raise ValueError(
                f"log_probabilities (number of top log-probs) must be >= 0, got {log_probabilities!r}")
        if target_endpoint is not None:
            _check_target_endpoint(target_endpoint)
        if json_schema is not None and grammar is not None:
            raise ValueError("json_schema and grammar were both given; a request takes one "
                             "output constraint (harness.structured)")
        sampling_params = sampling_params if sampling_params is not None else SamplingParams()
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError(
                f"sampling_params must be a SamplingParams, got {type(sampling_params).__name__}")
        min_tokens = sampling_params.min_new_tokens
        if min_tokens + tokens.prompt_length > max_length:
            raise ValueError(
                f"min_tokens ({min_tokens}) + prompt_len ({tokens.prompt_length}) must be less "
                f"than or equal to max_length ({max_length})")

        self.tokens = tokens
        self.max_length = int(max_length)
        self.eos_tracker = eos_tracker if eos_tracker is not None else EOSTracker()
        self.status = status
        self._is_initial_prompt = _is_initial_prompt
        self._log_probabilities_data = (
            _log_probabilities_data if _log_probabilities_data is not None else {})
        self._matcher = _matcher
        self.request_id = request_id if request_id is not None else new_request_id()
        self.vocab_size = None if vocab_size is None else int(vocab_size)
        self.log_probabilities = int(log_probabilities)
        self.log_probabilities_echo = log_probabilities_echo
        self.ignore_eos = ignore_eos
        self.json_schema = json_schema
        self.grammar = grammar
        self.grammar_state = grammar_state if grammar_state is not None else {}
        self.sampling_params = sampling_params
        self.model_name = model_name
        self._draft_offset = _draft_offset
        self._spec_decoding_state = _spec_decoding_state
        self.in_reasoning_phase = in_reasoning_phase
        self.target_endpoint = target_endpoint
        self.external_block_metadata = external_block_metadata
        self.dkv_hint_instance_name = dkv_hint_instance_name
        self.cached_prefix_length = cached_prefix_length
        self._cache_metrics_emitted = _cache_metrics_emitted
        self._validate_state()

    # -- status ----------------------------------------------------------------------------------
    @property
    def status(self) -> GenerationStatus:
        return status_from_code(self._status_code)

    @status.setter
    def status(self, value) -> None:
        self._status_code = code_from_status(value)

    @property
    def is_done(self) -> bool:
        return self._status_code != 0

    @property
    def is_initial_prompt(self) -> bool:
        return self._is_initial_prompt

    @property
    def min_tokens(self) -> int:
        return self.sampling_params.min_new_tokens

    @property
    def spec_decoding_state(self) -> SpecDecodingState:
        """Created on first use; the same object until ``reset()``."""
        if self._spec_decoding_state is None:
            self._spec_decoding_state = SpecDecodingState()
        return self._spec_decoding_state

    @property
    def last_realized_token(self) -> int:
        """The last token that is not a pending FUTURE_TOKEN placeholder."""
        if self._has_pending_placeholder:
            return self.tokens[-2]
        return self.tokens[-1]

    # -- methods off the hot path -------------------------------------------------------------
    def apply_processing_offset(self, value: int) -> None:
        self.tokens.apply_processing_offset(value)

    def compute_num_available_steps(self, max_seq_len: int) -> int:
        return max_seq_len - (len(self.tokens) - self.tokens.active_length)

    def get_min_token_logit_mask(self, num_steps: int) -> list[np.ndarray]:
        """Per upcoming step, ``(K, 2)`` int32 rows ``(0, eos_id)`` to mask while min_tokens is
        not reached, else an empty ``(0, 2)`` array."""
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        start = self.tokens.current_position
        lo = self.tokens.prompt_length
        hi = lo + self.min_tokens
        eos = sorted(self.eos_tracker.eos_token_ids)
        masked = np.array([[0, e] for e in eos], dtype=np.int32).reshape(-1, 2)
        return [masked.copy() if lo <= i < hi else np.zeros((0, 2), dtype=np.int32)
                for i in range(start, start + num_steps)]

    def to_generation_output(self) -> TextGenerationOutput:
        """Hand out the tokens generated since the last call (a pending placeholder is held back)."""
        start, end = self.tokens.completion_range
        exclude = 1 if self._has_pending_placeholder and end > start else 0
        if end - start - exclude <= 0:
            return TextGenerationOutput(
                request_id=self.request_id, tokens=[], final_status=self.status,
                log_probabilities=None, num_cached_tokens=self.cached_prefix_length)
        if self.vocab_size is not None:
            # Checked before anything is consumed; the first offending token (in order) is named.
            pending = self.tokens.all[start:end - exclude]
            bad = np.flatnonzero((pending < 0) | (pending >= self.vocab_size))
            if bad.size:
                token_id = int(pending[bad[0]])
                if token_id < 0:
                    raise RuntimeError(
                        f"Generated negative token_id={token_id} for request {self.request_id}")
                raise RuntimeError(
                    f"Generated out-of-vocabulary token_id={token_id} for request "
                    f"{self.request_id} (valid range: [0, {self.vocab_size}))")
        tokens = self.tokens.consume_recently_generated_tokens(exclude).tolist()
        lps = [self._log_probabilities_data.pop(i) for i in range(start, end - exclude)
               if i in self._log_probabilities_data]
        return TextGenerationOutput(
            request_id=self.request_id, tokens=tokens, final_status=self.status,
            log_probabilities=lps or None, num_cached_tokens=self.cached_prefix_length)

    def reset(self) -> None:
        """Preemption: drop a pending placeholder and turn every token into prompt."""
        self.tokens.reset_as_new_prompt(1 if self._has_pending_placeholder else 0)
        self._is_initial_prompt = True
        self._spec_decoding_state = None
        self._validate_state()

    # -- equality and pickling ------------------------------------------------------------------
    def __eq__(self, other):
        """Equal by value (as MAX's dataclass contexts): same class and every field equal, the
        token buffer by content and state, numpy arrays (images, extra_model_args) by content.

        Contexts are mutable, so they are unhashable (``__hash__ = None``, as for a MAX dataclass
        with ``eq=True``); key them by ``request_id``."""
        if other.__class__ is not self.__class__:
            return NotImplemented
        if self is other:
            return True
        if self.request_id != other.request_id:  # cheap, and decides most comparisons
            return False
        return (all(values_equal(getattr(self, n), getattr(other, n)) for n in _CORE_FIELDS)
                and values_equal(self.__dict__, other.__dict__))

    __hash__ = None

    def __reduce__(self):
        core = {name: getattr(self, name) for name in _CORE_FIELDS}
        return (_restore_context, (type(self), core, dict(self.__dict__)))

    def _after_restore(self) -> None:
        """Hook for subclasses that keep derived compiled state."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(request_id={self.request_id!r}, status={self.status.value}, "
                f"max_length={self.max_length}, tokens={self.tokens!r})")


# Keep FUTURE_TOKEN importable from here as well.
FUTURE_TOKEN = FUTURE_TOKEN
