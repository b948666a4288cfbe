"""One sweep case run the way ``generate --parity`` runs it, and the record it leaves.

The worker keeps its loaded models (``harness.loaded``) across cases. A case's own console output
is captured, not shown (it would tear the progress bar); an error keeps its tail in the record.
"""
from __future__ import annotations

import contextlib
import io
import os
import socket
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["Settings", "setup", "teardown", "run_case", "error_record", "process_main",
           "task_of"]

#: Exit codes of ``run_parsed`` that mean the case did not run to a verdict.
ERROR_CODES = (1, 2)
#: torch threads of this worker (None: torch's default), from ``setup``.
_threads: int | None = None


def task_of(case, settings: "Settings") -> dict:
    """What a worker needs of a case (plain data: it crosses processes and Ray)."""
    return {"id": case.id, "argv": list(case.argv), "values": dict(case.values),
            "tolerance": settings.tolerance, "model_cache": settings.model_cache}


@dataclass
class Settings:
    """What every worker of a sweep shares: the parity tolerance, the model cache, torch threads
    (None: torch's default), how many models a worker keeps loaded."""

    tolerance: float | None = None
    model_cache: str | None = None
    threads: int | None = None
    keep: int = 1


def setup(threads: int | None, keep: int) -> None:
    """Make this process a sweep worker: its torch thread count, its kept models."""
    import threading

    from tqdm import tqdm

    from harness import loaded

    # A thread lock, not tqdm's default multiprocessing one: a worker killed mid-case then
    # leaves no semaphore behind for the resource tracker to complain about.
    tqdm.set_lock(threading.RLock())
    global _threads
    _threads = threads  # set per case, inside its captured console (torch's import talks)
    loaded.enable(keep)


def teardown() -> None:
    """Undo ``setup``: no thread count to set, no kept models."""
    from harness import loaded

    global _threads
    _threads = None
    loaded.disable()


def _args(task: dict, case_dir: Path):
    from harness.generate import build_parser

    args = build_parser().parse_args(task["argv"])
    args.output_dir, args.overwrite, args.quiet = str(case_dir), True, True
    args.parity, args.tolerance, args.model_cache = True, task["tolerance"], task["model_cache"]
    return args


def run_case(task: dict, out_root: str | Path, where: dict) -> dict:
    """Run ``task`` into ``out_root/cases/<id>`` (a ``generate --parity`` output folder) and
    return its results.jsonl record."""
    from harness import loaded
    from harness.generate import run_parsed

    case_dir = Path(out_root) / "cases" / task["id"]
    loads = loaded.stats()["loads"]
    log = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            if _threads:
                import torch

                torch.set_num_threads(_threads)
            code, payload = run_parsed(_args(task, case_dir))
    except Exception as exc:  # recorded; the sweep goes on
        code, payload = 1, {"error": f"{type(exc).__name__}: {exc}".strip(),
                            "traceback": traceback.format_exc(limit=-6)}
    case_s = time.perf_counter() - t0
    return _record(task, code, payload, case_s, loaded.stats()["loads"] > loads,
                   where | {"pid": os.getpid(), "host": socket.gethostname()},
                   log.getvalue()[-2000:])


def _torch_threads() -> int | None:
    import sys

    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _record(task: dict, code: int, payload: dict, case_s: float, loaded_model: bool,
            where: dict, log_tail: str) -> dict:
    par = payload.get("parity") or {}
    image = "final_latents_max_abs_diff" in par
    timings = payload.get("timings") or {}
    error = code in ERROR_CODES
    model = payload.get("model") or {}
    return {
        "id": task["id"], "values": task["values"], "exit_code": code,
        "status": "error" if error else "done", "accepted": code == 0,
        "verdict": "error" if error else par.get("verdict"),
        "verdict_note": par.get("verdict_note"),
        "worst_abs_diff": par.get("final_latents_max_abs_diff" if image
                                  else "max_abs_logit_diff"),
        "diff_of": ("final latents" if image else "logits") if par else None,
        "image_max_abs_diff": par.get("image_max_abs_diff"),
        "first_divergent": par.get("first_divergent_step" if image
                                   else "first_divergent_token"),
        "error": payload.get("error"), "traceback": payload.get("traceback"),
        "log_tail": log_tail if error else None,
        "model": model.get("name", task["values"].get("model")), "family": model.get("family"),
        "output": None if error else f"cases/{task['id']}",
        "case_s": case_s, "load_s": timings.get("load_s", timings.get("load")),
        "loaded_model": loaded_model, "seed": payload.get("seed", task["values"].get("seed")),
        "worker": where | {"torch_threads": _torch_threads()},
        "versions": payload.get("versions"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def error_record(task: dict, message: str, where: dict) -> dict:
    """The record of a case its worker could not finish (the worker died, say)."""
    return _record(task, 1, {"error": message}, 0.0, False, where, "")


def _die_with_parent() -> None:
    """Linux: end this worker when the driver dies (a killed sweep leaves no orphans)."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def process_main(conn, slot: int, cuda_device: str | None, threads: int | None, keep: int,
                 out_root: str) -> None:
    """A local worker process: pinned to one CUDA device (or none), runs the tasks the driver
    sends over ``conn`` until it sends None or goes away."""
    if cuda_device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_device  # before torch is imported
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it stops the workers
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the driver died before the hook was set
        return
    setup(threads, keep)
    where = {"executor": "local", "slot": slot, "cuda_device": cuda_device}
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        conn.send(run_case(task, out_root, where))
