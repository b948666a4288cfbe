"""Gemma 3: ``\\n\\n<start_of_image> <image_soft_token>×K <end_of_image>\\n\\n``; image tokens attend
bidirectionally, so prefill chunks must end on image boundaries."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .vlm_common import (ChatFormat, PreparedImage, VLMFamily, build_byte_tokenizer,
                         config_matches, load_family, offline_env, save_all, tiny_build,
                         tiny_model)

FAMILY = "gemma3"
MODALITY = "text"
TINY_NAMES = ("tiny-gemma3",)

_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
             "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
RECIPE = {
    "family": FAMILY, "version": 1, "specials": _SPECIALS, "std": 0.05, "seed": 0,
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "image_size": 32, "patch_size": 4},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
             "max_position_embeddings": 1024, "sliding_window": 512, "query_pre_attn_scalar": 16,
             "layer_types": ["sliding_attention", "full_attention"]},
    "mm_tokens_per_image": 16,
}


def _build(folder: Path) -> None:
    offline_env()
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tok = build_byte_tokenizer(_SPECIALS, bos="<bos>", eos="<eos>", pad="<pad>", named={
        "image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>"})
    ids = {s: tok.convert_tokens_to_ids(s) for s in _SPECIALS}
    cfg = Gemma3Config(
        vision_config=dict(model_type="siglip_vision_model", **RECIPE["vision"]),
        text_config=dict(vocab_size=len(tok), pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"],
                         eos_token_id=ids["<eos>"], **RECIPE["text"]),
        mm_tokens_per_image=RECIPE["mm_tokens_per_image"],
        boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"])
    model = tiny_model(Gemma3ForConditionalGeneration, cfg, RECIPE,
                       eos=[ids["<eos>"], ids["<end_of_turn>"]], pad=ids["<pad>"])
    size = RECIPE["vision"]["image_size"]
    proc = Gemma3ImageProcessorPil(size={"height": size, "width": size}, do_pan_and_scan=False)
    save_all(folder, model, tok, proc)


def tiny_path(name: str, cache_dir=None) -> Path:
    return tiny_build(name, TINY_NAMES, RECIPE, _build, cache_dir)


def matches(folder) -> bool:
    return config_matches(folder, ("gemma3",))


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
        import torch

        pv = torch.as_tensor(image.pixel_values)[None].to(self.model.device, self.model.dtype)
        out = self.model.get_image_features(pixel_values=pv, return_dict=True).pooler_output
        return out.reshape(-1, out.shape[-1]) if isinstance(out, torch.Tensor) else \
            torch.cat(list(out), dim=0)

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
    offline_env()
    from transformers import Gemma3ForConditionalGeneration
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    return load_family(Gemma3, folder, model_cls=Gemma3ForConditionalGeneration,
                       processor_cls=Gemma3ImageProcessorPil, device=device, dtype=dtype,
                       family=FAMILY, bidirectional_images=True,
                       chat=ChatFormat("<start_of_turn>user\n", "<end_of_turn>\n",
                                       "<start_of_turn>model\n"))
