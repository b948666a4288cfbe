"""The tiny Wan models, built offline on first use: real geometry (3-D causal VAE with spatial
factor 8 and temporal factor 4, 16 latent channels and Wan's latents_mean/std, a (1, 2, 2) patch,
UMT5 text path padded to 512), Wan's real UniPC schedule, shrunken widths.

- ``tiny-wan``: WanPipeline (Wan 2.1 text-to-video, one transformer).
- ``tiny-wan-i2v``: WanImageToVideoPipeline (Wan 2.1 image-to-video: 36 input channels, a CLIP
  vision tower at the real 224/14 geometry and its image processor, added K/V projections).
- ``tiny-wan22``: WanPipeline with Wan 2.2's two experts (``transformer`` above the boundary,
  ``transformer_2`` below; boundary_ratio 0.875, flow_shift 12 as Wan 2.2 text-to-video samples).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from ..cache import ensure_built
from ..diffusers_common import (check_tiny_name, corpus_sha256, offline_env, redraw,
                                save_config_model, versions, write_model_index)
from .rules import FAMILY

__all__ = ["TINY_NAMES", "TINY_REQUEST_DEFAULTS", "TINY_RECIPE", "WAN21_SCHEDULER", "tiny_path",
           "build_tiny"]

TINY_NAMES = ("tiny-wan", "tiny-wan-i2v", "tiny-wan22")
#: What the CLI fills in for a tiny model when the user leaves it out (as if typed): the
#: pipelines' defaults (480x832, 81 frames, 50 steps) are for real checkpoints.
TINY_REQUEST_DEFAULTS = {"height": 64, "width": 64, "steps": 8, "num_frames": 9}

#: Wan2.1-T2V-1.3B-Diffusers' scheduler_config.json (UniPC, flow prediction, flow_shift 3).
WAN21_SCHEDULER = {
    "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001, "disable_corrector": [],
    "dynamic_thresholding_ratio": 0.995, "final_sigmas_type": "zero", "flow_shift": 3.0,
    "lower_order_final": True, "num_train_timesteps": 1000, "predict_x0": True,
    "prediction_type": "flow_prediction", "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0, "solver_order": 2, "solver_p": None, "solver_type": "bh2",
    "steps_offset": 0, "thresholding": False, "timestep_spacing": "linspace",
    "trained_betas": None, "use_beta_sigmas": False, "use_exponential_sigmas": False,
    "use_flow_sigmas": True, "use_karras_sigmas": False,
}

_TRANSFORMER = {
    "patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 16,
    "in_channels": 16, "out_channels": 16, "text_dim": 32, "freq_dim": 256, "ffn_dim": 64,
    "num_layers": 2, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
    "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": 1024,
}

TINY_RECIPE: dict[str, Any] = {
    "seed": 20250226,
    "t5_tokenizer": {"vocab_size": 400, "model_max_length": 512},
    "text_encoder": {
        "d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_heads": 4,
        "relative_attention_num_buckets": 8, "relative_attention_max_distance": 32,
        "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0, "tie_word_embeddings": False,
    },
    "text_encoder_init_std": 0.15,
    "transformer": _TRANSFORMER,
    "transformer_i2v": {**_TRANSFORMER, "in_channels": 36, "image_dim": 32,
                        "added_kv_proj_dim": 32},
    "image_encoder": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 3,
                      "num_attention_heads": 4, "image_size": 224, "patch_size": 14,
                      "projection_dim": 32},
    "image_processor": {"size": {"shortest_edge": 224}, "crop_size": {"height": 224,
                                                                     "width": 224}},
    "vae": {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
            "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0},
    "scheduler": WAN21_SCHEDULER,
    "wan22": {"boundary_ratio": 0.875, "flow_shift": 12.0},
}


def tiny_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of tiny model ``name``, built on first use into the cache (atomically)."""
    check_tiny_name(name, TINY_NAMES, "Wan")
    recipe = {"family": FAMILY, "name": name, "recipe": TINY_RECIPE, "versions": versions(),
              "corpus_sha256": corpus_sha256()}
    return ensure_built(name, recipe, functools.partial(build_tiny, name=name), cache_dir)


def build_tiny(out: Path, *, name: str = "tiny-wan") -> None:
    """Write tiny Wan model ``name`` into ``out`` with ``save_pretrained``; deterministic."""
    offline_env()
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel
    from transformers.utils import logging as hf_logging

    from ..text_tokenizers import saved_vocab_size, train_t5_tokenizer

    hf_logging.disable_progress_bar()
    r = TINY_RECIPE
    out = Path(out)
    i2v, wan22 = name == "tiny-wan-i2v", name == "tiny-wan22"
    train_t5_tokenizer(out / "tokenizer", **r["t5_tokenizer"])
    gen = torch.Generator("cpu").manual_seed(r["seed"])

    torch.manual_seed(r["seed"])
    te = UMT5EncoderModel(UMT5Config(
        vocab_size=saved_vocab_size(out / "tokenizer"), pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, **r["text_encoder"])).eval()
    redraw(te, r["text_encoder_init_std"], gen)
    te.save_pretrained(out / "text_encoder", safe_serialization=True)

    torch.manual_seed(r["seed"] + 1)
    save_config_model(WanTransformer3DModel, r["transformer_i2v" if i2v else "transformer"],
                      out / "transformer")
    if wan22:
        torch.manual_seed(r["seed"] + 4)
        save_config_model(WanTransformer3DModel, r["transformer"], out / "transformer_2")
    torch.manual_seed(r["seed"] + 2)
    AutoencoderKLWan(**r["vae"]).save_pretrained(out / "vae", safe_serialization=True)
    sched = dict(r["scheduler"])
    if wan22:
        sched["flow_shift"] = r["wan22"]["flow_shift"]
    UniPCMultistepScheduler(**sched).save_pretrained(out / "scheduler")

    components = {
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": (["diffusers", "WanTransformer3DModel"] if wan22 else [None, None]),
        "vae": ["diffusers", "AutoencoderKLWan"],
        "boundary_ratio": r["wan22"]["boundary_ratio"] if wan22 else None,
        "expand_timesteps": False,
    }
    if i2v:
        from transformers import CLIPVisionConfig, CLIPVisionModel

        from .rules import clip_image_processor_class

        torch.manual_seed(r["seed"] + 3)
        enc = CLIPVisionModel(CLIPVisionConfig(**r["image_encoder"])).eval()
        redraw(enc, r["text_encoder_init_std"], gen)
        enc.save_pretrained(out / "image_encoder", safe_serialization=True)
        clip_image_processor_class()(**r["image_processor"]).save_pretrained(
            out / "image_processor")
        components["image_encoder"] = ["transformers", "CLIPVisionModel"]
        components["image_processor"] = ["transformers", "CLIPImageProcessor"]
    write_model_index(out, "WanImageToVideoPipeline" if i2v else "WanPipeline", components)
