"""The reference processor of Pixtral folders: transformers' ``PixtralProcessor``, reproduced.

``transformers.models.pixtral.processing_pixtral`` imports torchvision at module level (through
``image_processing_pixtral``), so the class cannot be imported where torchvision is absent. This
is the same class body (transformers 5.24, ``processing_pixtral.py``: ``__init__``,
``_process_images``, ``replace_image_token``, ``image_token_ids``, ``model_input_names``) on
``ProcessorMixin``, which supplies everything else (``__call__``, text expansion through
``get_text_with_replacements``, ``apply_chat_template``, ``get_processor_dict`` /
``from_args_and_dict``) unchanged; it is fed the PIL image processor
(``PixtralImageProcessorPil``). The one behaviour that matters: the image processor is called with
``patch_size = patch_size × spatial_merge_size`` of the processor settings, whatever patch size the
image processor's own config stores.
"""
from __future__ import annotations

from harness.env import offline_env

offline_env()

from transformers.processing_utils import ProcessorMixin  # noqa: E402

__all__ = ["PixtralProcessorPil"]


class PixtralProcessorPil(ProcessorMixin):
    text_kwargs = {"return_tensors": "pt"}
    images_kwargs = {"return_tensors": "pt"}

    def __init__(self, image_processor=None, tokenizer=None, patch_size: int = 16,
                 spatial_merge_size: int = 1, chat_template=None, image_token="[IMG]",
                 image_break_token="[IMG_BREAK]", image_end_token="[IMG_END]", **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.patch_size = patch_size
        self.spatial_merge_size = spatial_merge_size
        self.image_token = image_token
        self.image_break_token = image_break_token
        self.image_end_token = image_end_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.image_break_token_id = tokenizer.convert_tokens_to_ids(self.image_break_token)
        self.image_end_token_id = tokenizer.convert_tokens_to_ids(self.image_end_token)

    @property
    def image_token_ids(self) -> list[int]:
        return [self.image_token_id, self.image_break_token_id, self.image_end_token_id]

    def _process_images(self, images, **images_kwargs):
        images_kwargs["patch_size"] = self.patch_size * self.spatial_merge_size
        return super()._process_images(images, **images_kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        patch_size = self.patch_size * self.spatial_merge_size
        height, width = image_inputs["image_sizes"][image_idx]
        num_height_tokens = height // patch_size
        num_width_tokens = width // patch_size
        replace_tokens = [[self.image_token] * num_width_tokens
                          + [self.image_break_token]] * num_height_tokens
        replace_tokens = [item for sublist in replace_tokens for item in sublist]
        replace_tokens[-1] = self.image_end_token
        return "".join(replace_tokens)

    @property
    def model_input_names(self):
        tokenizer_input_names = self.tokenizer.model_input_names
        image_processor_input_names = self.image_processor.model_input_names
        return tokenizer_input_names + image_processor_input_names + ["image_sizes"]
