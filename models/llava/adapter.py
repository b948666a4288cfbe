"""LLaVA's rules: ``<image>`` × N placeholders (N from patch grid and feature-select strategy),
which folders are LLaVA, and loading one offline."""
from __future__ import annotations

import numpy as np

from harness.env import offline_env
from harness.pipelines.vlm_family import ChatFormat, PreparedImage, VLMFamily

from ..vlm_common import config_matches, image_features, load_family

__all__ = ["FAMILY", "MODALITY", "CHAT", "Llava", "matches", "hf_classes", "load"]

FAMILY = "llava"
MODALITY = "text"
CHAT = ChatFormat("USER: ", "", " ASSISTANT:", image_separator="\n")


def matches(folder) -> bool:
    return config_matches(folder, ("llava",))


def hf_classes() -> tuple:
    """``(model class, PIL image processor class)`` of LLaVA, transformers imported offline."""
    offline_env()
    from transformers import LlavaForConditionalGeneration
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return LlavaForConditionalGeneration, CLIPImageProcessorPil


class Llava(VLMFamily):
    """LLaVA rules: one run of ``<image>`` per image, every placeholder gets an encoder row."""

    def num_image_tokens(self, height: int, width: int) -> int:
        vc = self.config.vision_config
        n = (height // vc.patch_size) * (width // vc.patch_size) + 1  # + CLS
        return n - 1 if self.config.vision_feature_select_strategy == "default" else n

    def preprocess(self, image) -> PreparedImage:
        pv = self.image_processor(images=[image], return_tensors="np")["pixel_values"][0]
        n = self.num_image_tokens(pv.shape[-2], pv.shape[-1])
        return PreparedImage(pixel_values=np.ascontiguousarray(pv, dtype=np.float32),
                             ids=[self.image_token_id] * n, range_start=0, range_end=n)

    def encode(self, image):
        return image_features(self.model, image.pixel_values)


def load(folder, device: str = "cpu", dtype: str = "float32") -> Llava:
    """Load a LLaVA folder (tiny or real weights) offline."""
    return load_family(Llava, folder, hf_classes(), device=device, dtype=dtype, family=FAMILY,
                       chat=CHAT)
