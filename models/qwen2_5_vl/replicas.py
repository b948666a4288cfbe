"""Replica of Qwen/Qwen2.5-VL-3B-Instruct: the real repository's files, random weights, depth 2.

Sources (no hub access here; public copies of the files):
- config.json: the repository's file as a public model card quotes it (flat legacy layout of
  transformers 4.41: text fields at the top level, hidden 2048 / 16 heads / 2 KV heads / 36
  layers / intermediate 11008 / tied embeddings / vocab 151936, ``rope_scaling`` {"type":
  "mrope", "mrope_section": [16, 24, 24]}; vision: depth 32, hidden 1280, intermediate 3420, 16
  heads, patch 14, merge 2, temporal patch 2, ``window_size`` 112, ``fullatt_block_indexes``
  [7, 15, 23, 31], ``tokens_per_second`` 2, ``out_hidden_size`` 2048); tests/replicas/
  qwen_image.py quotes the 7B's file, which differs only in widths.
- preprocessor_config.json: ``min_pixels`` 3136, ``max_pixels`` 12845056, patch 14, temporal
  patch 2, merge 2, CLIP mean/std, ``Qwen2VLImageProcessor`` / ``Qwen2_5_VLProcessor`` (public
  copies of the file agree).
- chat_template.json: Qwen2-VL's template (default system turn "You are a helpful assistant.";
  Qwen2.5-VL ships it unchanged).
- generation_config.json: bos/pad 151643, eos [151645, 151643], do_sample, ``repetition_penalty``
  1.05, temperature 0.1, top_p 0.001, top_k 1 (public copies of the Instruct models' file). The
  harness applies no repetition penalty: a parity run on this folder as shipped is an ``input
  mismatch`` that names generate()'s RepetitionPenaltyLogitsProcessor.
- tokenizer: Qwen2's special tokens at their ids (151643–151656), no BOS, eos ``<|im_end|>``, pad
  ``<|endoftext|>``, ``model_max_length`` 131072; byte-level BPE for the rest (the non-special
  added tokens 151657–151664, tool calls and FIM, are left out).
- No processor_config.json (Qwen2_5_VLProcessor has no settings of its own).

Shrink (head counts scaled with the width, GQA ratio 8:1 and head_dim 128 → 16): text hidden
2048 → 128, heads 16 → 8, KV heads 2 → 1, intermediate 11008 → 688, layers 36 → 2;
``mrope_section`` [16, 24, 24] → [2, 3, 3] (it sums to head_dim / 2); vision depth 32 → 2 with
``fullatt_block_indexes`` [7, 15, 23, 31] → [1] (block 0 attends in windows, block 1 to the whole
image, as the real tower alternates), hidden 1280 → 64, heads 16 → 4, intermediate 3420 → 176,
``out_hidden_size`` = the text hidden. Patch, merge, temporal sizes, window size, vocabulary and
token ids are the real ones.
"""
from __future__ import annotations

from pathlib import Path

from ..qwen2_vl.replicas import CHAT_TEMPLATE, qwen2_vl_preprocessor, qwen_tokenizer
from ..vlm_common import named_replica_path
from .adapter import hf_classes

__all__ = ["REPLICAS", "REPLICA_NAMES", "replica_path", "CHAT_TEMPLATE"]

_3B_CONFIG = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 128000,
    "max_window_layers": 70,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 16,
    "num_hidden_layers": 36,
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
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 2048,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 151936,
}
_GENERATION = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True,
               "eos_token_id": [151645, 151643], "repetition_penalty": 1.05,
               "temperature": 0.1, "top_p": 0.001, "top_k": 1,
               "transformers_version": "4.37.0"}
_SHRINK = {"hidden_size": 128, "intermediate_size": 688, "num_attention_heads": 8,
           "num_key_value_heads": 1, "num_hidden_layers": 2,
           "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
           "vision_config": {"depth": 2, "fullatt_block_indexes": [1], "hidden_size": 64,
                             "num_heads": 4, "intermediate_size": 176, "out_hidden_size": 128}}

REPLICAS = {"replica-qwen2.5-vl-3b-instruct": {
    "config": _3B_CONFIG, "shrink": _SHRINK, "generation_config": _GENERATION,
    "preprocessor_config": qwen2_vl_preprocessor("Qwen2_5_VLProcessor"),
    "processor_config": None, "chat_template": CHAT_TEMPLATE, "tokenizer": qwen_tokenizer(131072),
    "std": 0.15, "seed": 0, "shard": "8MB"}}
REPLICA_NAMES = tuple(REPLICAS)


def replica_path(name: str, cache_dir=None) -> Path:
    return named_replica_path(name, REPLICAS, lambda spec: hf_classes()[0], cache_dir)
