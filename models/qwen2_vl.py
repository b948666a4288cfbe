"""Qwen2-VL: ``<|vision_start|> <|image_pad|>×(t·h·w/merge²) <|vision_end|>`` and M-RoPE."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .vlm_common import (ChatFormat, PreparedImage, VLMFamily, build_byte_tokenizer,
                         config_matches, load_family, offline_env, save_all, tiny_build,
                         tiny_model)

FAMILY = "qwen2_vl"
MODALITY = "text"
TINY_NAMES = ("tiny-qwen2-vl",)

_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
             "<|image_pad|>", "<|video_pad|>"]
RECIPE = {
    "family": FAMILY, "version": 1, "specials": _SPECIALS, "std": 0.15, "seed": 0,
    "vision": {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 4, "mlp_ratio": 2,
               "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
             "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [2, 3, 3]}},
    "processor": {"min_pixels": 16 * 16, "max_pixels": 48 * 48},
}


def _build(folder: Path) -> None:
    offline_env()
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = build_byte_tokenizer(_SPECIALS, bos="<|endoftext|>", eos="<|im_end|>",
                               pad="<|endoftext|>", named={"image_token": "<|image_pad|>",
                                                           "video_token": "<|video_pad|>"})
    ids = {s: tok.convert_tokens_to_ids(s) for s in _SPECIALS}
    cfg = Qwen2VLConfig(
        vision_config=RECIPE["vision"],
        text_config=dict(vocab_size=len(tok), bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         **RECIPE["text"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    model = tiny_model(Qwen2VLForConditionalGeneration, cfg, RECIPE,
                       eos=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad=ids["<|endoftext|>"])
    v = RECIPE["vision"]
    proc = Qwen2VLImageProcessorPil(
        size={"shortest_edge": RECIPE["processor"]["min_pixels"],
              "longest_edge": RECIPE["processor"]["max_pixels"]},
        patch_size=v["patch_size"], temporal_patch_size=v["temporal_patch_size"],
        merge_size=v["spatial_merge_size"])
    save_all(folder, model, tok, proc)


def tiny_path(name: str, cache_dir=None) -> Path:
    return tiny_build(name, TINY_NAMES, RECIPE, _build, cache_dir)


def matches(folder) -> bool:
    return config_matches(folder, ("qwen2_vl",))


class Qwen2VL(VLMFamily):
    """Qwen2-VL rules: markers outside the range, merged grid per image, M-RoPE positions."""

    @property
    def merge(self) -> int:
        return int(self.config.vision_config.spatial_merge_size)

    def preprocess(self, image) -> PreparedImage:
        out = self.image_processor(images=[image], return_tensors="np")
        t, h, w = (int(x) for x in out["image_grid_thw"][0])
        m = self.merge
        n = t * h * w // (m * m)
        ids = ([self.token_id("<|vision_start|>")] + [self.image_token_id] * n
               + [self.token_id("<|vision_end|>")])
        return PreparedImage(pixel_values=np.ascontiguousarray(out["pixel_values"], np.float32),
                             ids=ids, range_start=1, range_end=1 + n,
                             grid_thw=(t, h // m, w // m))

    def _raw_grid(self, image):
        import torch

        t, h, w = image.grid_thw
        return torch.tensor([[t, h * self.merge, w * self.merge]], dtype=torch.long)

    def encode(self, image):
        import torch

        pv = torch.as_tensor(image.pixel_values).to(self.model.device, self.model.dtype)
        out = self.model.get_image_features(pixel_values=pv, image_grid_thw=self._raw_grid(image),
                                            return_dict=True).pooler_output
        return torch.cat(list(out), dim=0)

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

    def reference_inputs(self, ctx) -> dict:
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
    offline_env()
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return load_family(Qwen2VL, folder, model_cls=Qwen2VLForConditionalGeneration,
                       processor_cls=Qwen2VLImageProcessorPil, device=device, dtype=dtype,
                       family=FAMILY, chat=ChatFormat("<|im_start|>user\n", "<|im_end|>\n",
                                                      "<|im_start|>assistant\n", add_bos=False))
