"""Qwen-Image rules: text-to-image (QwenImagePipeline) and editing (QwenImageEdit[Plus]Pipeline)
folders → every number the tokenizer and the loop ask for. Configs only: no weights, no torch.

A folder is what the pipeline's ``save_pretrained`` writes: model_index.json, scheduler/,
text_encoder/ (Qwen2.5-VL), tokenizer/, transformer/, vae/ (the 3-D AutoencoderKLQwenImage) and, for
the edit pipelines, processor/ (Qwen2-VL image processor + tokenizer). Schedule constants come from
the scheduler config; the prompt templates, their drop index and the edit resize areas are constants
of the diffusers pipeline code and are copied here (a test checks them against the installed
pipelines).
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import RequestError

from ..diffusers_common import class_name, offline_env, read_json
from ..image_rules import (FlowMatchSchedule, ImageRulesDefaults, LatentGeometry,
                           unsupported_scheduler_option)

__all__ = ["FAMILY", "MODALITY", "PIPELINE_CLASSES", "PipelineSpec", "SPECS", "QwenImageRules",
           "matches", "rules", "calculate_dimensions", "shapes_from_ids",
           "ROPE_POSITIONS", "MAX_ASPECT_RATIO"]

FAMILY = "qwen_image"
MODALITY = "image"
PIPELINE_CLASSES = ("QwenImagePipeline", "QwenImageEditPipeline", "QwenImageEditPlusPipeline")

# --------------------------------------------------------------------------------------------------
# pipeline constants (diffusers' pipeline_qwenimage*.py)

_T2I_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
    "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
    "<|im_end|>\n<|im_start|>assistant\n")
EDIT_SYSTEM = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "
    "objects, background), then explain how the user's text instruction should alter or modify the "
    "image. Generate a new image that meets the user's requirements while maintaining consistency "
    "with the original input where appropriate.<|im_end|>\n<|im_start|>user\n")
_VISION = "<|vision_start|><|image_pad|><|vision_end|>"


@dataclass(frozen=True)
class PipelineSpec:
    """What one diffusers pipeline class hard-codes: template, drop index, image rules."""

    name: str
    template: str
    drop_idx: int                      # hidden states of the template prefix that are dropped
    max_images: int                    # conditioning images (0: text-to-image)
    condition_area: int | None = None  # pixel area of the images the VL encoder sees
    vae_area: int | None = None        # pixel area of the images the VAE encodes
    picture_labels: bool = False       # Plus: "Picture k: <vision>" prefixes in the user turn
    truncate: int | None = None        # prompt_embeds[:, :max_sequence_length] (text-to-image)

    @property
    def edit(self) -> bool:
        return self.max_images > 0


SPECS = {
    "QwenImagePipeline": PipelineSpec(
        "QwenImagePipeline", _T2I_TEMPLATE, 34, 0, truncate=512),
    "QwenImageEditPipeline": PipelineSpec(
        "QwenImageEditPipeline", EDIT_SYSTEM + _VISION + "{}<|im_end|>\n<|im_start|>assistant\n",
        64, 1, condition_area=1024 * 1024, vae_area=1024 * 1024),
    # Qwen-Image-Edit-2509 is trained for one to three input images.
    "QwenImageEditPlusPipeline": PipelineSpec(
        "QwenImageEditPlusPipeline", EDIT_SYSTEM + "{}<|im_end|>\n<|im_start|>assistant\n",
        64, 3, condition_area=384 * 384, vae_area=1024 * 1024, picture_labels=True),
}

#: Positions per axis of QwenEmbedRope's tables (the text ids must stay below).
ROPE_POSITIONS = 4096
#: Qwen2-VL's smart_resize refuses aspect ratios above this.
MAX_ASPECT_RATIO = 200


def matches(folder: str | os.PathLike) -> bool:
    """True for a diffusers folder of QwenImagePipeline or QwenImageEdit(Plus)Pipeline."""
    return class_name(folder) in PIPELINE_CLASSES



def calculate_dimensions(target_area: int, ratio: float) -> tuple[int, int]:
    """(width, height) of ``target_area`` pixels at aspect ``ratio``, multiples of 32 (diffusers'
    ``calculate_dimensions`` of the edit pipelines, same float operations and rounding)."""
    width = math.sqrt(target_area * ratio)
    height = width / ratio
    return round(width / 32) * 32, round(height / 32) * 32


def shapes_from_ids(ids: np.ndarray) -> list[tuple[int, int, int]]:
    """Per-image (frames, rows, cols) token grids read back from centred ids (image k on frame k).

    The inverse of ``_fast.qwen_image_ids`` for one-frame images; the loop gives these shapes to
    the transformer (which builds its rope from shapes) after checking that they rebuild ``ids``.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] != 3 or ids.shape[0] == 0:
        raise ValueError(f"image ids must have shape (N, 3) with N > 0, got {ids.shape}")
    frames = ids[:, 0]
    starts = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1]])
    stops = np.r_[starts[1:], len(frames)]
    shapes = []
    for k, (a, b) in enumerate(zip(starts, stops)):
        if frames[a] != k:
            raise ValueError(f"image ids: expected frame {k} at row {a}, got {frames[a]}")
        rows, cols = ids[a:b, 1], ids[a:b, 2]
        shapes.append((1, int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)))
    return shapes


