"""The tiny Pixtral (``tiny-pixtral``): Pixtral vision tower + Mistral text model in Mistral3,
byte tokenizer, built offline into the model cache on first use."""
from __future__ import annotations

from pathlib import Path

from ..vlm_common import (build_byte_tokenizer, save_all, tiny_build, tiny_model,
                          write_processor_config)
from .adapter import FAMILY, hf_classes

__all__ = ["TINY_NAMES", "RECIPE", "tiny_path"]

TINY_NAMES = ("tiny-pixtral",)

_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]",
             "[IMG_END]"]
RECIPE = {
    "family": FAMILY, "version": 2, "specials": _SPECIALS, "std": 0.15, "seed": 0,
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "image_size": 128, "patch_size": 8},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
             "max_position_embeddings": 1024, "sliding_window": None},
    "spatial_merge_size": 2,
    "longest_edge": 128,
    # PixtralProcessor settings (processor_config.json): the vision patch and the merge.
    "processor": {"image_token": "[IMG]", "image_break_token": "[IMG_BREAK]",
                  "image_end_token": "[IMG_END]", "patch_size": 8, "spatial_merge_size": 2},
}


def _build(folder: Path) -> None:
    model_cls, processor_cls = hf_classes()  # first: it sets the offline environment
    from transformers import Mistral3Config

    tok = build_byte_tokenizer(_SPECIALS, bos="<s>", eos="</s>", pad="<pad>", named={
        "image_token": "[IMG]", "image_break_token": "[IMG_BREAK]",
        "image_end_token": "[IMG_END]"})
    ids = {s: tok.convert_tokens_to_ids(s) for s in _SPECIALS}
    cfg = Mistral3Config(
        vision_config=dict(model_type="pixtral", **RECIPE["vision"]),
        text_config=dict(model_type="mistral", vocab_size=len(tok), pad_token_id=ids["<pad>"],
                         bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], **RECIPE["text"]),
        image_token_index=ids["[IMG]"], spatial_merge_size=RECIPE["spatial_merge_size"],
        vision_feature_layer=-1)
    model = tiny_model(model_cls, cfg, RECIPE, eos=ids["</s>"], pad=ids["<pad>"])
    step = RECIPE["vision"]["patch_size"] * RECIPE["spatial_merge_size"]
    proc = processor_cls(size={"longest_edge": RECIPE["longest_edge"]},
                         patch_size={"height": step, "width": step})
    save_all(folder, model, tok, proc)
    write_processor_config(folder, "PixtralProcessor", RECIPE["processor"])


def tiny_path(name: str, cache_dir=None) -> Path:
    return tiny_build(name, TINY_NAMES, RECIPE, _build, cache_dir)
