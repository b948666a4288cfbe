"""The Ray executor: workers are Ray actors that keep their loaded models, each case a call on
one (``num_gpus=1`` per actor on CUDA), results streamed back to the driver as they finish.

A worker runs its case into a folder of its own node and sends the files back with the record;
the driver writes them under ``DIR/cases/<id>``, so no shared file system is needed. An actor
that dies gets its case recorded as an error and is replaced. Ray is the optional ``ray`` extra.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from pathlib import Path
from typing import Iterator

from .worker import Settings, error_record, run_case, setup

__all__ = ["run_ray", "RayWorker", "ray_available"]


def ray_available() -> bool:
    """Is Ray installed (the ``ray`` extra)? Cheap: nothing is imported."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


class RayWorker:
    """A sweep worker as a Ray actor (wrapped with ``ray.remote`` by ``run_ray``)."""

    def __init__(self, threads: int | None, keep: int):
        setup(threads, keep)

    def run(self, task: dict) -> tuple[dict, dict[str, bytes]]:
        """Run one case in a scratch folder; its record and its output files (name → bytes)."""
        import ray

        scratch = tempfile.mkdtemp(prefix="harness-sweep-")
        try:
            ctx = ray.get_runtime_context()
            where = {"executor": "ray", "node": ctx.get_node_id(),
                     "actor": ctx.get_actor_id(),
                     "cuda_device": os.environ.get("CUDA_VISIBLE_DEVICES")}
            record = run_case(task, scratch, where)
            folder = Path(scratch) / "cases" / task["id"]
            files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()} \
                if folder.is_dir() else {}
            return record, files
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _write_case(out_root: Path, case_id: str, files: dict[str, bytes]) -> None:
    """The case's folder as a set: written beside, then moved in (replacing an older one)."""
    cases = out_root / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{case_id}.staging-", dir=cases))
    for name, data in files.items():
        (staging / name).write_bytes(data)
    os.chmod(staging, 0o755)
    target = cases / case_id
    if target.exists():
        aside = cases / f".{case_id}.previous-{os.getpid()}"
        os.rename(target, aside)
        os.rename(staging, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(staging, target)


def run_ray(tasks: list[dict], out_root: str, settings: Settings, *, workers: int | None,
            address: str | None, cuda: bool) -> Iterator[dict]:
    """Run ``tasks`` on Ray actors (started on the cluster at ``address``, or on the Ray
    instance already initialised in this process, or a new local one); yield records."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        yield from _run(ray, tasks, Path(out_root), settings, workers, cuda)
    finally:
        if started:
            ray.shutdown()


def _actor_count(ray, workers: int | None, cuda: bool, threads: int, n_tasks: int) -> int:
    if workers is None:
        resources = ray.cluster_resources()
        workers = int(resources.get("GPU", 0)) if cuda else int(resources.get("CPU", 1)) // threads
        if workers < 1:
            from harness.errors import RequestError

            raise RequestError("--executor ray: the cluster has no GPU for the CUDA cases"
                               if cuda else "--executor ray: the cluster has too few CPUs")
    return max(1, min(workers, n_tasks))


def _run(ray, tasks, out_root: Path, settings: Settings, workers, cuda) -> Iterator[dict]:
    threads = settings.threads or 1
    actor_cls = ray.remote(RayWorker).options(num_cpus=threads, num_gpus=1 if cuda else 0,
                                              max_concurrency=1)

    def new_actor():
        return actor_cls.remote(settings.threads or (None if cuda else threads), settings.keep)

    actors = [new_actor() for _ in range(_actor_count(ray, workers, cuda, threads, len(tasks)))]
    free, queue, running = list(actors), deque(tasks), {}
    try:
        while queue or running:
            while queue and free:
                actor, task = free.pop(0), queue.popleft()
                running[actor.run.remote(task)] = (actor, task)
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                actor, task = running.pop(ref)
                try:
                    record, files = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    ray.kill(actor)
                    actors.remove(actor)
                    actor = new_actor()
                    actors.append(actor)
                    record, files = error_record(
                        task, f"the Ray worker died while running this case: "
                              f"{str(exc).splitlines()[0]}", {"executor": "ray"}), {}
                except ray.exceptions.RayError as exc:
                    record, files = error_record(
                        task, f"Ray: {str(exc).splitlines()[0]}", {"executor": "ray"}), {}
                free.append(actor)
                if files:
                    _write_case(out_root, task["id"], files)
                yield record
    finally:
        for actor in actors:
            ray.kill(actor)
