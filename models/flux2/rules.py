"""FLUX.2 rules (Klein and dev layouts) read from a model folder: which folders are FLUX.2, and
every number the tokenizer and the loop ask for. Configs only: no weights, no torch.

A FLUX.2 folder is what ``Flux2KleinPipeline`` / ``Flux2Pipeline.save_pretrained`` writes:
model_index.json, scheduler/, text_encoder/ (Qwen3 for Klein, Mistral3 for dev), tokenizer/
(a Qwen2 tokenizer, or dev's Pixtral processor), transformer/, vae/ (``AutoencoderKLFlux2`` with
its latent BatchNorm). The layout is read from model_index.json's ``_class_name``; every schedule
constant comes from the scheduler config. The family tokenizes its own prompts (chat template →
``tokenizers``, in ``context.py``), so ``text_encoders`` is empty and ``build_context`` prepares
the whole context.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..diffusers_common import class_name, read_chat_template, read_json, special_token
from ..image_rules import (AutoencoderKLGeometry, FlowMatchSchedule, ImageRulesDefaults,
                           unsupported_scheduler_option)

__all__ = ["FAMILY", "MODALITY", "PIPELINE_CLASSES", "NO_FIRST_BLOCK_CACHE",
           "matches", "rules", "Flux2Rules"]

FAMILY = "flux2"
MODALITY = "image"
#: model_index.json class → layout.
PIPELINE_CLASSES = {"Flux2KleinPipeline": "klein", "Flux2Pipeline": "dev"}

#: Hidden-state layers stacked on the feature axis (the pipelines' ``text_encoder_out_layers``).
TEXT_LAYERS = {"klein": (9, 18, 27), "dev": (10, 20, 30)}
#: BFL's documented reference-image limits (diffusers itself sets none): Klein 4, dev 6.
MAX_INPUT_IMAGES = {"klein": 4, "dev": 6}
#: ``Flux2ImageProcessor.check_image_input`` limits and the pipelines' reference-image area.
REF_MIN_SIDE, REF_MAX_ASPECT, REF_MAX_AREA = 64, 8, 1024 * 1024
#: ``_prepare_image_ids(scale=10)``: reference image k has time id 10 + 10k.
REF_TIME_SCALE = 10

#: Why FLUX.2 runs without the first-block cache (pixel_pipelines.md §4).
NO_FIRST_BLOCK_CACHE = (
    "FLUX.2 has no first-block cache: its single-stream blocks run on the concatenated text+image "
    "stream, so the first (double-stream) block's residual does not map onto the last block's "
    "output (diffusers' own FirstBlockCache fails on Flux2Transformer2DModel too); drop "
    "residual_threshold")


def matches(folder: str | os.PathLike) -> bool:
    """True for a diffusers folder whose model_index.json names a FLUX.2 pipeline."""
    return class_name(folder) in PIPELINE_CLASSES


@dataclass(frozen=True)
class Flux2Rules(ImageRulesDefaults, AutoencoderKLGeometry, FlowMatchSchedule):
    """FLUX.2 rules the tokenizer and the loop ask for, read from a model folder's configs."""

    folder: Path
    layout: str                      # "klein" (Qwen3, CFG) or "dev" (Mistral3, embedded guidance)
    scheduler_config: dict = field(repr=False)
    vae_config: dict = field(repr=False)
    transformer_config: dict = field(repr=False)
    tokenizer_dir: Path = field(repr=False)
    chat_template: str = field(repr=False)
    pad_token: str = field(repr=False)
    padding_side: str = "right"
    is_distilled: bool = False
    family: str = FAMILY
    text_encoders: tuple = ()        # the family tokenizes itself (build_context)
    image_role: str = "conditioning"

    # ---------------------------------------------------------------------------- geometry
    #: MAX caps FLUX.2 requests at 1024² pixels (pixel_pipelines.md §3).
    max_area = 1024 * 1024
    #: Both pipelines pad the prompt to ``max_sequence_length=512``.
    max_text_length = 512

    @property
    def latent_channels(self) -> int:
        return int(self.transformer_config["in_channels"]) // 4

    @property
    def max_input_images(self) -> int:
        return MAX_INPUT_IMAGES[self.layout]

    #: Both pipelines' defaults (Flux2KleinPipeline's too when distilled: pass 4 steps for a
    #: step-distilled Klein, as its model card does; its guidance is ignored).
    default_steps = 50
    default_guidance_scale = 4.0

    @property
    def text_layers(self) -> tuple[int, ...]:
        return TEXT_LAYERS[self.layout]

    @property
    def passes_guidance(self) -> bool:
        """dev always feeds the (unscaled) guidance embedding; Klein passes ``guidance=None``."""
        return self.layout == "dev"

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        h, w = self.latent_size(height, width)
        return h // 2, w // 2

    def noise_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """FLUX.2 draws the noise already patchified: (B, 4C, h/2, w/2)."""
        return (batch, 4 * self.latent_channels) + self.token_grid(height, width)

    def uses_cfg(self, guidance_scale: float) -> bool:
        """Klein: CFG with the empty negative prompt iff ``guidance_scale > 1``, not distilled."""
        return self.layout == "klein" and guidance_scale > 1 and not self.is_distilled

    # ---------------------------------------------------------------------------- schedule
    def mu(self, height: int, width: int, num_steps: int) -> float:
        """The empirical mu of ``compute_empirical_mu`` (packed sequence length, step count)."""
        from _fast import empirical_mu

        return empirical_mu(self.image_seq_len(height, width), num_steps)

    def schedule(self, num_steps: int, height: int, width: int, *, shifted: bool = True,
                 linear_mu: bool = False):
        """(timesteps float32 (N,), sigmas float32 (N+1,), mu) as the pipelines make them.

        ``shifted=False`` skips the shift and ``linear_mu`` uses FLUX.1's mu instead of the
        empirical one (wrong variants, for negative controls).
        """
        from _fast import flow_match_sigmas

        if linear_mu:
            mu = self.linear_shift_mu(self.image_seq_len(height, width))
        else:
            mu = self.mu(height, width, num_steps)
        timesteps, sigmas = flow_match_sigmas(num_steps, **self.sigma_options(mu, shifted=shifted))
        return timesteps, sigmas, (mu if self.scheduler_config.get("use_dynamic_shifting")
                                   else None)

    # ---------------------------------------------------------------------------- layouts
    def pack(self, noise: np.ndarray) -> np.ndarray:
        """(B, 128, h2, w2) → tokens (B, h2·w2, 128), a transposed view like ``_pack_latents``.

        The view costs nothing, and the loop hands the transformer exactly diffusers' strides;
        ``_fast.flux2_pack`` makes the same values C-contiguous (~0.6 ms at 1024²) when needed.
        """
        b, c, h2, w2 = noise.shape
        return noise.reshape(b, c, h2 * w2).transpose(0, 2, 1)

    def latent_image_ids(self, height: int, width: int, batch: int = 1) -> np.ndarray:
        """int64 (B, seq, 4) rows (0, r, c, 0) (``_prepare_latent_ids``)."""
        from _fast import flux2_image_ids

        return flux2_image_ids(*self.token_grid(height, width), batch=batch)

    def text_ids(self, batch: int, length: int) -> np.ndarray:
        """int64 (B, L, 4) rows (0, 0, 0, l) (``_prepare_text_ids``)."""
        from _fast import flux2_text_ids

        return flux2_text_ids(batch, length)

    def reference_ids(self, grids: list[tuple[int, int]], batch: int,
                      t_zero: bool = False) -> np.ndarray:
        """int64 (B, N, 4): reference image k's tokens at time 10 + 10k (``_prepare_image_ids``)."""
        from _fast import flux2_reference_ids

        return flux2_reference_ids(grids, batch=batch, scale=0 if t_zero else REF_TIME_SCALE)

    # ---------------------------------------------------------------------------- context
    def warm(self) -> None:
        """Load the cached numba kernels once, outside the first request."""
        from _fast import scatter_by_ids, unpatchify_latents

        m = self.size_multiple
        self.schedule(2, 2 * m, 2 * m)
        tokens = self.pack(np.zeros(self.noise_shape(1, 2 * m, 2 * m), dtype=np.float32))
        ids = self.latent_image_ids(2 * m, 2 * m)
        self.text_ids(1, 2)
        self.reference_ids([(2, 2)], 1)
        x = scatter_by_ids(tokens, ids, 2, 2)
        unpatchify_latents(x)
        from .context import prompt_encoder

        prompt_encoder(self)("warm-up")  # tokenizer.json, the jinja template, transformers utils

    def build_context(self, tokenizer, request, opt: dict, fault: str | None = None):
        """The FLUX.2 context of a request ``_validate`` has checked (``context.py``)."""
        from .context import build_context

        return build_context(self, tokenizer, request, opt, fault)


