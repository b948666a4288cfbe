"""FLUX.1 rules read from a model folder: which folders are FLUX.1, and every number the tokenizer
and the loop ask for (latent layout, ids, schedule, CFG rule). Configs only: no weights, no torch.

A FLUX.1 folder is what ``FluxPipeline.save_pretrained`` writes (model_index.json, scheduler/,
text_encoder/ (CLIP), text_encoder_2/ (T5), tokenizer/, tokenizer_2/, transformer/, vae/). Every
schedule constant comes from the folder's scheduler config.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..diffusers_common import class_name, read_json, special_token
from ..image_rules import (AutoencoderKLGeometry, FlowMatchSchedule, ImageRulesDefaults,
                           unsupported_scheduler_option)

__all__ = ["FAMILY", "MODALITY", "PIPELINE_CLASSES", "MAX_T5_LENGTH", "matches",
           "rules", "Flux1Rules", "TextEncoderSpec"]

FAMILY = "flux1"
MODALITY = "image"
PIPELINE_CLASSES = ("FluxPipeline", "FluxImg2ImgPipeline")

#: FluxPipeline's default T5 length (``max_sequence_length=512``).
MAX_T5_LENGTH = 512


def matches(folder: str | os.PathLike) -> bool:
    """True for a diffusers folder whose model_index.json names a FLUX.1 (img2img) pipeline."""
    return class_name(folder) in PIPELINE_CLASSES


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
        from ..text_tokenizers import load_fast_tokenizer

        return load_fast_tokenizer(self.tokenizer_dir)


@dataclass(frozen=True)
class Flux1Rules(ImageRulesDefaults, AutoencoderKLGeometry, FlowMatchSchedule):
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

    #: FluxPipeline's defaults (FLUX.1-schnell too: pass 4 steps and guidance 0 for it, as its
    #: model card does); FluxImg2ImgPipeline defaults to guidance 7.0.
    default_steps = 28
    default_guidance_scale = 3.5
    default_img2img_guidance_scale = 7.0

    @property
    def max_text_length(self) -> int:
        return next(e.max_length for e in self.text_encoders if not e.truncate)

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

    def schedule(self, num_steps: int, height: int, width: int, *, shifted: bool = True):
        """(timesteps float32 (N,), sigmas float32 (N+1,), mu), as FluxPipeline and its scheduler
        make them. ``shifted=False`` skips the shift (a wrong variant, for negative controls)."""
        from _fast import flow_match_sigmas

        mu = self.mu(height, width) if shifted else None
        timesteps, sigmas = flow_match_sigmas(num_steps, **self.sigma_options(mu, shifted=shifted))
        return timesteps, sigmas, mu

    def uses_true_cfg(self, true_cfg_scale: float, has_negative_prompt: bool) -> bool:
        """FluxPipeline adds a negative pass iff ``true_cfg_scale > 1`` and a negative prompt is
        given."""
        return true_cfg_scale > 1 and has_negative_prompt


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
    bad = unsupported_scheduler_option(sched)
    if bad:
        raise ValueError(f"scheduler option {bad!r} of {folder} is not supported by the harness")
    clip_len = int(clip_cfg.get("model_max_length") or 77)
    if clip_len > 10 ** 6:  # transformers writes a huge sentinel when no length is known
        clip_len = 77
    encoders = (
        TextEncoderSpec("tokens", folder / "tokenizer", clip_len, True,
                        special_token(clip_cfg.get("pad_token"), "<|endoftext|>")),
        TextEncoderSpec("tokens_2", folder / "tokenizer_2", MAX_T5_LENGTH, False,
                        special_token(t5_cfg.get("pad_token"), "<pad>")),
    )
    return Flux1Rules(folder=folder, scheduler_config=sched, vae_config=vae,
                      transformer_config=transformer, text_encoders=encoders)
