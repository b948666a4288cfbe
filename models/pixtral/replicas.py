"""Replicas of mistralai/Mistral-Small-3.1-24B-Instruct-2503 (Mistral3) and
mistral-community/pixtral-12b (the original Pixtral layout: LlavaForConditionalGeneration with a
``pixtral`` vision tower): the real repositories' files, random weights, depth 2.

Sources (no hub access here; public copies of the files, reconstructed where noted):
- Mistral-Small-3.1 config.json: the repository's HF-format file (Mistral3, ``image_token_index``
  10, ``spatial_merge_size`` 2, ``multimodal_projector_bias`` false, text: hidden 5120, head_dim
  128, 32 heads, 8 KV heads, intermediate 32768, 40 layers, rope_theta 1e9, vocab 131072, max
  positions 131072; vision: Pixtral hidden 1024, 16 heads, head_dim 64, intermediate 4096, 24
  layers, patch 14, image_size 1540), as reproduced by public ports and transformers' docs.
- Mistral-Small-3.1 preprocessor_config.json: PixtralImageProcessorFast with ``patch_size`` 14
  (the *vision* patch, as transformers' conversion script writes it) and longest edge 1540;
  processor_config.json: PixtralProcessor with patch_size 14 and spatial_merge_size 2.
- Mistral-Small-3.1 chat template: the repository's template with its default system prompt
  ("You are Mistral Small 3, ... The current date is " + strftime_now("%Y-%m-%d") ...), copied
  from public code that pins it to this checkpoint; generation_config.json: bos 1, eos 2, pad 11
  (reconstructed from the tokenizer's ``<pad>`` id).
- pixtral-12b config.json: the repository's file (LLaVA, ``image_token_index`` 10,
  ``vision_feature_select_strategy`` "full", ``vision_feature_layer`` -1, text: hidden 5120,
  head_dim 128, 8 KV heads, intermediate 14336, 40 layers, max positions 1024000; vision: pixtral,
  patch 16, image_size 1024, head_dim 64, the rest Pixtral defaults), as reproduced by public
  model-visualisation fixtures.
- pixtral-12b preprocessor_config.json: PixtralImageProcessor with ``patch_size``
  {"height": 16, "width": 16}, longest edge 1024; processor_config.json: PixtralProcessor with
  patch_size 16 (no spatial merge: the processor's default 1); chat template: the one
  transformers' Pixtral conversion script writes (text chunks as ``content`` or ``text``, no
  default system prompt); generation_config.json: bos 1, eos 2.
- tokenizer (both): Tekken's control tokens at their ids (<unk> 0, <s> 1, </s> 2, [INST] 3,
  [/INST] 4, ..., [IMG] 10, <pad> 11, [IMG_BREAK] 12, [IMG_END] 13, ..., [SYSTEM_PROMPT] 17,
  [/SYSTEM_PROMPT] 18), the byte symbols from id 1000 as in Tekken, BOS prepended; the unnamed
  control tokens 20–999 are left out; merges learned from the template's text.

Shrink (head counts scaled with the width, GQA ratio 4:1 kept): text hidden 5120 → 64, heads
32 → 8, KV heads 8 → 2, head_dim 128 → 16, intermediate 32768 → 410 (Small-3.1, ratio 6.4) and
14336 → 179 (pixtral-12b, ratio 2.8), layers 40 → 2; vision hidden 1024 → 64, heads 16 → 4,
head_dim 64 → 16, intermediate 4096 → 256, layers 24 → 2. Patch sizes, image sizes, merge size,
vocabulary and token ids are the real ones.
"""
from __future__ import annotations

from pathlib import Path

from ..vlm_common import named_replica_path
from .adapter import model_class_of_type

__all__ = ["REPLICAS", "REPLICA_NAMES", "replica_path"]

MISTRAL_SMALL_31_SYSTEM = (
    "You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI, a French "
    "startup headquartered in Paris.\\nYour knowledge base was last updated on 2023-10-01. The "
    "current date is \" + today + \".\\n\\nWhen you're not sure about some information, you say "
    "that you don't have the information and don't make up anything.\\nIf the user's question is "
    "not clear, ambiguous, or does not provide enough context for you to accurately answer the "
    "question, you do not try to answer it right away and you rather ask the user to clarify "
    "their request (e.g. \\\"What are some good restaurants around me?\\\" => \\\"Where are "
    "you?\\\" or \\\"When is the next flight to Tokyo\\\" => \\\"Where do you travel from?\\\")")

