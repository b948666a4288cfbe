"""Replica of google/gemma-3-4b-it: the real repository's files, random weights, depth 2.

Sources (no hub access here; public copies of the files):
- config.json: the repository's file (``boi_token_index`` 255999, ``eoi_token_index`` 256000,
  ``image_token_index`` 262144, ``mm_tokens_per_image`` 256, eos [1, 106]; text: hidden 2560,
  intermediate 10240, 34 layers, linear rope scaling ×8, sliding window 1024, the rest Gemma3Text
  defaults: 8 heads, 4 KV heads, head_dim 256, vocab 262208; vision: SigLIP 896 px, patch 14,
  hidden 1152, 16 heads, intermediate 4304, 27 layers, no head).
- preprocessor_config.json: Gemma3ImageProcessor, 896×896, mean/std 0.5, bilinear,
  ``image_seq_length`` 256, pan-and-scan settings null (the processor's own defaults apply);
  processor_config.json: ``image_seq_length`` 256.
- chat template: Gemma 3's template (``{{ bos_token }}``, a system turn folded into the first user
  turn, ``<start_of_turn>user``/``model``, ``<start_of_image>`` per image, text trimmed).
- generation_config.json: bos 2, eos [1, 106], pad 0, cache_implementation "hybrid", do_sample,
  top_k 64, top_p 0.95 (the parity run overrides sampling to greedy).
- tokenizer: Gemma's special tokens at their ids (<pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4,
  <start_of_turn> 105, <end_of_turn> 106, <start_of_image> 255999, <end_of_image> 256000,
  <image_soft_token> 262144), named boi/eoi/image tokens as Gemma's tokenizer_config registers
  them, BOS prepended; byte symbols and merges from id 107 (the real SentencePiece vocabulary is
  not reproduced).

Shrink (head counts kept where the width allows): text hidden 2560 → 64, heads 8 and KV heads 4
kept, head_dim 256 → 16 (``query_pre_attn_scalar`` 256 → 16: it equals head_dim in the real
config), intermediate 10240 → 256, layers 34 → 2 with ``layer_types`` [sliding, full] (the real
5:1 pattern would make both remaining layers sliding); vision hidden 1152 → 64, heads 16 → 4,
intermediate 4304 → 256, layers 27 → 2. Image size, patch size, ``mm_tokens_per_image``,
vocabulary and token ids are the real ones.
"""
from __future__ import annotations

from pathlib import Path

from ..vlm_common import named_replica_path
from .adapter import hf_classes

__all__ = ["REPLICAS", "REPLICA_NAMES", "replica_path", "CHAT_TEMPLATE"]

CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate "
    "user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n")

GEMMA_3_4B_IT = {
    "config": {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "boi_token_index": 255999,
        "eoi_token_index": 256000,
        "eos_token_id": [1, 106],
        "image_token_index": 262144,
        "initializer_range": 0.02,
        "mm_tokens_per_image": 256,
        "model_type": "gemma3",
        "text_config": {
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "model_type": "gemma3_text",
            "num_hidden_layers": 34,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024,
        },
        "torch_dtype": "bfloat16",
        "transformers_version": "4.50.0.dev0",
        "vision_config": {
            "hidden_size": 1152,
            "image_size": 896,
            "intermediate_size": 4304,
            "model_type": "siglip_vision_model",
            "num_attention_heads": 16,
            "num_hidden_layers": 27,
            "patch_size": 14,
            "vision_use_head": False,
        },
    },
    "shrink": {
        "text_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 16,
                        "query_pre_attn_scalar": 16,
                        "layer_types": ["sliding_attention", "full_attention"]},
        "vision_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                          "num_attention_heads": 4},
    },
    "generation_config": {"bos_token_id": 2, "cache_implementation": "hybrid",
                          "do_sample": True, "eos_token_id": [1, 106], "pad_token_id": 0,
                          "top_k": 64, "top_p": 0.95, "transformers_version": "4.50.0.dev0"},
    "preprocessor_config": {
        "do_convert_rgb": None,
        "do_normalize": True,
        "do_pan_and_scan": None,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Gemma3ImageProcessor",
        "image_seq_length": 256,
        "image_std": [0.5, 0.5, 0.5],
        "pan_and_scan_max_num_crops": None,
        "pan_and_scan_min_crop_size": None,
        "pan_and_scan_min_ratio_to_activate": None,
        "processor_class": "Gemma3Processor",
        "resample": 2,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": 896, "width": 896},
    },
    "processor_config": {"image_seq_length": 256, "processor_class": "Gemma3Processor"},
    "chat_template": CHAT_TEMPLATE,
    "tokenizer": {"specials": {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4,
                               "<start_of_turn>": 105, "<end_of_turn>": 106,
                               "<start_of_image>": 255999, "<end_of_image>": 256000,
                               "<image_soft_token>": 262144},
                  "bos": "<bos>", "eos": "<eos>", "pad": "<pad>", "unk": "<unk>",
                  "add_bos": True,
                  "named": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                            "image_token": "<image_soft_token>"},
                  "byte_start": 107, "max_merges": 300, "model_max_length": 131072},
    "std": 0.05, "seed": 0, "shard": "8MB",
}

REPLICAS = {"replica-gemma-3-4b-it": GEMMA_3_4B_IT}
REPLICA_NAMES = tuple(REPLICAS)


def replica_path(name: str, cache_dir=None) -> Path:
    return named_replica_path(name, REPLICAS, lambda spec: hf_classes()[0], cache_dir)
