"""TextAndVisionContext and ImageMetadata: text requests with image placeholder ranges.

Image-range queries (next image, window, alignment, bisect check) are bisections in compiled
code over the sorted, non-overlapping ranges.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ._equality import values_equal
from .text import TextContext

__all__ = ["ImageMetadata", "TextAndVisionContext"]


@dataclass(kw_only=True, eq=False)
class ImageMetadata:
    """One image in the prompt: its placeholder range ``[start_idx, end_idx)`` and pixels.

    Optional model-specific fields: ``grid_thw`` (Qwen2-VL's merged patch grid) and
    ``embedding_positions`` (offsets inside the range that receive encoder rows; ``None`` means
    every position, as for LLaVA; Pixtral's image-break tokens receive none).
    """

    start_idx: int
    end_idx: int
    pixel_values: np.ndarray
    image_hash: int | None = None
    grid_thw: tuple[int, int, int] | None = None
    embedding_positions: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.start_idx < 0:
            raise ValueError(
                f"Images must have a valid start index: start_idx={self.start_idx} must be >= 0")
        if self.end_idx <= self.start_idx:
            raise ValueError(
                f"Images must have a valid start and end index containing at least one "
                f"<vision_token_id>: end_idx ({self.end_idx}) must be greater than start_idx "
                f"({self.start_idx})")
        if self.embedding_positions is not None:
            pos = np.asarray(self.embedding_positions, dtype=np.int64)
            if pos.ndim != 1 or (pos.size and (pos.min() < 0 or
                                               pos.max() >= self.end_idx - self.start_idx)):
                raise ValueError(
                    f"embedding_positions must be 1-D offsets in [0, {self.end_idx - self.start_idx})")
            self.embedding_positions = pos

    @property
    def num_tokens(self) -> int:
        return self.end_idx - self.start_idx

    @property
    def num_embeddings(self) -> int:
        """Encoder rows this image needs (placeholders that receive an embedding)."""
        if self.embedding_positions is None:
            return self.end_idx - self.start_idx
        return int(self.embedding_positions.shape[0])

    def __eq__(self, other):
        """Equal when every field is equal; ``pixel_values`` and ``embedding_positions`` by
        content (shape, dtype, values).

        Unhashable (``__hash__ = None``): the fields are mutable and the pixels are an array;
        ``image_hash`` is the content key for caches."""
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(values_equal(getattr(self, f.name), getattr(other, f.name))
                   for f in fields(self))

    __hash__ = None

    def __repr__(self) -> str:
        shape = getattr(self.pixel_values, "shape", None)
        return (f"ImageMetadata(start_idx={self.start_idx}, end_idx={self.end_idx}, "
                f"pixel_values={shape})")


class TextAndVisionContext(TextContext):
    """A text request whose prompt holds image placeholder ranges (MAX's TextAndVisionContext)."""

    def __init__(
        self,
        *,
        vision_token_ids: list[int],
        images: list[ImageMetadata] | None = None,
        extra_model_args: dict[str, np.ndarray] | None = None,
        **text_fields: Any,
    ) -> None:
        super().__init__(**text_fields)
        if isinstance(vision_token_ids, (int, np.integer)):
            raise TypeError("vision_token_ids must be a list of token ids, not a single id")
        self.vision_token_ids = [int(t) for t in vision_token_ids]
        if not self.vision_token_ids:
            raise ValueError("vision_token_ids must name at least one token id")
        self.extra_model_args = dict(extra_model_args) if extra_model_args else {}
        self.images = list(images) if images else []

    # -- images -----------------------------------------------------------------------------------
    @property
    def images(self) -> list[ImageMetadata]:
        return self.__dict__["_images"]

    @images.setter
    def images(self, images: list[ImageMetadata]) -> None:
        images = list(images)
        self._check_images(images)
        self._install(images)
        self._validate_state()

    def _install(self, images: list[ImageMetadata]) -> None:
        self.__dict__["_images"] = images
        starts = np.fromiter((im.start_idx for im in images), dtype=np.int64, count=len(images))
        ends = np.fromiter((im.end_idx for im in images), dtype=np.int64, count=len(images))
        self._set_image_ranges(images, starts, ends)

    def _check_images(self, images: list[ImageMetadata]) -> None:
        for im in images:
            if not isinstance(im, ImageMetadata):
                raise TypeError(f"images must be ImageMetadata, got {type(im).__name__}")
        for a, b in zip(images, images[1:]):
            if b.start_idx < a.start_idx:
                raise ValueError(f"Images must be sorted: {a!r} comes before {b!r}")
        for a, b in zip(images, images[1:]):
            if a.end_idx > b.start_idx:
                raise ValueError(f"Images must be non-overlapping: {a!r} and {b!r}")
        n = len(self.tokens)
        for im in images:
            if im.end_idx > n:
                raise ValueError(
                    f"Images must be before the end of the token array ({n} tokens): {im!r}")
        allowed = set(self.vision_token_ids)
        tokens = self.tokens.all
        for im in images:
            first, last = int(tokens[im.start_idx]), int(tokens[im.end_idx - 1])
            if first not in allowed or last not in allowed:
                raise ValueError(
                    f"Images must be filled with <vision_token_id> ({self.vision_token_ids}): "
                    f"{im!r} starts with token {first} and ends with token {last}")

    def _after_restore(self) -> None:
        self._install(self.__dict__["_images"])

    @property
    def image_token_indices(self) -> np.ndarray:
        """Absolute positions of every image-placeholder token (int32)."""
        if not self.images:
            return np.zeros(0, dtype=np.int32)
        return np.concatenate(
            [np.arange(im.start_idx, im.end_idx, dtype=np.int32) for im in self.images])

    def __repr__(self) -> str:
        return (f"TextAndVisionContext(request_id={self.request_id!r}, "
                f"status={self.status.value}, images={len(self.images)}, "
                f"image_idx={self.image_idx}, tokens={self.tokens!r})")
