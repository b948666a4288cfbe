"""Loading a Wan folder's modules (tiny or real weights alike), offline."""
from __future__ import annotations

import os

from ..diffusers_common import load_pretrained, offline_env
from .rules import rules

__all__ = ["load_components"]


def load_components(folder: str | os.PathLike, *, device: str = "cpu", dtype: str = "float32",
                    **kw) -> dict:
    """text_encoder (UMT5), transformer (and transformer_2), vae and, for Wan 2.1 image-to-video,
    image_encoder (CLIP vision), with ``from_pretrained(..., local_files_only=True)``. Extra
    keywords (``quantize``) go to ``load_pretrained`` when set."""
    offline_env()
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import CLIPVisionModel, UMT5EncoderModel

    r = rules(folder)
    classes = {"text_encoder": UMT5EncoderModel}
    if r.has_image_encoder:
        classes["image_encoder"] = CLIPVisionModel
    classes["transformer"] = WanTransformer3DModel
    if r.two_experts:
        classes["transformer_2"] = WanTransformer3DModel
    classes["vae"] = AutoencoderKLWan
    extra = {k: v for k, v in kw.items() if v is not None}
    return load_pretrained(folder, classes, device=device, dtype=dtype, **extra)
