"""Gemma 3's rules: each image (and, with pan-and-scan, each crop) is
``\\n\\n<start_of_image> <image_soft_token>×K <end_of_image>\\n\\n`` with K the processor's
``image_seq_length``, as ``Gemma3Processor.replace_image_token`` writes it; image tokens attend
bidirectionally, so prefill chunks must end on image boundaries. The encoder rows the config
promises (``mm_tokens_per_image`` after the projector's average pool); which folders are
Gemma 3, and loading one offline.

Pan-and-scan: ``Gemma3Processor`` passes its own image defaults (``images_kwargs``:
``do_pan_and_scan=False``, crop size 256, at most 4 crops, ratio 1.2) to the image processor, so a
folder's ``do_pan_and_scan`` in preprocessor_config.json is overridden; only a request option
turns it on. The harness passes the same defaults, then the request's options, and the PIL image
processor does the cropping on both sides.
"""
from __future__ import annotations

import numpy as np

from harness.env import offline_env
from harness.pipelines.vlm_family import ChatFormat, ImagePiece, PreparedImage, RowCount, VLMFamily

from ..vlm_common import config_matches, hf_processor, image_features, load_family

__all__ = ["FAMILY", "MODALITY", "CHAT", "Gemma3", "matches", "hf_classes", "load"]

FAMILY = "gemma3"
MODALITY = "text"
CHAT = ChatFormat("<start_of_turn>user\n", "<end_of_turn>\n", "<start_of_turn>model\n")
#: Gemma3Processor's image_seq_length default (transformers 5.24 processing_gemma3.py).
DEFAULT_IMAGE_SEQ_LENGTH = 256


def matches(folder) -> bool:
    return config_matches(folder, ("gemma3",))


def hf_classes() -> tuple:
    """``(model class, PIL image processor class)`` of Gemma 3, transformers imported offline."""
    offline_env()
    from transformers import Gemma3ForConditionalGeneration
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    return Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil


def processor_image_defaults() -> dict:
    """The image options ``Gemma3Processor`` passes on every call (its ``images_kwargs``)."""
    from transformers.models.gemma3.processing_gemma3 import Gemma3Processor

    return dict(Gemma3Processor.images_kwargs)


class Gemma3(VLMFamily):
    """Gemma 3 rules: K soft tokens per image (or crop) between markers; token_type_ids on
    prefill."""

    @property
    def image_marker(self) -> str:
        return self.tokenizer.boi_token

    @property
    def image_seq_length(self) -> int:
        value = self.processor_config.get("image_seq_length")
        return DEFAULT_IMAGE_SEQ_LENGTH if value is None else int(value)

    def prepare(self, image, options: dict | None = None) -> PreparedImage:
        kwargs = {**processor_image_defaults(), **(options or {})}
        out = self.image_processor(images=[image], return_tensors="np", **kwargs)
        crops = int(np.asarray(out["num_crops"]).reshape(-1)[0])
        pv = out["pixel_values"]
        k = self.image_seq_length
        tok = self.tokenizer
        full = f"\n\n{tok.boi_token}{tok.image_token * k}{tok.eoi_token}\n\n"
        if crops:
            text = (f"Here is the original image {full} and here are some crops to help you see "
                    f"better " + " ".join([full] * crops))
        else:
            text = full
        pieces = [ImagePiece(pixel_values=np.ascontiguousarray(pv[i], np.float32),
                             placeholder_ids=[self.image_token_id] * k)
                  for i in range(1 + crops)]
        return PreparedImage(text=text, pieces=pieces)

    def encoder_rows(self, piece: ImagePiece) -> RowCount:
        vc = self.config.vision_config
        size, p = int(vc.image_size), int(vc.patch_size)
        h, w = piece.pixel_values.shape[-2:]
        if (h, w) != (size, size):
            return RowCount(-1, f"the image processor makes {h}×{w} pixels but the vision tower "
                                f"takes {size}×{size} (vision_config.image_size)")
        per_side = size // p
        mm = int(self.config.mm_tokens_per_image)
        tokens_side = int(mm ** 0.5)
        kernel = per_side // tokens_side if tokens_side else 0
        if kernel == 0:
            return RowCount(-1, f"mm_tokens_per_image {mm} cannot be pooled from {per_side}×"
                                f"{per_side} patches")
        side = per_side // kernel
        return RowCount(side * side, f"{per_side}×{per_side} patches average-pooled {kernel}×"
                                     f"{kernel} (config mm_tokens_per_image {mm})")

    def encode(self, image):
        return image_features(self.model, image.pixel_values)

    def _token_types(self, ids):
        import torch

        return (torch.as_tensor(np.asarray(ids), dtype=torch.long)[None]
                == self.image_token_id).long()

    def chunk_kwargs(self, ctx, start: int, end: int) -> dict:
        """The bidirectional mask reads token types by position: pass the absolute prefix."""
        return {"token_type_ids": self._token_types(ctx.tokens.all[:end])}

    def build_reference_processor(self):
        from transformers import Gemma3Processor

        return hf_processor(Gemma3Processor, self.folder, type(self.image_processor))

    def context_inputs(self, ctx) -> dict:
        out = super().context_inputs(ctx)
        out["token_type_ids"] = self._token_types(ctx.tokens.prompt)
        return out


def load(folder, device: str = "cpu", dtype: str = "float32") -> Gemma3:
    """Load a Gemma 3 folder (tiny or real weights) offline, with the PIL image processor."""
    return load_family(Gemma3, folder, hf_classes(), device=device, dtype=dtype, family=FAMILY,
                       chat=CHAT, bidirectional_images=True)
