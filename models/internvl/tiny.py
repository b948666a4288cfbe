"""The tiny InternVL (``tiny-internvl``): InternViT-like tower with CLS, pixel shuffle 0.5 and a
Qwen2 text model, 32-pixel tiles of 4×4 patches (4 context tokens per tile), up to 12 tiles as
the real processor, byte tokenizer; built offline into the model cache on first use."""
from __future__ import annotations

from pathlib import Path

from ..vlm_common import (build_byte_tokenizer, save_all, tiny_build, tiny_model,
                          write_processor_config)
from .adapter import FAMILY, hf_classes

__all__ = ["TINY_NAMES", "RECIPE", "tiny_path"]

TINY_NAMES = ("tiny-internvl",)
TILE = 32
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
             "<video>"]
RECIPE = {
    "family": FAMILY, "version": 1, "specials": _SPECIALS, "std": 0.15, "seed": 0,
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "image_size": [TILE, TILE], "patch_size": [8, 8],
               "attention_bias": True},
    "text": {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 2048},
    "image_processor": {"size": {"height": TILE, "width": TILE},
                        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
    "processor": {"image_seq_length": (TILE // 8) ** 2 // 4},
}


def _build(folder: Path) -> None:
    model_cls, processor_cls = hf_classes()  # first: it sets the offline environment
    from transformers import InternVLConfig

    tok = build_byte_tokenizer(_SPECIALS, bos="<|endoftext|>", eos="<|im_end|>",
                               pad="<|endoftext|>", named={
                                   "start_image_token": "<img>", "end_image_token": "</img>",
                                   "context_image_token": "<IMG_CONTEXT>",
                                   "video_token": "<video>"})
    ids = {s: tok.convert_tokens_to_ids(s) for s in _SPECIALS}
    cfg = InternVLConfig(
        vision_config=dict(RECIPE["vision"]),
        text_config={**RECIPE["text"], "vocab_size": len(tok), "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"], "bos_token_id": ids["<|endoftext|>"]},
        image_token_id=ids["<IMG_CONTEXT>"], image_seq_length=RECIPE["processor"][
            "image_seq_length"])
    model = tiny_model(model_cls, cfg, RECIPE, eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"])
    proc = processor_cls(**RECIPE["image_processor"])
    save_all(folder, model, tok, proc)
    write_processor_config(folder, "InternVLProcessor", RECIPE["processor"])


def tiny_path(name: str, cache_dir=None) -> Path:
    return tiny_build(name, TINY_NAMES, RECIPE, _build, cache_dir)
