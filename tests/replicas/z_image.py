"""Replica of Tongyi-MAI/Z-Image-Turbo: configs verbatim except depth (and widths where memory
demands), built offline from seeded random weights.

Sources ("R:" marks a value reconstructed, not read from a public copy):
- model_index.json: zhutao100/Z-Image.swift docs/z-image-turbo.md (the repo's file quoted:
  ZImagePipeline, Qwen3Model, Qwen2Tokenizer, ZImageTransformer2DModel, AutoencoderKL,
  _diffusers_version 0.36.0.dev0), which also lists the layout: transformer in 3 shards, text
  encoder in 3 shards, tokenizer with tokenizer.json, tokenizer_config.json, vocab.json,
  merges.txt.
- transformer/config.json, text_encoder/config.json, vae/config.json, scheduler_config.json:
  public code that pins "the verbatim Tongyi-MAI/Z-Image-Turbo upstream configs" (transformer:
  dim 3840, 30 layers, 2 refiner layers, 30 heads, cap_feat_dim 2560, axes_dims 32/48/48,
  axes_lens 1536/512/512, rope_theta 256, t_scale 1000; text encoder: Qwen3-4B,
  architectures Qwen3ForCausalLM, max_position_embeddings 40960, rope_theta 1e6, tied, vocab
  151936; VAE: the FLUX.1 VAE; scheduler: static shift 3.0), e.g. the Rust port quoting them and
  others embedding the transformer file with _diffusers_version 0.36.0.dev0. R: the Qwen3-4B keys
  those copies leave out (bos/eos ids, dropout, initializer_range, ...), taken from Qwen/Qwen3-4B.
- tokenizer/: Qwen3's tokenizer_config.json (added tokens at 151643..151668, <|endoftext|> pad,
  <|im_end|> eos) with Qwen3's chat template (enable_thinking); R: model_max_length 40960.

Reduced: transformer 30 -> 2 layers (the 2 refiner layers kept), 30 -> 2 heads of the real head
dim 128 (dim 3840 -> 256, rope axes and axes_lens kept), cap_feat_dim = the reduced text width 32;
Qwen3 36 layers x 2560 -> 2 x 32 (2 heads of the real head dim 128, 1 KV head), intermediate ->
64 (hidden_states[-2] is still an inner layer); VAE 128/256/512/512 -> 32/64/64/64 channels,
layers_per_block 2 -> 1. Vocab size 151936 kept.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

from .common import (QWEN_ADDITIONAL_SPECIAL, build_replica, qwen3_chat_template, qwen_tokenizer,
                     save_sharded, strip_private, write_configs)
from .flux1 import VAE as FLUX_VAE
from .flux2 import QWEN3_4B, QWEN3_TOKENIZER_CONFIG

NAMES = ("Z-Image-Turbo",)

MODEL_INDEX = {
    "_class_name": "ZImagePipeline", "_diffusers_version": "0.36.0.dev0",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen3Model"],
    "tokenizer": ["transformers", "Qwen2Tokenizer"],
    "transformer": ["diffusers", "ZImageTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler",
             "_diffusers_version": "0.36.0.dev0", "num_train_timesteps": 1000,
             "use_dynamic_shifting": False, "shift": 3.0}
TRANSFORMER = {
    "_class_name": "ZImageTransformer2DModel", "_diffusers_version": "0.36.0.dev0",
    "all_f_patch_size": [1], "all_patch_size": [2], "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512], "cap_feat_dim": 2560, "dim": 3840, "in_channels": 16,
    "n_heads": 30, "n_kv_heads": 30, "n_layers": 30, "n_refiner_layers": 2, "norm_eps": 1e-05,
    "qk_norm": True, "rope_theta": 256.0, "t_scale": 1000.0,
}
VAE = {**FLUX_VAE, "_diffusers_version": "0.36.0.dev0"}

REDUCE = {
    "transformer": {"dim": 256, "n_heads": 2, "n_kv_heads": 2, "n_layers": 2,
                    "cap_feat_dim": 32},
    "vae": {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1},
    "text_encoder": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "num_hidden_layers": 2, "max_window_layers": 2},
}
SHARDS = {"transformer": 3, "text_encoder": 3, "vae": 1}
RECIPE = {"seed": 20251126, "text_encoder_init_std": 0.15, "pad_token_std": 0.5, "merges": 800}


def configs(name: str = "Z-Image-Turbo") -> dict:
    """Fresh copies of every config of the replica (transformers fills nested config dicts in
    place when it builds a model; that must not leak into the recipe)."""
    return copy.deepcopy(_configs(name))


def _configs(name: str = "Z-Image-Turbo") -> dict:
    return {"model_index": MODEL_INDEX, "scheduler": SCHEDULER,
            "transformer": {**TRANSFORMER, **REDUCE["transformer"]},
            "vae": {**VAE, **REDUCE["vae"]},
            "text_encoder": {**QWEN3_4B, **REDUCE["text_encoder"]}}


def replica_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    if name not in NAMES:
        raise ValueError(f"unknown Z-Image replica {name!r}; known: {', '.join(NAMES)}")
    recipe = {"configs": configs(name), "recipe": RECIPE, "shards": SHARDS,
              "tokenizer": QWEN3_TOKENIZER_CONFIG}
    return build_replica(name, recipe, lambda out: build(out, name), __file__, cache_dir)


def build(out: Path, name: str = "Z-Image-Turbo") -> None:
    """Write the replica into ``out``; deterministic."""
    import torch
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from transformers.utils import logging as hf_logging

    from models.chat_tokenizers import QWEN_CHAT_TEMPLATE
    from models.diffusers_common import offline_env, redraw

    offline_env()
    hf_logging.disable_progress_bar()
    out = Path(out)
    cfg = configs(name)
    gen = torch.Generator("cpu").manual_seed(RECIPE["seed"])
    qwen_tokenizer(out / "tokenizer", added=26, texts=[QWEN_CHAT_TEMPLATE],
                   max_merges=RECIPE["merges"],
                   config={**QWEN3_TOKENIZER_CONFIG, "chat_template": qwen3_chat_template(),
                           "additional_special_tokens": QWEN_ADDITIONAL_SPECIAL})

    # The checkpoint of the Qwen3ForCausalLM its config names (tied embeddings: no lm_head), keys
    # "model.*": ZImagePipeline loads it as the Qwen3Model of model_index.json (R: inferred from
    # the config's architectures field).
    torch.manual_seed(RECIPE["seed"])
    te = Qwen3ForCausalLM(Qwen3Config(**strip_private(cfg["text_encoder"]))).eval()
    redraw(te.model, RECIPE["text_encoder_init_std"], gen)
    save_sharded(te, out / "text_encoder", SHARDS["text_encoder"])

    torch.manual_seed(RECIPE["seed"] + 1)
    transformer = ZImageTransformer2DModel.from_config(strip_private(cfg["transformer"])).eval()
    with torch.no_grad():  # created as zeros: draw them, or padding is invisible
        for p in (transformer.x_pad_token, transformer.cap_pad_token):
            p.copy_(torch.randn(p.shape, generator=gen) * RECIPE["pad_token_std"])
    save_sharded(transformer, out / "transformer", SHARDS["transformer"])
    torch.manual_seed(RECIPE["seed"] + 2)
    save_sharded(AutoencoderKL.from_config(strip_private(cfg["vae"])), out / "vae", SHARDS["vae"])

    write_configs(out, cfg)