MISTRAL_SMALL_31_TEMPLATE = (
    "{%- set today = strftime_now(\"%Y-%m-%d\") %}\n"
    "{%- set default_system_message = \"" + MISTRAL_SMALL_31_SYSTEM + "\" %}\n\n"
    "{{- bos_token }}\n\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- if messages[0]['content'] is string %}\n"
    "        {%- set system_message = messages[0]['content'] %}\n"
    "    {%- else %}\n"
    "        {%- set system_message = messages[0]['content'][0]['text'] %}\n"
    "    {%- endif %}\n"
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = default_system_message %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}\n\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "        {%- if message['content'] is string %}\n"
    "            {{- '[INST]' + message['content'] + '[/INST]' }}\n"
    "        {%- else %}\n"
    "            {{- '[INST]' }}\n"
    "            {%- for block in message['content'] %}\n"
    "                {%- if block['type'] == 'text' %}\n"
    "                    {{- block['text'] }}\n"
    "                {%- elif block['type'] in ['image', 'image_url'] %}\n"
    "                    {{- '[IMG]' }}\n"
    "                {%- else %}\n"
    "                    {{- raise_exception('Only text and image blocks are supported in "
    "message content!') }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "            {{- '[/INST]' }}\n"
    "        {%- endif %}\n"
    "    {%- elif message['role'] == 'system' %}\n"
    "        {%- if message['content'] is string %}\n"
    "            {{- '[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' }}\n"
    "        {%- else %}\n"
    "            {{- '[SYSTEM_PROMPT]' + message['content'][0]['text'] + '[/SYSTEM_PROMPT]' }}\n"
    "        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {%- if message['content'] is string %}\n"
    "            {{- message['content'] + eos_token }}\n"
    "        {%- else %}\n"
    "            {{- message['content'][0]['text'] + eos_token }}\n"
    "        {%- endif %}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Only user, system and assistant roles are supported!') }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}")

PIXTRAL_12B_TEMPLATE = (
    "{%- if messages[0][\"role\"] == \"system\" %}{%- set system_message = "
    "messages[0][\"content\"] %}{%- set loop_messages = messages[1:] %}\n"
    "{%- else %}{%- set loop_messages = messages %}{%- endif %}{{- bos_token }}"
    "{%- for message in loop_messages %}{%- if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{- raise_exception('After the optional system message, "
    "conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}"
    "{%- if message[\"role\"] == \"user\" %}{%- if loop.last and system_message is defined %}"
    "{{- \"[INST]\" + system_message + \"\\n\\n\" }}{%- else %}{{ \"[INST]\" }}{%- endif %}"
    "{%- endif %}{%- if message[\"content\"] is not string %}"
    "{%- for chunk in message[\"content\"] %}{%- if chunk[\"type\"] == \"text\" %}"
    "{%- if \"content\" in chunk %}{{- chunk[\"content\"] }}{%- elif \"text\" in chunk %}"
    "{{- chunk[\"text\"] }}{%- endif %}{%- elif chunk[\"type\"] == \"image\" %}{{- \"[IMG]\" }}"
    "{%- else %}{{- raise_exception(\"Unrecognized content type!\") }}{%- endif %}"
    "{%- endfor %}{%- else %}{{- message[\"content\"] }}{%- endif %}"
    "{%- if message[\"role\"] == \"user\" %}{{- \"[/INST]\" }}"
    "{%- elif message[\"role\"] == \"assistant\" %}{{- eos_token}}{%- else %}"
    "{{- raise_exception(\"Only user and assistant roles are supported, with the exception of "
    "an initial optional system message!\") }}{%- endif %}{%- endfor %}")

TEKKEN_SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4,
                   "[AVAILABLE_TOOLS]": 5, "[/AVAILABLE_TOOLS]": 6, "[TOOL_RESULTS]": 7,
                   "[/TOOL_RESULTS]": 8, "[TOOL_CALLS]": 9, "[IMG]": 10, "<pad>": 11,
                   "[IMG_BREAK]": 12, "[IMG_END]": 13, "[PREFIX]": 14, "[MIDDLE]": 15,
                   "[SUFFIX]": 16, "[SYSTEM_PROMPT]": 17, "[/SYSTEM_PROMPT]": 18,
                   "[TOOL_CONTENT]": 19}

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _tokenizer(texts: list[str], max_positions: int) -> dict:
    return {"specials": TEKKEN_SPECIALS, "bos": "<s>", "eos": "</s>", "pad": "<pad>",
            "unk": "<unk>", "add_bos": True,
            "named": {"image_token": "[IMG]", "image_break_token": "[IMG_BREAK]",
                      "image_end_token": "[IMG_END]"},
            "byte_start": 1000, "max_merges": 400, "texts": texts,
            "model_max_length": max_positions}


_VISION_SHRINK = {"hidden_size": 64, "num_attention_heads": 4, "head_dim": 16,
                  "intermediate_size": 256, "num_hidden_layers": 2}

