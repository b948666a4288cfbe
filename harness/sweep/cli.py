"""``python -m harness.sweep SPEC.toml --output-dir DIR``: every case of a spec through
``generate --parity``, results appended to ``DIR/results.jsonl``, a summary in ``DIR/index.html``.

A rerun of the same command resumes: cases already in results.jsonl (by id, a hash of the resolved
request) are not run again. Exit codes: 0 every case bitwise / pass (or close within
``--tolerance``); 2 a bad flag or spec (one line, nothing written); 3 any case failed or errored;
130 interrupted (rerun to resume).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from harness.errors import RequestError

from . import results
from .spec import SpecError, expand, load_spec, spec_keys
from .worker import Settings, task_of

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one ``error: ...`` line and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from harness.generate import _tolerance

    p = _Parser(prog="python -m harness.sweep",
                description="Run a matrix of generate --parity requests (a TOML spec) and "
                            "summarise them in DIR/results.jsonl and DIR/index.html.",
                epilog="spec keys: the generate flags without dashes ("
                       + ", ".join(spec_keys()) + "), each a value or a list (lists are "
                       "crossed), plus [[include]] / [[exclude]] tables. Exit codes: 0 every "
                       "case passed; 2 bad input; 3 a case failed or errored; 130 interrupted.")
    p.add_argument("spec", metavar="SPEC.toml", help="the sweep spec")
    p.add_argument("--output-dir", required=True, metavar="DIR",
                   help="results.jsonl, index.html and cases/<id>/ go here; rerun with the same "
                        "DIR to resume")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local (default): worker processes on this machine; ray: Ray actors")
    p.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="local: worker processes for CPU cases (default 1; CUDA cases get one "
                        "per device); ray: actors (default: the cluster's GPUs, or CPUs / "
                        "--threads)")
    p.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="--executor ray: the cluster to join (default: a Ray instance "
                        "already started in this process, else a new local one)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="torch threads per worker (default: torch's own; 1 per Ray actor)")
    p.add_argument("--tolerance", type=_tolerance, default=None, metavar="X",
                   help="passed to each case's --parity: 'close' within X passes")
    p.add_argument("--model-cache", default=None, metavar="DIR",
                   help="where built-in models are built (as generate --model-cache)")
    p.add_argument("--retry-errors", action="store_true",
                   help="also rerun cases recorded as errors")
    p.add_argument("--dry-run", action="store_true",
                   help="list the cases (id, done or pending, values) and exit; writes nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar, one summary line")
    return p


def _check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RequestError(f"--output-dir {str(out)!r} exists and is not a folder")
    if out.is_dir() and os.listdir(out) and not (out / "results.jsonl").exists() \
            and not (out / "sweep.json").exists():
        raise RequestError(f"--output-dir {str(out)!r} is not empty and holds no sweep "
                           f"(results.jsonl); choose a new folder or a previous sweep's")


def _lock(out: Path):
    """An exclusive lock on DIR for this sweep (a second sweep on the same DIR is refused)."""
    import fcntl

    f = open(out / ".sweep.lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RequestError(f"--output-dir {str(out)!r}: another sweep is writing it") from None
    return f


def _clean_staging(out: Path) -> None:
    """Folders a killed case left half-written (``cases/.<id>.staging-*``)."""
    for p in (out / "cases").glob(".*.staging-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in (out / "cases").glob(".*.previous-*"):
        shutil.rmtree(p, ignore_errors=True)


def _devices(args, cases) -> list[str | None]:
    """Local workers: one per CUDA device when a case runs on CUDA, else ``--workers``."""
    if any(str(c.resolved.get("device", "cpu")).startswith("cuda") for c in cases):
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise RequestError("a case asks for --device cuda, but torch sees no CUDA device")
        return [str(i) for i in range(n)]
    return [None] * (args.workers or 1)


def _run_executor(args, tasks, out: Path, settings: Settings, cases, devices):
    if args.executor == "ray":
        from .ray_executor import run_ray

        cuda = any(str(c.resolved.get("device", "cpu")).startswith("cuda") for c in cases)
        return run_ray(tasks, str(out), settings, workers=args.workers, address=args.address,
                       cuda=cuda)
    from .local import run_local

    return run_local(tasks, str(out), settings, devices)


def _validate(args) -> tuple[list, Path, list]:
    from harness.generate import _model_names

    if args.address is not None and args.executor != "ray":
        raise RequestError("--address applies to --executor ray only")
    if args.executor == "ray":
        from .ray_executor import ray_available

        if not ray_available():
            raise RequestError("--executor ray needs Ray: pip install 'harness[ray]'")
    spec_path = Path(args.spec)
    try:
        cases = expand(load_spec(spec_path), spec_path, tolerance=args.tolerance,
                       models=set(_model_names()))
    except SpecError as exc:
        msg = str(exc)
        raise RequestError(msg if msg.startswith(str(spec_path)) else f"{spec_path}: {msg}") \
            from None
    out = Path(args.output_dir)
    _check_output_dir(out)
    devices = _devices(args, cases) if args.executor == "local" and not args.dry_run else []
    return cases, out, devices


def _dry_run(cases, out: Path) -> int:
    done = results.read(out / "results.jsonl")
    for case in cases:
        state = done[case.id]["verdict"] if case.id in done else "pending"
        print(f"{case.id}  {state:<14} {json.dumps(case.values)}")
    print(f"{len(cases)} cases, {sum(c.id in done for c in cases)} done", file=sys.stderr)
    return 0


def _progress(total: int, initial: int, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="sweep", unit="case", disable=quiet,
                file=sys.stderr, dynamic_ncols=True)


def _write_meta(out: Path, args, cases, run: dict) -> None:
    from harness.parity.report import atomic_write_json

    path = out / "sweep.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        meta = {"runs": []}
    runs = [r for r in meta.get("runs", []) if r.get("started") != run["started"]] + [run]
    spec_path = Path(args.spec)
    atomic_write_json(path, {"spec": str(spec_path.resolve()),
                             "spec_text": spec_path.read_text(encoding="utf-8"),
                             "tolerance": args.tolerance, "cases": [c.id for c in cases],
                             "runs": runs})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cases, out, devices = _validate(args)
    except RequestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        return _dry_run(cases, out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        lock = _lock(out)
    except RequestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with lock:
        return _sweep(args, cases, out, devices)


def _sweep(args, cases, out: Path, devices: list) -> int:
    from .index import write_index

    jsonl = out / "results.jsonl"
    results.repair(jsonl)
    _clean_staging(out)
    done = results.read(jsonl)
    todo = [c for c in cases if c.id not in done
            or (args.retry_errors and done[c.id]["status"] == "error")]
    todo_ids = {c.id for c in todo}
    settings = Settings(tolerance=args.tolerance, model_cache=args.model_cache,
                        threads=args.threads)
    run = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "argv": sys.argv[1:], "executor": args.executor, "workers": args.workers,
           "address": args.address, "threads": args.threads, "to_run": len(todo),
           "skipped": len(cases) - len(todo), "ran": 0}
    _write_meta(out, args, cases, run)
    counts = Counter(done[c.id]["verdict"] for c in cases if c.id in done and c.id not in todo_ids)
    bar = _progress(len(cases), len(cases) - len(todo), args.quiet)
    t0, code = time.perf_counter(), None
    try:
        if todo:
            tasks = [task_of(c, settings) for c in todo]
            for record in _run_executor(args, tasks, out, settings, cases, devices):
                results.append(jsonl, record)
                run["ran"] += 1
                counts[record["verdict"]] += 1
                bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in sorted(counts.items(),
                                                                           key=str)), False)
                bar.update(1)
    except KeyboardInterrupt:
        code = 130
    except RequestError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        bar.close()
        run["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        run["wall_s"] = time.perf_counter() - t0
        _write_meta(out, args, cases, run)
        final = results.read(jsonl)
        index = write_index(out, cases, final, run)
    records = [final[c.id] for c in cases if c.id in final]
    if code is None:
        code = 0 if len(records) == len(cases) and all(r["accepted"] for r in records) else 3
    verdicts = Counter(r["verdict"] for r in records)
    if not args.quiet:
        state = "interrupted; rerun the same command to resume. " if code == 130 else ""
        print(f"{state}{len(records)} of {len(cases)} cases done ("
              + ", ".join(f"{v} {k}" for k, v in sorted(verdicts.items(), key=str))
              + f"); ran {run['ran']}, skipped {run['skipped']}; wrote {index}", file=sys.stderr)
    print(json.dumps({"status": {0: "ok", 3: "parity failed", 130: "interrupted"}[code],
                      "exit_code": code, "output_dir": str(out), "cases": len(cases),
                      "done": len(records), "ran": run["ran"], "skipped": run["skipped"],
                      "verdicts": dict(verdicts), "index": str(index)}), flush=True)
    return code
