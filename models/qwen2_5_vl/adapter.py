"""Qwen2.5-VL's rules: Qwen2-VL's placeholder layout (``<|vision_start|> <|image_pad|>×(t·h·w/merge²)
<|vision_end|>``, expanded by ``Qwen2_5_VLProcessor``) and M-RoPE positions (a still image's
temporal axis is not scaled by ``tokens_per_second``), over a vision tower with window attention
(windows are laid out per image, so one encoder call per image equals the batched call); which
folders are Qwen2.5-VL, and loading one offline."""
from __future__ import annotations

from harness.env import offline_env

from ..qwen2_vl.adapter import CHAT, Qwen2VL
from ..vlm_common import config_matches, hf_processor, image_only_processor, load_family

__all__ = ["FAMILY", "MODALITY", "CHAT", "Qwen25VL", "matches", "hf_classes", "load"]

FAMILY = "qwen2_5_vl"
MODALITY = "text"


def matches(folder) -> bool:
    return config_matches(folder, ("qwen2_5_vl",))


def hf_classes() -> tuple:
    """``(model class, PIL image processor class)`` of Qwen2.5-VL, transformers imported
    offline (Qwen2.5-VL ships Qwen2-VL's image processor)."""
    offline_env()
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil


class Qwen25VL(Qwen2VL):
    """Qwen2.5-VL: Qwen2-VL's prompt, rows and positions; its own model and processor classes."""

    def build_reference_processor(self):
        from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

        return hf_processor(image_only_processor(Qwen2_5_VLProcessor), self.folder,
                            type(self.image_processor))


def load(folder, device: str = "cpu", dtype: str = "float32") -> Qwen25VL:
    """Load a Qwen2.5-VL folder (tiny or real weights) offline, with the PIL image processor."""
    return load_family(Qwen25VL, folder, hf_classes(), device=device, dtype=dtype, family=FAMILY,
                       chat=CHAT)
