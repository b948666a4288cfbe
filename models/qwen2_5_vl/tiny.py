"""The tiny Qwen2.5-VL (``tiny-qwen2.5-vl``): a 2-block vision tower whose first block attends in
windows (2×2 merged patches, so the test images span several windows, padded ones included) and
whose second attends to the whole image, M-RoPE text model, byte tokenizer; built offline into
the model cache on first use."""
from __future__ import annotations

from pathlib import Path

from ..qwen2_vl.tiny import SPECIALS, build_qwen_vl
from ..vlm_common import tiny_build
from .adapter import FAMILY, hf_classes

__all__ = ["TINY_NAMES", "RECIPE", "tiny_path"]

TINY_NAMES = ("tiny-qwen2.5-vl",)

RECIPE = {
    "family": FAMILY, "version": 1, "specials": SPECIALS, "std": 0.15, "seed": 0,
    # window_size 16 px = 2×2 merged patches (window_size // spatial_merge_size // patch_size)
    "vision": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4,
               "out_hidden_size": 64, "patch_size": 4, "spatial_merge_size": 2,
               "temporal_patch_size": 2, "window_size": 16, "fullatt_block_indexes": [1],
               "tokens_per_second": 2},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
             "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [2, 3, 3]}},
    "processor": {"min_pixels": 16 * 16, "max_pixels": 48 * 48},
}


def _build(folder: Path) -> None:
    build_qwen_vl(folder, RECIPE, hf_classes(), "Qwen2_5_VLConfig")


def tiny_path(name: str, cache_dir=None) -> Path:
    return tiny_build(name, TINY_NAMES, RECIPE, _build, cache_dir)
