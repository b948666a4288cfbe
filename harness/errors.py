"""Errors the harness raises for bad requests (the CLI maps them to exit code 2)."""

__all__ = ["RequestError"]


class RequestError(ValueError):
    """A request that cannot be served as given; the message says what was wrong and what is
    allowed."""
