"""Process environment every family shares: the offline hub switches and the dtype names.

``offline_env()`` must run before huggingface_hub / diffusers / transformers are imported: the hub
reads ``HF_HUB_OFFLINE`` once, at import. It is forced, not defaulted: nothing is ever downloaded
(loaders pass ``local_files_only=True`` as well).
"""
from __future__ import annotations

import logging
import os
import re

__all__ = ["offline_env", "prefer_pil_image_processors", "silence_known_noise", "torch_dtype",
           "DTYPE_NAMES"]

#: dtype names the harness accepts, and their aliases.
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
               "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def offline_env() -> None:
    """Switch the Hugging Face hub offline for this process (see the module notes), and drop
    the libraries' known import noise (``silence_known_noise``)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    silence_known_noise()


#: (logger, message pattern) of import-time noise that says nothing about a run: torchao's
#: optional CUDA kernels absent from a CPU machine, and torch's deprecation note that torchao's
#: enums still register themselves with pytree. Matched exactly; everything else still shows.
KNOWN_NOISE = (
    ("torchao", r"Failed to load .*torchao[/\\]_C\w*.*\.so"),
    ("torch.utils._pytree", r"is an Enum subclass and is now natively supported by torch\.compile"),
)


class _DropMatching(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def silence_known_noise() -> None:
    """Filter ``KNOWN_NOISE`` on its own loggers (once per process; the loggers are singletons,
    so the filters hold whenever the library is imported later)."""
    for name, pattern in KNOWN_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) and f.pattern.pattern == pattern
                   for f in logger.filters):
            logger.addFilter(_DropMatching(pattern))


#: Image processors that diffusers' pipeline modules import by their default name (FluxPipeline's
#: IP-Adapter inputs, for one) and that transformers >= 5.24 maps to a torchvision backend.
_PIL_FALLBACKS = ("CLIPImageProcessor", "SiglipImageProcessor")


def prefer_pil_image_processors() -> None:
    """Without torchvision, bind transformers' default image-processor names to their PIL classes
    up front: the very classes transformers falls back to, minus the warning it prints at the
    first import (every ``from diffusers import FluxPipeline`` otherwise logs two lines)."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        return
    import transformers

    for name in _PIL_FALLBACKS:
        pil = getattr(transformers, f"{name}Pil", None)
        if pil is not None:
            setattr(transformers, name, pil)


def torch_dtype(dtype: str, allowed: tuple[str, ...] = ("float32", "bfloat16")):
    """The torch dtype of a dtype name (or alias) among ``allowed``; ValueError otherwise."""
    import torch

    name = DTYPE_NAMES.get(dtype)
    if name not in allowed:
        raise ValueError(f"dtype {dtype!r} is not supported; allowed: {', '.join(allowed)}")
    return getattr(torch, name)
