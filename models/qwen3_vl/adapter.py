"""Qwen3-VL's rules: Qwen2-VL's placeholder layout (``<|vision_start|> <|image_pad|>×(t·h·w/merge²)
<|vision_end|>``, expanded by ``Qwen3VLProcessor``) and image positions (the text model rotates
them interleaved, inside the model), plus deepstack: the vision tower also returns features of
some of its blocks, which the language model adds to the hidden states of its first layers at the
image positions. The encoder cache keeps both per image; each prefill chunk hands the model its
rows of both as pre-encoded outputs (``mm_encoder_outputs``, what transformers' own chunked
prefill passes), so the model places them itself. Which folders are Qwen3-VL, loading one."""
from __future__ import annotations

from harness.env import offline_env

from ..qwen2_vl.adapter import CHAT, Qwen2VL
from ..vlm_common import config_matches, hf_processor, image_only_processor, load_family

__all__ = ["FAMILY", "MODALITY", "CHAT", "Qwen3VL", "matches", "hf_classes", "load"]

FAMILY = "qwen3_vl"
MODALITY = "text"


def matches(folder) -> bool:
    return config_matches(folder, ("qwen3_vl",))


def hf_classes() -> tuple:
    """``(model class, PIL image processor class)`` of Qwen3-VL, transformers imported offline
    (Qwen3-VL ships Qwen2-VL's image processor)."""
    offline_env()
    from transformers import Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen3VLForConditionalGeneration, Qwen2VLImageProcessorPil


class Qwen3VL(Qwen2VL):
    """Qwen3-VL: Qwen2-VL's prompt, rows and positions; deepstack rows cached beside the main
    ones and handed to the model per chunk."""

    @property
    def deepstack_layers(self) -> int:
        """How many vision blocks feed deepstack features (the first LM layers that take them)."""
        return len(self.config.vision_config.deepstack_visual_indexes)

    def encode(self, image):
        """One vision call: ``(rows, 1 + deepstack layers, hidden)``, the merged rows first."""
        import torch

        pv = torch.as_tensor(image.pixel_values).to(self.model.device, self.model.dtype)
        out = self.model.get_image_features(pixel_values=pv, image_grid_thw=self._raw_grid(image),
                                            return_dict=True)
        rows = [torch.cat(list(out.pooler_output))]
        rows += [torch.cat(list(layer)) for layer in out.deepstack_features]
        return torch.stack(rows, dim=1)

    def place_rows(self, embeds, placed) -> dict:
        """The chunk's rows as pre-encoded image outputs: the model writes the merged rows at the
        chunk's ``<|image_pad|>`` embeddings (left as they are here) and adds the deepstack rows
        after its first layers at the same positions."""
        if not placed:
            return {}
        import torch
        from transformers.models.qwen3_vl.modeling_qwen3_vl import (
            BaseModelOutputWithDeepstackFeatures)

        rows = torch.cat([r for _, r in placed]).to(embeds.dtype)
        out = BaseModelOutputWithDeepstackFeatures(
            pooler_output=[rows[:, 0]],
            deepstack_features=[[rows[:, 1 + k]] for k in range(rows.shape[1] - 1)])
        return {"mm_encoder_outputs": {"image": out}}

    def build_reference_processor(self):
        from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

        return hf_processor(image_only_processor(Qwen3VLProcessor), self.folder,
                            type(self.image_processor))


def load(folder, device: str = "cpu", dtype: str = "float32") -> Qwen3VL:
    """Load a Qwen3-VL folder (tiny or real weights) offline, with the PIL image processor."""
    return load_family(Qwen3VL, folder, hf_classes(), device=device, dtype=dtype, family=FAMILY,
                       chat=CHAT)
