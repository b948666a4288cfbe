"""Process environment every family shares: the offline hub switches and the dtype names.

``offline_env()`` must run before huggingface_hub / diffusers / transformers are imported: the hub
reads ``HF_HUB_OFFLINE`` once, at import. It is forced, not defaulted: nothing is ever downloaded
(loaders pass ``local_files_only=True`` as well).
"""
from __future__ import annotations

import os

__all__ = ["offline_env", "torch_dtype", "DTYPE_NAMES"]

#: dtype names the harness accepts, and their aliases.
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
               "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def offline_env() -> None:
    """Switch the Hugging Face hub offline for this process (see the module notes)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def torch_dtype(dtype: str, allowed: tuple[str, ...] = ("float32", "bfloat16")):
    """The torch dtype of a dtype name (or alias) among ``allowed``; ValueError otherwise."""
    import torch

    name = DTYPE_NAMES.get(dtype)
    if name not in allowed:
        raise ValueError(f"dtype {dtype!r} is not supported; allowed: {', '.join(allowed)}")
    return getattr(torch, name)
