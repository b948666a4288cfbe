"""The reference processor of SmolVLM folders: transformers' ``SmolVLMProcessor`` without its video
side.

``SmolVLMProcessor.__init__`` refuses to run without ``num2words`` (used only to write video
prompts) and takes a video processor (which needs torchvision); neither is installed here. This
subclass keeps the image and text attributes and the same settings (transformers 5.24
``processing_smolvlm.py``: the tokens read from the tokenizer, ``image_seq_len``); expansion and
layout checks are the class's own code, unchanged. ``apply_chat_template`` is
``ProcessorMixin``'s: SmolVLM's override only adds the video processor's frame defaults and a
video template, neither of which applies to image requests.
"""
from __future__ import annotations

from harness.env import offline_env

offline_env()

from transformers.models.smolvlm.processing_smolvlm import SmolVLMProcessor  # noqa: E402
from transformers.processing_utils import ProcessorMixin  # noqa: E402

__all__ = ["SmolVLMImageProcessor"]


class SmolVLMImageProcessor(SmolVLMProcessor):
    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]

    def __init__(self, image_processor, tokenizer, image_seq_len: int = 169,
                 chat_template: str | None = None, **kwargs):
        self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
        self.image_token = getattr(tokenizer, "image_token", "<image>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token",
                                              "<end_of_utterance>")
        self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
        self.image_seq_len = image_seq_len
        self.video_token = getattr(tokenizer, "video_token", "<video>")
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template,
                                **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


SmolVLMImageProcessor.__name__ = SmolVLMImageProcessor.__qualname__ = "SmolVLMProcessor"