@functools.lru_cache(maxsize=8)
def load_text_tokenizer(folder: str):
    from ..text_tokenizers import load_fast_tokenizer

    return load_fast_tokenizer(folder)


@functools.lru_cache(maxsize=8)
def load_image_processor(folder: str):
    offline_env()
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil)

    return Qwen2VLImageProcessorPil.from_pretrained(folder, local_files_only=True)


@dataclass(frozen=True)
class QwenImageRules(ImageRulesDefaults, LatentGeometry, FlowMatchSchedule):
    """Qwen-Image rules the tokenizer and the loop ask for, read from a model folder's configs."""

    folder: Path
    spec: PipelineSpec
    scheduler_config: dict = field(repr=False)
    vae_config: dict = field(repr=False)
    transformer_config: dict = field(repr=False)
    text_config: dict = field(repr=False)
    family: str = FAMILY
    #: The family tokenizes itself in ``build_context``.
    text_encoders: tuple = ()

    # ------------------------------------------------------------------ sizes
    @property
    def pipeline_class(self) -> str:
        return self.spec.name

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** len(self.vae_config.get("temperal_downsample", [False, True, True]))

    @property
    def size_multiple(self) -> int:
        return 2 * self.vae_scale_factor

    @property
    def latent_channels(self) -> int:
        return int(self.transformer_config.get("in_channels", 64)) // 4

    @property
    def max_input_images(self) -> int:
        return self.spec.max_images

    @property
    def image_role(self) -> str:
        return "conditioning" if self.spec.edit else "none"

    #: The pipelines' num_inference_steps default.
    default_steps = 50
    #: Unused: Qwen-Image has no guidance embedding (true CFG instead).
    default_guidance_scale = 1.0
    #: The Qwen-Image pipelines' own default: a negative prompt alone turns CFG on.
    default_true_cfg_scale = 4.0

    @property
    def min_steps(self) -> int:
        """shift_terminal divides by ``1 − sigma_last``, which is 0 for one step."""
        return 2 if self.scheduler_config.get("shift_terminal") else 1

    @property
    def drop_idx(self) -> int:
        return self.spec.drop_idx

    @property
    def max_text_length(self) -> int:
        """Longest text sequence after the template drop (t2i: max_sequence_length 512)."""
        return self.spec.truncate or int(self.text_config.get("max_position_embeddings", 128000))

    def noise_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """(B, 1, C, h, w): QwenImagePipeline.prepare_latents draws one frame, then packs."""
        h, w = self.latent_size(height, width)
        return (batch, 1, self.latent_channels, h, w)

    def token_grid(self, height: int, width: int) -> tuple[int, int, int]:
        """(1, H // vsf // 2, W // vsf // 2): the img_shapes entry for a pixel size."""
        v = self.vae_scale_factor
        return (1, int(height) // v // 2, int(width) // v // 2)

    def pack(self, noise: np.ndarray) -> np.ndarray:
        from _fast import qwen_pack_latents

        return qwen_pack_latents(noise)

    # ------------------------------------------------------------------ schedule
    def schedule(self, num_steps: int, height: int, width: int, *, terminal: bool = True):
        """(timesteps float32 (N,), sigmas float32 (N+1,), mu) as the pipeline's scheduler makes
        them; ``terminal=False`` skips shift_terminal (a wrong variant, for negative controls)."""
        from _fast import flow_match_sigmas

        mu = self.mu(height, width)
        timesteps, sigmas = flow_match_sigmas(num_steps,
                                              **self.sigma_options(mu, terminal=terminal))
        return timesteps, sigmas, mu

    def uses_true_cfg(self, true_cfg_scale: float, has_negative_prompt: bool) -> bool:
        """The pipelines add a negative pass iff ``true_cfg_scale > 1`` and a negative prompt is
        given."""
        return true_cfg_scale > 1 and has_negative_prompt

    # ------------------------------------------------------------------ text
    def tokenizer(self):
        """The fast tokenizer the pipeline tokenizes with (edit: its processor's own)."""
        folder = self.folder / ("processor" if self.spec.edit else "tokenizer")
        return load_text_tokenizer(str(folder))

    def image_processor(self):
        return load_image_processor(str(self.folder / "processor"))

    def prompt_text(self, prompt: str, num_images: int) -> str:
        """The chat-template text the pipeline feeds its text encoder (edit: image placeholders)."""
        if self.spec.picture_labels:
            prompt = "".join(f"Picture {i + 1}: {_VISION}" for i in range(num_images)) + prompt
        return self.spec.template.format(prompt)

    def encode_text(self, prompt: str, image_tokens: list[int]) -> np.ndarray:
        """Template ids with each ``<|image_pad|>`` expanded to its image's merged token count (what
        Qwen2VLProcessor does); length checked against the text limit."""
        tok = self.tokenizer()
        ids = tok.encode(self.prompt_text(prompt, len(image_tokens))).ids
        pad = tok.token_to_id("<|image_pad|>")
        where = [i for i, t in enumerate(ids) if t == pad] if pad is not None else []
        if len(where) != len(image_tokens):
            raise RequestError(
                f"the prompt must not contain image placeholder tokens: the template has "
                f"{len(where)} <|image_pad|> for {len(image_tokens)} input image(s)")
        out: list[int] = []
        prev = 0
        for i, n in zip(where, image_tokens):
            out += ids[prev:i] + [pad] * n
            prev = i + 1
        out += ids[prev:]
        n_text = len(out) - self.drop_idx
        if n_text <= 0:
            raise ValueError(f"the tokenizer of {self.folder} makes the template shorter than its "
                             f"{self.drop_idx}-token prefix")
        if n_text > self.max_text_length:
            raise RequestError(f"prompt too long: {n_text} tokens > {self.max_text_length} (the "
                               f"text sequence after the {self.drop_idx}-token template prefix)")
        return np.asarray(out, dtype=np.int64)

    # ------------------------------------------------------------------ request → context
    def warm(self) -> None:
        """Load the tokenizer and the cached numba kernels once, outside the first request."""
        from _fast import qwen_image_ids, qwen_text_ids

        m = self.size_multiple
        self.tokenizer()
        if self.spec.edit:  # imports transformers' image processing once, here
            self.image_processor()
        self.schedule(2, 2 * m, 2 * m)
        self.pack(np.zeros(self.noise_shape(1, 2 * m, 2 * m), dtype=np.float32))
        qwen_image_ids([(1, 2, 2)])
        qwen_text_ids(2, [(1, 2, 2)])

    def build_context(self, tokenizer, request, opt: dict, fault: str | None = None):
        """Everything QwenImagePipeline / QwenImageEdit(Plus)Pipeline prepare before the loop."""
        from .context import build_context

        return build_context(self, tokenizer, request, opt, fault)


def _unsupported(sched: dict, transformer: dict) -> str | None:
    bad = unsupported_scheduler_option(sched)
    if bad:
        return f"scheduler option {bad!r}"
    for key in ("guidance_embeds", "use_additional_t_cond", "use_layer3d_rope"):
        if transformer.get(key):
            return f"transformer option {key!r}"
    return None


def rules(folder: str | os.PathLike) -> QwenImageRules:
    """Read the Qwen-Image rules of a model folder (configs only; no weights, no torch)."""
    folder = Path(folder)
    cls = class_name(folder)
    if cls not in SPECS:
        raise ValueError(f"{folder} is not a Qwen-Image folder (model_index.json names {cls!r})")
    spec = SPECS[cls]
    needed = ["scheduler/scheduler_config.json", "vae/config.json", "transformer/config.json",
              "text_encoder/config.json", "tokenizer"]
    if spec.edit:
        needed += ["processor/preprocessor_config.json", "processor/tokenizer_config.json"]
    missing = [p for p in needed if not (folder / p).exists()]
    if missing:
        raise ValueError(f"{folder} is not a complete {cls} folder: missing {', '.join(missing)}")
    sched = read_json(folder / "scheduler" / "scheduler_config.json")
    transformer = read_json(folder / "transformer" / "config.json")
    bad = _unsupported(sched, transformer)
    if bad:
        raise ValueError(f"{bad} of {folder} is not supported by the harness")
    te = read_json(folder / "text_encoder" / "config.json")
    return QwenImageRules(folder=folder, spec=spec, scheduler_config=sched,
                          vae_config=read_json(folder / "vae" / "config.json"),
                          transformer_config=transformer, text_config=te.get("text_config", te))
