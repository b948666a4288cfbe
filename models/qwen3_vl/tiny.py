"""The tiny Qwen3-VL (``tiny-qwen3-vl``): a 3-block vision tower whose first two blocks feed
deepstack features into the first two of three text layers (the real models: 3 of 24–27 blocks
into the first 3 text layers), a learned 8×8 position grid resampled per image, interleaved
M-RoPE, byte tokenizer; built offline into the model cache on first use."""
from __future__ import annotations

from pathlib import Path

from ..qwen2_vl.tiny import SPECIALS, build_qwen_vl
from ..vlm_common import tiny_build
from .adapter import FAMILY, hf_classes

__all__ = ["TINY_NAMES", "RECIPE", "tiny_path"]

TINY_NAMES = ("tiny-qwen3-vl",)

RECIPE = {
    # std 0.3: at 0.15 (the other tiny VLMs) greedy decoding of this q/k-normed text model
    # repeats one token whatever the images; at 0.3 the tokens follow the images
    "family": FAMILY, "version": 1, "specials": SPECIALS, "std": 0.3, "seed": 0,
    "vision": {"depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4,
               "out_hidden_size": 64, "patch_size": 4, "spatial_merge_size": 2,
               "temporal_patch_size": 2, "num_position_embeddings": 64,
               "deepstack_visual_indexes": [0, 1]},
    # mrope_section [3, 3, 2]: the interleaved split of head_dim / 2 = 8 frequencies (T gets
    # 0, 3, 6; H 1, 4, 7; W 2, 5), as [24, 20, 20] splits the real 64
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
             "max_position_embeddings": 1024,
             "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0,
                                 "mrope_section": [3, 3, 2], "mrope_interleaved": True}},
    "processor": {"min_pixels": 16 * 16, "max_pixels": 48 * 48, "image_mean": [0.5] * 3,
                  "image_std": [0.5] * 3},
}


def _build(folder: Path) -> None:
    build_qwen_vl(folder, RECIPE, hf_classes(), "Qwen3VLConfig", tie_word_embeddings=True)


def tiny_path(name: str, cache_dir=None) -> Path:
    return tiny_build(name, TINY_NAMES, RECIPE, _build, cache_dir)
