"""Memory figures per phase of a run: peak host RSS, and on CUDA the allocator's peaks.

Linux keeps a process's peak RSS in ``/proc/self/status`` (VmHWM); writing ``5`` to
``/proc/self/clear_refs`` resets it (Linux >= 4.0), so each phase gets its own peak. CUDA peaks
come from ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` after
``reset_peak_memory_stats``. Where the host peak cannot be reset, ``rss_peak_reset`` is False and
each phase's figure is the process peak so far.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

__all__ = ["MemoryMeter", "host_rss_mib", "memory_line"]

_MIB = 1024 * 1024


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def host_rss_mib() -> dict:
    """Current and peak resident set size of this process, MiB (None where unknown)."""
    cur, peak = _status_kib("VmRSS"), _status_kib("VmHWM")
    if peak is None:  # not Linux: ru_maxrss is the lifetime peak (KiB on Linux, bytes on macOS)
        import resource
        import sys

        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = ru // 1024 if sys.platform == "darwin" else ru
    return {"rss_mib": None if cur is None else cur / 1024, "peak_rss_mib": peak / 1024}


def _reset_host_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Collects ``{phase: {peak_rss_mib, cuda_max_allocated_mib, cuda_max_reserved_mib,
    seconds}}``; ``with meter.phase("denoise"): ...`` measures one phase."""

    def __init__(self, device) -> None:
        import torch

        self.cuda = torch.device(device).type == "cuda"
        self.phases: dict[str, dict] = {}
        self.rss_peak_reset = True

    @contextmanager
    def phase(self, name: str):
        import torch

        self.rss_peak_reset = _reset_host_peak() and self.rss_peak_reset
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            entry = {"peak_rss_mib": host_rss_mib()["peak_rss_mib"]}
            if self.cuda:
                torch.cuda.synchronize()
                entry["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / _MIB
                entry["cuda_max_reserved_mib"] = torch.cuda.max_memory_reserved() / _MIB
            entry["seconds"] = time.perf_counter() - t0
            self.phases[name] = entry

    def summary(self) -> dict:
        """The ``memory`` object of result.json: per phase, and the peaks over all phases."""
        out: dict = {"phases": dict(self.phases), "rss_peak_reset_per_phase": self.rss_peak_reset}
        peaks = [p["peak_rss_mib"] for p in self.phases.values() if p.get("peak_rss_mib")]
        out["peak_rss_mib"] = max(peaks) if peaks else host_rss_mib()["peak_rss_mib"]
        if self.cuda:
            out["cuda_max_allocated_mib"] = max(
                (p["cuda_max_allocated_mib"] for p in self.phases.values()), default=None)
            out["cuda_max_reserved_mib"] = max(
                (p["cuda_max_reserved_mib"] for p in self.phases.values()), default=None)
        return out

    def line(self) -> str:
        """One console line: the peak, then each phase."""
        return memory_line(self.phases)


def memory_line(phases: dict[str, dict]) -> str:
    """``memory: peak <CUDA allocated | host RSS> N MiB (phase N, ...)`` over ``phases``
    (``MemoryMeter.phases`` entries; CUDA figures when the phases have them)."""
    cuda = any("cuda_max_allocated_mib" in p for p in phases.values())
    key = "cuda_max_allocated_mib" if cuda else "peak_rss_mib"
    shown = {name: p[key] for name, p in phases.items() if p.get(key) is not None}
    parts = ", ".join(f"{name} {v:.0f}" for name, v in shown.items())
    top = max(shown.values(), default=0)
    return f"memory: peak {'CUDA allocated' if cuda else 'host RSS'} {top:.0f} MiB ({parts})"
