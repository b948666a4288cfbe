"""Model families: layout rules, tiny offline recipes and real-weight loading, one module each."""
from .registry import DEFAULT_MODEL, ResolvedModel, resolve, tiny_names

__all__ = ["DEFAULT_MODEL", "ResolvedModel", "resolve", "tiny_names"]
