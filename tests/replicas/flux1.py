"""Replicas of black-forest-labs/FLUX.1-dev and FLUX.1-schnell: their configs verbatim except
depth (and widths where memory demands), built offline from seeded random weights.

Sources (public copies of the real files; "R:" marks a value reconstructed, not read):
- transformer/config.json: FLUX.1-dev as published (0.30.0.dev0, no axes_dims_rope key), e.g. the
  Ascend ModelZoo FLUX.1 README's copy; FLUX.1-schnell: edkamesh/FluX-optimized
  transformer/config.json (a re-save of FLUX.1-schnell: guidance_embeds false; its
  quantization_config and re-save keys dropped). Both equal diffusers' FluxTransformer2DModel
  defaults but for guidance_embeds.
- vae/config.json: edkamesh/FluX-optimized vae/config.json (FLUX.1-schnell's VAE, the same file
  as FLUX.1-dev's: 0.3611 / 0.1159, 16 channels, 4 levels).
- text_encoder/config.json (CLIP ViT-L/14 text tower, with its famous bos 0 / eos 2 / pad 1 ids,
  which make CLIPTextModel pool at the argmax id) and text_encoder_2/config.json (T5 v1.1 XXL):
  edkamesh/FluX-optimized text_encoder{,_2}/config.json (quantization_config dropped; torch_dtype
  and transformers_version as FLUX.1-dev ships them: "bfloat16", "4.43.3").
- scheduler/scheduler_config.json: FLUX.1-dev: use_dynamic_shifting true, shift 3.0 (as in
  models/flux1/tiny.py); FLUX.1-schnell: edkamesh/FluX-optimized scheduler/scheduler_config.json
  (static shift 1.0).
- model_index.json: edkamesh/FluX-optimized model_index.json (the FluxPipeline component list).
- tokenizer/ (CLIP): openai/clip-vit-large-patch14's tokenizer_config.json and
  special_tokens_map.json, as FLUX.1-dev ships them; vocab.json + merges.txt only (no
  tokenizer.json, as in FLUX.1-dev); <|startoftext|> / <|endoftext|> at their real ids 49406 /
  49407 (the highest ids: CLIPTextModel's argmax pooling needs that).
- tokenizer_2/ (T5): comfyanonymous/ComfyUI comfy/text_encoders/t5_tokenizer/tokenizer_config.json
  (the T5 v1.1 XXL tokenizer FLUX ships: <pad> 0, </s> 1, <unk> 2, 100 extra ids, model_max_length
  512, legacy true); tokenizer.json only (no spiece.model: sentencepiece's binary model cannot be
  trained here). The extra ids follow the small vocabulary instead of sitting at 32000+.
- Shards: FLUX.1-dev's transformer ships 3 shards, its T5 2 (model-0000k-of-00002); CLIP and the
  VAE one file each.

Reduced: transformer 19+38 blocks -> 1+1, 24 heads -> 2 (attention_head_dim 128 and the rope axes
kept), joint_attention_dim / pooled_projection_dim follow the reduced text encoders; CLIP 12
layers x 768 -> 1 x 64 (1 head, head dim 64 kept), T5 24 layers x 4096 (64 heads) -> 1 x 64 (1
head, d_kv 64 kept), d_ff 10240 -> 128; VAE block_out_channels 128/256/512/512 -> 32/64/64/64 and
layers_per_block 2 -> 1 (4 levels: scale factor 8, norm_num_groups 32 kept). Vocab sizes kept
(49408 / 32128), so the config token ids are the real ones.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

from .common import (added_tokens_decoder, build_replica, save_sharded, strip_private,
                     write_json, write_vocab_merges)

NAMES = ("FLUX.1-dev", "FLUX.1-schnell")

_COMPONENTS = {
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

MODEL_INDEX = {"_class_name": "FluxPipeline", "_diffusers_version": "0.30.0.dev0", **_COMPONENTS}

SCHEDULER = {
    "FLUX.1-dev": {
        "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.30.0.dev0",
        "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096,
        "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
        "use_dynamic_shifting": True,
    },
    "FLUX.1-schnell": {
        "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.30.0.dev0",
        "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096,
        "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 1.0,
        "use_dynamic_shifting": False,
    },
}

_TRANSFORMER = {
    "_class_name": "FluxTransformer2DModel", "_diffusers_version": "0.30.0.dev0",
    "attention_head_dim": 128, "guidance_embeds": True, "in_channels": 64,
    "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
    "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768,
}
TRANSFORMER = {"FLUX.1-dev": _TRANSFORMER,
               # the schnell file names the rope axes (the same as the default)
               "FLUX.1-schnell": {**_TRANSFORMER, "axes_dims_rope": [16, 56, 56],
                                  "guidance_embeds": False}}

VAE = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.30.0.dev0", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "force_upcast": True, "in_channels": 3,
    "latent_channels": 16, "latents_mean": None, "latents_std": None, "layers_per_block": 2,
    "mid_block_add_attention": True, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "use_post_quant_conv": False,
    "use_quant_conv": False,
}

CLIP = {
    "_name_or_path": "openai/clip-vit-large-patch14", "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
    "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 768,
    "torch_dtype": "bfloat16", "transformers_version": "4.43.3", "vocab_size": 49408,
}

T5 = {
    "_name_or_path": "google/t5-v1_1-xxl", "architectures": ["T5EncoderModel"],
    "classifier_dropout": 0.0, "d_ff": 10240, "d_kv": 64, "d_model": 4096,
    "decoder_start_token_id": 0, "dense_act_fn": "gelu_new", "dropout_rate": 0.1,
    "eos_token_id": 1, "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0,
    "is_encoder_decoder": True, "is_gated_act": True, "layer_norm_epsilon": 1e-06,
    "model_type": "t5", "num_decoder_layers": 24, "num_heads": 64, "num_layers": 24,
    "output_past": True, "pad_token_id": 0, "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.43.3", "use_cache": True,
    "vocab_size": 32128,
}

CLIP_SPECIALS = {"<|startoftext|>": 49406, "<|endoftext|>": 49407}
_CLIP_SPECIAL = {"lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
CLIP_TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "added_tokens_decoder": {str(i): {"content": t, **_CLIP_SPECIAL, "special": True}
                             for t, i in CLIP_SPECIALS.items()},
    "bos_token": "<|startoftext|>", "clean_up_tokenization_spaces": True, "do_lower_case": True,
    "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 77,
    "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
    "unk_token": "<|endoftext|>",
}
CLIP_SPECIAL_TOKENS_MAP = {
    "bos_token": {"content": "<|startoftext|>", **_CLIP_SPECIAL},
    "eos_token": {"content": "<|endoftext|>", **_CLIP_SPECIAL},
    "pad_token": "<|endoftext|>",
    "unk_token": {"content": "<|endoftext|>", **_CLIP_SPECIAL},
}
T5_EXTRA_IDS = 100
T5_TOKENIZER_CONFIG = {
    "add_prefix_space": True, "clean_up_tokenization_spaces": True, "eos_token": "</s>",
    "extra_ids": T5_EXTRA_IDS, "legacy": True, "model_max_length": 512, "pad_token": "<pad>",
    "sp_model_kwargs": {}, "tokenizer_class": "T5Tokenizer", "unk_token": "<unk>",
}

#: What the replicas change (depth, widths), per component.
REDUCE = {
    "transformer": {"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 2,
                    "joint_attention_dim": 64, "pooled_projection_dim": 64},
    "vae": {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1},
    "text_encoder": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 1,
                     "num_hidden_layers": 1},
    "text_encoder_2": {"d_model": 64, "d_ff": 128, "num_heads": 1, "num_layers": 1,
                       "num_decoder_layers": 1},
}
SHARDS = {"transformer": 3, "text_encoder_2": 2, "text_encoder": 1, "vae": 1}
RECIPE = {"seed": 20240801, "text_encoder_init_std": 0.15, "clip_merges": 400, "t5_pieces": 400}


def configs(name: str) -> dict:
    """Fresh copies of every config of the replica (transformers fills nested config dicts in
    place when it builds a model; that must not leak into the recipe)."""
    return copy.deepcopy(_configs(name))


def _configs(name: str) -> dict:
    """Every config file of the replica (reduced), by component."""
    return {
        "model_index": MODEL_INDEX, "scheduler": SCHEDULER[name],
        "transformer": {**TRANSFORMER[name], **REDUCE["transformer"]},
        "vae": {**VAE, **REDUCE["vae"]},
        "text_encoder": {**CLIP, **REDUCE["text_encoder"]},
        "text_encoder_2": {**T5, **REDUCE["text_encoder_2"]},
    }


def replica_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    if name not in NAMES:
        raise ValueError(f"unknown FLUX.1 replica {name!r}; known: {', '.join(NAMES)}")
    recipe = {"configs": configs(name), "recipe": RECIPE, "shards": SHARDS,
              "tokenizers": [CLIP_TOKENIZER_CONFIG, T5_TOKENIZER_CONFIG]}
    return build_replica(name, recipe, lambda out: build(out, name), __file__, cache_dir)


def _clip_tokenizer(out: Path) -> None:
    """CLIP BPE learned locally, saved as FLUX.1 ships it: vocab.json, merges.txt,
    tokenizer_config.json, special_tokens_map.json (no tokenizer.json)."""
    import tempfile

    from models.diffusers_common import read_json
    from models.text_tokenizers import train_clip_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        train_clip_tokenizer(tmp, vocab_size=2 * 256 + RECIPE["clip_merges"] + 2)
        model = read_json(Path(tmp) / "tokenizer.json")["model"]
    vocab = {k: v for k, v in model["vocab"].items() if k not in CLIP_SPECIALS}
    assert max(vocab.values()) < min(CLIP_SPECIALS.values())
    vocab.update(CLIP_SPECIALS)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    out.mkdir(parents=True, exist_ok=True)
    write_vocab_merges(out, vocab, merges)
    write_json(out / "tokenizer_config.json", CLIP_TOKENIZER_CONFIG)
    write_json(out / "special_tokens_map.json", CLIP_SPECIAL_TOKENS_MAP)


def _t5_tokenizer(out: Path) -> int:
    """T5 Unigram learned locally with the real special ids and 100 extra ids; tokenizer.json,
    the real tokenizer_config.json and special_tokens_map.json."""
    import tempfile

    from transformers import T5TokenizerFast

    from models.diffusers_common import read_json
    from models.text_tokenizers import train_t5_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        train_t5_tokenizer(tmp, vocab_size=RECIPE["t5_pieces"], model_max_length=512)
        pieces = read_json(Path(tmp) / "tokenizer.json")["model"]["vocab"]
    tok = T5TokenizerFast(vocab=[(p, s) for p, s in pieces], extra_ids=T5_EXTRA_IDS,
                          model_max_length=512)
    tok.save_pretrained(str(out))
    extra = [f"<extra_id_{i}>" for i in range(T5_EXTRA_IDS)]
    ids = {t: tok.convert_tokens_to_ids(t) for t in ["<pad>", "</s>", "<unk>"] + extra}
    assert (ids["<pad>"], ids["</s>"], ids["<unk>"]) == (0, 1, 2), ids
    write_json(out / "tokenizer_config.json", {
        **T5_TOKENIZER_CONFIG, "added_tokens_decoder": added_tokens_decoder(ids),
        "additional_special_tokens": extra})
    write_json(out / "special_tokens_map.json", {
        "additional_special_tokens": extra, "eos_token": "</s>", "pad_token": "<pad>",
        "unk_token": "<unk>"})
    return len(tok)


def build(out: Path, name: str) -> None:
    """Write the replica of ``name`` into ``out``; deterministic."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel
    from transformers.utils import logging as hf_logging

    from models.diffusers_common import offline_env, redraw

    offline_env()
    hf_logging.disable_progress_bar()
    out = Path(out)
    cfg = configs(name)
    gen = torch.Generator("cpu").manual_seed(RECIPE["seed"])
    _clip_tokenizer(out / "tokenizer")
    _t5_tokenizer(out / "tokenizer_2")

    torch.manual_seed(RECIPE["seed"])
    clip = CLIPTextModel(CLIPTextConfig(**strip_private(cfg["text_encoder"]))).eval()
    redraw(clip, RECIPE["text_encoder_init_std"], gen)
    save_sharded(clip, out / "text_encoder", SHARDS["text_encoder"])
    torch.manual_seed(RECIPE["seed"] + 1)
    t5 = T5EncoderModel(T5Config(**strip_private(cfg["text_encoder_2"]))).eval()
    redraw(t5, RECIPE["text_encoder_init_std"], gen)
    save_sharded(t5, out / "text_encoder_2", SHARDS["text_encoder_2"])

    torch.manual_seed(RECIPE["seed"] + 2)
    save_sharded(FluxTransformer2DModel.from_config(strip_private(cfg["transformer"])),
                 out / "transformer", SHARDS["transformer"])
    torch.manual_seed(RECIPE["seed"] + 3)
    save_sharded(AutoencoderKL.from_config(strip_private(cfg["vae"])), out / "vae", SHARDS["vae"])

    # The config files exactly as the real repo writes them (save_pretrained adds every default).
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        write_json(out / part / "config.json", cfg[part])
    write_json(out / "scheduler" / "scheduler_config.json", cfg["scheduler"])
    write_json(out / "model_index.json", cfg["model_index"])
    for p in out.rglob("generation_config.json"):
        p.unlink()
