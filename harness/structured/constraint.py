"""A request's output constraint: parsed, checked and described, before any model is loaded.

One of a JSON Schema (``json_schema``), a Lark grammar as llguidance takes it (``grammar``) or a
regular expression (``regex``). JSON Schemas are checked against their meta-schema with the
``jsonschema`` library; whether a backend can enforce the constraint (unsatisfiable schemas,
unknown grammar rules, unimplemented keywords) is the backend's check (``LLGuidanceBackend``).
Errors are ``RequestError`` whose message starts with the request field's name, so the command
line can name the flag as typed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from harness.errors import RequestError

__all__ = ["Constraint", "JSON_WHITESPACE", "SOURCE_LIMIT", "parse_constraint",
           "load_json_schema", "read_text_or_file"]

#: JSON layout the matcher pins: no whitespace between tokens (a model cannot spend its token
#: budget on spaces), llguidance's compact separators. Reported with every JSON constraint.
JSON_WHITESPACE = {"flexible": False, "item_separator": ",", "key_separator": ":"}
#: The report keeps at most this many characters of the schema / grammar text.
SOURCE_LIMIT = 4000
KINDS = ("json_schema", "grammar", "regex")


@dataclass(frozen=True)
class Constraint:
    """What the output must match. ``source`` is the text as given (a schema as canonical JSON);
    ``schema`` the parsed JSON Schema (JSON only); ``lark`` the grammar as llguidance compiles it
    (a regex becomes ``start: /.../``)."""

    kind: str
    source: str
    schema: dict | None = field(default=None, compare=False)

    @property
    def whitespace(self) -> dict | str:
        if self.kind == "json_schema":
            return dict(JSON_WHITESPACE)
        return "as the grammar writes it (no implicit whitespace)" if self.kind == "grammar" \
            else "as the regex writes it"

    @property
    def lark(self) -> str | None:
        """The Lark text of a grammar or regex constraint (None for JSON)."""
        if self.kind == "grammar":
            return self.source
        if self.kind == "regex":
            from llguidance import regex_to_lark

            return f"start: /{regex_to_lark(self.source, '')}/"
        return None

    def report(self, limit: int = SOURCE_LIMIT) -> dict:
        """kind, source (truncated past ``limit`` characters, with its full length) and the
        whitespace rule: what result.json and the parity report show."""
        text = self.source
        out: dict[str, Any] = {"kind": self.kind, "source": text[:limit],
                               "source_chars": len(text), "truncated": len(text) > limit,
                               "whitespace": self.whitespace}
        return out


def read_text_or_file(value: str, name: str) -> str:
    """``value`` itself, or the contents of the file it names (UTF-8)."""
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"{name} must be a non-empty string or a file path, got {value!r:.60}")
    if "\n" not in value and len(value) < 4096 and os.path.isfile(value):
        try:
            with open(value, encoding="utf-8") as fh:
                return fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise RequestError(f"{name}: cannot read {value!r}: {exc}") from None
    return value


def load_json_schema(value: Any, name: str = "json_schema") -> dict:
    """A JSON Schema from a dict, JSON text or a file holding it; checked against its
    meta-schema (``jsonschema``'s validator for the schema's ``$schema``, Draft 2020-12 else)."""
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    if isinstance(value, (str, bytes)):
        text = read_text_or_file(value.decode() if isinstance(value, bytes) else value, name)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            where = "" if text is value else " (as read from the file)"
            raise RequestError(f"{name} is neither a file nor valid JSON{where}: {exc}") from None
    if not isinstance(value, dict):
        raise RequestError(f"{name} must be a JSON object (a schema), got "
                           f"{type(value).__name__} {json.dumps(value)[:60]}")
    try:
        validator_for(value).check_schema(value)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise RequestError(f"{name} is not a valid JSON Schema at {where}: "
                           f"{exc.message}") from None
    return value


def parse_constraint(*, json_schema: Any = None, grammar: str | None = None,
                     regex: str | None = None) -> Constraint | None:
    """The request's constraint (None if it has none); at most one of the three may be set."""
    given = [k for k, v in (("json_schema", json_schema), ("grammar", grammar), ("regex", regex))
             if v is not None]
    if not given:
        return None
    if len(given) > 1:
        raise RequestError(f"{' and '.join(given)} were both given; set one constraint at a time "
                           f"(json_schema, grammar or regex)")
    if json_schema is not None:
        schema = load_json_schema(json_schema)
        return Constraint("json_schema", json.dumps(schema, ensure_ascii=False), schema)
    if grammar is not None:
        return Constraint("grammar", read_text_or_file(grammar, "grammar"))
    if not isinstance(regex, str) or not regex:
        raise RequestError(f"regex must be a non-empty pattern, got {regex!r:.60}")
    return Constraint("regex", regex)
