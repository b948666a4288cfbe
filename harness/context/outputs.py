"""What a request hands back: text tokens with optional log-probs, or encoded images."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .status import GenerationStatus

__all__ = [
    "LogProbabilities",
    "TextGenerationOutput",
    "ImageContent",
    "GenerationOutput",
    "OUTPUT_FORMATS",
]

#: Image encodings the harness writes (Pillow format names in the values).
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


@dataclass
class LogProbabilities:
    """Log-probabilities of sampled tokens and of the top alternatives at each step."""

    token_log_probabilities: list[float]
    top_log_probabilities: list[dict[int, float]]
    sampled_token_ids: list[int] = field(default_factory=list)


@dataclass
class TextGenerationOutput:
    """Tokens produced since the last output of a text request."""

    request_id: str
    tokens: list[int]
    final_status: GenerationStatus
    log_probabilities: list[LogProbabilities] | None = None
    num_cached_tokens: int | None = None

    @property
    def is_done(self) -> bool:
        return GenerationStatus(self.final_status).is_done

    @classmethod
    def merge(cls, outputs: list["TextGenerationOutput"]) -> "TextGenerationOutput":
        """Concatenate streamed chunks: status of the last, cached count of the first."""
        if not outputs:
            raise ValueError("Cannot combine empty list of chunks")
        with_lp = [o.log_probabilities is not None for o in outputs]
        if any(with_lp) and not all(with_lp):
            raise ValueError(
                "Cannot combine TextGenerationOutput chunks with mixed None and non-None "
                f"log_probabilities ({sum(with_lp)} of {len(outputs)} chunks carry them)")
        tokens = [t for o in outputs for t in o.tokens]
        lps = [lp for o in outputs for lp in o.log_probabilities] if all(with_lp) else None
        return cls(
            request_id=outputs[0].request_id,
            tokens=tokens,
            final_status=outputs[-1].final_status,
            log_probabilities=lps,
            num_cached_tokens=outputs[0].num_cached_tokens,
        )


def _check_image_array(array: Any) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise ValueError(f"image array must be uint8, got {array.dtype}")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)):
        if array.shape[0] == 0 or array.shape[1] == 0:
            raise ValueError(f"image array must not be empty, got shape {array.shape}")
        return array
    raise ValueError(
        f"image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")


def check_output_format(fmt: str) -> str:
    key = str(fmt).lower()
    if key == "jpg":
        key = "jpeg"
    if key not in OUTPUT_FORMATS:
        raise ValueError(f"output format {fmt!r} is not supported; allowed: png, jpeg, webp")
    return key


@dataclass
class ImageContent:
    """One encoded image: the bytes Pillow wrote and the format they are in."""

    data: bytes
    format: str
    width: int
    height: int

    @classmethod
    def from_array(cls, array: np.ndarray, output_format: str = "png") -> "ImageContent":
        from PIL import Image

        fmt = check_output_format(output_format)
        arr = _check_image_array(array)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if fmt == "jpeg" and arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[:, :, :3]  # JPEG has no alpha channel
        image = Image.fromarray(np.ascontiguousarray(arr))
        buf = io.BytesIO()
        kwargs = {"quality": 95} if fmt in ("jpeg", "webp") else {}
        image.save(buf, format=OUTPUT_FORMATS[fmt], **kwargs)
        return cls(data=buf.getvalue(), format=fmt, width=arr.shape[1], height=arr.shape[0])


@dataclass
class GenerationOutput:
    """Output of an image-generation request."""

    request_id: str
    final_status: GenerationStatus
    output: list[ImageContent] = field(default_factory=list)
    usage: dict[str, Any] | None = None

    @property
    def is_done(self) -> bool:
        return GenerationStatus(self.final_status).is_done
