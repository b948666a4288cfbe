"""The tiny Gemma 3 (``tiny-gemma3``): SigLIP vision tower + Gemma 3 text model with one sliding
and one full attention layer, byte tokenizer, built offline into the model cache on first use."""
from __future__ import annotations

from pathlib import Path

from ..vlm_common import (build_byte_tokenizer, save_all, tiny_build, tiny_model,
                          write_processor_config)
from .adapter import FAMILY, hf_classes

__all__ = ["TINY_NAMES", "RECIPE", "tiny_path"]

TINY_NAMES = ("tiny-gemma3",)

_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
             "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
RECIPE = {
    "family": FAMILY, "version": 2, "specials": _SPECIALS, "std": 0.05, "seed": 0,
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "image_size": 32, "patch_size": 4},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
             "max_position_embeddings": 1024, "sliding_window": 512, "query_pre_attn_scalar": 16,
             "layer_types": ["sliding_attention", "full_attention"]},
    "mm_tokens_per_image": 16,
}


def _build(folder: Path) -> None:
    model_cls, processor_cls = hf_classes()  # first: it sets the offline environment
    from transformers import Gemma3Config

    tok = build_byte_tokenizer(_SPECIALS, bos="<bos>", eos="<eos>", pad="<pad>", named={
        "image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>"})
    ids = {s: tok.convert_tokens_to_ids(s) for s in _SPECIALS}
    cfg = Gemma3Config(
        vision_config=dict(model_type="siglip_vision_model", **RECIPE["vision"]),
        text_config=dict(vocab_size=len(tok), pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"],
                         eos_token_id=ids["<eos>"], **RECIPE["text"]),
        mm_tokens_per_image=RECIPE["mm_tokens_per_image"],
        boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"])
    model = tiny_model(model_cls, cfg, RECIPE,
                       eos=[ids["<eos>"], ids["<end_of_turn>"]], pad=ids["<pad>"])
    size = RECIPE["vision"]["image_size"]
    proc = processor_cls(size={"height": size, "width": size}, do_pan_and_scan=False)
    save_all(folder, model, tok, proc)
    # Gemma3Processor settings: its image_seq_length equals the model's mm_tokens_per_image.
    write_processor_config(folder, "Gemma3Processor",
                           {"image_seq_length": RECIPE["mm_tokens_per_image"]})


def tiny_path(name: str, cache_dir=None) -> Path:
    return tiny_build(name, TINY_NAMES, RECIPE, _build, cache_dir)
