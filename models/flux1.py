"""FLUX.1 family: layout rules read from a model folder, the tiny offline recipe, and loading.

A FLUX.1 folder is what ``FluxPipeline.save_pretrained`` writes (model_index.json, scheduler/,
text_encoder/ (CLIP), text_encoder_2/ (T5), tokenizer/, tokenizer_2/, transformer/, vae/). Every
schedule constant comes from the folder's scheduler config; nothing here imports torch at module
level, so the registry and ``--help`` stay cheap.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cache import ensure_built
from .diffusers_common import (AutoencoderKLGeometry, check_tiny_name, class_name, corpus_sha256,
                               load_pretrained, offline, read_json, redraw, versions)

__all__ = [
    "FAMILY", "MODALITY", "TINY_NAMES", "PIPELINE", "REFERENCE", "PIPELINE_CLASSES",
    "tiny_path", "matches", "rules", "Flux1Rules", "load_components", "reference_pipeline",
    "build_tiny", "TINY_RECIPE",
]

FAMILY = "flux1"
MODALITY = "image"
TINY_NAMES = ("tiny-flux1",)
#: Module that runs the denoise loop / the diffusers reference for this family.
PIPELINE = "harness.pipelines.flux"
REFERENCE = "harness.parity.pixel"
PIPELINE_CLASSES = ("FluxPipeline", "FluxImg2ImgPipeline")

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
    "vae": {
        "in_channels": 3, "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 4,
        "latent_channels": 16, "scaling_factor": 0.3611, "shift_factor": 0.1159,
        "use_quant_conv": False, "use_post_quant_conv": False, "sample_size": 256,
    },
    "scheduler": FLUX1_DEV_SCHEDULER,
}

#: Largest pixel area a request may ask for (FLUX.1 is trained up to ~2 MP; 2048² is the cap).
MAX_AREA = 2048 * 2048
#: FluxPipeline's default T5 length (``max_sequence_length=512``).
MAX_T5_LENGTH = 512


# --------------------------------------------------------------------------------------------------
# registry contract


def matches(folder: str | os.PathLike) -> bool:
    """True for a diffusers folder whose model_index.json names a FLUX.1 (img2img) pipeline."""
    return class_name(folder) in PIPELINE_CLASSES


def tiny_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of tiny model ``name``, built on first use into the cache (atomically)."""
    check_tiny_name(name, TINY_NAMES, "FLUX.1")
    recipe = {"family": FAMILY, "name": name, "recipe": TINY_RECIPE, "versions": versions(),
              "corpus_sha256": corpus_sha256()}
    return ensure_built(name, recipe, build_tiny, cache_dir)


# --------------------------------------------------------------------------------------------------
# family rules (numbers only, read from the folder)


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder's tokenizer: its folder, padded length, pad token and over-length policy."""

    role: str            # "tokens" (CLIP, pooled) or "tokens_2" (T5, sequence)
    tokenizer_dir: Path
    max_length: int
    truncate: bool       # True: truncate with a warning like diffusers (CLIP); False: error (T5)
    pad_token: str

    def load(self):
        """The fast (``tokenizers``) tokenizer, from tokenizer.json or the slow vocab files."""
        from .text_tokenizers import load_fast_tokenizer

        return load_fast_tokenizer(self.tokenizer_dir)


