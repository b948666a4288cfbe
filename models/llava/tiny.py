"""The tiny LLaVA (``tiny-llava``): CLIP vision tower + Llama text model, byte tokenizer, built
offline into the model cache on first use."""
from __future__ import annotations

from pathlib import Path

from ..vlm_common import (build_byte_tokenizer, save_all, tiny_build, tiny_model,
                          write_processor_config)
from .adapter import FAMILY, hf_classes

__all__ = ["TINY_NAMES", "RECIPE", "tiny_path"]

TINY_NAMES = ("tiny-llava",)

_SPECIALS = ["<pad>", "<s>", "</s>", "<image>"]
RECIPE = {
    "family": FAMILY, "version": 2, "specials": _SPECIALS, "std": 0.15, "seed": 0,
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512},
    # LlavaProcessor settings (processor_config.json), as llava-hf checkpoints ship them.
    "processor": {"image_token": "<image>", "patch_size": 8, "num_additional_image_tokens": 1,
                  "vision_feature_select_strategy": "default"},
}


def _build(folder: Path) -> None:
    model_cls, processor_cls = hf_classes()  # first: it sets the offline environment
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    tok = build_byte_tokenizer(_SPECIALS, bos="<s>", eos="</s>", pad="<pad>",
                               named={"image_token": "<image>"})
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**RECIPE["vision"]),
        text_config=LlamaConfig(vocab_size=len(tok), pad_token_id=0, bos_token_id=1,
                                eos_token_id=2, **RECIPE["text"]),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default")
    model = tiny_model(model_cls, cfg, RECIPE, eos=2, pad=0)
    size = RECIPE["vision"]["image_size"]
    proc = processor_cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    save_all(folder, model, tok, proc)
    write_processor_config(folder, "LlavaProcessor", RECIPE["processor"])


def tiny_path(name: str, cache_dir=None) -> Path:
    return tiny_build(name, TINY_NAMES, RECIPE, _build, cache_dir)
