"""Loading a FLUX.2 folder's modules (tiny or real weights alike), offline."""
from __future__ import annotations

import os

from ..diffusers_common import load_pretrained, offline_env
from .rules import rules

__all__ = ["load_components"]


def load_components(folder: str | os.PathLike, *, device: str = "cpu",
                    dtype: str = "float32", quantize: str | None = None) -> dict:
    """Text encoder, transformer and VAE via ``from_pretrained(..., local_files_only=True)``."""
    offline_env()
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    layout = rules(folder).layout
    if layout == "klein":
        from transformers import Qwen3ForCausalLM as TextEncoder
    else:
        from transformers import Mistral3ForConditionalGeneration as TextEncoder
    return load_pretrained(folder, {"text_encoder": TextEncoder,
                                    "transformer": Flux2Transformer2DModel,
                                    "vae": AutoencoderKLFlux2}, device=device, dtype=dtype,
                           quantize=quantize)