MISTRAL_SMALL_31 = {
    "config": {
        "architectures": ["Mistral3ForConditionalGeneration"],
        "image_token_index": 10,
        "model_type": "mistral3",
        "multimodal_projector_bias": False,
        "projector_hidden_act": "gelu",
        "spatial_merge_size": 2,
        "text_config": {
            "attention_dropout": 0.0,
            "head_dim": 128,
            "hidden_act": "silu",
            "hidden_size": 5120,
            "initializer_range": 0.02,
            "intermediate_size": 32768,
            "max_position_embeddings": 131072,
            "model_type": "mistral",
            "num_attention_heads": 32,
            "num_hidden_layers": 40,
            "num_key_value_heads": 8,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000000.0,
            "sliding_window": None,
            "use_cache": True,
            "vocab_size": 131072,
        },
        "torch_dtype": "bfloat16",
        "transformers_version": "4.50.0.dev0",
        "vision_config": {
            "attention_dropout": 0.0,
            "head_dim": 64,
            "hidden_act": "silu",
            "hidden_size": 1024,
            "image_size": 1540,
            "initializer_range": 0.02,
            "intermediate_size": 4096,
            "model_type": "pixtral",
            "num_attention_heads": 16,
            "num_channels": 3,
            "num_hidden_layers": 24,
            "patch_size": 14,
            "rope_theta": 10000.0,
        },
        "vision_feature_layer": -1,
    },
    "shrink": {
        "text_config": {"hidden_size": 64, "head_dim": 16, "num_attention_heads": 8,
                        "num_key_value_heads": 2, "intermediate_size": 410,
                        "num_hidden_layers": 2},
        "vision_config": _VISION_SHRINK,
    },
    "generation_config": {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
                          "pad_token_id": 11, "transformers_version": "4.50.0.dev0"},
    "preprocessor_config": {
        "crop_size": None,
        "data_format": "channels_first",
        "default_to_square": True,
        "device": None,
        "do_center_crop": None,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_processor_type": "PixtralImageProcessorFast",
        "image_std": CLIP_STD,
        "input_data_format": None,
        "patch_size": 14,
        "processor_class": "PixtralProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "return_tensors": None,
        "size": {"longest_edge": 1540},
    },
    "processor_config": {"image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]",
                         "image_token": "[IMG]", "patch_size": 14,
                         "processor_class": "PixtralProcessor", "spatial_merge_size": 2},
    "chat_template": MISTRAL_SMALL_31_TEMPLATE,
    "tokenizer": _tokenizer([MISTRAL_SMALL_31_SYSTEM.replace("\\n", "\n")
                             .replace('\\"', '"').replace('" + today + "', "2025-01-01")],
                            131072),
    "std": 0.15, "seed": 0, "shard": "8MB",
}

PIXTRAL_12B = {
    "config": {
        "architectures": ["LlavaForConditionalGeneration"],
        "ignore_index": -100,
        "image_seq_length": 1,
        "image_token_index": 10,
        "model_type": "llava",
        "projector_hidden_act": "gelu",
        "text_config": {
            "head_dim": 128,
            "hidden_act": "silu",
            "hidden_size": 5120,
            "intermediate_size": 14336,
            "is_composition": True,
            "max_position_embeddings": 1024000,
            "model_type": "mistral",
            "num_hidden_layers": 40,
            "num_key_value_heads": 8,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000000.0,
            "sliding_window": None,
            "vocab_size": 131072,
        },
        "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0",
        "vision_config": {
            "head_dim": 64,
            "hidden_act": "silu",
            "image_size": 1024,
            "is_composition": True,
            "model_type": "pixtral",
            "patch_size": 16,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
        },
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
    },
    "shrink": {
        "text_config": {"hidden_size": 64, "head_dim": 16, "num_attention_heads": 8,
                        "num_key_value_heads": 2, "intermediate_size": 179,
                        "num_hidden_layers": 2},
        "vision_config": _VISION_SHRINK,
    },
    "generation_config": {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
                          "transformers_version": "4.45.0.dev0"},
    "preprocessor_config": {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_processor_type": "PixtralImageProcessor",
        "image_std": CLIP_STD,
        "patch_size": {"height": 16, "width": 16},
        "processor_class": "PixtralProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"longest_edge": 1024},
    },
    "processor_config": {"image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]",
                         "image_token": "[IMG]", "patch_size": 16,
                         "processor_class": "PixtralProcessor"},
    "chat_template": PIXTRAL_12B_TEMPLATE,
    "tokenizer": _tokenizer([], 1024000),
    "std": 0.15, "seed": 0, "shard": "8MB",
}

REPLICAS = {"replica-mistral-small-3.1": MISTRAL_SMALL_31, "replica-pixtral-12b": PIXTRAL_12B}
REPLICA_NAMES = tuple(REPLICAS)


def replica_path(name: str, cache_dir=None) -> Path:
    return named_replica_path(
        name, REPLICAS, lambda spec: model_class_of_type(spec["config"]["model_type"]), cache_dir)
