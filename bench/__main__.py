"""``python -m bench check | compare --baseline REV | report`` (run from the checkout).

- ``check``: measure every gate metric (bench/gate_metrics.py) as same-run ratios and hold them
  against bench/targets.toml; exit 0 when all hold, 1 with a table of those that fall short.
  Each run is saved under .benchmarks/<machine>/gate/ (per machine: times are not portable).
- ``compare --baseline REV``: the same metrics on REV's code and on the working tree, interleaved
  (A B A B ...), each side in its own process; fails only on a change larger than the noise
  measured between the repeats of each side. REV's code comes from a temporary
  ``git worktree add --detach``, removed afterwards.
- ``report``: an HTML page (matplotlib, SVG inline) with each ratio over the saved runs and its
  target line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import gate  # noqa: E402  (bench/ on sys.path first: the same module objects as the metrics)

ROOT = gate.ROOT


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("check", "hold every ratio against bench/targets.toml (exit 1 if one "
                                 "falls short)"),
                       ("measure", "measure ratios and write them as JSON (used by compare)")):
        c = sub.add_parser(name, help=text)
        c.add_argument("--only", nargs="+", metavar="METRIC", help="measure only these metrics")
        c.add_argument("--rounds", type=int, default=11, help="interleaved rounds per side (11)")
        c.add_argument("--min-time", type=float, default=0.02,
                       help="seconds per sample (0.02); n calls are batched to reach it")
        if name == "check":
            c.add_argument("--no-save", action="store_true", help="do not save the run")
            c.add_argument("--targets", type=Path, default=None,
                           help="targets file (default bench/targets.toml)")
        else:
            c.add_argument("--json", type=Path, required=True)
    c = sub.add_parser("compare", help="baseline revision vs working tree, interleaved")
    c.add_argument("--baseline", required=True, metavar="REV", help="git revision, e.g. HEAD~3")
    c.add_argument("--repeats", type=int, default=2, help="A B pairs (2: A B A B)")
    c.add_argument("--only", nargs="+", metavar="METRIC")
    c.add_argument("--rounds", type=int, default=7)
    c.add_argument("--min-floor", type=float, default=0.10,
                   help="smallest change that can fail, whatever the noise (0.10 = 10%%)")
    c = sub.add_parser("report", help="HTML trend page of the saved runs")
    c.add_argument("--out", type=Path, default=None, help="default .benchmarks/<machine>/gate.html")
    sub.add_parser("list", help="the metrics and their targets")
    return p


def _metrics(only):
    import gate_metrics  # noqa: F401  (importing it registers the metrics)

    if not only:
        return list(gate.METRICS.values())
    unknown = [n for n in only if n not in gate.METRICS]
    if unknown:
        raise SystemExit(f"error: unknown metric(s) {', '.join(unknown)}; known: "
                         f"{', '.join(gate.METRICS)}")
    return [gate.METRICS[n] for n in only]


def _measure_all(metrics, rounds: int, min_time: float, say=print) -> tuple[dict, dict]:
    """(results, errors): one Measurement per metric that ran; the error line of each that
    could not (an exception is reported, never raised)."""
    import torch

    torch.set_num_threads(1)
    results, errors = {}, {}
    for m in metrics:
        t0 = time.perf_counter()
        try:
            results[m.name] = gate.measure(m, rounds=rounds, min_time=min_time)
        except Exception as exc:  # noqa: BLE001 - a broken metric is a failed row, not a crash
            errors[m.name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            say(f"  {m.name}: error ({errors[m.name]})")
            continue
        say(f"  {m.name}: {results[m.name].ratio:.3g} ({time.perf_counter() - t0:.1f} s)")
    return results, errors


def _meta() -> dict:
    import platform

    import torch

    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip())
    return {"revision": rev + ("+dirty" if dirty else ""), "machine": gate.machine_id(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()}


def cmd_check(args) -> int:
    targets = gate.load_targets(args.targets)
    metrics = _metrics(args.only)
    print(f"measuring {len(metrics)} ratio(s), {args.rounds} interleaved rounds each")
    results, errors = _measure_all(metrics, args.rounds, args.min_time)
    rows = gate.judge(results, targets)
    for name, err in errors.items():
        rows.append({"metric": name, "ratio": float("nan"), "spread": float("nan"),
                     "fast_s": float("nan"), "reference_s": float("nan"),
                     "target": targets[name].text() if name in targets else "—", "ok": False,
                     "why": f"could not be measured: {err}"})
    missing = [n for n in targets if n not in gate.METRICS]
    print()
    print(gate.format_table(rows))
    if missing:
        print(f"\nnote: targets without a metric (ignored): {', '.join(missing)}")
    if not args.no_save and results:
        print(f"\nsaved {gate.save_run(results, _meta())}")
    failed = [r for r in rows if not r["ok"]]
    if failed:
        print(f"\nFAIL: {len(failed)} of {len(rows)} ratio(s) fall short of bench/targets.toml:")
        print(gate.format_table(failed))
        return 1
    print(f"\nok: all {len(rows)} ratio(s) hold their targets")
    return 0


def cmd_measure(args) -> int:
    results, errors = _measure_all(_metrics(args.only), args.rounds, args.min_time,
                                   say=lambda *a: print(*a, file=sys.stderr))
    args.json.write_text(json.dumps({"metrics": {k: v.to_json() for k, v in results.items()},
                                     "errors": errors}))
    return 0


# --------------------------------------------------------------------------------------------------
# compare


def _git(*args: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"error: git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def _prepare_baseline(rev: str, folder: Path) -> None:
    """A detached worktree of ``rev`` with its compiled token core: the current build when the
    .pyx is the same, else built in place (needs Cython, as ``pip install -e .`` does)."""
    _git("worktree", "add", "--detach", str(folder), rev)
    same = subprocess.run(["git", "diff", "--quiet", rev, "--", "_fast/tokens.pyx"],
                          cwd=ROOT).returncode == 0
    built = sorted((ROOT / "_fast").glob("tokens*.so"))
    if same and built:
        for so in built:
            shutil.copy2(so, folder / "_fast" / so.name)
        return
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=folder,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"error: cannot build {rev}'s token core (pip install Cython): "
                         f"{proc.stderr.strip().splitlines()[-1] if proc.stderr else ''}")


def _measure_in(tree: Path, only, rounds: int, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(BENCH / "__main__.py"), "measure", "--json", str(out),
           "--rounds", str(rounds)] + (["--only", *only] if only else [])
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"error: measuring {tree} failed: {tail[0]}")
    return json.loads(out.read_text())


def cmd_compare(args) -> int:
    rev = _git("rev-parse", "--short", args.baseline)
    tmp = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    tree = tmp / "tree"
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    try:
        print(f"baseline A = {rev} (worktree {tree}); B = the working tree")
        _prepare_baseline(args.baseline, tree)
        for i in range(args.repeats):
            for side, where in (("A", tree), ("B", ROOT)):
                print(f"  run {side}{i + 1} ...", flush=True)
                runs[side].append(_measure_in(where, args.only, args.rounds,
                                              tmp / f"{side}{i}.json"))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    rows, failed = [], []
    targets = gate.load_targets()
    for name in runs["B"][0]["metrics"]:
        a = [r["metrics"][name]["ratio"] for r in runs["A"] if name in r["metrics"]]
        b = [r["metrics"][name]["ratio"] for r in runs["B"] if name in r["metrics"]]
        if not a:
            rows.append((name, "—", f"{statistics.median(b):.3g}", "—", "—", "new (not on A)"))
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        # noise: the spread between repeats of each side, and within each run's rounds (the
        # interquartile range of its per-round ratios, relative to their median)
        within = max(r["metrics"][name]["ratio_spread"] for side in runs.values() for r in side
                     if name in r["metrics"])
        between = max((max(v) - min(v)) / statistics.median(v) for v in (a, b))
        noise = max(within, between, args.min_floor)
        change = mb / ma - 1
        better_up = targets.get(name, gate.Target(name, ">=", 0, "")).op == ">="
        worse = -change if better_up else change
        verdict = "SLOWER" if worse > noise else ("faster" if -worse > noise else "same")
        if verdict == "SLOWER":
            failed.append(name)
        rows.append((name, f"{ma:.3g}", f"{mb:.3g}", f"{change:+.0%}", f"±{noise:.0%}",
                     verdict))
    head = ("metric", f"A {rev}", "B tree", "change", "noise", "")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print("\n" + "\n".join(fmt.format(*r) for r in [head, tuple("-" * w for w in widths), *rows]))
    if failed:
        print(f"\nFAIL: {', '.join(failed)} got slower than {rev} by more than the noise")
        return 1
    print(f"\nok: no ratio moved against {rev} by more than the noise")
    return 0


# --------------------------------------------------------------------------------------------------
# report


def cmd_report(args) -> int:
    import html
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = gate.load_runs()
    if not runs:
        print(f"error: no saved runs under {gate.runs_dir()} (run python -m bench check first)",
              file=sys.stderr)
        return 2
    targets = gate.load_targets()
    names = sorted({n for r in runs for n in r["metrics"]})
    sections = []
    for name in names:
        points = [(i, r["metrics"][name]["ratio"], r.get("revision", "?"))
                  for i, r in enumerate(runs) if name in r["metrics"]]
        fig, ax = plt.subplots(figsize=(7, 2.6))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="ratio")
        t = targets.get(name)
        if t is not None:
            ax.axhline(t.bound, color="tab:red", linestyle="--", label=f"target {t.text()}")
        ax.set_xticks([p[0] for p in points], [p[2] for p in points], rotation=30, fontsize=7)
        ax.set_ylabel("reference ÷ fast")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        plt.close(fig)
        svg = buf.getvalue()
        svg = svg[svg.index("<svg"):]
        why = html.escape(t.why) if t else "no target"
        sections.append(f"<section><h2>{html.escape(name)}</h2><p>{why}</p>{svg}</section>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>harness speed ratios</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
            "section{margin-bottom:2em}</style></head><body>"
            f"<h1>Speed ratios over {len(runs)} saved run(s)</h1>"
            f"<p>Machine <code>{html.escape(gate.machine_id())}</code>. Each point is the median "
            "of interleaved per-round ratios (reference time ÷ fast time) of one "
            "<code>python -m bench check</code>; the dashed line is the target.</p>"
            + "".join(sections) + "</body></html>")
    out = args.out or gate.runs_dir().parent / "gate.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


def cmd_list(_args) -> int:
    targets = gate.load_targets()
    for m in _metrics(None):
        t = targets.get(m.name)
        print(f"{m.name} [{m.group}] target {t.text() if t else '—'}\n    {m.doc}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    return {"check": cmd_check, "measure": cmd_measure, "compare": cmd_compare,
            "report": cmd_report, "list": cmd_list}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
