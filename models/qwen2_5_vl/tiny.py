"""The tiny Qwen2.5-VL (``tiny-qwen2.5-vl``): a 2-block vision tower whose first block attends in
windows (2×2 merged patches, so the test images span several windows, padded ones included) and
whose second attends to the whole image, M-RoPE text model, byte tokenizer; built offline into
the model cache on first use."""
from __future__ import annotations

from pathlib import Path

from ..vlm_common import build_byte_tokenizer, save_all, tiny_build, tiny_model
from .adapter import FAMILY, hf_classes

__all__ = ["TINY_NAMES", "RECIPE", "tiny_path"]

TINY_NAMES = ("tiny-qwen2.5-vl",)

_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
             "<|image_pad|>", "<|video_pad|>"]
RECIPE = {
    "family": FAMILY, "version": 1, "specials": _SPECIALS, "std": 0.15, "seed": 0,
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
    model_cls, processor_cls = hf_classes()  # first: it sets the offline environment
    from transformers import Qwen2_5_VLConfig

    tok = build_byte_tokenizer(_SPECIALS, bos="<|endoftext|>", eos="<|im_end|>",
                               pad="<|endoftext|>", named={"image_token": "<|image_pad|>",
                                                           "video_token": "<|video_pad|>"})
    ids = {s: tok.convert_tokens_to_ids(s) for s in _SPECIALS}
    cfg = Qwen2_5_VLConfig(
        vision_config=RECIPE["vision"],
        text_config=dict(vocab_size=len(tok), bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         **RECIPE["text"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    model = tiny_model(model_cls, cfg, RECIPE,
                       eos=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad=ids["<|endoftext|>"])
    v = RECIPE["vision"]
    proc = processor_cls(
        size={"shortest_edge": RECIPE["processor"]["min_pixels"],
              "longest_edge": RECIPE["processor"]["max_pixels"]},
        patch_size=v["patch_size"], temporal_patch_size=v["temporal_patch_size"],
        merge_size=v["spatial_merge_size"])
    save_all(folder, model, tok, proc)


def tiny_path(name: str, cache_dir=None) -> Path:
    return tiny_build(name, TINY_NAMES, RECIPE, _build, cache_dir)
