"""``DIR/results.jsonl``: one JSON line per finished case, appended as cases finish.

Only the driver writes it, one ``write`` + ``fsync`` per line, so a kill loses at most the line
being written; ``repair`` cuts such a partial last line before a resumed sweep appends. A case
that appears twice (a rerun) counts by its last line.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["read", "repair", "append"]


def read(path: str | Path) -> dict[str, dict]:
    """``{case id: its last record}``; unreadable lines (a cut last line) are skipped."""
    out: dict[str, dict] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("id"), str):
                    out[record["id"]] = record
    except FileNotFoundError:
        pass
    return out


def repair(path: str | Path) -> None:
    """Cut a partial last line (a kill in mid-write) so the next append starts a fresh line."""
    try:
        with open(path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


def _clean(obj: Any) -> Any:
    """Strict JSON: numpy scalars as numbers, non-finite floats as null, paths as text."""
    if type(obj).__module__ == "numpy" and hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def append(path: str | Path, record: dict) -> None:
    """Append ``record`` as one line and push it to disk."""
    line = json.dumps(_clean(record), sort_keys=True, allow_nan=False, default=str) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
