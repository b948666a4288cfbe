"""Pixtral's rules: rows of ``[IMG]``×w separated by ``[IMG_BREAK]``, closed by ``[IMG_END]``;
which folders are Pixtral, and loading one offline.

Two checkpoint layouts share this one code path: ``Mistral3ForConditionalGeneration``
(Mistral-Small-3.1: Pixtral tower, 2×2 patch merger) and the original Pixtral layout,
``LlavaForConditionalGeneration`` with a ``pixtral`` vision tower (mistral-community/pixtral-12b:
no merger). The placeholder layout follows ``PixtralProcessor``: its image processor is called with
``patch_size = processor patch_size × spatial_merge_size`` (processor_config.json), whatever
patch size the image processor's own config stores (real checkpoints store the vision patch).

The placeholder range runs from the first to the last ``[IMG]`` (breaks inside, ``[IMG_END]``
outside); only ``[IMG]`` positions receive encoder rows (``embedding_positions``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.env import offline_env
from harness.pipelines.vlm_family import ChatFormat, ImagePiece, PreparedImage, RowCount, VLMFamily

from ..vlm_common import config_matches, hf_processor, image_features, load_family

__all__ = ["FAMILY", "MODALITY", "CHAT", "Pixtral", "matches", "hf_classes", "load",
           "model_class", "model_class_of_type"]

FAMILY = "pixtral"
MODALITY = "text"
CHAT = ChatFormat("[INST]", "[/INST]", "")

#: PixtralProcessor's defaults (transformers 5.24 processing_pixtral.py) for folders whose
#: processor_config.json leaves a setting out.
PROCESSOR_DEFAULTS = {"patch_size": 16, "spatial_merge_size": 1, "image_token": "[IMG]",
                      "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]"}


def matches(folder) -> bool:
    """Mistral3 folders, and LLaVA folders with a Pixtral vision tower (pixtral-12b)."""
    return (config_matches(folder, ("mistral3",))
            or config_matches(folder, ("llava",), vision_types=("pixtral",)))


def hf_classes() -> tuple:
    """``(model class, PIL image processor class)`` of Mistral3, transformers imported offline."""
    offline_env()
    from transformers import Mistral3ForConditionalGeneration
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    return Mistral3ForConditionalGeneration, PixtralImageProcessorPil


def model_class_of_type(model_type: str):
    """Mistral3ForConditionalGeneration, or LlavaForConditionalGeneration for the original
    Pixtral layout (``model_type`` "llava")."""
    offline_env()
    if model_type == "llava":
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration
    return hf_classes()[0]


def model_class(folder):
    """The model class of a Pixtral folder (see ``model_class_of_type``)."""
    return model_class_of_type("llava" if config_matches(folder, ("llava",)) else "mistral3")


class Pixtral(VLMFamily):
    """Pixtral rules: image-break tokens inside the range receive no encoder row."""

    def _setting(self, name: str):
        value = self.processor_config.get(name)
        return PROCESSOR_DEFAULTS[name] if value is None else value

    @property
    def image_marker(self) -> str:
        return str(self._setting("image_token"))

    @property
    def vision_token_ids(self) -> list[int]:
        return [self.image_token_id, self.token_id(self._setting("image_break_token"))]

    @property
    def merged_tower(self) -> bool:
        """Mistral3 (patch merger) rather than the LLaVA layout."""
        return self.config.model_type == "mistral3"

    @property
    def step(self) -> int:
        """Pixels per [IMG] side, as PixtralProcessor computes it (processor settings)."""
        return int(self._setting("patch_size")) * int(self._setting("spatial_merge_size"))

    def prepare(self, image, options: dict | None = None) -> PreparedImage:
        step = self.step
        # PixtralProcessor._process_images: patch_size = patch × merge overrides the rest.
        out = self.image_processor(images=[image], return_tensors="np",
                                   **{**(options or {}), "patch_size": step})
        h, w = (int(x) for x in out["image_sizes"][0])
        rows, cols = h // step, w // step
        img, brk, end = (self._setting(k) for k in ("image_token", "image_break_token",
                                                      "image_end_token"))
        tokens = ([img] * cols + [brk]) * rows
        tokens[-1] = end
        img_id, brk_id = self.image_token_id, self.token_id(brk)
        ids = ([img_id] * cols + [brk_id]) * rows
        ids = ids[:-1]  # the range stops before [IMG_END]
        pv = out["pixel_values"][0][:, :h, :w]
        piece = ImagePiece(pixel_values=np.ascontiguousarray(pv, np.float32), placeholder_ids=ids,
                           embedding_positions=np.flatnonzero(np.asarray(ids) == img_id))
        return PreparedImage(text="".join(tokens), pieces=[piece])

    def encoder_rows(self, piece: ImagePiece) -> RowCount:
        vc = self.config.vision_config
        p = int(vc.patch_size)
        h, w = piece.pixel_values.shape[-2:]
        side = int(vc.image_size) // p
        if h % p or w % p:
            return RowCount(-1, f"the image processor makes {h}×{w} pixels, not a multiple of the "
                                f"vision patch {p}")
        if max(h, w) // p > side:
            return RowCount(-1, f"the image processor makes {h}×{w} pixels but the vision tower "
                                f"takes at most {side * p} per side (vision_config.image_size)")
        if self.merged_tower:
            m = int(self.config.spatial_merge_size)
            if (h // p) % m or (w // p) % m:
                return RowCount(-1, f"{h // p}×{w // p} patches cannot be merged {m}×{m} "
                                    f"(spatial_merge_size)")
            return RowCount((h // p // m) * (w // p // m),
                            f"{h // p}×{w // p} patches of {p} px merged {m}×{m}")
        strategy = getattr(self.config, "vision_feature_select_strategy", "full")
        rows = (h // p) * (w // p) - (1 if strategy == "default" else 0)
        return RowCount(rows, f"{h // p}×{w // p} patches of {p} px, "
                              f"vision_feature_select_strategy {strategy!r}")

    def encode(self, image):
        import torch

        sizes = torch.tensor([list(image.pixel_values.shape[-2:])], dtype=torch.long)
        return image_features(self.model, image.pixel_values, image_sizes=sizes)

    def build_reference_processor(self):
        from .reference import PixtralProcessorPil

        return hf_processor(PixtralProcessorPil, self.folder, type(self.image_processor))

    def reference_pixels(self, inputs: dict) -> list[np.ndarray]:
        """The processor's padded batch cut back to each image's own size."""
        pv = inputs.get("pixel_values")
        if pv is None:
            return []
        sizes = np.asarray(inputs["image_sizes"])
        return [np.asarray(pv[i][:, :h, :w], dtype=np.float32)
                for i, (h, w) in enumerate(sizes.tolist())]

    def context_inputs(self, ctx) -> dict:
        import torch

        ids = torch.as_tensor(np.asarray(ctx.tokens.prompt), dtype=torch.long)[None]
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
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
    """Load a Pixtral folder (Mistral3 or the LLaVA layout; tiny or real weights) offline, with the
    PIL image processor."""
    classes = (model_class(folder), hf_classes()[1])
    return load_family(Pixtral, Path(folder), classes, device=device, dtype=dtype,
                       family=FAMILY, chat=CHAT)
