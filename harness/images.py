"""Input images and pixel sizes, as every family takes them: loading (path, PIL or uint8 array →
RGB PIL), diffusers' VAE preprocessing, and the size check of a requested height/width."""
from __future__ import annotations

import math
import numbers
import os
from typing import Any

import numpy as np

from harness.errors import RequestError

__all__ = ["load_input_image", "load_image", "preprocess_image", "check_size", "is_int",
           "is_real", "MAX_IMAGE_SIDE"]

#: Largest image side a VLM request may carry before any family-specific resizing.
MAX_IMAGE_SIDE = 8192


def is_int(v) -> bool:
    """An integer that is not a bool (numpy integers included)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v) -> bool:
    """A finite real number that is not a bool (numpy floats included)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def check_size(name: str, value, multiple: int) -> int:
    """``value`` as an int number of pixels, at least and a multiple of ``multiple``."""
    if not is_int(value):
        raise RequestError(f"{name} must be an integer number of pixels, got {value!r}")
    if value < multiple:
        raise RequestError(f"{name} must be at least {multiple} pixels, got {value}")
    if value % multiple:
        raise RequestError(f"{name} must be a multiple of {multiple}, got {value} "
                           f"(nearest: {value // multiple * multiple} or "
                           f"{(value // multiple + 1) * multiple})")
    return int(value)


def _from_source(source: Any, what: str, name: str):
    """Path, PIL image or uint8 HxW / HxWxC array → RGB PIL image (bad input → RequestError).

    ``what`` names the image in messages about a file or an array ("input image"), ``name`` the
    argument in the message about a wrong type ("input_image")."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise RequestError(f"{what} not found: {path!r}")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise RequestError(f"cannot read {what} {path!r}: {exc}") from None
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or not (
                source.ndim == 2 or (source.ndim == 3 and source.shape[2] in (1, 3, 4))):
            raise RequestError(f"{what} arrays must be uint8 HxW, HxWx1, HxWx3 or HxWx4, got "
                               f"{source.dtype} {source.shape}")
        if source.size == 0:
            raise RequestError(f"{what} array is empty: shape {source.shape}")
        arr = source[:, :, 0] if source.ndim == 3 and source.shape[2] == 1 else source
        return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
    raise RequestError(f"{name} must be a path, a PIL image or a uint8 array, got "
                       f"{type(source).__name__}")


def load_input_image(source: Any):
    """An image-generation input image (img2img or conditioning) as an RGB PIL image."""
    return _from_source(source, "input image", "input_image")


def load_image(source: Any, max_side: int = MAX_IMAGE_SIDE):
    """A VLM request's image as an RGB PIL image, each side in ``[1, max_side]``."""
    image = _from_source(source, "image", "an image")
    if min(image.size) < 1 or max(image.size) > max_side:
        raise RequestError(f"image of {image.size[0]}x{image.size[1]} pixels is too large for "
                           f"the model (each side must be in [1, {max_side}])")
    return image


def preprocess_image(image, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(resized uint8 HxWx3, normalised float32 1xHxWx3) exactly as diffusers' VaeImageProcessor.

    VaeImageProcessor.preprocess: PIL resize (Lanczos) → ``np.float32 / 255.0`` →
    ``2.0 * x - 1.0``; the same float32 operations in numpy give the same bits. It hands the VAE
    an NCHW *view* of this NHWC buffer (channels-last strides), so the loop must do the same: the
    convolution path, and with it the bits, depend on the memory layout.
    """
    from PIL import Image

    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.uint8)
    x = 2.0 * (pixels.astype(np.float32) / 255.0) - 1.0
    return pixels, x.reshape((1,) + x.shape).copy()  # copy: plain strides, not a 0-stride axis
