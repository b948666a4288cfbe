"""A sweep spec (TOML) → its cases: keys are ``generate``'s flags, values a value or a list.

Lists are crossed in the order the keys are written. ``[[exclude]]`` tables drop the crossed
cases that match every key they give; ``[[include]]`` tables follow GitHub Actions' matrix rules:
an include's keys are added to each crossed case whose own values it does not change, and an
include that fits no case is a case of its own (only its keys). Relative paths (``image``, a
model folder) are taken from the spec's folder. A case without ``seed`` gets seed 0, so reruns
and resumes repeat it. Every mistake is a ``SpecError`` of one line, found before anything runs.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SpecError", "Case", "load_spec", "spec_keys", "expand", "DEFAULT_SEED"]

DEFAULT_SEED = 0
#: ``generate`` destinations the sweep sets itself (or that are not requests).
_SWEEP_OWNED = {"help", "output_dir", "overwrite", "quiet", "list_models", "version", "parity",
                "tolerance", "model_cache"}


class SpecError(ValueError):
    """A spec the sweep refuses; the message is one line."""


@dataclass
class Case:
    """One request of the sweep: its spec values, the ``generate`` arguments, and its id."""

    values: dict[str, Any]
    argv: list[str]
    id: str = ""
    resolved: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> tuple:
        """Cases that share loaded modules (run back to back)."""
        v = self.resolved
        return str(v.get("model")), str(v.get("device")), str(v.get("dtype"))


def _actions() -> dict[str, argparse.Action]:
    from harness.generate import build_parser

    out = {}
    for action in build_parser()._actions:
        if action.dest in _SWEEP_OWNED or not action.option_strings:
            continue
        out[action.option_strings[0][2:]] = action
    return out


def spec_keys() -> list[str]:
    """The keys a spec may use: ``generate``'s flags without the dashes."""
    return list(_actions())


def load_spec(path: str | Path) -> dict:
    """The parsed TOML of ``path`` (SpecError for a missing file or bad TOML)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read it: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: invalid TOML: {exc}") from None


def _kind(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction):
        return "flag"
    if isinstance(action, argparse._AppendAction):
        return "paths"
    return {int: "int", float: "float"}.get(action.type, "float" if action.type else "str")


def _check_value(key: str, value: Any, kind: str) -> Any:
    """One value of ``key`` as a case holds it (``image``: a list of paths)."""
    ok = {"flag": isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, str),
          "paths": isinstance(value, str) or (isinstance(value, list) and bool(value)
                                               and all(isinstance(v, str) for v in value))}[kind]
    if not ok:
        what = {"flag": "true or false", "int": "an integer", "float": "a number",
                "str": "a string",
                "paths": "a path or a list of paths (one case's images)"}[kind]
        raise SpecError(f"{key} = {json.dumps(value)}: --{key} takes {what}")
    return [value] if kind == "paths" and isinstance(value, str) else value


def _axes(table: dict, where: str, actions: dict, *, crossed: bool) -> dict[str, list]:
    """``{key: [values]}`` of a table (top level: lists are crossed; include, exclude: one
    value per key)."""
    out = {}
    for key, raw in table.items():
        if key not in actions:
            raise SpecError(f"{where}unknown key {key!r}; allowed: {', '.join(actions)}, and "
                            f"[[include]] / [[exclude]] tables")
        kind = _kind(actions[key])
        many = isinstance(raw, list) and (kind != "paths" or any(isinstance(v, list)
                                                                  for v in raw))
        if isinstance(raw, list) and kind == "paths" and crossed and not many:
            many = True  # image = ["a.png", "b.png"]: two cases of one image each
        if many and not crossed:
            raise SpecError(f"{where}{key} = {json.dumps(raw)}: one value here, not a list")
        if isinstance(raw, dict):
            raise SpecError(f"{where}{key}: a value or a list of values, not a table")
        values = raw if many else [raw]
        if not values:
            raise SpecError(f"{where}{key} is an empty list")
        out[key] = [_check_value(key, v, kind) for v in values]
    return out


def _tables(spec: dict, name: str, actions: dict) -> list[dict]:
    raw = spec.get(name, [])
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise SpecError(f"{name} must be an array of tables ([[{name}]]), got {json.dumps(raw)}")
    out = []
    for i, table in enumerate(raw, 1):
        if not table:
            raise SpecError(f"[[{name}]] #{i} is empty")
        axes = _axes(table, f"[[{name}]] #{i}: ", actions, crossed=False)
        out.append({k: v[0] for k, v in axes.items()})
    return out


def _cross(spec: dict, actions: dict) -> list[dict]:
    """The crossed cases, less the excluded ones, plus the includes (GitHub Actions' rules)."""
    top = {k: v for k, v in spec.items() if k not in ("include", "exclude")}
    axes = _axes(top, "", actions, crossed=True)
    excludes, includes = _tables(spec, "exclude", actions), _tables(spec, "include", actions)
    cases = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] if axes \
        else []
    for i, ex in enumerate(excludes, 1):
        kept = [c for c in cases if any(c.get(k) != v for k, v in ex.items())]
        if len(kept) == len(cases):
            raise SpecError(f"[[exclude]] #{i} ({_show(ex)}) matches no case")
        cases = kept
    originals, extra = [dict(c) for c in cases], []
    for inc in includes:
        fitted = False
        for case, original in zip(cases, originals):
            if all(original.get(k, v) == v for k, v in inc.items()):
                case.update(inc)
                fitted = True
        if not fitted:
            extra.append(dict(inc))
    cases += extra
    if not cases:
        raise SpecError("the spec gives no case (no keys, or everything excluded)")
    return cases


