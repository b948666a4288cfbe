"""Replica of Qwen/Qwen3-VL-4B-Instruct: the real repository's files, random weights, depth 4.

Sources (no hub access here; public copies of the files; "R:" marks a value reconstructed, not
read from a public copy):
- config.json: the repository's file as public ports quote it verbatim (nested layout of
  transformers 4.57: ``text_config`` qwen3_vl_text with hidden 2560 / 32 heads / 8 KV heads /
  head_dim 128 / 36 layers / intermediate 9728 / vocab 151936 / rope_theta 5e6 /
  ``rope_scaling`` {"mrope_interleaved": true, "mrope_section": [24, 20, 20], "rope_type":
  "default"}; ``vision_config`` with depth 24, hidden 1024, 16 heads, intermediate 4096, patch 16,
  merge 2, temporal patch 2, 2304 learned position embeddings, ``deepstack_visual_indexes``
  [5, 11, 17], ``out_hidden_size`` 2560; tied embeddings; image/video/vision-start/end ids
  151655/151656/151652/151653).
- preprocessor_config.json: ``size`` {"longest_edge": 16777216, "shortest_edge": 65536}, patch
  16, temporal patch 2, merge 2, mean/std 0.5, ``Qwen2VLImageProcessorFast`` /
  ``Qwen3VLProcessor`` (public copies of the Qwen3-VL family's file). The repository's
  video_preprocessor_config.json is left out (videos need torchvision, not installed here).
- chat_template.json: Qwen3-VL's template (tools, no default system turn,
  ``<|vision_start|><|image_pad|><|vision_end|>`` per image), ``chat_template.jinja`` beside this
  module, transcribed from a public verbatim copy.
- generation_config.json: R: bos/pad 151643, eos [151645, 151643], do_sample, top_k 20, top_p
  0.8, temperature 0.7, repetition_penalty 1.0 (the model card's recommended sampling).
- tokenizer: Qwen2's special tokens at their ids (151643–151656), no BOS, eos ``<|im_end|>``, pad
  ``<|endoftext|>``, ``model_max_length`` 262144; byte-level BPE for the rest (the non-special
  added tokens 151657–151668, tool calls, FIM and thinking tags, are left out).
- No processor_config.json (Qwen3VLProcessor has no settings of its own).

Shrink (head counts scaled with the width, GQA 4:1 kept, head_dim 128 → 16): text hidden 2560 →
128, heads 32 → 8, KV heads 8 → 2, intermediate 9728 → 488, layers 36 → 4, ``mrope_section``
[24, 20, 20] → [3, 3, 2] (the interleaved split of head_dim / 2 frequencies); vision depth 24 →
4 with ``deepstack_visual_indexes`` [5, 11, 17] → [0, 1, 2] (three blocks feed the first three
text layers, the last block feeds none, as in the real tower), hidden 1024 → 64, heads 16 → 4,
intermediate 4096 → 256, ``out_hidden_size`` = the text hidden. Patch, merge, temporal sizes,
the 48×48 learned position grid, vocabulary and token ids are the real ones.
"""
from __future__ import annotations

from pathlib import Path

from ..qwen2_vl.replicas import qwen_tokenizer
from ..vlm_common import named_replica_path
from .adapter import hf_classes

__all__ = ["REPLICAS", "REPLICA_NAMES", "replica_path", "CHAT_TEMPLATE"]

#: Qwen3-VL-Instruct's chat template (chat_template.json's string).
CHAT_TEMPLATE = (Path(__file__).with_name("chat_template.jinja")).read_text(encoding="utf-8")

_4B_CONFIG = {
    "architectures": ["Qwen3VLForConditionalGeneration"],
    "image_token_id": 151655,
    "model_type": "qwen3_vl",
    "text_config": {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "dtype": "bfloat16",
        "eos_token_id": 151645,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 2560,
        "initializer_range": 0.02,
        "intermediate_size": 9728,
        "max_position_embeddings": 262144,
        "model_type": "qwen3_vl_text",
        "num_attention_heads": 32,
        "num_hidden_layers": 36,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {
            "mrope_interleaved": True,
            "mrope_section": [24, 20, 20],
            "rope_type": "default",
        },
        "rope_theta": 5000000,
        "tie_word_embeddings": True,
        "use_cache": True,
        "vocab_size": 151936,
    },
    "tie_word_embeddings": True,
    "transformers_version": "4.57.0.dev0",
    "video_token_id": 151656,
    "vision_config": {
        "deepstack_visual_indexes": [5, 11, 17],
        "depth": 24,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": 1024,
        "in_channels": 3,
        "initializer_range": 0.02,
        "intermediate_size": 4096,
        "model_type": "qwen3_vl",
        "num_heads": 16,
        "num_position_embeddings": 2304,
        "out_hidden_size": 2560,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "vision_end_token_id": 151653,
    "vision_start_token_id": 151652,
}
_GENERATION = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True,
               "eos_token_id": [151645, 151643], "top_k": 20, "top_p": 0.8,
               "repetition_penalty": 1.0, "temperature": 0.7,
               "transformers_version": "4.56.0"}
_PREPROCESSOR = {"size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16,
                 "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
                 "image_std": [0.5, 0.5, 0.5], "processor_class": "Qwen3VLProcessor",
                 "image_processor_type": "Qwen2VLImageProcessorFast"}
_SHRINK = {
    "text_config": {"hidden_size": 128, "num_attention_heads": 8, "num_key_value_heads": 2,
                    "head_dim": 16, "intermediate_size": 488, "num_hidden_layers": 4,
                    "rope_scaling": {"mrope_section": [3, 3, 2]}},
    "vision_config": {"depth": 4, "deepstack_visual_indexes": [0, 1, 2], "hidden_size": 64,
                      "num_heads": 4, "intermediate_size": 256, "out_hidden_size": 128}}

REPLICAS = {"replica-qwen3-vl-4b-instruct": {
    "config": _4B_CONFIG, "shrink": _SHRINK, "generation_config": _GENERATION,
    "preprocessor_config": _PREPROCESSOR, "processor_config": None,
    "chat_template": CHAT_TEMPLATE, "tokenizer": qwen_tokenizer(262144, texts=()),
    "std": 0.15, "seed": 0, "shard": "8MB"}}
REPLICA_NAMES = tuple(REPLICAS)


def replica_path(name: str, cache_dir=None) -> Path:
    return named_replica_path(name, REPLICAS, lambda spec: hf_classes()[0], cache_dir)
