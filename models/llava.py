"""LLaVA: ``<image>`` × N placeholders (N from patch grid and feature-select strategy)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .vlm_common import (ChatFormat, PreparedImage, VLMFamily, build_byte_tokenizer,
                         config_matches, load_family, offline_env, save_all, tiny_build,
                         tiny_model)

FAMILY = "llava"
MODALITY = "text"
TINY_NAMES = ("tiny-llava",)

_SPECIALS = ["<pad>", "<s>", "</s>", "<image>"]
RECIPE = {
    "family": FAMILY, "version": 1, "specials": _SPECIALS, "std": 0.15, "seed": 0,
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512},
}


def _build(folder: Path) -> None:
    offline_env()
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration)
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = build_byte_tokenizer(_SPECIALS, bos="<s>", eos="</s>", pad="<pad>",
                               named={"image_token": "<image>"})
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**RECIPE["vision"]),
        text_config=LlamaConfig(vocab_size=len(tok), pad_token_id=0, bos_token_id=1,
                                eos_token_id=2, **RECIPE["text"]),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default")
    model = tiny_model(LlavaForConditionalGeneration, cfg, RECIPE,
                       eos=2, pad=0)
    size = RECIPE["vision"]["image_size"]
    proc = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size,
                                                                          "width": size})
    save_all(folder, model, tok, proc)


def tiny_path(name: str, cache_dir=None) -> Path:
    return tiny_build(name, TINY_NAMES, RECIPE, _build, cache_dir)


def matches(folder) -> bool:
    return config_matches(folder, ("llava",))


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
        import torch

        pv = torch.as_tensor(image.pixel_values)[None].to(self.model.device, self.model.dtype)
        out = self.model.get_image_features(pixel_values=pv, return_dict=True).pooler_output
        return torch.cat(list(out), dim=0) if not isinstance(out, torch.Tensor) else \
            out.reshape(-1, out.shape[-1])


def load(folder, device: str = "cpu", dtype: str = "float32") -> Llava:
    """Load a LLaVA folder (tiny or real weights) offline."""
    offline_env()
    from transformers import LlavaForConditionalGeneration
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return load_family(Llava, folder, model_cls=LlavaForConditionalGeneration,
                       processor_cls=CLIPImageProcessorPil, device=device, dtype=dtype,
                       family=FAMILY, chat=ChatFormat("USER: ", "", " ASSISTANT:",
                                                      image_separator="\n"))
