"""Boilerplate the diffusers family packages share: config reading, folder matching, offline
loading of components, tokenizer configs, and the pieces of a tiny recipe. No torch import at
module level. (The shared *rules* live in ``image_rules.py``.)
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from harness.env import offline_env as _offline_env
from harness.env import prefer_pil_image_processors, torch_dtype

__all__ = ["read_json", "class_name", "versions", "sha256", "corpus_sha256",
           "chat_tokenizers_sha256", "check_tiny_name", "offline_env",
           "load_pretrained", "redraw", "special_token", "read_chat_template",
           "assemble_pipeline", "TINY_FLUX_VAE", "save_config_model", "write_model_index",
           "negative_and_image_fields"]


def offline_env() -> None:
    """The hub offline (``harness.env.offline_env``), then transformers' PIL image processors
    bound by name before a diffusers pipeline module imports them (no torchvision warning)."""
    _offline_env()
    prefer_pil_image_processors()


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
                    dtype: str, quantize: str | None = None) -> dict:
    """``{name: cls.from_pretrained(folder / name, local_files_only=True)}`` in ``dtype``, in
    order, each moved to ``device``, in eval mode and frozen. ``quantize`` (``--quantize``)
    quantizes the denoiser ``transformer`` at load through diffusers' own quantizers
    (``harness.workstation.quantization_config``). Call ``offline_env()`` first."""
    from transformers.utils import logging as hf_logging

    from harness.workstation import quantization_config

    hf_logging.disable_progress_bar()  # per-file "Loading weights" bars
    folder = Path(folder)
    kw = {"local_files_only": True, "torch_dtype": torch_dtype(dtype)}
    comps = {}
    for name, cls in classes.items():
        extra = {}
        if quantize is not None and name == "transformer":
            extra["quantization_config"] = quantization_config(quantize, "diffusers",
                                                               kw["torch_dtype"])
            if quantize == "nf4":  # 4-bit weights are placed at load and cannot be moved
                extra["device_map"] = device
        comps[name] = cls.from_pretrained(folder / name, **kw, **extra)
    for name, module in comps.items():
        if not (quantize == "nf4" and name == "transformer"):
            module.to(device)
        module.eval().requires_grad_(False)
    return comps


def redraw(module, std: float, generator) -> None:
    """Re-draw every matrix of ``module`` from N(0, std) (1-D norms and biases keep their init)."""
    import torch

    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)


def special_token(value, default: str | None = None) -> str | None:
    """A special token as tokenizer_config.json stores it (a string or an AddedToken dict)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value or default


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


def assemble_pipeline(pipeline_cls, folder: str | os.PathLike, components: dict, **parts):
    """``pipeline_cls`` over already loaded ``components`` plus the folder's own
    FlowMatchEulerDiscreteScheduler and ``parts`` (tokenizers, processor, flags), progress bar
    off: how every family builds its parity reference. Call ``offline_env()`` first."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(Path(folder) / "scheduler",
                                                                local_files_only=True)
    pipe = pipeline_cls(scheduler=scheduler, **parts, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: The FLUX VAE at tiny widths (tiny_models.md): 4 resolution levels (scale factor 8), 16 latent
#: channels and FLUX.1's scaling/shift factors. FLUX.1 and Z-Image ship this layout.
TINY_FLUX_VAE = {
    "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 4,
    "latent_channels": 16, "scaling_factor": 0.3611, "shift_factor": 0.1159,
    "use_quant_conv": False, "use_post_quant_conv": False, "sample_size": 256,
}


def negative_and_image_fields(negative, image, height: int, width: int, extra: dict) -> dict:
    """Context fields of an optional negative prompt (``(tokens, mask)``) and an optional input
    image (its pixels at ``height`` x ``width``; the NHWC copy goes to ``extra["image_nhwc"]``),
    as the Z-Image and Wan contexts both fill them."""
    from _fast.tokens import TokenBuffer
    from harness.images import preprocess_image

    fields: dict = {}
    if negative is not None:
        fields["negative_tokens"] = TokenBuffer(negative[0])
        fields["negative_mask"] = negative[1]
    if image is not None:
        pixels, image_nhwc = preprocess_image(image, height, width)
        fields["input_image"] = pixels
        extra["image_nhwc"] = image_nhwc
    return fields


def save_config_model(model_cls, config: dict, out: Path):
    """``model_cls(**config)`` (JSON lists passed as the tuples diffusers configs hold), saved
    to ``out`` as safetensors; returns the model."""
    model = model_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    model.save_pretrained(out, safe_serialization=True)
    return model


def write_model_index(out: Path, class_name: str, components: dict) -> None:
    """model_index.json as ``<class_name>.save_pretrained`` writes it."""
    from diffusers import __version__ as diffusers_version

    index = {"_class_name": class_name, "_diffusers_version": diffusers_version, **components}
    (Path(out) / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
