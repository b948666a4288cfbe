"""The tiny any-resolution models, built offline into the model cache on first use:
``tiny-llava-onevision`` (SigLIP tower + Qwen2, 32-pixel tiles on OneVision's 6×6 pinpoint
layout, ``anyres_max_9``) and ``tiny-llava-next`` (CLIP tower with CLS + Llama, LLaVA-NeXT 1.6's
five pinpoints scaled to 32-pixel tiles)."""
from __future__ import annotations

from pathlib import Path

from ..vlm_common import (build_byte_tokenizer, save_all, tiny_build, tiny_model,
                          write_processor_config)
from .adapter import FAMILY, hf_classes

__all__ = ["TINY_NAMES", "RECIPES", "RECIPE", "tiny_path"]

TINY_NAMES = ("tiny-llava-onevision", "tiny-llava-next")

TILE = 32
_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048}
RECIPES = {
    "tiny-llava-onevision": {
        "family": FAMILY, "kind": "llava_onevision", "version": 1, "std": 0.15, "seed": 0,
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        "vision": {"model_type": "siglip_vision_model", "hidden_size": 32,
                   "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "image_size": TILE, "patch_size": 8, "vision_use_head": False},
        "text": {"model_type": "qwen2", **_TEXT},
        # OneVision's layout: every h×w multiple of the tile from 1×1 to 6×6.
        "pinpoints": [[TILE * i, TILE * j] for i in range(1, 7) for j in range(1, 7)],
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "processor": {"num_image_tokens": 16, "vision_feature_select_strategy": "full",
                      "vision_aspect_ratio": "anyres_max_9", "image_token": "<image>",
                      "video_token": "<video>"},
    },
    "tiny-llava-next": {
        "family": FAMILY, "kind": "llava_next", "version": 1, "std": 0.15, "seed": 0,
        "specials": ["<unk>", "<s>", "</s>", "<image>", "<pad>"],
        "vision": {"model_type": "clip_vision_model", "hidden_size": 32,
                   "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "image_size": TILE, "patch_size": 8},
        "text": {"model_type": "llama", **_TEXT},
        # llava-v1.6's pinpoints (336-pixel tiles: 1×2, 2×1, 2×2, 3×1, 1×3) on 32-pixel tiles.
        "pinpoints": [[TILE, 2 * TILE], [2 * TILE, TILE], [2 * TILE, 2 * TILE],
                      [3 * TILE, TILE], [TILE, 3 * TILE]],
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "processor": {"patch_size": 8, "vision_feature_select_strategy": "default",
                      "num_additional_image_tokens": 1, "image_token": "<image>"},
    },
}
RECIPE = RECIPES["tiny-llava-onevision"]


def _build(name: str, folder: Path) -> None:
    recipe = RECIPES[name]
    model_cls, processor_cls = hf_classes(recipe["kind"])  # first: the offline environment
    from transformers import AutoConfig

    specials = recipe["specials"]
    if recipe["kind"] == "llava_onevision":
        tok = build_byte_tokenizer(specials, bos="<|endoftext|>", eos="<|im_end|>",
                                   pad="<|endoftext|>", named={"image_token": "<image>",
                                                               "video_token": "<video>"})
        eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids(
            "<|endoftext|>")
        extra = {"video_token_index": tok.convert_tokens_to_ids("<video>"),
                 "vision_aspect_ratio": recipe["processor"]["vision_aspect_ratio"],
                 "vision_feature_layer": -1}
        proc_kw = {"size": {"height": TILE, "width": TILE}}
    else:
        tok = build_byte_tokenizer(specials, bos="<s>", eos="</s>", pad="<pad>",
                                   named={"image_token": "<image>"})
        eos, pad = tok.convert_tokens_to_ids("</s>"), tok.convert_tokens_to_ids("<pad>")
        extra = {"vision_feature_layer": -2}
        proc_kw = {"size": {"shortest_edge": TILE}, "crop_size": {"height": TILE, "width": TILE}}
    vision = dict(recipe["vision"])
    text = dict(recipe["text"])
    cfg = AutoConfig.for_model(
        recipe["kind"], vision_config=vision,
        text_config={**text, "vocab_size": len(tok), "eos_token_id": eos, "pad_token_id": pad,
                     "bos_token_id": tok.convert_tokens_to_ids(tok.bos_token)},
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=recipe["pinpoints"],
        vision_feature_select_strategy=recipe["processor"]["vision_feature_select_strategy"],
        **extra)
    model = tiny_model(model_cls, cfg, recipe, eos=eos, pad=pad)
    proc = processor_cls(image_grid_pinpoints=recipe["pinpoints"],
                         image_mean=recipe["image_mean"], image_std=recipe["image_std"], **proc_kw)
    save_all(folder, model, tok, proc)
    cls = "LlavaOnevisionProcessor" if recipe["kind"] == "llava_onevision" else \
        "LlavaNextProcessor"
    write_processor_config(folder, cls, recipe["processor"])


def tiny_path(name: str, cache_dir=None) -> Path:
    return tiny_build(name, TINY_NAMES, RECIPES.get(name, RECIPE),
                      lambda folder: _build(name, folder), cache_dir)
