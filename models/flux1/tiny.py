"""The tiny FLUX.1 (``tiny-flux1``): real geometry and the real FLUX.1-dev schedule, shrunken
widths (spec/tiny_models.md), built offline into the model cache on first use."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..cache import ensure_built
from ..diffusers_common import (TINY_FLUX_VAE, check_tiny_name, corpus_sha256, offline_env,
                                read_json, redraw, save_config_model, versions,
                                write_model_index)
from .rules import FAMILY

__all__ = ["TINY_NAMES", "TINY_REQUEST_DEFAULTS", "TINY_RECIPE", "FLUX1_DEV_SCHEDULER", "tiny_path", "build_tiny"]

TINY_NAMES = ("tiny-flux1",)
#: What the CLI fills in for a tiny model when the user leaves it out (as if typed, so the
#: reference gets it too): the pipeline's defaults (1024², 28-50 steps) are for real checkpoints,
#: and a tiny model's default request should finish in seconds. Size only for text-to-image.
TINY_REQUEST_DEFAULTS = {"height": 256, "width": 256, "steps": 8}

#: FLUX.1-dev's scheduler_config.json (the tiny model ships the real schedule).
FLUX1_DEV_SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}

# Real geometry, shrunken widths (tiny_models.md): 4-level VAE (scale factor 8), 16 latent channels,
# FLUX.1's scaling/shift factors; 1 double + 1 single block, 2 heads x 16 dims, in_channels 64.
TINY_RECIPE: dict[str, Any] = {
    "seed": 20240801,
    "clip_tokenizer": {"vocab_size": 1000, "model_max_length": 77},
    "t5_tokenizer": {"vocab_size": 400, "model_max_length": 512},
    "text_encoder": {
        "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
        "projection_dim": 32,
    },
    "text_encoder_2": {
        "d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_heads": 4,
        "relative_attention_num_buckets": 8, "relative_attention_max_distance": 32,
        "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0, "tie_word_embeddings": False,
    },
    # Text encoders are re-drawn from N(0, std) so that the prompt visibly moves the embeddings.
    "text_encoder_init_std": 0.15,
    "transformer": {
        "patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 1,
        "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
        "pooled_projection_dim": 32, "guidance_embeds": True, "axes_dims_rope": [4, 6, 6],
    },
    "vae": TINY_FLUX_VAE,
    "scheduler": FLUX1_DEV_SCHEDULER,
}

def tiny_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of tiny model ``name``, built on first use into the cache (atomically)."""
    check_tiny_name(name, TINY_NAMES, "FLUX.1")
    recipe = {"family": FAMILY, "name": name, "recipe": TINY_RECIPE, "versions": versions(),
              "corpus_sha256": corpus_sha256()}
    return ensure_built(name, recipe, build_tiny, cache_dir)


def build_tiny(out: Path) -> None:
    """Write the tiny FLUX.1 into ``out`` with ``save_pretrained`` (safetensors); deterministic."""
    offline_env()
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel
    from transformers.utils import logging as hf_logging

    from ..text_tokenizers import saved_vocab_size, train_clip_tokenizer, train_t5_tokenizer

    hf_logging.disable_progress_bar()  # "Writing model shards" bars are noise for a 1 MB model
    r = TINY_RECIPE
    out = Path(out)
    train_clip_tokenizer(out / "tokenizer", **r["clip_tokenizer"])
    train_t5_tokenizer(out / "tokenizer_2", **r["t5_tokenizer"])
    clip_vocab = read_json(out / "tokenizer" / "tokenizer.json")["model"]["vocab"]
    gen = torch.Generator("cpu").manual_seed(r["seed"])

    torch.manual_seed(r["seed"])
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=saved_vocab_size(out / "tokenizer"),
        bos_token_id=clip_vocab["<|startoftext|>"], eos_token_id=clip_vocab["<|endoftext|>"],
        pad_token_id=clip_vocab["<|endoftext|>"], **r["text_encoder"])).eval()
    redraw(clip, r["text_encoder_init_std"], gen)
    clip.save_pretrained(out / "text_encoder", safe_serialization=True)

    torch.manual_seed(r["seed"] + 1)
    t5 = T5EncoderModel(T5Config(
        vocab_size=saved_vocab_size(out / "tokenizer_2"), pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, **r["text_encoder_2"])).eval()
    redraw(t5, r["text_encoder_init_std"], gen)
    t5.save_pretrained(out / "text_encoder_2", safe_serialization=True)

    torch.manual_seed(r["seed"] + 2)
    save_config_model(FluxTransformer2DModel, r["transformer"], out / "transformer")
    torch.manual_seed(r["seed"] + 3)
    save_config_model(AutoencoderKL, r["vae"], out / "vae")

    FlowMatchEulerDiscreteScheduler(**r["scheduler"]).save_pretrained(out / "scheduler")
    write_model_index(out, "FluxPipeline", {
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
