"""Replica of Wan-AI/Wan2.1-T2V-1.3B-Diffusers: its configs verbatim except depth (and widths
where memory demands), built offline from seeded random weights.

Sources ("R:" marks a value reconstructed, not read from a public copy):
- model_index.json: the WanPipeline component list of the diffusers repository (UMT5EncoderModel,
  T5TokenizerFast, WanTransformer3DModel, AutoencoderKLWan, UniPCMultistepScheduler); R: the
  ``_diffusers_version`` 0.33.0.dev0 of the first Diffusers upload.
- transformer/config.json: the 1.3B model (dim 1536 = 12 heads × 128, ffn 8960, 30 layers,
  text_dim 4096, freq_dim 256, patch (1, 2, 2), qk_norm rms_norm_across_heads, cross_attn_norm,
  eps 1e-6, no image branch), as diffusers' Wan docs and the original repo's t2v-1.3B config give it.
- vae/config.json: AutoencoderKLWan's defaults (base_dim 96, z_dim 16, dim_mult 1/2/4/4, 2 res
  blocks, temporal downsampling on the last two levels, the 16 latents_mean/std), which are the
  Wan 2.1 VAE.
- text_encoder/config.json: google/umt5-xxl's encoder (d_model 4096, 64 heads of 64, d_ff 10240,
  24 layers, gated-gelu, relative attention 32 buckets / 128, vocab 256384); R: torch_dtype and
  transformers_version.
- scheduler/scheduler_config.json: UniPCMultistepScheduler with flow prediction, flow sigmas,
  flow_shift 3.0 (480p), solver_order 2, bh2, lower_order_final (the diffusers Wan docs' default).
- tokenizer/: R: a T5TokenizerFast with <pad> 0, </s> 1, <unk> 2 and 300 extra ids, as UMT5
  ships them, but a Unigram learned locally on the small corpus (sentencepiece's 256k model
  cannot be trained here); tokenizer.json only.
- Shards: R: the transformer and the UMT5 encoder in several files (2 here: at reduced widths
  the 256384-row embedding is most of the encoder), the VAE in one.

Reduced: transformer 30 -> 2 layers, 12 -> 2 heads of the real head dim 128 (dim 256), ffn 8960
-> 512, text_dim = the reduced UMT5 width 64; UMT5 24 layers × 4096 -> 2 × 64 (1 head, d_kv 64
kept), d_ff 10240 -> 128; VAE base_dim 96 -> 16 (dim_mult kept: scale factors 8 and 4), 2 -> 1
res blocks. Vocab size 256384 kept.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

from .common import (added_tokens_decoder, build_replica, save_sharded, strip_private,
                     write_configs, write_json)

NAMES = ("Wan2.1-T2V-1.3B",)
_V = "0.33.0.dev0"

MODEL_INDEX = {
    "_class_name": "WanPipeline", "_diffusers_version": _V,
    "scheduler": ["diffusers", "UniPCMultistepScheduler"],
    "text_encoder": ["transformers", "UMT5EncoderModel"],
    "tokenizer": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "WanTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLWan"],
}
TRANSFORMER = {
    "_class_name": "WanTransformer3DModel", "_diffusers_version": _V,
    "added_kv_proj_dim": None, "attention_head_dim": 128, "cross_attn_norm": True, "eps": 1e-06,
    "ffn_dim": 8960, "freq_dim": 256, "image_dim": None, "in_channels": 16,
    "num_attention_heads": 12, "num_layers": 30, "out_channels": 16, "patch_size": [1, 2, 2],
    "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 4096,
}
VAE = {
    "_class_name": "AutoencoderKLWan", "_diffusers_version": _V, "attn_scales": [],
    "base_dim": 96, "dim_mult": [1, 2, 4, 4], "dropout": 0.0,
    "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687,
                    2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916],
    "num_res_blocks": 2, "temperal_downsample": [False, True, True], "z_dim": 16,
}
UMT5_XXL = {
    "_name_or_path": "google/umt5-xxl", "architectures": ["UMT5EncoderModel"],
    "classifier_dropout": 0.0, "d_ff": 10240, "d_kv": 64, "d_model": 4096,
    "decoder_start_token_id": 0, "dense_act_fn": "gelu_new", "dropout_rate": 0.1,
    "eos_token_id": 1, "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0,
    "is_encoder_decoder": True, "is_gated_act": True, "layer_norm_epsilon": 1e-06,
    "model_type": "umt5", "num_decoder_layers": 24, "num_heads": 64, "num_layers": 24,
    "output_past": True, "pad_token_id": 0, "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32, "scalable_attention": True,
    "tie_word_embeddings": False, "tokenizer_class": "T5Tokenizer", "torch_dtype": "float32",
    "transformers_version": "4.49.0.dev0", "use_cache": True, "vocab_size": 256384,
}
SCHEDULER = {
    "_class_name": "UniPCMultistepScheduler", "_diffusers_version": _V,
    "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001, "disable_corrector": [],
    "dynamic_thresholding_ratio": 0.995, "final_sigmas_type": "zero", "flow_shift": 3.0,
    "lower_order_final": True, "num_train_timesteps": 1000, "predict_x0": True,
    "prediction_type": "flow_prediction", "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0, "solver_order": 2, "solver_p": None, "solver_type": "bh2",
    "steps_offset": 0, "thresholding": False, "timestep_spacing": "linspace",
    "trained_betas": None, "use_beta_sigmas": False, "use_exponential_sigmas": False,
    "use_flow_sigmas": True, "use_karras_sigmas": False,
}
EXTRA_IDS = 300
TOKENIZER_CONFIG = {"clean_up_tokenization_spaces": True, "eos_token": "</s>", "extra_ids":
                    EXTRA_IDS, "model_max_length": 512, "pad_token": "<pad>",
                    "tokenizer_class": "T5Tokenizer", "unk_token": "<unk>"}

REDUCE = {
    "transformer": {"num_layers": 2, "num_attention_heads": 2, "ffn_dim": 512, "text_dim": 64},
    "vae": {"base_dim": 16, "num_res_blocks": 1},
    "text_encoder": {"d_model": 64, "num_heads": 1, "d_ff": 128, "num_layers": 2,
                     "num_decoder_layers": 2},
}
SHARDS = {"transformer": 2, "text_encoder": 2, "vae": 1}
RECIPE = {"seed": 20250225, "text_encoder_init_std": 0.15, "pieces": 600}


def configs(name: str = "Wan2.1-T2V-1.3B") -> dict:
    """Fresh copies of every config of the replica."""
    return copy.deepcopy({"model_index": MODEL_INDEX, "scheduler": SCHEDULER,
                          "transformer": {**TRANSFORMER, **REDUCE["transformer"]},
                          "vae": {**VAE, **REDUCE["vae"]},
                          "text_encoder": {**UMT5_XXL, **REDUCE["text_encoder"]}})


def replica_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    if name not in NAMES:
        raise ValueError(f"unknown Wan replica {name!r}; known: {', '.join(NAMES)}")
    recipe = {"configs": configs(name), "recipe": RECIPE, "shards": SHARDS,
              "tokenizer": TOKENIZER_CONFIG}
    return build_replica(name, recipe, lambda out: build(out, name), __file__, cache_dir)


def _tokenizer(out: Path) -> None:
    """A locally learned Unigram with UMT5's special ids and 300 extra ids (see the notes)."""
    import tempfile

    from transformers import T5TokenizerFast

    from models.diffusers_common import read_json
    from models.text_tokenizers import train_t5_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        train_t5_tokenizer(tmp, vocab_size=RECIPE["pieces"], model_max_length=512)
        pieces = read_json(Path(tmp) / "tokenizer.json")["model"]["vocab"]
    tok = T5TokenizerFast(vocab=[(p, s) for p, s in pieces], extra_ids=EXTRA_IDS,
                          model_max_length=512)
    tok.save_pretrained(str(out))
    extra = [f"<extra_id_{i}>" for i in range(EXTRA_IDS)]
    ids = {t: tok.convert_tokens_to_ids(t) for t in ["<pad>", "</s>", "<unk>"] + extra}
    assert (ids["<pad>"], ids["</s>"], ids["<unk>"]) == (0, 1, 2), ids
    write_json(out / "tokenizer_config.json", {
        **TOKENIZER_CONFIG, "added_tokens_decoder": added_tokens_decoder(ids),
        "additional_special_tokens": extra})
    write_json(out / "special_tokens_map.json", {
        "additional_special_tokens": extra, "eos_token": "</s>", "pad_token": "<pad>",
        "unk_token": "<unk>"})


def build(out: Path, name: str = "Wan2.1-T2V-1.3B") -> None:
    """Write the replica into ``out``; deterministic."""
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel
    from transformers.utils import logging as hf_logging

    from models.diffusers_common import offline_env, redraw

    offline_env()
    hf_logging.disable_progress_bar()
    out = Path(out)
    cfg = configs(name)
    gen = torch.Generator("cpu").manual_seed(RECIPE["seed"])
    _tokenizer(out / "tokenizer")

    torch.manual_seed(RECIPE["seed"])
    te = UMT5EncoderModel(UMT5Config(**strip_private(cfg["text_encoder"]))).eval()
    redraw(te, RECIPE["text_encoder_init_std"], gen)
    save_sharded(te, out / "text_encoder", SHARDS["text_encoder"])
    torch.manual_seed(RECIPE["seed"] + 1)
    save_sharded(WanTransformer3DModel.from_config(strip_private(cfg["transformer"])),
                 out / "transformer", SHARDS["transformer"])
    torch.manual_seed(RECIPE["seed"] + 2)
    save_sharded(AutoencoderKLWan.from_config(strip_private(cfg["vae"])), out / "vae",
                 SHARDS["vae"])
    write_configs(out, cfg)
