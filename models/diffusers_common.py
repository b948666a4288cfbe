"""Boilerplate the diffusers family modules share: config reading, folder matching, offline
loading of components, and the pieces of a tiny recipe. No torch import at module level.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from harness.env import offline_env, torch_dtype

__all__ = ["read_json", "class_name", "versions", "sha256", "corpus_sha256",
           "chat_tokenizers_sha256", "check_tiny_name", "offline_env",
           "load_pretrained", "redraw", "special_token", "AutoencoderKLGeometry",
           "FlowMatchSchedule", "read_chat_template"]


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


def load_pretrained(folder: str | os.PathLike, classes: dict, *, device: str,
                    dtype: str) -> dict:
    """``{name: cls.from_pretrained(folder / name, local_files_only=True)}`` in ``dtype``, in
    order, each moved to ``device``, in eval mode and frozen. Call ``offline_env()`` first."""
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


def special_token(value, default: str | None = None) -> str | None:
    """A special token as tokenizer_config.json stores it (a string or an AddedToken dict)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value or default


class FlowMatchSchedule:
    """Rules read from a ``FlowMatchEulerDiscreteScheduler`` config (``self.scheduler_config``):
    the resolution-dependent shift mu and the options of ``_fast.flow_match_sigmas``. Missing keys
    take the same ``.get`` defaults the diffusers pipelines use."""

    def linear_shift_mu(self, image_seq_len: int) -> float:
        """``calculate_shift``: mu linear in the packed sequence length (FLUX.1's rule)."""
        from _fast import calculate_shift

        cfg = self.scheduler_config
        return calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256),
                               cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                               cfg.get("max_shift", 1.15))

    def mu(self, height: int, width: int) -> float | None:
        """Dynamic-shift mu from the packed sequence length; None without dynamic shifting."""
        if not self.scheduler_config.get("use_dynamic_shifting"):
            return None
        return self.linear_shift_mu(self.image_seq_len(height, width))

    def sigma_options(self, mu: float | None, *, shifted: bool = True,
                      terminal: bool = True) -> dict:
        """Keyword arguments of ``flow_match_sigmas`` / ``z_image_sigmas`` for this scheduler.

        ``shifted=False`` drops the shift and ``terminal=False`` the shift_terminal stretch (wrong
        variants, for the parity tests' negative controls)."""
        cfg = self.scheduler_config
        dynamic = bool(cfg.get("use_dynamic_shifting")) and shifted
        return dict(
            shift=float(cfg.get("shift", 1.0)) if shifted else 1.0,
            use_dynamic_shifting=dynamic,
            mu=mu if dynamic else None,
            time_shift_type=cfg.get("time_shift_type", "exponential"),
            shift_terminal=cfg.get("shift_terminal") if terminal else None,
            invert_sigmas=bool(cfg.get("invert_sigmas", False)),
            num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
            use_karras_sigmas=bool(cfg.get("use_karras_sigmas", False)),
            use_exponential_sigmas=bool(cfg.get("use_exponential_sigmas", False)),
        )


def read_chat_template(tokenizer_dir: Path, tokenizer_config: dict) -> str | None:
    """A tokenizer folder's chat template: chat_template.jinja, chat_template.json or the
    tokenizer_config.json entry (of a list of named templates, the default one); None if absent."""
    tokenizer_dir = Path(tokenizer_dir)
    if (tokenizer_dir / "chat_template.jinja").is_file():
        return (tokenizer_dir / "chat_template.jinja").read_text(encoding="utf-8")
    template = None
    if (tokenizer_dir / "chat_template.json").is_file():
        template = read_json(tokenizer_dir / "chat_template.json").get("chat_template")
    if template is None:
        template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None
