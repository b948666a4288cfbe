"""Replicas of Qwen/Qwen-Image and Qwen/Qwen-Image-Edit-2509: configs verbatim except depth (and
widths where memory demands), built offline from seeded random weights.

Sources ("R:" marks a value reconstructed, not read from a public copy):
- transformer/config.json: QwenImageTransformer2DModel as Qwen-Image ships it (patch 2,
  in_channels 64, out_channels 16, 60 layers, 24 heads x 128, joint_attention_dim 3584, rope
  axes 16/56/56, guidance_embeds false): public copies (e.g. the Qwen-Image fields of
  public port fixtures) and diffusers' class defaults agree; R: the leftover
  ``pooled_projection_dim`` 768 key (ignored by the class) and the _diffusers_version strings.
- vae/config.json: AutoencoderKLQwenImage with its 16 latents_mean / latents_std (public copies
  of Qwen-Image's vae/config.json; the same numbers are diffusers' class defaults): base_dim 96,
  dim_mult 1/2/4/4, 2 res blocks, temperal_downsample F/T/T, z_dim 16.
- scheduler/scheduler_config.json: Qwen-Image's (max_image_seq_len 8192, max_shift 0.9,
  shift_terminal 0.02, exponential time shift; models/qwen_image/tiny.py ships the same).
- text_encoder/config.json: Qwen/Qwen2.5-VL-7B-Instruct's config.json (the flat legacy layout:
  text fields at the top, rope_scaling {"type": "mrope", "mrope_section": [16, 24, 24]},
  vision_config with depth 32 and fullatt_block_indexes 7/15/23/31; token ids 151643/151645,
  vision 151652-151656; vocab 152064; untied embeddings); R: that Qwen-Image's copy keeps this
  layout.
- tokenizer/ and processor/: Qwen2.5-VL's tokenizer_config.json (added tokens at 151643..151664,
  <|endoftext|> pad, <|im_end|> eos, model_max_length 131072) and chat template; tokenizer/ ships
  the slow files only (vocab.json, merges.txt, R: as Qwen-Image's tokenizer folder does), so the
  harness reads it through transformers; processor/ also ships tokenizer.json and Qwen2.5-VL's
  preprocessor_config.json (min_pixels 3136, max_pixels 12845056, patch 14, temporal patch 2,
  merge 2, CLIP mean/std).
- model_index.json: QwenImagePipeline / QwenImageEditPlusPipeline with their component lists
  (the edit pipeline adds processor: Qwen2VLProcessor).

Reduced: transformer 60 -> 2 layers, 24 -> 2 heads (head dim 128 and rope axes kept),
joint_attention_dim = the reduced text width 16; Qwen2.5-VL text 28 layers x 3584 (28 heads, 4 KV)
-> 2 x 16 (1 head, 1 KV head: head dim 16, so mrope_section 16/24/24 -> 2/3/3), intermediate
-> 32; vision tower 32 blocks x 1280 -> 2 x 32 (2 heads), fullatt_block_indexes -> [1],
out_hidden_size -> 16; VAE base_dim 96 -> 4 (time: the edit pipelines VAE-encode every input
image at the 1024² area), res blocks 2 -> 1 (latents_mean / std, z_dim and the temporal
downsampling kept). Vocab size 152064 kept: the configs' token ids are the real ones.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

from models.qwen2_vl.replicas import CHAT_TEMPLATE as QWEN2_VL_CHAT_TEMPLATE

from .common import (QWEN_ADDITIONAL_SPECIAL, build_replica, qwen_tokenizer, save_sharded,
                     strip_private, write_configs, write_json)

NAMES = ("Qwen-Image", "Qwen-Image-Edit-2509")

_COMPONENTS = {
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
    "tokenizer": ["transformers", "Qwen2Tokenizer"],
    "transformer": ["diffusers", "QwenImageTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKLQwenImage"],
}
MODEL_INDEX = {
    "Qwen-Image": {"_class_name": "QwenImagePipeline", "_diffusers_version": "0.34.0.dev0",
                   **_COMPONENTS},
    "Qwen-Image-Edit-2509": dict(sorted({
        "_class_name": "QwenImageEditPlusPipeline", "_diffusers_version": "0.36.0.dev0",
        "processor": ["transformers", "Qwen2VLProcessor"], **_COMPONENTS}.items())),
}
VERSION = {"Qwen-Image": "0.34.0.dev0", "Qwen-Image-Edit-2509": "0.36.0.dev0"}

SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256,
    "base_shift": 0.5, "invert_sigmas": False, "max_image_seq_len": 8192, "max_shift": 0.9,
    "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.02,
    "stochastic_sampling": False, "time_shift_type": "exponential", "use_beta_sigmas": False,
    "use_dynamic_shifting": True, "use_exponential_sigmas": False, "use_karras_sigmas": False,
}
TRANSFORMER = {
    "_class_name": "QwenImageTransformer2DModel", "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56], "guidance_embeds": False, "in_channels": 64,
    "joint_attention_dim": 3584, "num_attention_heads": 24, "num_layers": 60,
    "out_channels": 16, "patch_size": 2, "pooled_projection_dim": 768,
}
VAE = {
    "_class_name": "AutoencoderKLQwenImage", "attn_scales": [], "base_dim": 96,
    "dim_mult": [1, 2, 4, 4], "dropout": 0.0,
    "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687,
                    2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916],
    "num_res_blocks": 2, "temperal_downsample": [False, True, True], "z_dim": 16,
}
QWEN25_VL_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
    "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 3584,
    "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 128000,
    "max_window_layers": 28, "model_type": "qwen2_5_vl", "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
        "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
        "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}
# Qwen2.5-VL ships Qwen2-VL's chat template (the VLM replica's transcription).
QWEN25_VL_CHAT_TEMPLATE = QWEN2_VL_CHAT_TEMPLATE
QWEN25_TOKENIZER_CONFIG = {
    "add_bos_token": False, "add_prefix_space": False,
    "additional_special_tokens": QWEN_ADDITIONAL_SPECIAL, "bos_token": None,
    "chat_template": QWEN25_VL_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
    "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 131072,
    "pad_token": "<|endoftext|>", "split_special_tokens": False,
    "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
}
PREPROCESSOR = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
    "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
}

REDUCE = {
    "transformer": {"num_layers": 2, "num_attention_heads": 2, "joint_attention_dim": 16},
    "vae": {"base_dim": 4, "num_res_blocks": 1},
    "text": {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 1,
             "num_key_value_heads": 1, "num_hidden_layers": 2, "max_window_layers": 2,
             "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
    "vision": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
               "out_hidden_size": 16, "fullatt_block_indexes": [1]},
}
SHARDS = {"transformer": 9, "text_encoder": 4, "vae": 1}
RECIPE = {"seed": 20250804, "text_encoder_init_std": 0.15, "merges": 800}


def configs(name: str) -> dict:
    """Fresh copies: transformers fills nested config dicts in place (rope_scaling) when it
    builds a model, which must not leak into the recipe or into a later comparison."""
    return copy.deepcopy(_configs(name))


def _configs(name: str) -> dict:
    v = VERSION[name]
    te = {**QWEN25_VL_7B, **REDUCE["text"],
          "vision_config": {**QWEN25_VL_7B["vision_config"], **REDUCE["vision"]}}
    return {"model_index": MODEL_INDEX[name],
            "scheduler": {**SCHEDULER, "_diffusers_version": v},
            "transformer": {**TRANSFORMER, "_diffusers_version": v, **REDUCE["transformer"]},
            "vae": {**VAE, "_diffusers_version": v, **REDUCE["vae"]},
            "text_encoder": te}


def replica_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    if name not in NAMES:
        raise ValueError(f"unknown Qwen-Image replica {name!r}; known: {', '.join(NAMES)}")
    recipe = {"configs": configs(name), "recipe": RECIPE, "shards": SHARDS,
              "tokenizer": QWEN25_TOKENIZER_CONFIG, "preprocessor": PREPROCESSOR}
    return build_replica(name, recipe, lambda out: build(out, name), __file__, cache_dir)


def build(out: Path, name: str) -> None:
    """Write the replica of ``name`` into ``out``; deterministic."""
    import torch
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.utils import logging as hf_logging

    from models.diffusers_common import offline_env, redraw
    from models.qwen_image.tiny import templates_corpus

    offline_env()
    hf_logging.disable_progress_bar()
    out = Path(out)
    cfg = configs(name)
    tok_kw = dict(added=22, texts=templates_corpus(), max_merges=RECIPE["merges"],
                  config=QWEN25_TOKENIZER_CONFIG)
    qwen_tokenizer(out / "tokenizer", tokenizer_json=False, **tok_kw)
    if "processor" in cfg["model_index"]:
        qwen_tokenizer(out / "processor", **tok_kw)
        write_json(out / "processor" / "preprocessor_config.json", PREPROCESSOR)

    torch.manual_seed(RECIPE["seed"])
    te = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**cfg["text_encoder"])).eval()
    redraw(te, RECIPE["text_encoder_init_std"], torch.Generator("cpu").manual_seed(RECIPE["seed"]))
    save_sharded(te, out / "text_encoder", SHARDS["text_encoder"])

    torch.manual_seed(RECIPE["seed"] + 1)
    save_sharded(QwenImageTransformer2DModel.from_config(strip_private(cfg["transformer"])),
                 out / "transformer", SHARDS["transformer"])
    torch.manual_seed(RECIPE["seed"] + 2)
    save_sharded(AutoencoderKLQwenImage.from_config(strip_private(cfg["vae"])), out / "vae",
                 SHARDS["vae"])

    write_configs(out, cfg)
