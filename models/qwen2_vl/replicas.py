"""Replicas of Qwen/Qwen2-VL-2B-Instruct and Qwen/Qwen2-VL-7B-Instruct: the real repositories'
files, random weights, depth 2.

Sources (no hub access here; public copies of the files):
- config.json: the repositories' files (flat Qwen2-VL layout of transformers 4.41–4.45: text
  fields at the top level, ``rope_scaling`` {"type": "mrope", "mrope_section": [16, 24, 24]},
  token ids 151643–151656, 2B: hidden 1536 / 12 heads / 2 KV heads / tied embeddings / vocab
  151936; 7B: hidden 3584 / 28 heads / 4 KV heads / untied / vocab 152064; vision: depth 32,
  embed_dim 1280, 16 heads, patch 14, merge 2, temporal patch 2), as reproduced by public model
  ports and test fixtures.
- preprocessor_config.json: ``min_pixels`` 3136, ``max_pixels`` 12845056, patch 14, temporal
  patch 2, merge 2, CLIP mean/std (the older top-level min/max_pixels form; the PIL image
  processor folds them into ``size``).
- chat_template.json: Qwen2-VL's template with the default system turn "You are a helpful
  assistant." and ``<|vision_start|><|image_pad|><|vision_end|>`` per image (quoted verbatim by
  public code that copies it, "chat_template.json").
- generation_config.json: bos/pad 151643, eos [151645, 151643], do_sample, top_k 1, top_p 0.001,
  temperature 0.01 (the Instruct models' file; the parity run overrides sampling to greedy).
- tokenizer: Qwen2's special tokens at their ids (<|endoftext|> 151643 … <|video_pad|> 151656),
  no BOS (Qwen2's tokenizer adds none); byte-level BPE with Qwen2's split regex for the rest.
- No processor_config.json (Qwen2VLProcessor has no settings of its own).

Shrink (head counts scaled with the width, GQA ratios kept): 2B text hidden 1536 → 96, heads
12 → 6, KV heads 2 → 1, head_dim 128 → 16, intermediate 8960 → 560, layers 28 → 2; 7B hidden
3584 → 112, heads 28 → 7, KV heads 4 → 1, head_dim 128 → 16, intermediate 18944 → 592, layers
28 → 2; ``mrope_section`` [16, 24, 24] → [2, 3, 3] (it must sum to head_dim / 2); vision depth
32 → 2, embed_dim 1280 → 64, heads 16 → 4, its output hidden_size = the text hidden. Patch,
merge and temporal sizes, vocabulary and token ids are the real ones.
"""
from __future__ import annotations

from pathlib import Path

from ..vlm_common import deep_update, named_replica_path
from .adapter import hf_classes

__all__ = ["REPLICAS", "REPLICA_NAMES", "replica_path", "CHAT_TEMPLATE", "SPECIALS",
           "qwen2_vl_preprocessor", "qwen_tokenizer"]

CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
            "<|object_ref_start|>": 151646, "<|object_ref_end|>": 151647,
            "<|box_start|>": 151648, "<|box_end|>": 151649, "<|quad_start|>": 151650,
            "<|quad_end|>": 151651, "<|vision_start|>": 151652, "<|vision_end|>": 151653,
            "<|vision_pad|>": 151654, "<|image_pad|>": 151655, "<|video_pad|>": 151656}

_2B_CONFIG = {
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 1536,
    "initializer_range": 0.02,
    "intermediate_size": 8960,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2_vl",
    "num_attention_heads": 12,
    "num_hidden_layers": 28,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.41.2",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "embed_dim": 1280,
        "mlp_ratio": 4,
        "num_heads": 16,
        "in_chans": 3,
        "hidden_size": 1536,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 151936,
}
_7B_CONFIG = deep_update(_2B_CONFIG, {
    "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28,
    "num_key_value_heads": 4, "tie_word_embeddings": False, "vocab_size": 152064,
    "vision_config": {"hidden_size": 3584}})

_GENERATION = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True,
               "eos_token_id": [151645, 151643], "repetition_penalty": 1.0,
               "temperature": 0.01, "top_p": 0.001, "top_k": 1,
               "transformers_version": "4.37.0"}


def qwen2_vl_preprocessor(processor_class: str) -> dict:
    """preprocessor_config.json of Qwen2-VL and Qwen2.5-VL (the older top-level min/max_pixels
    form, patch 14, CLIP mean/std); only the processor class differs."""
    return {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14,
            "temporal_patch_size": 2, "merge_size": 2,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": processor_class}


def qwen_tokenizer(model_max_length: int, texts=("You are a helpful assistant.",)) -> dict:
    """The replica tokenizer of the Qwen-VL families: Qwen2's specials at their ids, no BOS,
    eos <|im_end|>, pad <|endoftext|>; merges learned from ``texts`` too (a template's default
    system turn)."""
    return {"specials": SPECIALS, "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>",
            "unk": None, "add_bos": False,
            "named": {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
            "byte_start": 0, "max_merges": 300, "texts": list(texts),
            "model_max_length": model_max_length}


def _spec(config: dict, hidden: int, heads: int, intermediate: int) -> dict:
    return {
        "config": config,
        "shrink": {"hidden_size": hidden, "intermediate_size": intermediate,
                   "num_attention_heads": heads, "num_key_value_heads": 1,
                   "num_hidden_layers": 2, "max_window_layers": 2,
                   "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
                   "vision_config": {"depth": 2, "embed_dim": 64, "num_heads": 4,
                                     "hidden_size": hidden}},
        "generation_config": _GENERATION,
        "preprocessor_config": qwen2_vl_preprocessor("Qwen2VLProcessor"),
        "processor_config": None,
        "chat_template": CHAT_TEMPLATE,
        "tokenizer": qwen_tokenizer(32768),
        "std": 0.15, "seed": 0, "shard": "8MB",
    }


REPLICAS = {"replica-qwen2-vl-2b-instruct": _spec(_2B_CONFIG, 96, 6, 560),
            "replica-qwen2-vl-7b-instruct": _spec(_7B_CONFIG, 112, 7, 592)}
REPLICA_NAMES = tuple(REPLICAS)


def replica_path(name: str, cache_dir=None) -> Path:
    return named_replica_path(name, REPLICAS, lambda spec: hf_classes()[0], cache_dir)
