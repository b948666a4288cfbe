"""Loading a FLUX.1 folder's modules (tiny or real weights alike), offline."""
from __future__ import annotations

import os

from ..diffusers_common import load_pretrained, offline_env

__all__ = ["load_components"]


def load_components(folder: str | os.PathLike, *, device: str = "cpu",
                    dtype: str = "float32", quantize: str | None = None) -> dict:
    """Load the four model components with ``from_pretrained(..., local_files_only=True)``."""
    offline_env()
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    return load_pretrained(folder, {"text_encoder": CLIPTextModel,
                                    "text_encoder_2": T5EncoderModel,
                                    "transformer": FluxTransformer2DModel,
                                    "vae": AutoencoderKL}, device=device, dtype=dtype,
                           quantize=quantize)
