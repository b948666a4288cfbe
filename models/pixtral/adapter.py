"""Pixtral (Mistral3)'s rules: rows of ``[IMG]``×w separated by ``[IMG_BREAK]``, closed by
``[IMG_END]``; which folders are Mistral3, and loading one offline.

The placeholder range runs from the first to the last ``[IMG]`` (breaks inside, ``[IMG_END]``
outside); only ``[IMG]`` positions receive encoder rows (``embedding_positions``).
"""
from __future__ import annotations

import numpy as np

from harness.env import offline_env
from harness.pipelines.vlm_family import ChatFormat, PreparedImage, VLMFamily

from ..vlm_common import config_matches, image_features, load_family

__all__ = ["FAMILY", "MODALITY", "CHAT", "Pixtral", "matches", "hf_classes", "load"]

FAMILY = "pixtral"
MODALITY = "text"
CHAT = ChatFormat("[INST]", "[/INST]", "")


def matches(folder) -> bool:
    return config_matches(folder, ("mistral3",))


def hf_classes() -> tuple:
    """``(model class, PIL image processor class)`` of Mistral3, transformers imported offline."""
    offline_env()
    from transformers import Mistral3ForConditionalGeneration
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    return Mistral3ForConditionalGeneration, PixtralImageProcessorPil


class Pixtral(VLMFamily):
    """Mistral3 rules: image-break tokens inside the range receive no encoder row."""

    @property
    def vision_token_ids(self) -> list[int]:
        return [self.image_token_id, self.token_id("[IMG_BREAK]")]

    @property
    def downsample(self) -> int:
        return int(self.config.vision_config.patch_size) * int(self.config.spatial_merge_size)

    def preprocess(self, image) -> PreparedImage:
        out = self.image_processor(images=[image], return_tensors="np")
        h, w = (int(x) for x in out["image_sizes"][0])
        rows, cols = h // self.downsample, w // self.downsample
        img, brk, end = self.image_token_id, self.token_id("[IMG_BREAK]"), \
            self.token_id("[IMG_END]")
        ids = ([img] * cols + [brk]) * rows
        ids[-1] = end
        pv = out["pixel_values"][0][:, :h, :w]
        positions = np.flatnonzero(np.asarray(ids[:-1]) == img)
        return PreparedImage(pixel_values=np.ascontiguousarray(pv, np.float32), ids=ids,
                             range_start=0, range_end=len(ids) - 1,
                             embedding_positions=positions)

    def encode(self, image):
        import torch

        sizes = torch.tensor([list(image.pixel_values.shape[-2:])], dtype=torch.long)
        return image_features(self.model, image.pixel_values, image_sizes=sizes)

    def reference_inputs(self, ctx) -> dict:
        import torch

        out = self.prompt_inputs(ctx)
        if ctx.images:
            shapes = [im.pixel_values.shape[-2:] for im in ctx.images]
            hmax, wmax = max(s[0] for s in shapes), max(s[1] for s in shapes)
            pv = np.zeros((len(shapes), 3, hmax, wmax), dtype=np.float32)
            for i, im in enumerate(ctx.images):
                pv[i, :, :shapes[i][0], :shapes[i][1]] = im.pixel_values
            out["pixel_values"] = torch.from_numpy(pv)
            out["image_sizes"] = torch.tensor([list(s) for s in shapes], dtype=torch.long)
        return out


def load(folder, device: str = "cpu", dtype: str = "float32") -> Pixtral:
    """Load a Mistral3 / Pixtral folder (tiny or real weights) offline, PIL image processor."""
    return load_family(Pixtral, folder, hf_classes(), device=device, dtype=dtype, family=FAMILY,
                       chat=CHAT)
