"""Idefics3's and SmolVLM's rules (image splitting with row/column tokens and a global image):
an image is resized to the longest edge, then to multiples of the tile size, cut into rows ×
columns of tiles and followed by a global tile (the whole image at tile size); each tile is
``<fake_token_around_image><row_r_col_c>`` + ``<image>`` × image_seq_len, each row ends with
``\\n``, and the global tile is ``\\n<fake_token_around_image><global-img>`` + ``<image>`` ×
image_seq_len + ``<fake_token_around_image>`` — ``Idefics3Processor`` / ``SmolVLMProcessor``'s
``replace_image_token``. An image too small to split is the global tile alone.

One encoder input per image: all its tiles in one vision call (each tile's patches → a pixel
shuffle by ``scale_factor`` → image_seq_len rows). Its placeholder range runs from the first to
the last ``<image>`` of that image; the row/column tags, the tile separators and newlines inside
it receive no encoder row (``embedding_positions``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.env import offline_env
from harness.pipelines.vlm_family import ChatFormat, ImagePiece, PreparedImage, RowCount, VLMFamily

from ..vlm_common import config_matches, hf_processor, image_features, load_family, read_json

__all__ = ["FAMILY", "MODALITY", "CHAT", "Idefics3", "matches", "hf_classes", "load",
           "image_prompt"]

FAMILY = "idefics3"
MODALITY = "text"
#: SmolVLM's layout: one ``<|im_start|>`` (BOS), ``User:`` turns ending ``<end_of_utterance>\n``.
CHAT = ChatFormat("User:", "<end_of_utterance>\n", "Assistant:")
MODEL_TYPES = ("idefics3", "smolvlm")
#: Processor defaults (transformers 5.24) for folders whose processor_config.json leaves one out.
DEFAULT_IMAGE_SEQ_LEN = 169
FAKE, GLOBAL = "<fake_token_around_image>", "<global-img>"


def matches(folder) -> bool:
    return config_matches(folder, MODEL_TYPES)


def model_type_of(folder) -> str | None:
    return read_json(Path(folder) / "config.json").get("model_type")


def hf_classes(model_type: str = "idefics3") -> tuple:
    """``(model class, PIL image processor class)`` of Idefics3 or SmolVLM, imported offline."""
    offline_env()
    if model_type == "smolvlm":
        from transformers import SmolVLMForConditionalGeneration
        from transformers.models.smolvlm.image_processing_pil_smolvlm import (
            SmolVLMImageProcessorPil)

        return SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil
    from transformers import Idefics3ForConditionalGeneration
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil)

    return Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil


def image_prompt(rows: int, cols: int, seq_len: int, *, fake: str, image: str,
                 global_tag: str) -> str:
    """The text that replaces one image: its tiles row by row, then the global tile."""
    tile = image * seq_len
    if rows == 0 and cols == 0:
        return f"{fake}{global_tag}{tile}{fake}"
    text = "".join("".join(f"{fake}<row_{r + 1}_col_{c + 1}>{tile}" for c in range(cols)) + "\n"
                   for r in range(rows))
    return text + f"\n{fake}{global_tag}{tile}{fake}"


class Idefics3(VLMFamily):
    """Idefics3 / SmolVLM rules: tiles + global tile per image, tags inside the range."""

    @property
    def image_marker(self) -> str:
        return getattr(self.tokenizer, "image_token", None) or "<image>"

    @property
    def image_seq_len(self) -> int:
        value = self.processor_config.get("image_seq_len")
        return DEFAULT_IMAGE_SEQ_LEN if value is None else int(value)

    def _token(self, name: str, default: str) -> str:
        # SmolVLMProcessor reads the tokenizer's named tokens; Idefics3Processor uses the literals.
        if self.config.model_type == "smolvlm":
            return getattr(self.tokenizer, name, None) or default
        return default

    def prepare(self, image, options: dict | None = None) -> PreparedImage:
        kwargs = {"return_row_col_info": True, **(options or {}), "return_tensors": "np"}
        out = self.image_processor(images=[[image]], **kwargs)
        pv = np.ascontiguousarray(out["pixel_values"][0], dtype=np.float32)
        rows, cols = int(out["rows"][0][0]), int(out["cols"][0][0])
        text = image_prompt(rows, cols, self.image_seq_len,
                            fake=self._token("fake_image_token", FAKE), image=self.image_marker,
                            global_tag=self._token("global_image_token", GLOBAL))
        ids = np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        at = np.flatnonzero(ids == self.image_token_id)
        span = ids[at[0]:at[-1] + 1]
        piece = ImagePiece(pixel_values=pv, placeholder_ids=span.tolist(),
                           embedding_positions=at - at[0], meta={"rows": rows, "cols": cols})
        return PreparedImage(text=text, pieces=[piece])

    def encoder_rows(self, piece: ImagePiece) -> RowCount:
        vc = self.config.vision_config
        size, p = int(vc.image_size), int(vc.patch_size)
        scale = int(self.config.scale_factor)
        tiles, _, h, w = piece.pixel_values.shape
        if (h, w) != (size, size):
            return RowCount(-1, f"the image processor makes {h}×{w}-pixel tiles but the vision "
                                f"tower takes {size}×{size} (vision_config.image_size)")
        side = size // p
        if side % scale:
            return RowCount(-1, f"{side}×{side} patches cannot be pixel-shuffled by "
                                f"scale_factor {scale}")
        per_tile = (side // scale) ** 2
        grid = piece.meta["rows"] * piece.meta["cols"]
        if tiles != grid + 1 and not (grid == 0 and tiles == 1):
            return RowCount(-1, f"the image processor makes {tiles} tiles for a "
                                f"{piece.meta['rows']}×{piece.meta['cols']} split + global image")
        return RowCount(tiles * per_tile, f"{tiles} tiles of {side}×{side} patches pixel-"
                                          f"shuffled {scale}×{scale} (scale_factor)")

    def encode(self, image):
        return image_features(self.model, image.pixel_values)

    # -- the reference ----------------------------------------------------------------------------
    def build_reference_processor(self):
        if self.config.model_type == "smolvlm":
            from .reference import SmolVLMImageProcessor as cls
        else:
            from transformers import Idefics3Processor as cls
        return hf_processor(cls, self.folder, type(self.image_processor))

    def reference_pixels(self, inputs: dict) -> list[np.ndarray]:
        """The conversation's tiles (all images in one row of the batch) split per image: each
        image's tiles end with its global tile, found in the ids after ``<global-img>``."""
        pv = inputs.get("pixel_values")
        if pv is None:
            return []
        ids = np.asarray(inputs["input_ids"])[0]
        is_image = ids == self.image_token_id
        tag = self.token_id(self._token("global_image_token", GLOBAL))
        ends = [int(g) + 1 + self.image_seq_len for g in np.flatnonzero(ids == tag)]
        tiles, start = [], 0
        for end in ends:
            tiles.append(int(is_image[start:end].sum()) // self.image_seq_len)
            start = end
        tiles_all = np.asarray(pv[0], dtype=np.float32)
        return list(np.split(tiles_all[:sum(tiles)], np.cumsum(tiles)[:-1]))

    def context_inputs(self, ctx) -> dict:
        import torch

        ids = torch.as_tensor(np.asarray(ctx.tokens.prompt), dtype=torch.long)[None]
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if ctx.images:
            pv = np.concatenate([im.pixel_values for im in ctx.images])[None]
            out["pixel_values"] = torch.from_numpy(pv)
            out["pixel_attention_mask"] = torch.ones((1, pv.shape[1], *pv.shape[-2:]),
                                                     dtype=torch.long)
        return out


def load(folder, device: str = "cpu", dtype: str = "float32") -> Idefics3:
    """Load an Idefics3 or SmolVLM folder (tiny or real weights) offline, with the PIL image
    processor."""
    kind = model_type_of(folder) or "idefics3"
    return load_family(Idefics3, folder, hf_classes(kind), device=device, dtype=dtype,
                       family=FAMILY, chat=CHAT)
