"""The tiny Qwen-Image models (``tiny-qwen-image``, ``-edit``, ``-edit-plus``): real geometry and
the real schedule, shrunken widths, a Qwen2.5-VL text encoder with a 2-block vision tower and the
real image processor; built offline on first use."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from ..cache import ensure_built
from ..diffusers_common import (chat_tokenizers_sha256, check_tiny_name, corpus_sha256,
                                offline_env, save_config_model, sha256, versions,
                                write_model_index)
from .rules import EDIT_SYSTEM, FAMILY, PIPELINE_CLASSES, SPECS

__all__ = ["TINY_NAMES", "TINY_REQUEST_DEFAULTS", "TINY_RECIPE", "QWEN_IMAGE_SCHEDULER", "QWEN_IMAGE_SPECIALS",
           "tiny_path", "build_tiny", "templates_corpus"]

TINY_NAMES = ("tiny-qwen-image", "tiny-qwen-image-edit", "tiny-qwen-image-edit-plus")
#: What the CLI fills in for a tiny model when the user leaves it out (as if typed, so the
#: reference gets it too): the pipeline's defaults (1024², 28-50 steps) are for real checkpoints,
#: and a tiny model's default request should finish in seconds. Size only for text-to-image.
TINY_REQUEST_DEFAULTS = {"height": 256, "width": 256, "steps": 8}
_TINY_CLASS = dict(zip(TINY_NAMES, PIPELINE_CLASSES))

#: Qwen-Image's scheduler_config.json (the tiny models ship the real schedule).
QWEN_IMAGE_SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

QWEN_IMAGE_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


# Real geometry, shrunken widths (tiny_models.md): 4-level 3-D VAE (factor 8, 16 latent channels,
# Qwen-Image's latents_mean/std), transformer in_channels 64 with 2 heads x 16 dims, a Qwen2.5-VL
# text encoder (2 layers, width 32) with a 2-block vision tower and the real image processor.
TINY_RECIPE: dict[str, Any] = {
    "seed": 20250804,
    "tokenizer": {"max_merges": 800},
    "text_config": {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                            "mrope_section": [2, 3, 3]},
    },
    "vision_config": {
        "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 14,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
        "out_hidden_size": 32, "fullatt_block_indexes": [1],
    },
    "text_encoder_init_std": 0.15,
    "transformer": {
        "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 2,
        "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
        "guidance_embeds": False, "axes_dims_rope": [4, 6, 6],
    },
    "vae": {
        "base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
        "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0,
    },
    "processor": {
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
        "merge_size": 2,
    },
    "scheduler": QWEN_IMAGE_SCHEDULER,
}


def tiny_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of tiny model ``name``, built on first use into the cache (atomically)."""
    check_tiny_name(name, TINY_NAMES, "Qwen-Image")
    cls = _TINY_CLASS[name]
    recipe = {"family": FAMILY, "name": name, "pipeline": cls, "recipe": TINY_RECIPE,
              "versions": versions(), "corpus_sha256": corpus_sha256(),
              "templates_sha256": sha256("\n".join(templates_corpus())),
              "chat_tokenizers_sha256": chat_tokenizers_sha256()}
    return ensure_built(name, recipe, functools.partial(build_tiny, pipeline=cls), cache_dir)


def templates_corpus() -> list[str]:
    """The templates' fixed text, twice each, so that every template word becomes one token (the
    34 / 64-token drops then cover exactly the system prefix, as with the real vocabulary)."""
    texts = [SPECS["QwenImagePipeline"].template.format(""), EDIT_SYSTEM,
             "Picture 1: Picture 2: Picture 3: "]
    return texts * 2


def build_tiny(out: Path, *, pipeline: str = "QwenImagePipeline") -> None:
    """Write a tiny Qwen-Image (or edit) folder into ``out`` with ``save_pretrained``;
    deterministic."""
    offline_env()
    import torch
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler,
                           QwenImageTransformer2DModel)
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2Tokenizer)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil)
    from transformers.utils import logging as hf_logging

    from ..chat_tokenizers import build_qwen_tokenizer
    from ..vlm_common import redraw_weights

    hf_logging.disable_progress_bar()
    r = TINY_RECIPE
    out = Path(out)
    build_qwen_tokenizer(out / "tokenizer", extra_texts=templates_corpus(),
                         specials=QWEN_IMAGE_SPECIALS, chat_template=None, **r["tokenizer"])
    tok = Qwen2Tokenizer.from_pretrained(out / "tokenizer", local_files_only=True)
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_IMAGE_SPECIALS}
    torch.manual_seed(r["seed"])
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         **r["text_config"]),
        vision_config=dict(r["vision_config"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    te = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    redraw_weights(te, r["text_encoder_init_std"], r["seed"])
    te.save_pretrained(out / "text_encoder", safe_serialization=True)

    torch.manual_seed(r["seed"] + 1)
    save_config_model(QwenImageTransformer2DModel, r["transformer"], out / "transformer")

    torch.manual_seed(r["seed"] + 2)
    AutoencoderKLQwenImage(**r["vae"]).save_pretrained(out / "vae", safe_serialization=True)

    FlowMatchEulerDiscreteScheduler(**r["scheduler"]).save_pretrained(out / "scheduler")
    components = {
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "QwenImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLQwenImage"],
    }
    if SPECS[pipeline].edit:
        tok.save_pretrained(out / "processor")
        p = r["processor"]
        Qwen2VLImageProcessorPil(
            size={"shortest_edge": p["min_pixels"], "longest_edge": p["max_pixels"]},
            patch_size=p["patch_size"], temporal_patch_size=p["temporal_patch_size"],
            merge_size=p["merge_size"]).save_pretrained(out / "processor")
        components["processor"] = ["transformers", "Qwen2VLProcessor"]
    write_model_index(out, pipeline, components)
