"""Gemma 3's rules: ``\\n\\n<start_of_image> <image_soft_token>×K <end_of_image>\\n\\n``; image
tokens attend bidirectionally, so prefill chunks must end on image boundaries. Which folders are
Gemma 3, and loading one offline."""
from __future__ import annotations

import numpy as np

from harness.env import offline_env
from harness.pipelines.vlm_family import ChatFormat, PreparedImage, VLMFamily

from ..vlm_common import config_matches, image_features, load_family

__all__ = ["FAMILY", "MODALITY", "CHAT", "Gemma3", "matches", "hf_classes", "load"]

FAMILY = "gemma3"
MODALITY = "text"
CHAT = ChatFormat("<start_of_turn>user\n", "<end_of_turn>\n", "<start_of_turn>model\n")


def matches(folder) -> bool:
    return config_matches(folder, ("gemma3",))


def hf_classes() -> tuple:
    """``(model class, PIL image processor class)`` of Gemma 3, transformers imported offline."""
    offline_env()
    from transformers import Gemma3ForConditionalGeneration
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    return Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil


class Gemma3(VLMFamily):
    """Gemma 3 rules: K soft tokens per image between markers; token_type_ids on prefill."""

    def preprocess(self, image) -> PreparedImage:
        pv = self.image_processor(images=[image], return_tensors="np")["pixel_values"][0]
        k = int(self.config.mm_tokens_per_image)
        nl = self.tokenizer.encode("\n\n", add_special_tokens=False)
        ids = nl + [int(self.config.boi_token_index)] + [self.image_token_id] * k + \
            [int(self.config.eoi_token_index)] + nl
        start = len(nl) + 1
        return PreparedImage(pixel_values=np.ascontiguousarray(pv, np.float32), ids=ids,
                             range_start=start, range_end=start + k)

    def encode(self, image):
        return image_features(self.model, image.pixel_values)

    def _token_types(self, ids):
        import torch

        return (torch.as_tensor(np.asarray(ids), dtype=torch.long)[None]
                == self.image_token_id).long()

    def chunk_kwargs(self, ctx, start: int, end: int) -> dict:
        """The bidirectional mask reads token types by position: pass the absolute prefix."""
        return {"token_type_ids": self._token_types(ctx.tokens.all[:end])}

    def reference_inputs(self, ctx) -> dict:
        out = super().reference_inputs(ctx)
        out["token_type_ids"] = self._token_types(ctx.tokens.prompt)
        return out


def load(folder, device: str = "cpu", dtype: str = "float32") -> Gemma3:
    """Load a Gemma 3 folder (tiny or real weights) offline, with the PIL image processor."""
    return load_family(Gemma3, folder, hf_classes(), device=device, dtype=dtype, family=FAMILY,
                       chat=CHAT, bidirectional_images=True)
