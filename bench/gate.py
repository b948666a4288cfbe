"""The speed-regression gate: ratios measured in one run, each fast path against its reference.

Absolute times on a shared machine move by 0.6-1.5x from run to run; a ratio of two sides timed
in the same process, interleaved round by round (fast, ref, ref, fast, ...) so that drift hits
both, moves far less. Each metric builds two *samplers* (``sample(n) -> seconds`` for n
repetitions, set-up untimed); the engine calibrates n so a sample lasts ``min_time``, takes
``rounds`` interleaved samples of each side and reports the median of the per-round ratios
``reference time / fast time``. Targets (``bench/targets.toml``) bound those ratios.

Used by ``python -m bench check | compare | report`` (``bench/__main__.py``).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

__all__ = ["Metric", "Target", "METRICS", "metric", "measure", "load_targets", "judge",
           "machine_id", "runs_dir", "save_run", "load_runs", "format_table"]

ROOT = Path(__file__).resolve().parent.parent
TARGETS = Path(__file__).resolve().parent / "targets.toml"

Sampler = Callable[[int], float]


@dataclass(frozen=True)
class Metric:
    """One ratio: ``build()`` returns ``(fast_sampler, reference_sampler)``."""

    name: str
    build: Callable[[], tuple[Sampler, Sampler]]
    doc: str
    group: str


#: name -> Metric, in the order they are measured (bench/gate_metrics.py fills it).
METRICS: dict[str, Metric] = {}


def metric(group: str):
    """Register ``build`` (docstring = what the ratio means) as a gate metric."""
    def register(build):
        doc = " ".join((build.__doc__ or "").split())
        METRICS[build.__name__] = Metric(build.__name__, build, doc, group)
        return build
    return register


def timed(fn: Callable[[], object]) -> Sampler:
    """A sampler calling ``fn()`` n times back to back."""
    def sample(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - t0
    return sample


def _calibrate(sample: Sampler, min_time: float, max_n: int = 1 << 20) -> int:
    n = 1
    while n < max_n:
        if sample(n) >= min_time:
            return n
        n *= 2
    return n


@dataclass
class Measurement:
    name: str
    ratio: float                       # median over rounds of reference time / fast time
    ratio_spread: float                # interquartile range / median of the per-round ratios
    fast_s: float                      # median seconds per call, fast side
    reference_s: float                 # median seconds per call, reference side
    rounds: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"ratio": self.ratio, "ratio_spread": self.ratio_spread, "fast_s": self.fast_s,
                "reference_s": self.reference_s, "rounds": self.rounds}


def measure(m: Metric, *, rounds: int = 11, min_time: float = 0.02,
            warmup: int = 1) -> Measurement:
    """Interleaved samples of both sides of ``m``; see the module notes."""
    fast, ref = m.build()
    for _ in range(warmup):  # first calls: kernel cache loads, lazy imports, allocations
        fast(1), ref(1)
    n_fast, n_ref = _calibrate(fast, min_time), _calibrate(ref, min_time)
    ratios, fast_times, ref_times = [], [], []
    for r in range(rounds):
        if r % 2 == 0:
            f = fast(n_fast) / n_fast
            g = ref(n_ref) / n_ref
        else:
            g = ref(n_ref) / n_ref
            f = fast(n_fast) / n_fast
        fast_times.append(f)
        ref_times.append(g)
        ratios.append(g / f)
    med = statistics.median(ratios)
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (med, med, med)
    return Measurement(m.name, med, (q3 - q1) / med,
                       statistics.median(fast_times), statistics.median(ref_times), ratios)


# --------------------------------------------------------------------------------------------------
# targets


@dataclass(frozen=True)
class Target:
    name: str
    op: str        # ">=" or "<="
    bound: float
    why: str

    def holds(self, ratio: float) -> bool:
        return ratio >= self.bound if self.op == ">=" else ratio <= self.bound

    def text(self) -> str:
        return f"{self.op} {self.bound:g}"


def load_targets(path: Path | None = None) -> dict[str, Target]:
    """``[metric] bound = ">= 12"  why = "..."`` tables of ``bench/targets.toml``."""
    path = path or TARGETS
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    out = {}
    for name, row in raw.items():
        op, _, value = str(row["bound"]).strip().partition(" ")
        if op not in (">=", "<=") or not value:
            raise ValueError(f"{path}: [{name}] bound must look like '>= 12' or '<= 3', got "
                             f"{row['bound']!r}")
        out[name] = Target(name, op, float(value), " ".join(str(row.get("why", "")).split()))
    return out


def judge(results: dict[str, Measurement], targets: dict[str, Target]) -> list[dict]:
    """One row per measured metric: ratio, target, pass/fail (no target: informational)."""
    rows = []
    for name, res in results.items():
        t = targets.get(name)
        rows.append({"metric": name, "ratio": res.ratio, "spread": res.ratio_spread,
                     "fast_s": res.fast_s, "reference_s": res.reference_s,
                     "target": t.text() if t else "—", "ok": True if t is None else t.holds(
                         res.ratio), "why": t.why if t else ""})
    return rows


def _seconds(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s:.3g} s"


def format_table(rows: list[dict], *, only_failures: bool = False) -> str:
    """A fixed-width table of judged rows."""
    shown = [r for r in rows if not (only_failures and r["ok"])]
    head = ("metric", "ratio", "target", "spread", "fast", "reference", "")
    lines = [[r["metric"], f"{r['ratio']:.3g}", r["target"], f"{r['spread']:.0%}",
              _seconds(r["fast_s"]), _seconds(r["reference_s"]),
              "ok" if r["ok"] else "FAIL"] for r in shown]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    for r in shown:
        if not r["ok"] and r["why"]:
            out.append(f"  {r['metric']}: {r['why']}")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# saved runs: .benchmarks/<machine>/gate/<timestamp>.json


def machine_id() -> str:
    """Host name, CPU model and core count: baselines only compare on the same kind of box."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    slug = "".join(c if c.isalnum() else "-" for c in f"{platform.node()}-{cpu}-{os.cpu_count()}c")
    return "-".join(filter(None, slug.split("-")))[:120]


def runs_dir(root: Path | None = None) -> Path:
    return (root or ROOT) / ".benchmarks" / machine_id() / "gate"


def save_run(results: dict[str, Measurement], meta: dict, root: Path | None = None) -> Path:
    folder = runs_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"{stamp}.json"
    i = 1
    while path.exists():
        path, i = folder / f"{stamp}-{i}.json", i + 1
    doc = {"time": time.time(), **meta, "metrics": {k: v.to_json() for k, v in results.items()}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)
    return path


def load_runs(root: Path | None = None) -> list[dict]:
    folder = runs_dir(root)
    runs = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            runs.append(json.loads(path.read_text()) | {"file": path.name})
        except (OSError, ValueError):
            continue
    return runs
