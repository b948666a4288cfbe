"""The Qwen-Image parity reference: QwenImagePipeline / QwenImageEdit(Plus)Pipeline over the
harness's modules. Edit pipelines get the request's input images (they resize them, run the
Qwen2-VL processor and encode them with the VAE themselves). With a ``residual_threshold`` the
reference runs under diffusers' own FirstBlockCache hook (the pipelines name their transformer
calls "cond" / "uncond" themselves).
"""
from __future__ import annotations

import os
from pathlib import Path

from harness.images import load_input_image
from harness.parity.pixel import ReferenceRunner

from ..diffusers_common import assemble_pipeline, offline_env
from .rules import load_image_processor, rules

__all__ = ["reference_pipeline", "qwen2vl_processor", "QwenImageReferenceRunner"]


def _processor_class():
    from transformers import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class _Qwen2VLProcessorPil(Qwen2VLProcessor):
        """Qwen2VLProcessor without its video processor, whose class needs torchvision (transformers
        cannot even type-check a ``None`` one without it). Text and image handling are unchanged."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return _Qwen2VLProcessorPil


def qwen2vl_processor(image_processor, tokenizer):
    """A Qwen2VLProcessor over the PIL image processor (see ``_processor_class``)."""
    return _processor_class()(image_processor=image_processor, tokenizer=tokenizer)


def reference_pipeline(components: dict, folder: str | os.PathLike, **_):
    """diffusers' own pipeline of the folder's class over the same loaded modules, with the folder's
    scheduler, Qwen2Tokenizer and (edit) the PIL Qwen2-VL processor: the parity reference."""
    offline_env()
    import diffusers
    from transformers import Qwen2Tokenizer

    folder = Path(folder)
    spec = rules(folder).spec
    parts = {"tokenizer": Qwen2Tokenizer.from_pretrained(folder / "tokenizer",
                                                          local_files_only=True)}
    if spec.edit:
        parts["processor"] = qwen2vl_processor(
            load_image_processor(str(folder / "processor")),
            Qwen2Tokenizer.from_pretrained(folder / "processor", local_files_only=True))
    return assemble_pipeline(getattr(diffusers, spec.name), folder, components, **parts)

class QwenImageReferenceRunner(ReferenceRunner):
    """The folder's own Qwen-Image pipeline (text-to-image or edit)."""

    reference_pipeline = staticmethod(reference_pipeline)

    SETTINGS = ("true_cfg_scale",)

    def call_kwargs(self, request, ctx) -> dict:
        kwargs = dict(prompt=request.prompt, num_images_per_prompt=request.num_images_per_prompt,
                      **self.given(request, "negative_prompt", "true_cfg_scale", "height",
                                   "width", "num_inference_steps", "guidance_scale"))
        if self.rules.spec.edit:
            images = [load_input_image(src) for src in request.input_images]
            # QwenImageEditPipeline takes one image; the Plus pipeline a list.
            kwargs["image"] = images if self.rules.spec.picture_labels else images[0]
        return kwargs
