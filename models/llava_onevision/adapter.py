"""LLaVA-OneVision's and LLaVA-NeXT's rules (any-resolution tiles): an image is cut into the
tiles of its best grid pinpoint plus one resized whole-image tile; the vision tower encodes them in
one call, the tiles' features are unpadded back to the image's aspect ratio, each feature row ends
with the ``image_newline`` vector, and the base tile's features come first. The prompt holds one
``<image>`` per resulting row, counted as ``LlavaOnevisionProcessor`` / ``LlavaNextProcessor``
count them (``_get_number_of_features``).

LLaVA-OneVision only: a prompt with several images tiles none of them (each image is padded to a
square with the mean colour and encoded as one tile plus one newline row: ``batch_num_images``),
and a tile grid larger than ``anyres_max_N`` tiles' worth of features is bilinearly shrunk
(``vision_aspect_ratio``). LLaVA-NeXT tiles every image and keeps CLIP's CLS rule
(``vision_feature_select_strategy`` "default" drops one row).

The encoder call needs the original image size (the unpadding) and, for OneVision, how many
images the prompt holds; both travel in the image's ``grid_thw`` as ``(images in the prompt,
original height, original width)``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from harness.env import offline_env
from harness.pipelines.vlm_family import ChatFormat, ImagePiece, PreparedImage, RowCount, VLMFamily

from ..vlm_common import (config_matches, hf_processor, image_features, image_only_processor,
                          load_family)

__all__ = ["FAMILY", "MODALITY", "CHAT", "NEXT_CHAT", "AnyRes", "matches", "hf_classes", "load",
           "anyres_features", "model_type_of"]

FAMILY = "llava_onevision"
MODALITY = "text"
#: The tiny OneVision layout (Qwen2 chat turns; the real folders bring their own template).
CHAT = ChatFormat("<|im_start|>user\n", "<|im_end|>\n", "<|im_start|>assistant\n", add_bos=False,
                  image_separator="\n")
#: The tiny LLaVA-NeXT layout (Mistral's [INST] turns).
NEXT_CHAT = ChatFormat("[INST] ", " [/INST]", "", image_separator="\n")
MODEL_TYPES = ("llava_onevision", "llava_next")

#: Processor defaults (transformers 5.24) for folders whose processor_config.json leaves one out.
ONEVISION_DEFAULTS = {"vision_aspect_ratio": "anyres_max_9", "image_token": "<image>",
                      "vision_feature_select_strategy": None, "num_image_tokens": None}
NEXT_DEFAULTS = {"image_token": "<image>", "num_additional_image_tokens": 0,
                 "vision_feature_select_strategy": None, "patch_size": None}


def model_type_of(folder) -> str | None:
    from ..vlm_common import read_json

    return read_json(Path(folder) / "config.json").get("model_type")


def matches(folder) -> bool:
    return config_matches(folder, MODEL_TYPES)


def hf_classes(model_type: str = "llava_onevision") -> tuple:
    """``(model class, PIL image processor class)`` of OneVision or NeXT, imported offline."""
    offline_env()
    if model_type == "llava_next":
        from transformers import LlavaNextForConditionalGeneration
        from transformers.models.llava_next.image_processing_pil_llava_next import (
            LlavaNextImageProcessorPil)

        return LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil
    from transformers import LlavaOnevisionForConditionalGeneration
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil)

    return LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessorPil


def _best_resolution(height: int, width: int, pinpoints) -> tuple[int, int]:
    from transformers.image_processing_utils import select_best_resolution

    return tuple(int(x) for x in select_best_resolution([height, width],
                                                        [list(p) for p in pinpoints]))


def anyres_features(height: int, width: int, *, tile: int, side: int, pinpoints,
                    max_tiles: int | None) -> tuple[int, int, int]:
    """``(tiles, unpadded rows × cols, newline rows)`` of one tiled image: the grid of its best
    pinpoint (``tile`` pixels per tile, ``side`` features per tile side), unpadded to the image's
    aspect ratio and, with ``max_tiles`` (OneVision's ``anyres_max_N``), shrunk when it holds
    more than 1.1² × that many tiles' features — the rule of the processors' and the model's
    ``pack_image_features``."""
    best_h, best_w = _best_resolution(height, width, pinpoints)
    cur_h, cur_w = side * (best_h // tile), side * (best_w // tile)
    if width / height > cur_w / cur_h:
        new_h = int(round(height * (cur_w / width), 7))
        cur_h -= (cur_h - new_h) // 2 * 2
    else:
        new_w = int(round(width * (cur_h / height), 7))
        cur_w -= (cur_w - new_w) // 2 * 2
    rows, cols = cur_h, cur_w
    if max_tiles is not None:
        ratio = math.sqrt(cur_h * cur_w / (max_tiles * side ** 2))
        if ratio > 1.1:
            rows, cols = int(cur_h // ratio), int(cur_w // ratio)
    tiles = (best_h // tile) * (best_w // tile)
    return tiles, rows * cols, rows


def _max_tiles(aspect: str) -> int:
    return int(str(aspect).strip("anyres_max_"))


class AnyRes(VLMFamily):
    """OneVision / NeXT rules: one encoder call per image over its tiles, packed with newlines."""

    #: How many images the prompt being encoded holds (OneVision tiles only a lone image);
    #: set by ``render_prompt`` just before ``prepare`` runs for each image.
    _prompt_images: int = 1

    @property
    def onevision(self) -> bool:
        return self.config.model_type == "llava_onevision"

    def _setting(self, name: str):
        defaults = ONEVISION_DEFAULTS if self.onevision else NEXT_DEFAULTS
        value = self.processor_config.get(name)
        return defaults[name] if value is None else value

    @property
    def image_marker(self) -> str:
        return (getattr(self.tokenizer, "image_token", None) or self._setting("image_token"))

    def render_prompt(self, messages: list[dict]) -> str:
        self._prompt_images = sum(1 for m in messages if isinstance(m.get("content"), list)
                                  for p in m["content"] if p.get("type") == "image")
        return super().render_prompt(messages)

    # -- the processor's side: pixels and the placeholder count ---------------------------------
    def _pixels(self, image, options: dict, images_in_prompt: int):
        proc = self.image_processor
        kwargs = {"return_tensors": "np", **options}
        if self.onevision:
            # LlavaOnevisionImageProcessor.preprocess: batch_num_images decides the tiling (a
            # conversation with several images tiles none); one image, that conversation's count.
            out = super(type(proc), proc).preprocess([image], [images_in_prompt], **kwargs)
        else:
            out = proc(images=[image], **kwargs)
        pv = np.ascontiguousarray(out["pixel_values"][0], dtype=np.float32)
        h, w = (int(x) for x in out["image_sizes"][0])
        return pv, h, w

    def num_image_tokens(self, height: int, width: int, tile_h: int, tile_w: int,
                         images_in_prompt: int) -> int:
        """The processor's ``replace_image_token`` count for one image."""
        pinpoints = self.image_processor.image_grid_pinpoints
        if self.onevision:
            base = int(self._setting("num_image_tokens"))
            if images_in_prompt != 1:
                n = base + 1
            else:
                side = int(math.isqrt(base))
                _, unpadded, newlines = anyres_features(
                    height, width, tile=tile_h, side=side, pinpoints=pinpoints,
                    max_tiles=_max_tiles(self._setting("vision_aspect_ratio")))
                n = unpadded + newlines + base
        else:
            p = int(self._setting("patch_size"))
            side = tile_h // p
            _, unpadded, newlines = anyres_features(height, width, tile=tile_h, side=side,
                                                    pinpoints=pinpoints, max_tiles=None)
            n = unpadded + newlines + (tile_h // p) * (tile_w // p) + int(
                self._setting("num_additional_image_tokens"))
        return n - 1 if self._setting("vision_feature_select_strategy") == "default" else n

    def prepare(self, image, options: dict | None = None) -> PreparedImage:
        count = max(1, int(self._prompt_images))
        pv, h, w = self._pixels(image, dict(options or {}), count)
        n = self.num_image_tokens(h, w, pv.shape[-2], pv.shape[-1], count)
        piece = ImagePiece(pixel_values=pv, placeholder_ids=[self.image_token_id] * n,
                           grid_thw=(count if self.onevision else 1, h, w))
        return PreparedImage(text=self.image_marker * n, pieces=[piece])

    # -- the model's side: what its config makes of these pixels ---------------------------------
    def encoder_rows(self, piece: ImagePiece) -> RowCount:
        cfg = self.config
        vc = cfg.vision_config
        size, p = int(vc.image_size), int(vc.patch_size)
        tiles, _, th, tw = piece.pixel_values.shape
        if (th, tw) != (size, size):
            return RowCount(-1, f"the image processor makes {th}×{tw}-pixel tiles but the vision "
                                f"tower takes {size}×{size} (vision_config.image_size)")
        count, h, w = piece.grid_thw
        side = size // p
        strategy = cfg.vision_feature_select_strategy
        per_tile = side * side - (0 if strategy == "full" else 1) + (
            1 if vc.model_type == "clip_vision_model" else 0)
        if per_tile != side * side:
            return RowCount(-1, f"a {side}×{side}-patch tile gives {per_tile} features "
                                f"(vision_feature_select_strategy {strategy!r}), which the "
                                f"model cannot lay out as a {side}×{side} grid")
        pinpoints = cfg.image_grid_pinpoints
        if self.onevision and count != 1:
            want, rows, why = 1, side * side + 1, (f"one {side}×{side}-patch tile + newline "
                                                   f"({count} images in the prompt: no tiling)")
        else:
            max_tiles = _max_tiles(cfg.vision_aspect_ratio) if self.onevision else None
            grid, unpadded, newlines = anyres_features(h, w, tile=size, side=side,
                                                       pinpoints=pinpoints, max_tiles=max_tiles)
            want, rows = grid + 1, side * side + unpadded + newlines
            why = (f"a {h}×{w} image: base tile + {grid} tiles of {side}×{side} patches, "
                   f"unpadded to {unpadded} features + {newlines} newlines (image_grid_pinpoints"
                   + (f", vision_aspect_ratio {cfg.vision_aspect_ratio}" if max_tiles else "")
                   + ")")
        if tiles != want:
            return RowCount(-1, f"the image processor makes {tiles} tiles of a {h}×{w} image but "
                                f"the model's image_grid_pinpoints give {want}")
        return RowCount(rows, why)

    def _encoder_kwargs(self, grid) -> dict:
        import torch

        count, h, w = grid
        kw = {"image_sizes": torch.tensor([[h, w]], dtype=torch.long)}
        if self.onevision:
            kw["batch_num_images"] = torch.tensor([count], dtype=torch.long)
        return kw

    def encode(self, image):
        return image_features(self.model, image.pixel_values, **self._encoder_kwargs(
            image.grid_thw))

    # -- the reference ----------------------------------------------------------------------------
    def build_reference_processor(self):
        if self.onevision:
            from transformers import LlavaOnevisionProcessor

            cls = image_only_processor(LlavaOnevisionProcessor)
        else:
            from transformers import LlavaNextProcessor as cls
        return hf_processor(cls, self.folder, type(self.image_processor))

    def _tiles_per_image(self, sizes, counts) -> list[int]:
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        size = int(self.config.vision_config.image_size)
        pinpoints = self.config.image_grid_pinpoints
        return [image_size_to_num_patches(list(s), pinpoints, size) if c == 1 else 1
                for s, c in zip(sizes, counts)]

    def reference_pixels(self, inputs: dict) -> list[np.ndarray]:
        """The processor's tile batch (padded to the most tiles) cut back to each image's own."""
        pv = inputs.get("pixel_values")
        if pv is None:
            return []
        sizes = np.asarray(inputs["image_sizes"]).tolist()
        batch = np.asarray(inputs.get("batch_num_images", [1] * len(sizes))).tolist()
        counts = [n for n in batch for _ in range(n)] if self.onevision else [1] * len(sizes)
        tiles = self._tiles_per_image(sizes, counts)
        return [np.asarray(pv[i][:t], dtype=np.float32) for i, t in enumerate(tiles)]

    def context_inputs(self, ctx) -> dict:
        import torch

        ids = torch.as_tensor(np.asarray(ctx.tokens.prompt), dtype=torch.long)[None]
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if ctx.images:
            most = max(im.pixel_values.shape[0] for im in ctx.images)
            pv = np.zeros((len(ctx.images), most, *ctx.images[0].pixel_values.shape[1:]),
                          dtype=np.float32)
            for i, im in enumerate(ctx.images):
                pv[i, :im.pixel_values.shape[0]] = im.pixel_values
            out["pixel_values"] = torch.from_numpy(pv)
            out["image_sizes"] = torch.tensor([list(im.grid_thw[1:]) for im in ctx.images])
            if self.onevision:
                out["batch_num_images"] = torch.tensor([len(ctx.images)])
        return out


def load(folder, device: str = "cpu", dtype: str = "float32") -> AnyRes:
    """Load a LLaVA-OneVision or LLaVA-NeXT folder (tiny or real weights) offline, with the PIL
    image processor."""
    kind = model_type_of(folder) or "llava_onevision"
    return load_family(AnyRes, folder, hf_classes(kind), device=device, dtype=dtype,
                       family=FAMILY, chat=CHAT if kind == "llava_onevision" else NEXT_CHAT)
