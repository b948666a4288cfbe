"""Sampling parameters of a text request."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

__all__ = ["SamplingParams"]


@dataclass(kw_only=True)
class SamplingParams:
    """Temperature / top-k / top-p sampling; greedy when ``temperature == 0`` or ``top_k == 1``."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_new_tokens: int = 0
    max_new_tokens: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, numbers.Real) or math.isnan(self.temperature) \
                or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, numbers.Integral) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not isinstance(self.top_p, numbers.Real) or not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.min_new_tokens, numbers.Integral) or self.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be an integer >= 0, got {self.min_new_tokens!r}")
        if self.max_new_tokens is not None and (
                not isinstance(self.max_new_tokens, numbers.Integral) or self.max_new_tokens < 1):
            raise ValueError(f"max_new_tokens must be an integer >= 1 or None, "
                             f"got {self.max_new_tokens!r}")
        if self.seed is not None and (not isinstance(self.seed, numbers.Integral) or self.seed < 0):
            raise ValueError(f"seed must be an integer >= 0 or None, got {self.seed!r}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1
