"""What every benchmark records beside its timings: which side it measured, versions, threads."""
from importlib import metadata

_PACKAGES = ("torch", "diffusers", "transformers", "numba", "numpy", "tokenizers")


def info(benchmark, side: str, **extra) -> None:
    import torch

    benchmark.extra_info.update(
        side=side, torch_threads=torch.get_num_threads(),
        torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
        **{p: metadata.version(p) for p in _PACKAGES}, **extra)
