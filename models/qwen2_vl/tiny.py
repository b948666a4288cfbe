"""The tiny Qwen2-VL (``tiny-qwen2-vl``): real M-RoPE sections and patch merging, shrunken widths,
byte tokenizer, built offline into the model cache on first use."""
from __future__ import annotations

from pathlib import Path

from ..vlm_common import build_byte_tokenizer, save_all, tiny_build, tiny_model
from .adapter import FAMILY, hf_classes

__all__ = ["TINY_NAMES", "RECIPE", "tiny_path", "build_qwen_vl", "SPECIALS"]

TINY_NAMES = ("tiny-qwen2-vl",)

#: The Qwen-VL specials the tiny byte tokenizers put first (Qwen2.5-VL and Qwen3-VL use them too).
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>"]
RECIPE = {
    "family": FAMILY, "version": 1, "specials": SPECIALS, "std": 0.15, "seed": 0,
    "vision": {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 4, "mlp_ratio": 2,
               "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
             "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [2, 3, 3]}},
    "processor": {"min_pixels": 16 * 16, "max_pixels": 48 * 48},
}


def build_qwen_vl(folder: Path, recipe: dict, classes: tuple, config_name: str,
                  **config_extra) -> None:
    """A tiny Qwen-VL model (Qwen2-VL, Qwen2.5-VL and Qwen3-VL share it) into ``folder``: byte
    tokenizer of ``recipe["specials"]``, ``transformers.<config_name>`` from the recipe's vision
    and text parts (plus ``config_extra``), re-drawn weights, the image processor with the
    recipe's pixel bounds and any further processor settings it names. ``classes`` is the
    family's ``hf_classes()`` (called first: it sets the offline environment)."""
    import transformers

    model_cls, processor_cls = classes
    config_cls = getattr(transformers, config_name)
    specials = recipe["specials"]
    tok = build_byte_tokenizer(specials, bos="<|endoftext|>", eos="<|im_end|>",
                               pad="<|endoftext|>", named={"image_token": "<|image_pad|>",
                                                           "video_token": "<|video_pad|>"})
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    cfg = config_cls(
        vision_config=recipe["vision"],
        text_config=dict(vocab_size=len(tok), bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         **recipe["text"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        **config_extra)
    model = tiny_model(model_cls, cfg, recipe,
                       eos=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad=ids["<|endoftext|>"])
    v, p = recipe["vision"], dict(recipe["processor"])
    proc = processor_cls(
        size={"shortest_edge": p.pop("min_pixels"), "longest_edge": p.pop("max_pixels")},
        patch_size=v["patch_size"], temporal_patch_size=v["temporal_patch_size"],
        merge_size=v["spatial_merge_size"], **p)
    save_all(folder, model, tok, proc)


def _build(folder: Path) -> None:
    build_qwen_vl(folder, RECIPE, hf_classes(), "Qwen2VLConfig")


def tiny_path(name: str, cache_dir=None) -> Path:
    return tiny_build(name, TINY_NAMES, RECIPE, _build, cache_dir)
