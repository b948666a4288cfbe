"""Report plumbing shared by the parity checks: atomic writes, array diffs, Markdown tables."""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = [
    "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "markdown_table",
    "max_abs_diff", "mean_abs_diff", "psnr_db", "environment", "fmt_num", "captured_logs",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no inf/nan; callers say what a null means
    if isinstance(obj, np.ndarray):
        return [_jsonable(x) for x in obj.tolist()]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(x) for x in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON (inf/nan become null), indented, written atomically."""
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")


def fmt_num(x: Any) -> str:
    """Compact cell text: exact zero as 0, small/large floats in scientific notation."""
    if x is None:
        return "—"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if x == 0:
            return "0"
        if not math.isfinite(x):
            return str(x)
        return f"{x:.3e}" if abs(x) < 1e-3 or abs(x) >= 1e5 else f"{x:.6g}"
    return str(x)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells go through ``fmt_num``, pipes are escaped."""
    def cell(v: Any) -> str:
        return fmt_num(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float | None:
    """max |a − b| in float64; None when the shapes differ."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return None
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return None
    if a.size == 0:
        return 0.0
    return float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def psnr_db(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float | None:
    """Peak signal-to-noise ratio in dB; inf for identical arrays, None for a shape mismatch."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return None
    mse = float(np.mean((a - b) ** 2)) if a.size else 0.0
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def environment(packages: Sequence[str] = ("torch", "diffusers", "transformers", "numpy", "numba",
                                           "tokenizers")) -> dict:
    """Versions, Python, platform and the torch thread count (it changes float bits)."""
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for p in packages:
        try:
            env[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            env[p] = None
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        env["torch_threads"] = None
    return env


def _configure(name: str) -> None:
    """Let diffusers / transformers set up their library loggers now: they add their own
    console handler at first import, which would bypass a capture installed before it."""
    if name in ("diffusers", "transformers"):
        import importlib

        importlib.import_module(f"{name}.utils.logging").get_logger()


@contextmanager
def captured_logs(*names: str):
    """Collect what the libraries' loggers (default: diffusers, transformers) say at warning level
    or above while a reference runs, instead of printing it: the list it yields goes into the
    report, so the console stays quiet and nothing is lost."""
    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.name}: {record.getMessage()}")

    saved = []
    for name in names or ("diffusers", "transformers"):
        _configure(name)
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers = [_Keep(level=logging.WARNING)]
        logger.propagate = False
    try:
        yield records
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate
