"""What a constrained run reports: the constraint, whether the output is complete, and for JSON
the parsed object and whether it validates against the schema (``jsonschema``, not by hand)."""
from __future__ import annotations

import json
from typing import Any

from .constraint import Constraint

__all__ = ["check_json", "constraint_result", "parity_section"]


def check_json(text: str, schema: dict) -> dict:
    """``parsed`` (None if the text is not JSON), ``parse_error``, ``valid`` and the first
    ``validation_error`` (jsonschema's best match, with its path)."""
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for

    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        return {"parsed": None, "parse_error": str(exc), "valid": False,
                "validation_error": "the output is not JSON"}
    validator = validator_for(schema)(schema)
    error = best_match(validator.iter_errors(parsed))
    message = None
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        message = f"at {where}: {error.message}"
    return {"parsed": parsed, "parse_error": None, "valid": error is None,
            "validation_error": message}


def constraint_result(constraint: Constraint, text: str, matcher: Any = None,
                      stats: dict | None = None) -> dict:
    """The ``constraint`` section of result.json: the constraint as reported, whether the matcher
    accepted the output (``complete``: False when a stop string or the length limit cut it), the
    mask statistics (``ConstrainedDecoder.report()``) and, for JSON, ``check_json`` of the
    text."""
    out: dict[str, Any] = constraint.report()
    out["backend"] = "llguidance"
    out["complete"] = None if matcher is None else bool(matcher.is_accepting())
    if stats is not None:
        out.update(stats)
    if constraint.kind == "json_schema":
        out.update(check_json(text, constraint.schema))
    return out


def parity_section(constraint: Constraint, stats: dict | None) -> dict:
    """``report["constraint"]`` of a parity run: the constraint as reported and the harness's
    mask statistics (``mask_changed_tokens``: steps whose unconstrained argmax the mask
    disallowed; ``dead_matcher``: None or where and why the matcher died)."""
    stats = stats or {}
    return {**constraint.report(), "backend": "llguidance",
            "mask_changed_tokens": stats.get("mask_changed_tokens"),
            "masked_steps": stats.get("masked_steps"),
            "dead_matcher": stats.get("dead_matcher")}
