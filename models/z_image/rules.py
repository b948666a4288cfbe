"""Z-Image rules read from a model folder: which folders are Z-Image, and every number the tokenizer
and the loop ask for (layout, torch-exact schedule, reversed time, CFG rule, the chat prompt).
Configs only: no weights, no torch at import.

A Z-Image folder is what ``ZImagePipeline.save_pretrained`` writes (model_index.json, scheduler/,
text_encoder/ (Qwen3), tokenizer/ (Qwen2 BPE with a chat template), transformer/, vae/). The
family tokenizes itself: the prompt goes through the tokenizer's chat template with
``enable_thinking=True`` and is padded to 512 like ``ZImagePipeline._encode_prompt``.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import RequestError

from ..diffusers_common import class_name, read_chat_template, read_json, special_token
from ..image_rules import (AutoencoderKLGeometry, FlowMatchSchedule, ImageRulesDefaults,
                           unsupported_scheduler_option)

__all__ = ["FAMILY", "MODALITY", "PIPELINE_CLASSES", "matches", "rules", "ZImageRules"]

FAMILY = "z_image"
MODALITY = "image"
PIPELINE_CLASSES = ("ZImagePipeline", "ZImageImg2ImgPipeline")

_SPECIAL_ATTRS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                  "mask_token")


def matches(folder: str | os.PathLike) -> bool:
    """True for a diffusers folder whose model_index.json names a Z-Image (img2img) pipeline."""
    return class_name(folder) in PIPELINE_CLASSES


@functools.lru_cache(maxsize=8)
def _load_tokenizer(tokenizer_dir: str):
    from ..text_tokenizers import load_fast_tokenizer

    return load_fast_tokenizer(tokenizer_dir)


@dataclass(frozen=True)
class ZImageRules(ImageRulesDefaults, AutoencoderKLGeometry, FlowMatchSchedule):
    """Z-Image rules the tokenizer and the loop ask for, read from a model folder's configs."""

    folder: Path
    scheduler_config: dict = field(repr=False)
    vae_config: dict = field(repr=False)
    transformer_config: dict = field(repr=False)
    tokenizer_dir: Path = field(repr=False)
    chat_template: str = field(repr=False)
    special_tokens: dict = field(repr=False)   # transformers' special_tokens_map (template vars)
    pad_token: str = "<|endoftext|>"
    padding_side: str = "right"
    family: str = FAMILY
    #: The family tokenizes itself (``build_context``); no generic per-encoder tokenizers.
    text_encoders: tuple = ()

    # ---------------------------------------------------------------------------- geometry
    #: ZImagePipeline's own defaults for omitted options (Z-Image never packs: the transformer
    #: patchifies the (B, C, h, w) noise itself).
    default_steps = 50
    default_guidance_scale = 5.0
    #: ZImagePipeline's fixed default size (``height or 1024``), whatever the VAE.
    default_size = 1024
    #: First-block cache threshold when the cache is on and the request gives none (spec §4).
    default_residual_threshold = 0.06
    #: ZImagePipeline's ``max_sequence_length`` default (the chat template counts).
    max_text_length = 512

    @property
    def patch_size(self) -> int:
        return int(self.transformer_config.get("all_patch_size", [2])[0])

    @property
    def latent_channels(self) -> int:
        return int(self.transformer_config["in_channels"])

    # ---------------------------------------------------------------------------- schedule
    def schedule(self, num_steps: int, height: int, width: int, *, fault: str | None = None):
        """(timesteps float32 (N,), sigmas float32 (N+1,), mu), same bits as ZImagePipeline.

        Base sigmas are ``torch.linspace(1, 1/N, N)`` reproduced by ``_fast.z_image_sigmas`` for
        this CPU's torch build. ``fault``: "numpy_linspace_sigmas" uses numpy's linspace (FLUX's
        base), "unshifted_schedule" drops the shift — wrong variants for negative controls.
        """
        import torch

        from _fast import flow_match_sigmas, z_image_sigmas

        mu = self.mu(height, width)
        kw = self.sigma_options(mu, shifted=fault != "unshifted_schedule")
        if fault == "numpy_linspace_sigmas":
            timesteps, sigmas = flow_match_sigmas(num_steps, **kw)
        else:
            # torch.linspace's last bits depend on the CPU kernel torch picked (FMA or not).
            fma = torch.backends.cpu.get_cpu_capability() != "DEFAULT"
            timesteps, sigmas = z_image_sigmas(num_steps, fma=fma, **kw)
        return timesteps, sigmas, mu

    def model_times(self, timesteps: np.ndarray) -> np.ndarray:
        """The transformer's time ``(1000 − t) / 1000`` in float32, as the pipeline's tensors."""
        t = np.asarray(timesteps, dtype=np.float32)
        return (np.float32(1000.0) - t) / np.float32(1000.0)

    def warm(self) -> None:
        """Load the tokenizer, the jinja renderer and the cached schedule kernels once."""
        self.encode_prompt("warm up")
        self.schedule(2, 2 * self.size_multiple, 2 * self.size_multiple)
        self.model_times(np.ones(2, np.float32))

    # ---------------------------------------------------------------------------- text
    @property
    def tokenizer(self):
        return _load_tokenizer(str(self.tokenizer_dir))

    def render_prompt(self, text: str) -> str:
        """``tokenizer.apply_chat_template([user text], add_generation_prompt=True,
        enable_thinking=True, tokenize=False)`` with transformers' own jinja renderer."""
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            conversations=[[{"role": "user", "content": text}]], chat_template=self.chat_template,
            add_generation_prompt=True, **self.special_tokens, enable_thinking=True)
        return rendered[0]

    def encode_prompt(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (512,), mask bool (512,)) padded like the pipeline's tokenizer call.

        diffusers truncates silently at 512; the harness refuses instead.
        """
        tok = self.tokenizer
        ids = tok.encode(self.render_prompt(text)).ids
        limit = self.max_text_length
        if len(ids) > limit:
            raise RequestError(f"prompt too long: {len(ids)} tokens > {limit} (the limit of the "
                               f"Qwen3 text encoder, chat template included)")
        pad = tok.token_to_id(self.pad_token)
        out = np.full(limit, pad, dtype=np.int64)
        mask = np.zeros(limit, dtype=bool)
        sl = slice(0, len(ids)) if self.padding_side == "right" else slice(limit - len(ids), limit)
        out[sl] = ids
        mask[sl] = True
        return out, mask

    @staticmethod
    def uses_cfg(guidance_scale: float) -> bool:
        """ZImagePipeline runs CFG when ``guidance_scale > 0`` (not > 1)."""
        return guidance_scale > 0

    # ---------------------------------------------------------------------------- request
    def build_context(self, tokenizer, request, opt: dict, fault: str | None = None):
        """The PixelContext of a validated request (``PixelGenerationTokenizer`` hook)."""
        from .context import build_context

        return build_context(self, tokenizer, request, opt, fault)


def rules(folder: str | os.PathLike) -> ZImageRules:
    """Read the Z-Image rules of a model folder (configs only; no weights, no torch)."""
    folder = Path(folder)
    tok_dir = folder / "tokenizer"
    try:
        sched = read_json(folder / "scheduler" / "scheduler_config.json")
        vae = read_json(folder / "vae" / "config.json")
        transformer = read_json(folder / "transformer" / "config.json")
        tok_cfg = read_json(tok_dir / "tokenizer_config.json")
        if not (tok_dir / "tokenizer.json").is_file():
            raise FileNotFoundError(2, "missing", str(tok_dir / "tokenizer.json"))
    except FileNotFoundError as exc:
        raise ValueError(
            f"{folder} is not a complete Z-Image folder: missing {exc.filename}") from None
    bad = unsupported_scheduler_option(sched)
    if bad:
        raise ValueError(f"scheduler option {bad!r} of {folder} is not supported by the harness")
    template = read_chat_template(tok_dir, tok_cfg)
    if template is None:
        raise ValueError(f"{tok_dir} has no chat template (chat_template.jinja or "
                         f"tokenizer_config.json 'chat_template')")
    specials = {k: special_token(tok_cfg.get(k)) for k in _SPECIAL_ATTRS}
    specials = {k: v for k, v in specials.items() if v is not None}
    return ZImageRules(
        folder=folder, scheduler_config=sched, vae_config=vae, transformer_config=transformer,
        tokenizer_dir=tok_dir, chat_template=template,
        special_tokens=specials, pad_token=specials.get("pad_token", "<|endoftext|>"),
        padding_side=tok_cfg.get("padding_side") or "right")
