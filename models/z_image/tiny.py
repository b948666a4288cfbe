"""The tiny Z-Image (``tiny-z-image``): the FLUX VAE layout, Z-Image-Turbo's static-shift
schedule, shrunken widths, a 3-layer Qwen3 text encoder; built offline on first use."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..cache import ensure_built
from ..diffusers_common import (TINY_FLUX_VAE, check_tiny_name, offline_env, read_json, redraw,
                                save_config_model, sha256, versions, write_model_index)
from .rules import FAMILY

__all__ = ["TINY_NAMES", "TINY_REQUEST_DEFAULTS", "TINY_RECIPE", "Z_IMAGE_TURBO_SCHEDULER", "tiny_path", "build_tiny"]

TINY_NAMES = ("tiny-z-image",)
#: What the CLI fills in for a tiny model when the user leaves it out (as if typed, so the
#: reference gets it too): the pipeline's defaults (1024², 28-50 steps) are for real checkpoints,
#: and a tiny model's default request should finish in seconds. Size only for text-to-image.
TINY_REQUEST_DEFAULTS = {"height": 256, "width": 256, "steps": 8}

#: Z-Image-Turbo's scheduler_config.json: a static shift, no dynamic shifting.
Z_IMAGE_TURBO_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0,
                           "use_dynamic_shifting": False}

# Real geometry, shrunken widths (tiny_models.md): the FLUX VAE layout (4 levels, 16 channels,
# 0.3611 / 0.1159), patch 2, 2 heads x 16 dims (rope axes 4+6+6), a 3-layer Qwen3 so that
# hidden_states[-2] is an inner layer; 2 main layers so a first-block cache has a head and a tail.
TINY_RECIPE: dict[str, Any] = {
    "seed": 20251126,
    "tokenizer": {"max_merges": 800, "model_max_length": 32768},
    "text_encoder": {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
    },
    # Text encoder matrices re-drawn from N(0, std) so that the prompt visibly moves the output.
    "text_encoder_init_std": 0.15,
    "transformer": {
        "all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 32,
        "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2, "norm_eps": 1e-5,
        "qk_norm": True, "cap_feat_dim": 32, "rope_theta": 256.0, "t_scale": 1000.0,
        "axes_dims": [4, 6, 6], "axes_lens": [1536, 512, 512],
    },
    # ZImageTransformer2DModel creates these as zeros: draw them, or padding is invisible.
    "pad_token_std": 0.5,
    "vae": TINY_FLUX_VAE,
    "scheduler": Z_IMAGE_TURBO_SCHEDULER,
}


def tiny_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of tiny model ``name``, built on first use into the cache (atomically)."""
    check_tiny_name(name, TINY_NAMES, "Z-Image")
    from ..chat_tokenizers import QWEN_CHAT_TEMPLATE, QWEN_SPECIALS
    from ..text_tokenizers import CORPUS

    corpus = "\n".join(CORPUS) + QWEN_CHAT_TEMPLATE + "".join(QWEN_SPECIALS)
    recipe = {"family": FAMILY, "name": name, "recipe": TINY_RECIPE, "versions": versions(),
              "corpus_sha256": sha256(corpus)}
    return ensure_built(name, recipe, build_tiny, cache_dir)


def build_tiny(out: Path) -> None:
    """Write the tiny Z-Image into ``out`` with ``save_pretrained`` (safetensors), deterministic."""
    offline_env()
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model
    from transformers.utils import logging as hf_logging

    from ..chat_tokenizers import QWEN_CHAT_TEMPLATE, build_qwen_tokenizer

    hf_logging.disable_progress_bar()
    r = TINY_RECIPE
    out = Path(out)
    # The chat template's words go into the merges, as the real vocabulary has them whole.
    vocab = build_qwen_tokenizer(out / "tokenizer", extra_texts=[QWEN_CHAT_TEMPLATE],
                                 **r["tokenizer"])
    tok_vocab = read_json(out / "tokenizer" / "tokenizer.json")
    added = {t["content"]: t["id"] for t in tok_vocab["added_tokens"]}
    gen = torch.Generator("cpu").manual_seed(r["seed"])

    torch.manual_seed(r["seed"])
    te = Qwen3Model(Qwen3Config(
        vocab_size=vocab, pad_token_id=added["<|endoftext|>"], eos_token_id=added["<|im_end|>"],
        bos_token_id=None, **r["text_encoder"])).eval()
    redraw(te, r["text_encoder_init_std"], gen)
    te.save_pretrained(out / "text_encoder", safe_serialization=True)

    torch.manual_seed(r["seed"] + 1)
    cfg = dict(r["transformer"])
    for key in ("all_patch_size", "all_f_patch_size"):
        cfg[key] = tuple(cfg[key])
    transformer = ZImageTransformer2DModel(**cfg).eval()
    with torch.no_grad():
        for p in (transformer.x_pad_token, transformer.cap_pad_token):
            p.copy_(torch.randn(p.shape, generator=gen) * r["pad_token_std"])
    transformer.save_pretrained(out / "transformer", safe_serialization=True)

    torch.manual_seed(r["seed"] + 2)
    save_config_model(AutoencoderKL, r["vae"], out / "vae")

    FlowMatchEulerDiscreteScheduler(**r["scheduler"]).save_pretrained(out / "scheduler")
    # Turbo's classes, as ZImagePipeline.save_pretrained writes them.
    write_model_index(out, "ZImagePipeline", {
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3Model"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "ZImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
