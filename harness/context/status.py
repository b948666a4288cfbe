"""Request status shared by every context."""
from enum import Enum

from _fast.tokens import (
    FUTURE_TOKEN,
    STATUS_ACTIVE,
    STATUS_CANCELLED,
    STATUS_END_OF_SEQUENCE,
    STATUS_MAXIMUM_LENGTH,
)

__all__ = ["GenerationStatus", "FUTURE_TOKEN", "status_from_code", "code_from_status"]


class GenerationStatus(str, Enum):
    """Where a request stands; ``is_done`` for every value but ACTIVE."""

    ACTIVE = "active"
    END_OF_SEQUENCE = "end_of_sequence"
    MAXIMUM_LENGTH = "maximum_length"
    CANCELLED = "cancelled"

    @property
    def is_done(self) -> bool:
        return self is not GenerationStatus.ACTIVE


# The compiled core stores the status as a small int; this is the mapping (same order).
_BY_CODE = {
    STATUS_ACTIVE: GenerationStatus.ACTIVE,
    STATUS_END_OF_SEQUENCE: GenerationStatus.END_OF_SEQUENCE,
    STATUS_MAXIMUM_LENGTH: GenerationStatus.MAXIMUM_LENGTH,
    STATUS_CANCELLED: GenerationStatus.CANCELLED,
}
_BY_STATUS = {v: k for k, v in _BY_CODE.items()}


def status_from_code(code: int) -> GenerationStatus:
    return _BY_CODE[code]


def code_from_status(status) -> int:
    try:
        return _BY_STATUS[GenerationStatus(status)]
    except ValueError:
        allowed = ", ".join(s.value for s in GenerationStatus)
        raise ValueError(f"unknown status {status!r}; allowed: {allowed}") from None
