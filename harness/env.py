"""Process environment every family shares: the offline hub switches and the dtype names.

``offline_env()`` must run before huggingface_hub / diffusers / transformers are imported: the hub
reads ``HF_HUB_OFFLINE`` once, at import. It is forced, not defaulted: nothing is ever downloaded
(loaders pass ``local_files_only=True`` as well).
"""
from __future__ import annotations

import os

__all__ = ["offline_env", "prefer_pil_image_processors", "torch_dtype", "DTYPE_NAMES"]

#: dtype names the harness accepts, and their aliases.
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
               "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def offline_env() -> None:
    """Switch the Hugging Face hub offline for this process (see the module notes)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


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
