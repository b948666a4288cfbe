"""The tiny image-splitting models, built offline into the model cache on first use:
``tiny-idefics3`` (Idefics3: idefics3 vision tower + Llama) and ``tiny-smolvlm`` (SmolVLM2's
``smolvlm`` layout); 32-pixel tiles giving 4 rows each (Idefics3: 4×4 patches pixel-shuffled
2×2 as Idefics3-8B's scale 2; SmolVLM: 8×8 patches shuffled 4×4 as SmolVLM's scale 4), images
resized to a longest edge of 4 tiles as the real processors do (4 × 364, 4 × 512)."""
from __future__ import annotations

from pathlib import Path

from ..vlm_common import (build_byte_tokenizer, save_all, tiny_build, tiny_model,
                          write_processor_config)
from .adapter import FAMILY, hf_classes

__all__ = ["TINY_NAMES", "RECIPES", "RECIPE", "tiny_path"]

TINY_NAMES = ("tiny-idefics3", "tiny-smolvlm")
TILE = 32
_SPECIALS = (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<global-img>"]
             + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
             + ["<fake_token_around_image>", "<image>", "<end_of_utterance>"])
_NAMED = {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
          "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"}


def _recipe(kind: str, patch: int, scale: int, seed: int) -> dict:
    return {
        "family": FAMILY, "kind": kind, "version": 1, "std": 0.15, "seed": seed,
        "specials": _SPECIALS,
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "image_size": TILE, "patch_size": patch},
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2,
                 "max_position_embeddings": 2048},
        "scale_factor": scale,
        "image_processor": {"size": {"longest_edge": 4 * TILE},
                            "max_image_size": {"longest_edge": TILE},
                            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
        "processor": {"image_seq_len": (TILE // patch // scale) ** 2},
    }


RECIPES = {"tiny-idefics3": _recipe("idefics3", 8, 2, 0),
           "tiny-smolvlm": _recipe("smolvlm", 4, 4, 1)}
RECIPE = RECIPES["tiny-idefics3"]


def _build(name: str, folder: Path) -> None:
    recipe = RECIPES[name]
    model_cls, processor_cls = hf_classes(recipe["kind"])  # first: the offline environment
    from transformers import AutoConfig

    tok = build_byte_tokenizer(_SPECIALS, bos="<|im_start|>", eos="<end_of_utterance>",
                               pad="<|im_end|>", named=_NAMED)
    ids = {s: tok.convert_tokens_to_ids(s) for s in _SPECIALS}
    cfg = AutoConfig.for_model(
        recipe["kind"], vision_config=dict(recipe["vision"]),
        text_config={**recipe["text"], "vocab_size": len(tok), "bos_token_id": ids["<|im_start|>"],
                     "eos_token_id": ids["<end_of_utterance>"], "pad_token_id": ids["<|im_end|>"]},
        image_token_id=ids["<image>"], scale_factor=recipe["scale_factor"])
    model = tiny_model(model_cls, cfg, recipe, eos=ids["<end_of_utterance>"],
                       pad=ids["<|im_end|>"])
    proc = processor_cls(**recipe["image_processor"])
    save_all(folder, model, tok, proc)
    cls = "SmolVLMProcessor" if recipe["kind"] == "smolvlm" else "Idefics3Processor"
    write_processor_config(folder, cls, recipe["processor"])


def tiny_path(name: str, cache_dir=None) -> Path:
    return tiny_build(name, TINY_NAMES, RECIPES.get(name, RECIPE),
                      lambda folder: _build(name, folder), cache_dir)
