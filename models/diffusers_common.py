"""Boilerplate the diffusers family modules share: config reading, folder matching, offline
loading of components, and the pieces of a tiny recipe. No torch import at module level.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

__all__ = ["read_json", "class_name", "versions", "sha256", "corpus_sha256",
           "chat_tokenizers_sha256", "check_tiny_name", "offline", "torch_dtype",
           "load_pretrained", "redraw"]


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def class_name(folder: str | os.PathLike) -> str | None:
    """``_class_name`` of the folder's model_index.json; None when it is missing or unreadable."""
    try:
        return read_json(Path(folder) / "model_index.json").get("_class_name")
    except (OSError, ValueError):
        return None


def versions() -> dict[str, str]:
    # The saved bytes (configs, safetensors headers) depend on these versions.
    return {p: metadata.version(p) for p in ("torch", "diffusers", "transformers", "tokenizers")}


def sha256(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def corpus_sha256() -> str:
    """Hash of the tokenizer training corpus (a tiny recipe's input)."""
    from .text_tokenizers import CORPUS

    return sha256("\n".join(CORPUS))


def chat_tokenizers_sha256() -> str:
    """Hash of ``chat_tokenizers.py``, where the Qwen tokenizer builder lives."""
    from . import chat_tokenizers

    return sha256(Path(chat_tokenizers.__file__).read_bytes())


def check_tiny_name(name: str, names: tuple[str, ...], label: str) -> None:
    if name not in names:
        raise ValueError(f"unknown tiny {label} model {name!r}; known: {', '.join(names)}")


def offline() -> None:
    # Read once at import by huggingface_hub: must be set before diffusers/transformers load.
    # Forced, not defaulted: nothing is ever downloaded (local_files_only is passed as well).
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def torch_dtype(dtype: str):
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"dtype {dtype!r} is not supported; allowed: float32, bfloat16")
    return table[dtype]


def load_pretrained(folder: str | os.PathLike, classes: dict, *, device: str,
                    dtype: str) -> dict:
    """``{name: cls.from_pretrained(folder / name, local_files_only=True)}`` in ``dtype``, in
    order, each moved to ``device``, in eval mode and frozen. Call ``offline()`` first."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file "Loading weights" bars
    folder = Path(folder)
    kw = {"local_files_only": True, "torch_dtype": torch_dtype(dtype)}
    comps = {name: cls.from_pretrained(folder / name, **kw) for name, cls in classes.items()}
    for module in comps.values():
        module.to(device).eval().requires_grad_(False)
    return comps


def redraw(module, std: float, generator) -> None:
    """Re-draw every matrix of ``module`` from N(0, std) (1-D norms and biases keep their init)."""
    import torch

    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)


class AutoencoderKLGeometry:
    """Rules read from an ``AutoencoderKL``-style VAE config (``self.vae_config``): the scale
    factor of its resolution levels, the latent normalisation, and its trained sample size."""

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    @property
    def size_multiple(self) -> int:
        """Width/height multiple: the VAE factor times the 2x2 packing / patchify."""
        return 2 * self.vae_scale_factor

    @property
    def scaling_factor(self) -> float:
        return float(self.vae_config["scaling_factor"])

    @property
    def shift_factor(self) -> float:
        return float(self.vae_config.get("shift_factor") or 0.0)

    @property
    def default_size(self) -> int:
        """The VAE's trained sample size (1024 for the real models; the tiny ones say 256)."""
        return int(self.vae_config.get("sample_size") or 1024)
