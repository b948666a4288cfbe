"""Pixtral (Mistral3): rows of ``[IMG]``×w separated by ``[IMG_BREAK]``, closed by ``[IMG_END]``.

The placeholder range runs from the first to the last ``[IMG]`` (breaks inside, ``[IMG_END]``
outside); only ``[IMG]`` positions receive encoder rows (``embedding_positions``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .vlm_common import (ChatFormat, PreparedImage, VLMFamily, build_byte_tokenizer,
                         config_matches, load_family, offline_env, save_all, tiny_build,
                         tiny_model)

FAMILY = "pixtral"
MODALITY = "text"
TINY_NAMES = ("tiny-pixtral",)

_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]",
             "[IMG_END]"]
RECIPE = {
    "family": FAMILY, "version": 1, "specials": _SPECIALS, "std": 0.15, "seed": 0,
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "image_size": 128, "patch_size": 8},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
             "max_position_embeddings": 1024, "sliding_window": None},
    "spatial_merge_size": 2,
    "longest_edge": 128,
}


def _build(folder: Path) -> None:
    offline_env()
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    tok = build_byte_tokenizer(_SPECIALS, bos="<s>", eos="</s>", pad="<pad>", named={
        "image_token": "[IMG]", "image_break_token": "[IMG_BREAK]",
        "image_end_token": "[IMG_END]"})
    ids = {s: tok.convert_tokens_to_ids(s) for s in _SPECIALS}
    cfg = Mistral3Config(
        vision_config=dict(model_type="pixtral", **RECIPE["vision"]),
        text_config=dict(model_type="mistral", vocab_size=len(tok), pad_token_id=ids["<pad>"],
                         bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], **RECIPE["text"]),
        image_token_index=ids["[IMG]"], spatial_merge_size=RECIPE["spatial_merge_size"],
        vision_feature_layer=-1)
    model = tiny_model(Mistral3ForConditionalGeneration, cfg, RECIPE,
                       eos=ids["</s>"], pad=ids["<pad>"])
    step = RECIPE["vision"]["patch_size"] * RECIPE["spatial_merge_size"]
    proc = PixtralImageProcessorPil(size={"longest_edge": RECIPE["longest_edge"]},
                                    patch_size={"height": step, "width": step})
    save_all(folder, model, tok, proc)


def tiny_path(name: str, cache_dir=None) -> Path:
    return tiny_build(name, TINY_NAMES, RECIPE, _build, cache_dir)


def matches(folder) -> bool:
    return config_matches(folder, ("mistral3",))


class Pixtral(VLMFamily):
    """Mistral3 rules: image-break tokens inside the range receive no encoder row."""

    @property
    def vision_token_ids(self) -> list[int]:
        return [self.image_token_id, self.token_id("[IMG_BREAK]")]

    @property
    def downsample(self) -> int:
        return int(self.config.vision_config.patch_size) * int(self.config.spatial_merge_size)

    def preprocess(self, image) -> PreparedImage:
        out = self.image_processor(images=[image], return_tensors="np")
        h, w = (int(x) for x in out["image_sizes"][0])
        rows, cols = h // self.downsample, w // self.downsample
        img, brk, end = self.image_token_id, self.token_id("[IMG_BREAK]"), \
            self.token_id("[IMG_END]")
        ids = ([img] * cols + [brk]) * rows
        ids[-1] = end
        pv = out["pixel_values"][0][:, :h, :w]
        positions = np.flatnonzero(np.asarray(ids[:-1]) == img)
        return PreparedImage(pixel_values=np.ascontiguousarray(pv, np.float32), ids=ids,
                             range_start=0, range_end=len(ids) - 1,
                             embedding_positions=positions)

    def encode(self, image):
        import torch

        pv = torch.as_tensor(image.pixel_values)[None].to(self.model.device, self.model.dtype)
        sizes = torch.tensor([list(image.pixel_values.shape[-2:])], dtype=torch.long)
        out = self.model.get_image_features(pixel_values=pv, image_sizes=sizes,
                                            return_dict=True).pooler_output
        return torch.cat(list(out), dim=0)

    def reference_inputs(self, ctx) -> dict:
        import torch

        out = self.prompt_inputs(ctx)
        if ctx.images:
            shapes = [im.pixel_values.shape[-2:] for im in ctx.images]
            hmax, wmax = max(s[0] for s in shapes), max(s[1] for s in shapes)
            pv = np.zeros((len(shapes), 3, hmax, wmax), dtype=np.float32)
            for i, im in enumerate(ctx.images):
                pv[i, :, :shapes[i][0], :shapes[i][1]] = im.pixel_values
            out["pixel_values"] = torch.from_numpy(pv)
            out["image_sizes"] = torch.tensor([list(s) for s in shapes], dtype=torch.long)
        return out


def load(folder, device: str = "cpu", dtype: str = "float32") -> Pixtral:
    """Load a Mistral3 / Pixtral folder (tiny or real weights) offline, PIL image processor."""
    offline_env()
    from transformers import Mistral3ForConditionalGeneration
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    return load_family(Pixtral, folder, model_cls=Mistral3ForConditionalGeneration,
                       processor_cls=PixtralImageProcessorPil, device=device, dtype=dtype,
                       family=FAMILY, chat=ChatFormat("[INST]", "[/INST]", ""))
