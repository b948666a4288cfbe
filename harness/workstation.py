"""Running real checkpoints on one GPU: offload, quantization and regional compile, each through
the libraries' own mechanisms on the harness's loaded components, never a home-made version.

- ``--offload model``: accelerate's ``cpu_offload_with_hook`` chained in the pipeline's
  ``model_cpu_offload_seq`` order (what ``DiffusionPipeline.enable_model_cpu_offload`` installs);
  ``group``: diffusers' ``apply_group_offloading`` per component, block level, one block per group
  (``enable_group_offload``); ``sequential``: accelerate's ``cpu_offload`` per component
  (``enable_sequential_cpu_offload``). The reference pipeline is built over the same modules, so it
  runs under the same hooks.
- ``--quantize int8wo|fp8wo``: torchao weight-only configs through diffusers' / transformers'
  ``TorchAoConfig`` at ``from_pretrained``; ``nf4``: bitsandbytes through ``BitsAndBytesConfig``.
  The denoiser transformer (image families) or the language model (VLMs) is quantized.
- ``--compile``: ``compile_repeated_blocks`` (diffusers' regional compile of the transformer's
  repeated blocks); the compile happens in the untimed warm-up and is reported apart.

``check_modes`` refuses what this machine cannot run (exit 2) before any weight is loaded.
"""
from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from dataclasses import dataclass

from harness.errors import RequestError

__all__ = ["OFFLOAD_MODES", "QUANTIZE_MODES", "Modes", "check_modes", "quantization_config",
           "apply_offload", "quiet_imports", "apply_vlm_modes", "execution_device"]

OFFLOAD_MODES = ("none", "model", "group", "sequential")
QUANTIZE_MODES = ("int8wo", "fp8wo", "nf4")


@dataclass(frozen=True)
class Modes:
    """The workstation options of one run (defaults: none of them)."""

    offload: str = "none"
    quantize: str | None = None
    compile: bool = False

    def as_dict(self) -> dict:
        return {"offload": self.offload, "quantize": self.quantize, "compile": self.compile}


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_modes(modes: Modes, device: str, dtype: str, modality: str = "image") -> None:
    """Refuse (RequestError) a mode this machine or model kind cannot run, before loading."""
    import torch

    if modes.offload not in OFFLOAD_MODES:
        raise RequestError(f"--offload must be one of {', '.join(OFFLOAD_MODES)}, got "
                           f"{modes.offload!r}")
    if modes.offload == "sequential" and torch.device(device).type != "cuda":
        raise RequestError("--offload sequential streams each layer's weights to an accelerator; "
                           "on the CPU there is nothing to offload to (diffusers' "
                           "enable_sequential_cpu_offload refuses it too): use --device cuda")
    if modality == "text" and modes.compile:
        raise RequestError("--compile (regional compile of a diffusion transformer's repeated "
                           "blocks) is for image models")
    if modality == "text" and modes.quantize == "nf4":
        raise RequestError("--quantize nf4 is for image models here (bitsandbytes quantizes at "
                           "load); for a VLM use int8wo or fp8wo")
    if modes.offload == "model" and modality == "text":
        raise RequestError("--offload model moves whole pipeline components in turn; a VLM is one "
                           "component: use --offload group or sequential")
    q = modes.quantize
    if q is None:
        return
    if q not in QUANTIZE_MODES:
        raise RequestError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, got {q!r}")
    cuda = torch.device(device).type == "cuda"
    if q in ("int8wo", "fp8wo") and not _has("torchao"):
        raise RequestError(f"--quantize {q} needs torchao (pip install torchao)")
    if q == "fp8wo":
        if not cuda:
            raise RequestError("--quantize fp8wo needs a CUDA GPU with float8 support "
                               "(compute capability >= 8.9); this run is on the CPU")
        if torch.cuda.get_device_capability() < (8, 9):
            raise RequestError(f"--quantize fp8wo needs compute capability >= 8.9, this GPU has "
                               f"{'.'.join(map(str, torch.cuda.get_device_capability()))}")
    if q == "nf4":
        if not _has("bitsandbytes"):
            raise RequestError("--quantize nf4 needs bitsandbytes (pip install bitsandbytes)")
        if not cuda:
            raise RequestError("--quantize nf4 needs a CUDA GPU: diffusers' and transformers' "
                               "bitsandbytes quantizers refuse to run without one")
    if modes.offload in ("group", "sequential") and q == "nf4":
        raise RequestError("--quantize nf4 places its 4-bit weights on the GPU at load; combine "
                           "it with --offload model or none")


