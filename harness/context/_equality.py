"""Value equality for the context classes: numpy arrays compare by content, containers recurse.

``dataclass`` equality compares field tuples with ``==``, which for numpy arrays yields an array
and then fails with "truth value of an array is ambiguous"; MAX's contexts have that problem.
Here an array equals another array of the same shape and dtype with the same values (NaN equal
to NaN in the same place, so that a pickled copy equals its original).
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["values_equal"]


def _arrays_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def values_equal(a: Any, b: Any) -> bool:
    """``a == b`` by value, with numpy arrays (also inside dicts, lists, tuples) by content."""
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and _arrays_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(values_equal(x, y) for x, y in zip(a, b)))
    result = a == b
    if isinstance(result, (bool, np.bool_)):
        return bool(result)
    try:  # an array-like (e.g. a tensor) compared element-wise
        return bool(np.all(np.asarray(result)))
    except (TypeError, ValueError):
        return False
