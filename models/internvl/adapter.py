"""InternVL's rules (dynamic tiles, pixel shuffle): an image is resized to the tile grid whose
aspect ratio is closest to its own (between ``min_patches`` and ``max_patches`` tiles) and cut
into those tiles, plus a thumbnail of the whole image when there is more than one; each tile's
patches (CLS dropped) are pixel-shuffled by ``downsample_ratio`` into image_seq_length rows. The
prompt holds ``<img>`` + ``<IMG_CONTEXT>`` × (image_seq_length × tiles) + ``</img>`` per image
(``InternVLProcessor.replace_image_token``; the chat template writes one ``<IMG_CONTEXT>`` per
image, which the processor expands). ``InternVLProcessor`` turns tiling on
(``crop_to_patches=True``) whatever the folder's image processor says; the harness does the same.

One encoder input per image: all its tiles in one vision call; the range is the ``<IMG_CONTEXT>``
run, ``<img>`` / ``</img>`` lie outside it.
"""
from __future__ import annotations

import numpy as np

from harness.env import offline_env
from harness.pipelines.vlm_family import ChatFormat, ImagePiece, PreparedImage, RowCount, VLMFamily

from ..vlm_common import (config_matches, hf_processor, image_features, image_only_processor,
                          load_family)

__all__ = ["FAMILY", "MODALITY", "CHAT", "InternVL", "matches", "hf_classes", "load",
           "processor_image_defaults"]

FAMILY = "internvl"
MODALITY = "text"
CHAT = ChatFormat("<|im_start|>user\n", "<|im_end|>\n", "<|im_start|>assistant\n", add_bos=False,
                  image_separator="\n")
#: InternVLProcessor's image_seq_length default (transformers 5.24 processing_internvl.py).
DEFAULT_IMAGE_SEQ_LENGTH = 256


def matches(folder) -> bool:
    """transformers' InternVL layout (``-hf`` repositories); the original remote-code
    ``internvl_chat`` folders are not this layout."""
    return config_matches(folder, ("internvl",))


def hf_classes() -> tuple:
    """``(model class, PIL image processor class)`` of InternVL, transformers imported offline."""
    offline_env()
    from transformers import InternVLForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil)

    return InternVLForConditionalGeneration, GotOcr2ImageProcessorPil


def processor_image_defaults() -> dict:
    """The image options ``InternVLProcessor`` passes on every call (its ``images_kwargs``)."""
    from transformers.models.internvl.processing_internvl import InternVLProcessor

    return dict(InternVLProcessor.images_kwargs)


class InternVL(VLMFamily):
    """InternVL rules: image_seq_length context tokens per tile between <img> and </img>."""

    @property
    def image_marker(self) -> str:
        return self.tokenizer.context_image_token

    @property
    def image_seq_length(self) -> int:
        value = self.processor_config.get("image_seq_length")
        return DEFAULT_IMAGE_SEQ_LENGTH if value is None else int(value)

    def prepare(self, image, options: dict | None = None) -> PreparedImage:
        kwargs = {**processor_image_defaults(), **(options or {}), "return_tensors": "np"}
        out = self.image_processor(images=[image], **kwargs)
        pv = np.ascontiguousarray(out["pixel_values"], dtype=np.float32)
        tiles = int(np.asarray(out["num_patches"]).reshape(-1)[0])
        n = self.image_seq_length * tiles
        tok = self.tokenizer
        piece = ImagePiece(pixel_values=pv, placeholder_ids=[self.image_token_id] * n)
        text = f"{tok.start_image_token}{self.image_marker * n}{tok.end_image_token}"
        return PreparedImage(text=text, pieces=[piece])

    def encoder_rows(self, piece: ImagePiece) -> RowCount:
        cfg = self.config
        vc = cfg.vision_config
        size = tuple(int(x) for x in (vc.image_size if isinstance(vc.image_size, (list, tuple))
                                      else (vc.image_size, vc.image_size)))
        patch = tuple(int(x) for x in (vc.patch_size if isinstance(vc.patch_size, (list, tuple))
                                       else (vc.patch_size, vc.patch_size)))
        tiles, _, h, w = piece.pixel_values.shape
        if (h, w) != size:
            return RowCount(-1, f"the image processor makes {h}×{w}-pixel tiles but the vision "
                                f"tower takes {size[0]}×{size[1]} (vision_config.image_size)")
        if cfg.vision_feature_select_strategy != "default":
            return RowCount(-1, f"vision_feature_select_strategy "
                                f"{cfg.vision_feature_select_strategy!r} keeps the CLS row, "
                                f"which the pixel shuffle cannot lay out as a square grid")
        side = size[0] // patch[0]
        shuffled = int(side * cfg.downsample_ratio)
        if shuffled * shuffled != int(side * side * cfg.downsample_ratio ** 2):
            return RowCount(-1, f"{side}×{side} patches cannot be pixel-shuffled by "
                                f"downsample_ratio {cfg.downsample_ratio}")
        return RowCount(tiles * shuffled * shuffled,
                        f"{tiles} tiles of {side}×{side} patches pixel-shuffled to "
                        f"{shuffled}×{shuffled} (downsample_ratio {cfg.downsample_ratio})")

    def encode(self, image):
        return image_features(self.model, image.pixel_values, batched=False)

    # -- the reference ----------------------------------------------------------------------------
    def build_reference_processor(self):
        from transformers.models.internvl.processing_internvl import InternVLProcessor

        return hf_processor(image_only_processor(InternVLProcessor), self.folder,
                            type(self.image_processor))

    def reference_pixels(self, inputs: dict) -> list[np.ndarray]:
        """The processor's tiles (all images in a row) split per image by its context run."""
        pv = inputs.get("pixel_values")
        if pv is None:
            return []
        ids = np.asarray(inputs["input_ids"])[0]
        ctx = (ids == self.image_token_id).astype(np.int8)
        starts = np.flatnonzero(np.diff(np.concatenate([[0], ctx])) == 1)
        ends = np.flatnonzero(np.diff(np.concatenate([ctx, [0]])) == -1) + 1
        tiles = [(e - s) // self.image_seq_length for s, e in zip(starts, ends)]
        pv = np.asarray(pv, dtype=np.float32)
        return list(np.split(pv[:sum(tiles)], np.cumsum(tiles)[:-1]))

    def context_inputs(self, ctx) -> dict:
        import torch

        ids = torch.as_tensor(np.asarray(ctx.tokens.prompt), dtype=torch.long)[None]
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if ctx.images:
            out["pixel_values"] = torch.from_numpy(
                np.concatenate([im.pixel_values for im in ctx.images]))
        return out


def load(folder, device: str = "cpu", dtype: str = "float32") -> InternVL:
    """Load an InternVL folder (tiny or real weights) offline, with the PIL image processor."""
    return load_family(InternVL, folder, hf_classes(), device=device, dtype=dtype, family=FAMILY,
                       chat=CHAT)
