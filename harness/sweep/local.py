"""The local executor: one worker per CUDA device (pinned to it) or ``--workers N`` on the CPU.

One worker runs in the sweep's own process; several are spawned processes, each fed one case at
a time over a pipe, so the driver always knows which case a worker holds: a worker that dies
(a crash, the OOM killer) gets that case recorded as an error and is replaced.
"""
from __future__ import annotations

from collections import deque
from typing import Iterator

from .worker import Settings, error_record, process_main, run_case, setup, teardown

__all__ = ["run_local"]


def run_local(tasks: list[dict], out_root: str, settings: Settings,
              devices: list[str | None]) -> Iterator[dict]:
    """Run ``tasks`` (in order) on one worker per entry of ``devices`` (a CUDA device index to
    pin, or None); yield each record as its case finishes."""
    if len(devices) == 1:
        yield from _in_process(tasks, out_root, settings, devices[0])
    else:
        yield from _processes(tasks, out_root, settings, devices)


def _in_process(tasks, out_root, settings: Settings, device) -> Iterator[dict]:
    before = None
    if settings.threads:  # the cases set it; the process gets its own count back after
        import torch

        before = torch.get_num_threads()
    setup(settings.threads, settings.keep)
    where = {"executor": "local", "slot": 0, "cuda_device": device}
    try:
        for task in tasks:
            yield run_case(task, out_root, where)
    finally:
        teardown()
        if before is not None:
            torch.set_num_threads(before)


def _processes(tasks, out_root, settings: Settings, devices) -> Iterator[dict]:
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")  # never fork a process that may hold CUDA or torch threads
    queue = deque(tasks)
    procs, conns, holding = {}, {}, {}

    def start(slot: int) -> None:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=process_main, name=f"sweep-worker-{slot}", daemon=True,
                           args=(child, slot, devices[slot], settings.threads, settings.keep,
                                 out_root))
        proc.start()
        child.close()
        procs[slot], conns[slot] = proc, parent

    def feed(slot: int) -> None:
        task = queue.popleft() if queue else None
        if task is None:
            holding.pop(slot, None)
        else:
            holding[slot] = task  # a worker that dies holding it gets it recorded as an error
        try:
            conns[slot].send(task)
        except (BrokenPipeError, OSError):
            pass

    try:
        for slot in range(min(len(devices), len(queue))):
            start(slot)
            feed(slot)
        while holding:
            waitables = {conns[s]: s for s in holding} | {procs[s].sentinel: s for s in holding}
            for ready in wait(list(waitables)):
                slot = waitables[ready]
                if slot not in holding:
                    continue
                record, dead = None, False
                try:
                    if conns[slot].poll():
                        record = conns[slot].recv()
                except (EOFError, OSError):
                    dead = True
                if record is not None:
                    yield record
                    feed(slot)
                elif dead or not procs[slot].is_alive():
                    procs[slot].join(timeout=5)
                    task = holding.pop(slot)
                    yield error_record(task, f"the worker process died (exit code "
                                             f"{procs[slot].exitcode}) while running this case",
                                       {"executor": "local", "slot": slot,
                                        "cuda_device": devices[slot]})
                    if queue:
                        start(slot)
                        feed(slot)
    finally:
        for slot, proc in procs.items():
            if proc.is_alive():
                proc.kill() if slot in holding else _stop(conns[slot], proc)
            proc.join(timeout=10)


def _stop(conn, proc) -> None:
    try:
        conn.send(None)
    except (BrokenPipeError, OSError):
        proc.kill()