def _check_text_layers(folder: Path, layout: str, encoder_config: dict) -> None:
    """The pipelines stack ``hidden_states[k]`` for the layout's layers: the text encoder needs
    at least max(k) layers (its hidden states run 0..num_hidden_layers)."""
    layers = int((encoder_config.get("text_config") or encoder_config).get("num_hidden_layers", 0))
    wanted = TEXT_LAYERS[layout]
    if max(wanted) > layers:
        raise ValueError(
            f"the {layout} FLUX.2 pipeline stacks the hidden states of text-encoder layers "
            f"{', '.join(map(str, wanted))}, but the text encoder of {folder} has "
            f"{layers} layers (hidden states 0..{layers})")


def rules(folder: str | os.PathLike) -> Flux2Rules:
    """Read the FLUX.2 rules of a model folder (configs only; no weights, no torch)."""
    folder = Path(folder)
    layout = PIPELINE_CLASSES.get(class_name(folder) or "")
    if layout is None:
        raise ValueError(f"{folder} is not a FLUX.2 folder (model_index.json names none of "
                         f"{', '.join(PIPELINE_CLASSES)})")
    try:
        index = read_json(folder / "model_index.json")
        sched = read_json(folder / "scheduler" / "scheduler_config.json")
        vae = read_json(folder / "vae" / "config.json")
        transformer = read_json(folder / "transformer" / "config.json")
        tok_cfg = read_json(folder / "tokenizer" / "tokenizer_config.json")
        encoder = read_json(folder / "text_encoder" / "config.json")
    except FileNotFoundError as exc:
        raise ValueError(
            f"{folder} is not a complete FLUX.2 folder: missing {exc.filename}") from None
    _check_text_layers(folder, layout, encoder)
    bad = unsupported_scheduler_option(sched)
    if bad:
        raise ValueError(f"scheduler option {bad!r} of {folder} is not supported by the harness")
    template = read_chat_template(folder / "tokenizer", tok_cfg)
    if template is None:
        raise ValueError(f"the tokenizer of {folder} has no chat template")
    return Flux2Rules(
        folder=folder, layout=layout, scheduler_config=sched, vae_config=vae,
        transformer_config=transformer, tokenizer_dir=folder / "tokenizer",
        chat_template=template,
        pad_token=special_token(tok_cfg.get("pad_token"),
                                "<|endoftext|>" if layout == "klein" else "<pad>"),
        padding_side=str(tok_cfg.get("padding_side") or "right"),
        is_distilled=bool(index.get("is_distilled", False)))
