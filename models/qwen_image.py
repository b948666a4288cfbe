"""Qwen-Image family: text-to-image (QwenImagePipeline) and editing (QwenImageEdit[Plus]Pipeline).

A folder is what the pipeline's ``save_pretrained`` writes: model_index.json, scheduler/,
text_encoder/ (Qwen2.5-VL), tokenizer/, transformer/, vae/ (the 3-D AutoencoderKLQwenImage) and, for
the edit pipelines, processor/ (Qwen2-VL image processor + tokenizer). Schedule constants come from
the scheduler config; the prompt templates, their drop index and the edit resize areas are constants
of the diffusers pipeline code and are copied here (a test checks them against the installed
pipelines). Nothing imports torch at module level.
"""
from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cache import ensure_built
from .diffusers_common import (chat_tokenizers_sha256, check_tiny_name, class_name,
                               corpus_sha256, load_pretrained, offline, read_json, sha256,
                               versions)

__all__ = [
    "FAMILY", "MODALITY", "TINY_NAMES", "PIPELINE", "REFERENCE", "PIPELINE_CLASSES", "PipelineSpec",
    "SPECS", "QwenImageRules", "TOKENIZER_FAULTS", "tiny_path", "matches", "rules",
    "calculate_dimensions", "shapes_from_ids", "build_context", "load_components",
    "reference_pipeline", "qwen2vl_processor", "build_tiny", "TINY_RECIPE",
]

FAMILY = "qwen_image"
MODALITY = "image"
TINY_NAMES = ("tiny-qwen-image", "tiny-qwen-image-edit", "tiny-qwen-image-edit-plus")
PIPELINE = "harness.pipelines.qwen_image"
REFERENCE = "harness.parity.qwen_image"
PIPELINE_CLASSES = ("QwenImagePipeline", "QwenImageEditPipeline", "QwenImageEditPlusPipeline")
_TINY_CLASS = dict(zip(TINY_NAMES, PIPELINE_CLASSES))

#: Deliberately wrong contexts, for the parity tests' negative controls only.
TOKENIZER_FAULTS = ("drop_off_by_one", "no_shift_terminal", "prompt_image_at_vae_size")

# --------------------------------------------------------------------------------------------------
# pipeline constants (diffusers' pipeline_qwenimage*.py)

_T2I_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
    "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
    "<|im_end|>\n<|im_start|>assistant\n")
_EDIT_SYSTEM = (
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
        "QwenImageEditPipeline", _EDIT_SYSTEM + _VISION + "{}<|im_end|>\n<|im_start|>assistant\n",
        64, 1, condition_area=1024 * 1024, vae_area=1024 * 1024),
    # Qwen-Image-Edit-2509 is trained for one to three input images.
    "QwenImageEditPlusPipeline": PipelineSpec(
        "QwenImageEditPlusPipeline", _EDIT_SYSTEM + "{}<|im_end|>\n<|im_start|>assistant\n",
        64, 3, condition_area=384 * 384, vae_area=1024 * 1024, picture_labels=True),
}

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

#: QwenImagePipeline's default size (default_sample_size 128 × VAE factor 8).
DEFAULT_SIZE = 1024
#: Area cap; the rope tables (4096 positions per axis) allow far more.
MAX_AREA = 2048 * 2048
#: Positions per axis of QwenEmbedRope's tables (the text ids must stay below).
ROPE_POSITIONS = 4096
#: Qwen2-VL's smart_resize refuses aspect ratios above this.
MAX_ASPECT_RATIO = 200

_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
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


# --------------------------------------------------------------------------------------------------
# registry contract


def matches(folder: str | os.PathLike) -> bool:
    """True for a diffusers folder of QwenImagePipeline or QwenImageEdit(Plus)Pipeline."""
    return class_name(folder) in PIPELINE_CLASSES


