"""Model families, one package each (rules, loop, reference runner, loading, tiny recipe), and the
registry that maps a model name or folder to its family."""
from .registry import DEFAULT_MODEL, ResolvedModel, resolve, tiny_names

__all__ = ["DEFAULT_MODEL", "ResolvedModel", "resolve", "tiny_names"]