@dataclass(frozen=True)
class Flux1Rules(AutoencoderKLGeometry):
    """FLUX.1 rules the tokenizer and the loop ask for, read from a model folder's configs."""

    folder: Path
    scheduler_config: dict = field(repr=False)
    vae_config: dict = field(repr=False)
    transformer_config: dict = field(repr=False)
    text_encoders: tuple[TextEncoderSpec, ...] = field(repr=False)
    family: str = FAMILY

    @property
    def latent_channels(self) -> int:
        return int(self.transformer_config["in_channels"]) // 4

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.transformer_config.get("guidance_embeds", False))

    @property
    def max_area(self) -> int:
        return MAX_AREA

    @property
    def max_input_images(self) -> int:
        """FluxImg2ImgPipeline starts from exactly one input image."""
        return 1

    @property
    def default_steps(self) -> int:
        return 28 if self.scheduler_config.get("use_dynamic_shifting") else 4

    @property
    def default_guidance_scale(self) -> float:
        return 3.5

    @property
    def default_residual_threshold(self) -> float:
        """First-block cache threshold when the cache is on and a request gives none (MAX's)."""
        return 0.05

    @property
    def max_text_length(self) -> int:
        return next(e.max_length for e in self.text_encoders if not e.truncate)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the unpacked latents, as FluxPipeline.prepare_latents floors them."""
        f = self.size_multiple
        return 2 * (int(height) // f), 2 * (int(width) // f)

    def noise_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """Shape torch.randn draws the initial noise in: (B, C, h, w), packed afterwards."""
        h, w = self.latent_size(height, width)
        return (batch, self.latent_channels, h, w)

    def vae_sample_shape(self, height: int, width: int) -> tuple[int, ...]:
        """Shape of the img2img VAE posterior sample (one input image)."""
        h, w = self.latent_size(height, width)
        return (1, self.latent_channels, h, w)

    def image_seq_len(self, height: int, width: int) -> int:
        h, w = self.latent_size(height, width)
        return (h // 2) * (w // 2)

    def pack(self, noise: np.ndarray) -> np.ndarray:
        from _fast import pack_latents

        return pack_latents(noise)

    def latent_image_ids(self, height: int, width: int) -> np.ndarray:
        from _fast import latent_image_ids

        h, w = self.latent_size(height, width)
        return latent_image_ids(h // 2, w // 2)

    def text_ids(self, length: int) -> np.ndarray:
        """FLUX.1 text ids are all zeros, one (0, 0, 0) row per T5 position."""
        return np.zeros((length, 3), dtype=np.int64)

    def mu(self, height: int, width: int) -> float | None:
        """Dynamic-shift mu from the PACKED sequence length, or None without dynamic shifting."""
        cfg = self.scheduler_config
        if not cfg.get("use_dynamic_shifting"):
            return None
        from _fast import calculate_shift

        # The same .get defaults FluxPipeline uses when a config lacks a key.
        return calculate_shift(self.image_seq_len(height, width),
                               cfg.get("base_image_seq_len", 256),
                               cfg.get("max_image_seq_len", 4096),
                               cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))

    def schedule(self, num_steps: int, height: int, width: int, *, shifted: bool = True):
        """(timesteps float32 (N,), sigmas float32 (N+1,), mu), as FluxPipeline and its scheduler
        make them. ``shifted=False`` skips the shift (a wrong variant, for negative controls)."""
        from _fast import flow_match_sigmas

        cfg = self.scheduler_config
        mu = self.mu(height, width) if shifted else None
        dynamic = bool(cfg.get("use_dynamic_shifting")) and shifted
        timesteps, sigmas = flow_match_sigmas(
            num_steps,
            shift=float(cfg.get("shift", 1.0)) if shifted else 1.0,
            use_dynamic_shifting=dynamic,
            mu=mu,
            time_shift_type=cfg.get("time_shift_type", "exponential"),
            shift_terminal=cfg.get("shift_terminal"),
            invert_sigmas=bool(cfg.get("invert_sigmas", False)),
            num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
            use_karras_sigmas=bool(cfg.get("use_karras_sigmas", False)),
            use_exponential_sigmas=bool(cfg.get("use_exponential_sigmas", False)),
        )
        return timesteps, sigmas, mu

    def uses_true_cfg(self, true_cfg_scale: float, has_negative_prompt: bool) -> bool:
        """FluxPipeline adds a negative pass iff ``true_cfg_scale > 1`` and a negative prompt is
        given."""
        return true_cfg_scale > 1 and has_negative_prompt


def _unsupported_scheduler(cfg: dict) -> str | None:
    for key in ("use_beta_sigmas", "stochastic_sampling", "use_flow_sigmas"):
        if cfg.get(key):
            return key
    return None


def rules(folder: str | os.PathLike) -> Flux1Rules:
    """Read the FLUX.1 rules of a model folder (configs only; no weights, no torch)."""
    folder = Path(folder)
    try:
        sched = read_json(folder / "scheduler" / "scheduler_config.json")
        vae = read_json(folder / "vae" / "config.json")
        transformer = read_json(folder / "transformer" / "config.json")
        clip_cfg = read_json(folder / "tokenizer" / "tokenizer_config.json")
        t5_cfg = read_json(folder / "tokenizer_2" / "tokenizer_config.json")
    except FileNotFoundError as exc:
        raise ValueError(
            f"{folder} is not a complete FLUX.1 folder: missing {exc.filename}") from None
    bad = _unsupported_scheduler(sched)
    if bad:
        raise ValueError(f"scheduler option {bad!r} of {folder} is not supported by the harness")
    clip_len = int(clip_cfg.get("model_max_length") or 77)
    if clip_len > 10 ** 6:  # transformers writes a huge sentinel when no length is known
        clip_len = 77
    encoders = (
        TextEncoderSpec("tokens", folder / "tokenizer", clip_len, True,
                        _token(clip_cfg.get("pad_token"), "<|endoftext|>")),
        TextEncoderSpec("tokens_2", folder / "tokenizer_2", MAX_T5_LENGTH, False,
                        _token(t5_cfg.get("pad_token"), "<pad>")),
    )
    return Flux1Rules(folder=folder, scheduler_config=sched, vae_config=vae,
                      transformer_config=transformer, text_encoders=encoders)


def _token(value, default: str) -> str:
    """A special token from tokenizer_config.json (a string or an AddedToken dict)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value or default


