"""Loading a Z-Image folder's modules (tiny or real weights alike), offline."""
from __future__ import annotations

import os
from pathlib import Path

from ..diffusers_common import load_pretrained, offline_env, read_json

__all__ = ["load_components"]


def _text_encoder_class(folder: Path):
    """The transformers class model_index.json names (Qwen3Model for Z-Image-Turbo)."""
    import transformers

    name = read_json(folder / "model_index.json").get("text_encoder", [None, "Qwen3Model"])[1]
    if name not in ("Qwen3Model", "Qwen3ForCausalLM"):
        raise ValueError(f"text encoder class {name!r} of {folder} is not supported "
                         f"(expected Qwen3Model or Qwen3ForCausalLM)")
    return getattr(transformers, name)


def load_components(folder: str | os.PathLike, *, device: str = "cpu",
                    dtype: str = "float32", quantize: str | None = None) -> dict:
    """Text encoder, transformer and VAE via ``from_pretrained(..., local_files_only=True)``."""
    offline_env()
    from diffusers import AutoencoderKL, ZImageTransformer2DModel

    return load_pretrained(folder, {"text_encoder": _text_encoder_class(Path(folder)),
                                    "transformer": ZImageTransformer2DModel,
                                    "vae": AutoencoderKL}, device=device, dtype=dtype,
                           quantize=quantize)
