"""Loading a Qwen-Image folder's modules (tiny or real weights alike), offline."""
from __future__ import annotations

import os

from ..diffusers_common import load_pretrained, offline_env

__all__ = ["load_components"]


def load_components(folder: str | os.PathLike, *, device: str = "cpu",
                    dtype: str = "float32", quantize: str | None = None) -> dict:
    """text_encoder, transformer and vae with ``from_pretrained(..., local_files_only=True)``."""
    offline_env()
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    return load_pretrained(folder, {"text_encoder": Qwen2_5_VLForConditionalGeneration,
                                    "transformer": QwenImageTransformer2DModel,
                                    "vae": AutoencoderKLQwenImage}, device=device, dtype=dtype,
                           quantize=quantize)
