"""Qwen2-VL's rules: ``<|vision_start|> <|image_pad|>×(t·h·w/merge²) <|vision_end|>`` (the chat
template writes the markers around one ``<|image_pad|>``, which ``Qwen2VLProcessor`` expands), the
encoder rows the config promises, M-RoPE; which folders are Qwen2-VL, and loading one offline."""
from __future__ import annotations

import numpy as np

from harness.env import offline_env
from harness.pipelines.vlm_family import ChatFormat, ImagePiece, PreparedImage, RowCount, VLMFamily

from ..vlm_common import (config_matches, hf_processor, image_features, image_only_processor,
                          load_family)

__all__ = ["FAMILY", "MODALITY", "CHAT", "Qwen2VL", "matches", "hf_classes", "load"]

FAMILY = "qwen2_vl"
MODALITY = "text"
CHAT = ChatFormat("<|im_start|>user\n", "<|im_end|>\n", "<|im_start|>assistant\n", add_bos=False)


def matches(folder) -> bool:
    return config_matches(folder, ("qwen2_vl",))


def hf_classes() -> tuple:
    """``(model class, PIL image processor class)`` of Qwen2-VL, transformers imported offline."""
    offline_env()
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil


class Qwen2VL(VLMFamily):
    """Qwen2-VL rules: markers outside the range, merged grid per image, M-RoPE positions."""

    @property
    def merge(self) -> int:
        """The model's spatial merge (encoder side)."""
        return int(self.config.vision_config.spatial_merge_size)

    @property
    def image_marker(self) -> str:
        return getattr(self.tokenizer, "image_token", None) or "<|image_pad|>"

    @property
    def template_image_text(self) -> str:
        return "<|vision_start|>" + self.image_marker + "<|vision_end|>"

    def prepare(self, image, options: dict | None = None) -> PreparedImage:
        out = self.image_processor(images=[image], return_tensors="np", **(options or {}))
        t, h, w = (int(x) for x in out["image_grid_thw"][0])
        # Qwen2VLProcessor.replace_image_token: grid product over the image processor's merge².
        pm = int(self.image_processor.merge_size)
        n = t * h * w // (pm * pm)
        m = self.merge
        piece = ImagePiece(pixel_values=np.ascontiguousarray(out["pixel_values"], np.float32),
                           placeholder_ids=[self.image_token_id] * n,
                           grid_thw=(t, h // m, w // m), meta={"raw_grid_thw": (t, h, w)})
        return PreparedImage(text=self.image_marker * n, pieces=[piece])

    def encoder_rows(self, piece: ImagePiece) -> RowCount:
        vc = self.config.vision_config
        width = int(vc.in_channels if hasattr(vc, "in_channels") else 3) * \
            int(vc.temporal_patch_size) * int(vc.patch_size) ** 2
        got = piece.pixel_values.shape[-1]
        if got != width:
            return RowCount(-1, f"the image processor makes patches of {got} values but the "
                                f"vision tower takes {width} (channels × "
                                f"temporal_patch_size {vc.temporal_patch_size} × patch_size "
                                f"{vc.patch_size}²)")
        t, h, w = piece.meta["raw_grid_thw"]
        m = self.merge
        if h % m or w % m:
            return RowCount(-1, f"the image processor makes a {h}×{w} patch grid, which the "
                                f"vision tower cannot merge {m}×{m} (spatial_merge_size)")
        return RowCount(t * h * w // (m * m), f"{t}×{h}×{w} patches merged {m}×{m} "
                                              f"(vision_config.spatial_merge_size)")

    def _raw_grid(self, image):
        import torch

        t, h, w = image.grid_thw
        return torch.tensor([[t, h * self.merge, w * self.merge]], dtype=torch.long)

    def encode(self, image):
        return image_features(self.model, image.pixel_values, batched=False,
                              image_grid_thw=self._raw_grid(image))

    def mrope_positions(self, ctx) -> np.ndarray:
        """3×P M-RoPE ids from the context: text advances by its length, an image by max(h, w)."""
        total = ctx.tokens.prompt_length
        pos = np.empty((3, total), dtype=np.int64)
        cur = prev = 0
        for im in ctx.images:
            n = im.start_idx - prev
            pos[:, prev:im.start_idx] = cur + np.arange(n)
            cur += n
            t, h, w = im.grid_thw
            tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
            pos[:, im.start_idx:im.end_idx] = cur + np.stack([tt.ravel(), hh.ravel(), ww.ravel()])
            cur += max(h, w)
            prev = im.end_idx
        pos[:, prev:] = cur + np.arange(total - prev)
        return pos

    def prompt_positions(self, ctx):
        """``(4, 1, P)``: sequence positions (for the mask) over the three M-RoPE axes."""
        import torch

        mrope = self.mrope_positions(ctx)
        text = np.arange(ctx.tokens.prompt_length, dtype=np.int64)[None]
        return torch.from_numpy(np.concatenate([text, mrope])[:, None, :].copy())

    def position_state(self, prompt_positions) -> int:
        """rope_delta = max M-RoPE position + 1 − P."""
        return int(prompt_positions[1:].max()) + 1 - int(prompt_positions.shape[-1])

    def decode_positions(self, start: int, stop: int, state: int):
        """Decode token i sits at i on the sequence row and i + rope_delta on all M-RoPE axes."""
        import torch

        seq = torch.arange(start, stop, dtype=torch.long)
        return torch.stack([seq, seq + state, seq + state, seq + state])[:, None, :]

    def build_reference_processor(self):
        from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

        return hf_processor(image_only_processor(Qwen2VLProcessor), self.folder,
                            type(self.image_processor))

    def reference_pixels(self, inputs: dict) -> list[np.ndarray]:
        """The processor's patch rows split per image by its ``image_grid_thw``."""
        pv = np.asarray(inputs["pixel_values"], dtype=np.float32) if "pixel_values" in inputs \
            else None
        if pv is None:
            return []
        sizes = [int(np.prod(g)) for g in np.asarray(inputs["image_grid_thw"])]
        return list(np.split(pv, np.cumsum(sizes)[:-1]))

    def context_inputs(self, ctx) -> dict:
        import torch

        ids = torch.as_tensor(np.asarray(ctx.tokens.prompt), dtype=torch.long)[None]
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
               "mm_token_type_ids": (ids == self.image_token_id).int()}
        if ctx.images:
            out["pixel_values"] = torch.as_tensor(
                np.concatenate([im.pixel_values for im in ctx.images]))
            out["image_grid_thw"] = torch.cat([self._raw_grid(im) for im in ctx.images])
        return out


def load(folder, device: str = "cpu", dtype: str = "float32") -> Qwen2VL:
    """Load a Qwen2-VL folder (tiny or real weights) offline, with the PIL image processor."""
    return load_family(Qwen2VL, folder, hf_classes(), device=device, dtype=dtype, family=FAMILY,
                       chat=CHAT)