@contextmanager
def quiet_imports():
    """Keep what torchao / torch / diffusers log while loading a quantized model (missing
    optional CUDA kernels on a CPU box, dtype notes) off the console; yields the lines."""
    from harness.parity.report import captured_logs

    with captured_logs("torchao", "torch", "diffusers", "transformers") as log:
        yield log


def quantization_config(mode: str | None, library: str, compute_dtype):
    """The ``quantization_config=`` for ``from_pretrained`` in ``library`` ("diffusers" or
    "transformers"); None without a mode."""
    if mode is None:
        return None
    lib = __import__(library)
    if mode in ("int8wo", "fp8wo"):
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

        config = Int8WeightOnlyConfig() if mode == "int8wo" else Float8WeightOnlyConfig()
        return lib.TorchAoConfig(config)
    return lib.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=compute_dtype)


def apply_offload(components: dict, mode: str, device: str, order: tuple[str, ...]) -> None:
    """Install ``mode``'s hooks on ``components`` (loaded on the CPU) with ``device`` as the
    execution device; ``order`` is the pipeline's ``model_cpu_offload_seq`` (model offload)."""
    if mode == "none":
        return
    import torch

    exec_device = torch.device(device)
    modules = {k: m for k, m in components.items() if isinstance(m, torch.nn.Module)}
    if mode == "model":
        from accelerate import cpu_offload_with_hook

        hook = None
        for name in [n for n in order if n in modules] + [n for n in modules if n not in order]:
            _, hook = cpu_offload_with_hook(modules[name], exec_device, prev_module_hook=hook)
    elif mode == "group":
        from diffusers.hooks import apply_group_offloading

        for module in modules.values():
            apply_group_offloading(module, onload_device=exec_device,
                                   offload_device=torch.device("cpu"),
                                   offload_type="block_level", num_blocks_per_group=1,
                                   use_stream=exec_device.type == "cuda")
    elif mode == "sequential":
        from accelerate import cpu_offload

        for module in modules.values():
            cpu_offload(module, exec_device, offload_buffers=len(module._parameters) > 0)
    else:  # check_modes refuses it first; kept for direct callers
        raise ValueError(f"unknown offload mode {mode!r}")


def execution_device(model):
    """Where a model's inputs go: the device its offload hooks compute on (set by
    ``apply_vlm_modes``), else the device of its parameters."""
    return getattr(model, "_harness_execution_device", None) or model.device


def apply_vlm_modes(family, modes: Modes, device: str) -> list[str]:
    """A loaded VLM under ``modes``: torchao weight-only quantization of its language model
    (``quantize_``, what transformers' TorchAoConfig applies at load), then the offload hooks
    on the whole model with ``device`` as the execution device. Returns what the libraries
    logged. The family must have been loaded on the CPU when ``modes.offload`` is set."""
    import torch

    model = family.model
    with quiet_imports() as log:
        if modes.quantize in ("int8wo", "fp8wo"):
            from torchao.quantization import (Float8WeightOnlyConfig, Int8WeightOnlyConfig,
                                              quantize_)

            config = Int8WeightOnlyConfig() if modes.quantize == "int8wo" else \
                Float8WeightOnlyConfig()
            quantize_(getattr(model, "language_model", model), config)
        if modes.offload != "none":
            apply_offload({"model": model}, modes.offload, device, ("model",))
            model._harness_execution_device = torch.device(device)
    return log
