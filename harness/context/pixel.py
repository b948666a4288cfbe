"""PixelContext: the numbers-only, model-ready context of an image-generation request."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from _fast.tokens import TokenBuffer

from ._equality import values_equal
from .outputs import GenerationOutput, ImageContent, check_output_format
from .status import GenerationStatus
from .text import new_request_id

__all__ = ["PixelContext", "VideoPixelContext", "VIDEO_FORMATS"]

#: Containers a VideoPixelContext encodes its frames into (``harness.video`` writes them).
VIDEO_FORMATS = ("mp4", "webp", "gif")


def _f32() -> np.ndarray:
    return np.zeros(0, dtype=np.float32)


def _i64() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(kw_only=True, eq=False)
class PixelContext:
    """Everything the denoise loop needs, prepared by ``PixelGenerationTokenizer.new_context()``.

    Prompts are consumed by the tokenizer; only tokens, masks, schedules, noise, ids and
    preprocessed images live here. ``extra_model_args`` carries family-specific arrays (e.g. the
    noise of the img2img VAE sample) under documented names.
    """

    tokens: TokenBuffer
    request_id: str = field(default_factory=new_request_id)
    model_name: str = ""
    mask: np.ndarray | None = None
    tokens_2: TokenBuffer | None = None
    negative_tokens: TokenBuffer | None = None
    negative_mask: np.ndarray | None = None
    negative_tokens_2: TokenBuffer | None = None
    explicit_negative_prompt: bool = False
    timesteps: np.ndarray = field(default_factory=_f32)
    sigmas: np.ndarray = field(default_factory=_f32)
    latents: np.ndarray = field(default_factory=_f32)
    latent_image_ids: np.ndarray = field(default_factory=_f32)
    text_ids: np.ndarray = field(default_factory=_i64)
    negative_text_ids: np.ndarray = field(default_factory=_i64)
    height: int = 1024
    width: int = 1024
    num_inference_steps: int = 50
    guidance_scale: float = 3.5
    true_cfg_scale: float = 1.0
    strength: float = 0.6
    cfg_normalization: bool = False
    cfg_truncation: float = 1.0
    num_warmup_steps: int = 0
    num_images_per_prompt: int = 1
    input_image: np.ndarray | None = None
    input_images: list[np.ndarray] | None = None
    prompt_images: list[np.ndarray] | None = None
    vae_condition_images: list[np.ndarray] | None = None
    output_format: str = "jpeg"
    residual_threshold: float | None = None
    status: GenerationStatus = GenerationStatus.ACTIVE
    extra_model_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, TokenBuffer):
            raise TypeError(f"tokens must be a TokenBuffer, got {type(self.tokens).__name__}")
        self.status = GenerationStatus(self.status)
        self.output_format = self._check_format(self.output_format)
        if self.residual_threshold is not None and not self.residual_threshold > 0:
            raise ValueError(
                f"residual_threshold must be > 0 when given, got {self.residual_threshold!r}")

    def __eq__(self, other):
        """Equal when every field is equal (as MAX's dataclass): token buffers by content and
        state, numpy arrays (masks, schedules, latents, ids, images) by shape, dtype and values.

        Unhashable (``__hash__ = None``): the context is mutable; key it by ``request_id``."""
        if other.__class__ is not self.__class__:
            return NotImplemented
        if self is other:
            return True
        return all(values_equal(getattr(self, f.name), getattr(other, f.name))
                   for f in fields(self))

    __hash__ = None

    @staticmethod
    def _check_format(fmt: str) -> str:
        return check_output_format(fmt)

    @property
    def is_done(self) -> bool:
        return self.status.is_done

    def compute_num_available_steps(self, max_seq_len: int) -> int:
        """Scheduler compatibility: an image request always needs its inference steps."""
        return self.num_inference_steps

    def update(self, latents: np.ndarray) -> None:
        """Replace the latents (or, at the end, the decoded image)."""
        self.latents = latents

    def reset(self) -> None:
        self.status = GenerationStatus.ACTIVE

    def to_generation_output(self) -> GenerationOutput:
        """Encode the HxW / HxWxC image (or NxHxWxC batch) held in ``latents``."""
        arr = np.asarray(self.latents)
        if arr.size == 0:
            raise ValueError("to_generation_output() needs an image in latents, but they are empty")
        if arr.ndim == 4 and arr.shape[-1] in (1, 3, 4):
            images = list(arr)
        elif arr.ndim in (2, 3):
            images = [arr]
        else:
            raise ValueError(
                f"to_generation_output() needs an HxW, HxWxC or NxHxWxC (C in 1, 3, 4) image in "
                f"latents, got "
                f"shape {arr.shape}")
        out = []
        for im in images:
            if im.dtype != np.uint8:
                im = np.clip(np.nan_to_num(im.astype(np.float64)), 0, 255).astype(np.uint8)
            out.append(ImageContent.from_array(im, self.output_format))
        return GenerationOutput(request_id=self.request_id, final_status=self.status, output=out)


@dataclass(kw_only=True, eq=False)
class VideoPixelContext(PixelContext):
    """A PixelContext for video (Wan, as MAX serves it): the frame count (``4k+1``, k the VAE's
    temporal factor), the frame rate, Wan 2.2's second guidance scale and expert boundary, and the
    scheduler's precomputed per-step coefficient table (``_fast.unipc`` columns; empty for an
    Euler schedule). ``latents`` hold the (B, C, F', h, w) noise, and at the end the uint8
    (F, H, W, 3) or (B, F, H, W, 3) frames that ``to_generation_output`` encodes."""

    num_frames: int = 81
    frame_rate: int = 16
    temporal_factor: int = 4
    guidance_scale_2: float | None = None
    boundary_timestep: float | None = None
    step_coefficients: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    output_format: str = "mp4"

    def __post_init__(self) -> None:
        super().__post_init__()
        n, k = self.num_frames, self.temporal_factor
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1 or (n - 1) % k:
            raise ValueError(f"num_frames must be a positive integer of the form {k}k+1, got "
                             f"{n!r}")
        if not isinstance(self.frame_rate, (int, np.integer)) or not 1 <= self.frame_rate <= 240:
            raise ValueError(f"frame_rate must be an integer in [1, 240], got "
                             f"{self.frame_rate!r}")

    @staticmethod
    def _check_format(fmt: str) -> str:
        key = str(fmt).lower()
        if key not in VIDEO_FORMATS:
            raise ValueError(f"video output format {fmt!r} is not supported; allowed: "
                             f"{', '.join(VIDEO_FORMATS)}")
        return key

    def to_generation_output(self) -> GenerationOutput:
        """One encoded video per batch entry from the uint8 frames held in ``latents``."""
        from harness.video import encode_video

        arr = np.asarray(self.latents)
        if arr.ndim == 4:
            arr = arr[None]
        if arr.ndim != 5 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or arr.size == 0:
            raise ValueError(f"to_generation_output() needs uint8 (F, H, W, 3) or (B, F, H, W, 3) "
                             f"frames in latents, got {arr.dtype} {arr.shape}")
        out = [ImageContent(data=encode_video(v, self.output_format, self.frame_rate),
                            format=self.output_format, width=int(v.shape[2]),
                            height=int(v.shape[1])) for v in arr]
        return GenerationOutput(request_id=self.request_id, final_status=self.status, output=out)
