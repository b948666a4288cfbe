"""LLaVA's rules: ``<image>`` × N placeholders, N from the processor's settings (patch size,
``vision_feature_select_strategy``, ``num_additional_image_tokens``) exactly as
``LlavaProcessor.replace_image_token`` counts them; the encoder rows the model's config promises;
which folders are LLaVA (with a CLIP-like tower: a Pixtral tower makes a folder Pixtral's), and
loading one offline."""
from __future__ import annotations

import numpy as np

from harness.env import offline_env
from harness.pipelines.vlm_family import ChatFormat, ImagePiece, PreparedImage, RowCount, VLMFamily

from ..vlm_common import config_matches, hf_processor, image_features, load_family, read_json

__all__ = ["FAMILY", "MODALITY", "CHAT", "Llava", "matches", "hf_classes", "load"]

FAMILY = "llava"
MODALITY = "text"
CHAT = ChatFormat("USER: ", "", " ASSISTANT:", image_separator="\n")
#: Vision towers served by the Pixtral family (the [IMG]/[IMG_BREAK]/[IMG_END] layout).
PIXTRAL_TOWERS = ("pixtral",)


def matches(folder) -> bool:
    from pathlib import Path

    if not config_matches(folder, ("llava",)):
        return False
    vision = read_json(Path(folder) / "config.json").get("vision_config") or {}
    return vision.get("model_type") not in PIXTRAL_TOWERS


def hf_classes() -> tuple:
    """``(model class, PIL image processor class)`` of LLaVA, transformers imported offline."""
    offline_env()
    from transformers import LlavaForConditionalGeneration
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return LlavaForConditionalGeneration, CLIPImageProcessorPil


class Llava(VLMFamily):
    """LLaVA rules: one run of ``<image>`` per image, every placeholder gets an encoder row."""

    @property
    def image_marker(self) -> str:
        # LlavaProcessor: the tokenizer's image_token if it has one, else the setting.
        return (getattr(self.tokenizer, "image_token", None)
                or self.processor_config.get("image_token") or "<image>")

    def _setting(self, name: str):
        """A LlavaProcessor setting from processor_config.json; folders without one (older
        conversions) fall back to what the model config implies."""
        if name in self.processor_config and self.processor_config[name] is not None:
            return self.processor_config[name]
        return {"patch_size": self.config.vision_config.patch_size,
                "vision_feature_select_strategy": self.config.vision_feature_select_strategy,
                "num_additional_image_tokens": 1}[name]

    def num_image_tokens(self, height: int, width: int) -> int:
        """``LlavaProcessor.replace_image_token``'s count."""
        p = int(self._setting("patch_size"))
        n = (height // p) * (width // p) + int(self._setting("num_additional_image_tokens"))
        return n - 1 if self._setting("vision_feature_select_strategy") == "default" else n

    def prepare(self, image, options: dict | None = None) -> PreparedImage:
        pv = self.image_processor(images=[image], return_tensors="np",
                                  **(options or {}))["pixel_values"][0]
        n = self.num_image_tokens(pv.shape[-2], pv.shape[-1])
        piece = ImagePiece(pixel_values=np.ascontiguousarray(pv, dtype=np.float32),
                           placeholder_ids=[self.image_token_id] * n)
        return PreparedImage(text=self.image_marker * n, pieces=[piece])

    def encoder_rows(self, piece: ImagePiece) -> RowCount:
        vc = self.config.vision_config
        h, w = piece.pixel_values.shape[-2:]
        size, p = int(vc.image_size), int(vc.patch_size)
        if (h, w) != (size, size):
            return RowCount(-1, f"the image processor makes {h}×{w} pixels but the vision tower "
                                f"takes {size}×{size} (vision_config.image_size)")
        strategy = self.config.vision_feature_select_strategy
        rows = (size // p) ** 2 + 1 - (1 if strategy == "default" else 0)
        return RowCount(rows, f"{size // p}×{size // p} patches + CLS, "
                              f"vision_feature_select_strategy {strategy!r}")

    def encode(self, image):
        return image_features(self.model, image.pixel_values)

    def build_reference_processor(self):
        from transformers import LlavaProcessor

        return hf_processor(LlavaProcessor, self.folder, type(self.image_processor))


def load(folder, device: str = "cpu", dtype: str = "float32") -> Llava:
    """Load a LLaVA folder (tiny or real weights) offline."""
    return load_family(Llava, folder, hf_classes(), device=device, dtype=dtype, family=FAMILY,
                       chat=CHAT)