def _show(values: dict) -> str:
    return ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _localise(values: dict, base: Path, models: set[str]) -> dict:
    """Paths taken from the spec's folder, checked to exist; the model checked to be known."""
    out = dict(values)
    if "image" in out:
        paths = []
        for p in out["image"]:
            full = (base / p).expanduser()
            if not full.is_file():
                raise SpecError(f"image = {json.dumps(p)}: no such file (relative paths are "
                                f"taken from the spec's folder, {str(base)!r})")
            paths.append(str(full.resolve()))
        out["image"] = paths
    model = out.get("model")
    if model is not None and model not in models:
        folder = (base / model).expanduser()
        if folder.is_dir():
            out["model"] = str(folder.resolve())
        elif "/" not in model or model.startswith((".", "/", "~")):
            raise SpecError(f"model = {json.dumps(model)} is neither a built-in model "
                            f"({', '.join(sorted(models))}) nor a folder (relative paths are "
                            f"taken from the spec's folder) nor a Hugging Face id")
    return out


def _argv(values: dict, actions: dict) -> list[str]:
    argv = []
    for key, value in values.items():
        kind = _kind(actions[key])
        if kind == "flag":
            argv += [f"--{key}"] if value else []
        elif kind == "paths":
            argv += [f"--{key}={p}" for p in value]
        else:  # --key=value: a value that starts with '-' stays a value
            argv.append(f"--{key}={value}")
    return argv


def _parse(argv: list[str], values: dict) -> argparse.Namespace:
    """``generate``'s own parser over a case's arguments; its complaint becomes a SpecError."""
    from harness.generate import build_parser

    parser = build_parser()

    def error(message: str):
        raise SpecError(f"case ({_show(values)}): {message}")

    parser.error = error  # argparse calls self.error(...) for every bad argument
    return parser.parse_args(argv)


def resolved_request(args: argparse.Namespace, tolerance: float | None) -> dict:
    """What a case asks for, every ``generate`` option filled in: its id is a hash of this."""
    out = {k: v for k, v in sorted(vars(args).items()) if k not in _SWEEP_OWNED}
    out["parity"], out["tolerance"] = True, tolerance
    if out.get("image"):
        out["image"] = [{"sha256": _sha256(Path(p))} for p in out["image"]]
    return out


def case_id(resolved: dict) -> str:
    """12 hex digits of the SHA-256 of the resolved request (canonical JSON)."""
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def expand(spec: dict, spec_path: str | Path, *, tolerance: float | None,
           models: set[str]) -> list[Case]:
    """The cases of ``spec``: validated, resolved, hashed, deduplicated, grouped by model (the
    spec's order otherwise)."""
    actions = _actions()
    base = Path(spec_path).resolve().parent
    out: dict[str, Case] = {}
    for raw in _cross(spec, actions):
        if "prompt" not in raw:
            raise SpecError(f"case ({_show(raw)}) has no prompt")
        values = _localise(raw, base, models)
        values.setdefault("seed", DEFAULT_SEED)
        argv = _argv(values, actions)
        resolved = resolved_request(_parse(argv, raw), tolerance)
        case = Case(values=values, argv=argv, resolved=resolved)
        case.id = case_id(resolved)
        out.setdefault(case.id, case)
    order = {}
    for case in out.values():
        order.setdefault(case.group, len(order))
    return sorted(out.values(), key=lambda c: order[c.group])