# --------------------------------------------------------------------------------------------------
# loading (tiny and real weights alike)


def load_components(folder: str | os.PathLike, *, device: str = "cpu",
                    dtype: str = "float32") -> dict:
    """Load the four model components with ``from_pretrained(..., local_files_only=True)``."""
    offline()
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    return load_pretrained(folder, {"text_encoder": CLIPTextModel,
                                    "text_encoder_2": T5EncoderModel,
                                    "transformer": FluxTransformer2DModel,
                                    "vae": AutoencoderKL}, device=device, dtype=dtype)


def reference_pipeline(components: dict, folder: str | os.PathLike, *, img2img: bool):
    """diffusers' own FluxPipeline / FluxImg2ImgPipeline over the same loaded modules, with the
    folder's scheduler and transformers tokenizers (the parity reference)."""
    offline()
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline, FluxPipeline
    from transformers import CLIPTokenizer, T5TokenizerFast

    folder = Path(folder)
    cls = FluxImg2ImgPipeline if img2img else FluxPipeline
    pipe = cls(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(
            folder / "scheduler", local_files_only=True),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True),
        tokenizer_2=T5TokenizerFast.from_pretrained(folder / "tokenizer_2", local_files_only=True),
        **components,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------------------------------
# the tiny recipe


def build_tiny(out: Path) -> None:
    """Write the tiny FLUX.1 into ``out`` with ``save_pretrained`` (safetensors); deterministic."""
    offline()
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel
    from transformers.utils import logging as hf_logging

    from .text_tokenizers import saved_vocab_size, train_clip_tokenizer, train_t5_tokenizer

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
    cfg = dict(r["transformer"])
    cfg["axes_dims_rope"] = tuple(cfg["axes_dims_rope"])
    FluxTransformer2DModel(**cfg).save_pretrained(out / "transformer", safe_serialization=True)

    torch.manual_seed(r["seed"] + 3)
    vae = dict(r["vae"])
    vae["down_block_types"] = tuple(vae["down_block_types"])
    vae["up_block_types"] = tuple(vae["up_block_types"])
    vae["block_out_channels"] = tuple(vae["block_out_channels"])
    AutoencoderKL(**vae).save_pretrained(out / "vae", safe_serialization=True)

    FlowMatchEulerDiscreteScheduler(**r["scheduler"]).save_pretrained(out / "scheduler")
    _write_model_index(out)


def _write_model_index(out: Path) -> None:
    """model_index.json as ``FluxPipeline.save_pretrained`` writes it."""
    from diffusers import __version__ as diffusers_version

    index = {
        "_class_name": "FluxPipeline",
        "_diffusers_version": diffusers_version,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