def tiny_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of tiny model ``name``, built on first use into the cache (atomically)."""
    check_tiny_name(name, TINY_NAMES, "Qwen-Image")
    cls = _TINY_CLASS[name]
    recipe = {"family": FAMILY, "name": name, "pipeline": cls, "recipe": TINY_RECIPE,
              "versions": versions(), "corpus_sha256": corpus_sha256(),
              "templates_sha256": sha256("\n".join(_templates_corpus())),
              "chat_tokenizers_sha256": chat_tokenizers_sha256()}
    return ensure_built(name, recipe, functools.partial(build_tiny, pipeline=cls), cache_dir)


# --------------------------------------------------------------------------------------------------
# geometry helpers


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


# --------------------------------------------------------------------------------------------------
# family rules


@functools.lru_cache(maxsize=8)
def _text_tokenizer(folder: str):
    from .text_tokenizers import load_fast_tokenizer

    return load_fast_tokenizer(folder)


@functools.lru_cache(maxsize=8)
def _image_processor(folder: str):
    offline()
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil)

    return Qwen2VLImageProcessorPil.from_pretrained(folder, local_files_only=True)


@dataclass(frozen=True)
class QwenImageRules:
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
    def max_area(self) -> int:
        return MAX_AREA

    @property
    def max_input_images(self) -> int:
        return self.spec.max_images

    @property
    def image_role(self) -> str:
        return "conditioning" if self.spec.edit else "none"

    @property
    def default_size(self) -> int:
        return DEFAULT_SIZE

    @property
    def default_steps(self) -> int:
        return 50  # the pipelines' num_inference_steps default

    @property
    def default_guidance_scale(self) -> float:
        return 1.0  # unused: Qwen-Image has no guidance embedding (true CFG instead)

    @property
    def default_true_cfg_scale(self) -> float:
        """The Qwen-Image pipelines' own default: a negative prompt alone turns CFG on."""
        return 4.0

    @property
    def default_residual_threshold(self) -> float:
        """First-block cache threshold when a loop switches the cache on without one."""
        return 0.05

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

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        f = self.size_multiple
        return 2 * (int(height) // f), 2 * (int(width) // f)

    def noise_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """(B, 1, C, h, w): QwenImagePipeline.prepare_latents draws one frame, then packs."""
        h, w = self.latent_size(height, width)
        return (batch, 1, self.latent_channels, h, w)

    def image_seq_len(self, height: int, width: int) -> int:
        h, w = self.latent_size(height, width)
        return (h // 2) * (w // 2)

    def token_grid(self, height: int, width: int) -> tuple[int, int, int]:
        """(1, H // vsf // 2, W // vsf // 2): the img_shapes entry for a pixel size."""
        v = self.vae_scale_factor
        return (1, int(height) // v // 2, int(width) // v // 2)

    def pack(self, noise: np.ndarray) -> np.ndarray:
        from _fast import qwen_pack_latents

        return qwen_pack_latents(noise)

    # ------------------------------------------------------------------ schedule
    def mu(self, height: int, width: int) -> float | None:
        cfg = self.scheduler_config
        if not cfg.get("use_dynamic_shifting"):
            return None
        from _fast import calculate_shift

        # The same .get defaults the pipelines use when a config lacks a key.
        return calculate_shift(self.image_seq_len(height, width),
                               cfg.get("base_image_seq_len", 256),
                               cfg.get("max_image_seq_len", 4096),
                               cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))

    def schedule(self, num_steps: int, height: int, width: int, *, terminal: bool = True):
        """(timesteps float32 (N,), sigmas float32 (N+1,), mu) as the pipeline's scheduler makes
        them; ``terminal=False`` skips shift_terminal (a wrong variant, for negative controls)."""
        from _fast import flow_match_sigmas

        cfg = self.scheduler_config
        mu = self.mu(height, width)
        timesteps, sigmas = flow_match_sigmas(
            num_steps, shift=float(cfg.get("shift", 1.0)),
            use_dynamic_shifting=bool(cfg.get("use_dynamic_shifting")), mu=mu,
            time_shift_type=cfg.get("time_shift_type", "exponential"),
            shift_terminal=cfg.get("shift_terminal") if terminal else None,
            invert_sigmas=bool(cfg.get("invert_sigmas", False)),
            num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
            use_karras_sigmas=bool(cfg.get("use_karras_sigmas", False)),
            use_exponential_sigmas=bool(cfg.get("use_exponential_sigmas", False)))
        return timesteps, sigmas, mu

    def uses_true_cfg(self, true_cfg_scale: float, has_negative_prompt: bool) -> bool:
        """The pipelines add a negative pass iff ``true_cfg_scale > 1`` and a negative prompt is
        given."""
        return true_cfg_scale > 1 and has_negative_prompt

    # ------------------------------------------------------------------ text
    def tokenizer(self):
        """The fast tokenizer the pipeline tokenizes with (edit: its processor's own)."""
        return _text_tokenizer(str(self.folder / ("processor" if self.spec.edit else "tokenizer")))

    def image_processor(self):
        return _image_processor(str(self.folder / "processor"))

    def prompt_text(self, prompt: str, num_images: int) -> str:
        """The chat-template text the pipeline feeds its text encoder (edit: image placeholders)."""
        if self.spec.picture_labels:
            prompt = "".join(f"Picture {i + 1}: {_VISION}" for i in range(num_images)) + prompt
        return self.spec.template.format(prompt)

    def encode_text(self, prompt: str, image_tokens: list[int]) -> np.ndarray:
        """Template ids with each ``<|image_pad|>`` expanded to its image's merged token count (what
        Qwen2VLProcessor does); length checked against the text limit."""
        from harness.errors import RequestError

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
        return build_context(self, tokenizer, request, opt, fault)


def _edit_inputs(rules: QwenImageRules, request, fault: str | None) -> dict:
    """Load the conditioning images and prepare them at the pipeline's two resize targets."""
    from PIL import Image

    from harness.errors import RequestError
    from harness.tokenizers.pixel import _preprocess_image, load_input_image

    spec = rules.spec
    originals = [load_input_image(src) for src in request.input_images]
    prompt_images, vae_images, vae_sizes, cond_sizes = [], [], [], []
    for i, img in enumerate(originals):
        w, h = img.size
        if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
            raise RequestError(f"input image {i} is {w}x{h}: aspect ratios beyond "
                               f"{MAX_ASPECT_RATIO}:1 are not supported")
        vae_w, vae_h = calculate_dimensions(spec.vae_area, w / h)
        cond_area = spec.vae_area if fault == "prompt_image_at_vae_size" else spec.condition_area
        cond_w, cond_h = calculate_dimensions(cond_area, w / h)
        # VaeImageProcessor.resize (Lanczos) for the VL encoder's copy; preprocess for the VAE's.
        prompt_images.append(img.resize((cond_w, cond_h), resample=Image.Resampling.LANCZOS)
                             if img.size != (cond_w, cond_h) else img.copy())
        vae_images.append(_preprocess_image(img, vae_h, vae_w)[1])
        vae_sizes.append((vae_w, vae_h))
        cond_sizes.append((cond_w, cond_h))
    processor = rules.image_processor()
    processed = processor(images=prompt_images, return_tensors="np")
    grid = np.asarray(processed["image_grid_thw"], dtype=np.int64)
    merge = int(processor.merge_size)
    return {
        "originals": [np.asarray(im, dtype=np.uint8) for im in originals],
        "prompt_images": [np.asarray(im, dtype=np.uint8) for im in prompt_images],
        "vae_images": vae_images, "vae_sizes": vae_sizes, "cond_sizes": cond_sizes,
        "pixel_values": np.ascontiguousarray(processed["pixel_values"], dtype=np.float32),
        "image_grid_thw": grid,
        "image_tokens": [int(np.prod(g)) // (merge * merge) for g in grid],
    }


def build_context(rules: QwenImageRules, tokenizer, request, opt: dict, fault: str | None = None):
    """Request → PixelContext as QwenImagePipeline / QwenImageEdit(Plus)Pipeline prepare it.

    ``tokens``: the whole chat template (the text encoder sees the prefix; its first ``drop_idx``
    hidden states are dropped afterwards), with ``<|image_pad|>`` expanded for edit models.
    ``latents``: the packed (B, seq, 4C) noise, drawn as (B, 1, C, h, w). ``latent_image_ids``:
    centred (frame, row, col) ids of the noise grid, then of each conditioning image on frames
    1, 2, ...; ``text_ids``: the diagonal ids that follow them. ``extra_model_args``: ``seed``,
    ``mu``, ``t_start`` (0), ``drop_idx``, and for edit models ``pixel_values`` /
    ``image_grid_thw`` (the VL encoder's image input) and the two resize targets.
    """
    from _fast import qwen_image_ids, qwen_text_ids
    from _fast.tokens import TokenBuffer
    from harness.context import PixelContext
    from harness.context.text import new_request_id
    from harness.errors import RequestError

    if fault is not None and fault not in TOKENIZER_FAULTS:
        raise ValueError(f"unknown tokenizer fault {fault!r}; known: {', '.join(TOKENIZER_FAULTS)}")
    spec = rules.spec
    if request.input_image is not None:
        raise RequestError(
            f"{spec.name} has no img2img mode: "
            + (f"give the image(s) to edit as input_images (1 to {spec.max_images})" if spec.edit
               else "it generates from text only"))
    height, width, steps, seed = opt["height"], opt["width"], opt["steps"], opt["seed"]
    if steps < rules.min_steps:
        raise RequestError(
            f"num_inference_steps must be at least {rules.min_steps} for this model, got {steps}: "
            f"its schedule stretches the last sigma to shift_terminal, which is 0/0 for a single "
            f"step (diffusers returns an all-NaN image)")
    batch = request.num_images_per_prompt
    edit = None
    if spec.edit:
        if not request.input_images:
            raise RequestError(f"{spec.name} edits images: give 1 to {spec.max_images} "
                               f"input image(s)")
        edit = _edit_inputs(rules, request, fault)
        # The output size defaults to the (last) input image's VAE size.
        if request.width is None:
            width = edit["vae_sizes"][-1][0]
        if request.height is None:
            height = edit["vae_sizes"][-1][1]

    image_tokens = edit["image_tokens"] if edit else []
    tokens = rules.encode_text(request.prompt, image_tokens)
    explicit_negative = request.negative_prompt is not None
    true_cfg = rules.uses_true_cfg(opt["true_cfg_scale"], explicit_negative)
    negative = rules.encode_text(request.negative_prompt, image_tokens) if true_cfg else None
    drop = rules.drop_idx - (1 if fault == "drop_off_by_one" else 0)

    timesteps, sigmas, mu = rules.schedule(steps, height, width,
                                           terminal=fault != "no_shift_terminal")
    noise = tokenizer._draw([rules.noise_shape(batch, height, width)], seed, request.noise)[0]
    shapes = [rules.token_grid(height, width)]
    if edit:
        shapes += [rules.token_grid(h, w) for w, h in edit["vae_sizes"]]

    text_ids = qwen_text_ids(len(tokens) - drop, shapes)
    longest = max(len(tokens), len(negative) if negative is not None else 0) - drop
    if int(text_ids[0, 0]) + longest > ROPE_POSITIONS:
        raise RequestError(f"prompt too long: {longest} tokens from rope position "
                           f"{int(text_ids[0, 0])} run past the transformer's {ROPE_POSITIONS} "
                           f"positions")
    extra: dict[str, Any] = {"seed": seed, "mu": mu, "t_start": 0, "drop_idx": drop}
    ctx_kw: dict[str, Any] = {}
    if negative is not None:
        ctx_kw.update(negative_tokens=TokenBuffer(negative),
                      negative_mask=np.ones(len(negative), dtype=bool),
                      negative_text_ids=qwen_text_ids(len(negative) - drop, shapes))
    if edit:
        ctx_kw.update(input_images=edit["originals"], prompt_images=edit["prompt_images"],
                      vae_condition_images=edit["vae_images"])
        extra.update(pixel_values=edit["pixel_values"], image_grid_thw=edit["image_grid_thw"],
                     vae_image_sizes=edit["vae_sizes"], condition_image_sizes=edit["cond_sizes"])
    return PixelContext(
        tokens=TokenBuffer(tokens),
        mask=np.ones(len(tokens), dtype=bool),
        request_id=request.request_id or new_request_id(),
        model_name=tokenizer.model_name,
        explicit_negative_prompt=explicit_negative,
        timesteps=timesteps,
        sigmas=sigmas,
        latents=rules.pack(noise),
        latent_image_ids=qwen_image_ids(shapes),
        text_ids=text_ids,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=opt["guidance"],
        true_cfg_scale=opt["true_cfg_scale"],
        strength=float(request.strength),
        num_images_per_prompt=batch,
        output_format=opt["format"],
        residual_threshold=request.residual_threshold,
        extra_model_args=extra,
        **ctx_kw,
    )


def _unsupported(sched: dict, transformer: dict) -> str | None:
    for key in ("use_beta_sigmas", "stochastic_sampling", "use_flow_sigmas"):
        if sched.get(key):
            return f"scheduler option {key!r}"
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


# --------------------------------------------------------------------------------------------------
# loading (tiny and real weights alike)


def load_components(folder: str | os.PathLike, *, device: str = "cpu",
                    dtype: str = "float32") -> dict:
    """text_encoder, transformer and vae with ``from_pretrained(..., local_files_only=True)``."""
    offline()
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    return load_pretrained(folder, {"text_encoder": Qwen2_5_VLForConditionalGeneration,
                                    "transformer": QwenImageTransformer2DModel,
                                    "vae": AutoencoderKLQwenImage}, device=device, dtype=dtype)


def _processor_class():
    from transformers import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class _Qwen2VLProcessorPil(Qwen2VLProcessor):
        """Qwen2VLProcessor without its video processor, whose class needs torchvision (transformers
        cannot even type-check a ``None`` one without it). Text and image handling are unchanged."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return _Qwen2VLProcessorPil


def qwen2vl_processor(image_processor, tokenizer):
    """A Qwen2VLProcessor over the PIL image processor (see ``_processor_class``)."""
    return _processor_class()(image_processor=image_processor, tokenizer=tokenizer)


def reference_pipeline(components: dict, folder: str | os.PathLike, **_):
    """diffusers' own pipeline of the folder's class over the same loaded modules, with the folder's
    scheduler, Qwen2Tokenizer and (edit) the PIL Qwen2-VL processor: the parity reference."""
    offline()
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import Qwen2Tokenizer

    folder = Path(folder)
    spec = rules(folder).spec
    kw = dict(components)
    kw["scheduler"] = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler",
                                                                      local_files_only=True)
    kw["tokenizer"] = Qwen2Tokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    if spec.edit:
        kw["processor"] = qwen2vl_processor(
            _image_processor(str(folder / "processor")),
            Qwen2Tokenizer.from_pretrained(folder / "processor", local_files_only=True))
    pipe = getattr(diffusers, spec.name)(**kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------------------------------
# the tiny recipe


def _templates_corpus() -> list[str]:
    """The templates' fixed text, twice each, so that every template word becomes one token (the
    34 / 64-token drops then cover exactly the system prefix, as with the real vocabulary)."""
    texts = [SPECS["QwenImagePipeline"].template.format(""), _EDIT_SYSTEM,
             "Picture 1: Picture 2: Picture 3: "]
    return texts * 2


def build_tiny(out: Path, *, pipeline: str = "QwenImagePipeline") -> None:
    """Write a tiny Qwen-Image (or edit) folder into ``out`` with ``save_pretrained``;
    deterministic."""
    offline()
    import torch
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler,
                           QwenImageTransformer2DModel)
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2Tokenizer)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil)
    from transformers.utils import logging as hf_logging

    from .chat_tokenizers import build_qwen_tokenizer
    from .vlm_common import redraw_weights

    hf_logging.disable_progress_bar()
    r = TINY_RECIPE
    out = Path(out)
    build_qwen_tokenizer(out / "tokenizer", extra_texts=_templates_corpus(),
                         specials=_QWEN_SPECIALS, chat_template=None, **r["tokenizer"])
    tok = Qwen2Tokenizer.from_pretrained(out / "tokenizer", local_files_only=True)
    ids = {s: tok.convert_tokens_to_ids(s) for s in _QWEN_SPECIALS}
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
    tcfg = dict(r["transformer"])
    tcfg["axes_dims_rope"] = tuple(tcfg["axes_dims_rope"])
    QwenImageTransformer2DModel(**tcfg).save_pretrained(out / "transformer",
                                                        safe_serialization=True)

    torch.manual_seed(r["seed"] + 2)
    AutoencoderKLQwenImage(**r["vae"]).save_pretrained(out / "vae", safe_serialization=True)

    FlowMatchEulerDiscreteScheduler(**r["scheduler"]).save_pretrained(out / "scheduler")
    index = {
        "_class_name": pipeline,
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
        index["processor"] = ["transformers", "Qwen2VLProcessor"]
    from diffusers import __version__ as diffusers_version

    index["_diffusers_version"] = diffusers_version
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
