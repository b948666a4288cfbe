"""Replica of OpenGVLab/InternVL3-1B-hf (transformers' InternVL layout): the repository's files,
random weights, depth 2.

Sources (no hub access here): transformers' conversion script
(``convert_internvl_weights_to_hf.py``, which wrote the ``-hf`` repositories) and the original
InternVL3-1B configuration it reads:
- config.json: InternVLConfig as the script builds it — ``image_token_id`` 151667 (Qwen2 text
  models), ``downsample_ratio`` 0.5, gelu projector, ``vision_feature_layer`` -1, "default"
  features (CLS dropped); InternViT-300M-448px-V2.5 tower (hidden 1024, 24 layers, 16 heads,
  intermediate 4096, patch 14, image 448, qkv bias, layer norm 1e-6, absolute position
  embeddings, layer scale 0.1); Qwen2.5-0.5B text model (hidden 896, 24 layers, 14 heads, 2 KV
  heads, intermediate 4864, rope θ 1e6, 32768 positions, vocabulary 151674, eos forced to
  151645 for InternVL3). Reconstructed: the key order, ``transformers_version`` and fields the
  loader fills with its defaults.
- preprocessor_config.json: the script's GotOcr2 image processor (448×448, ImageNet mean/std,
  bicubic, ``crop_to_patches`` false in the file — InternVLProcessor turns it on per call —,
  1…12 patches).
- processor_config.json: ``image_seq_length`` 256 ((448 / 14)² × 0.5²).
- chat template: the script's (``<|im_start|>role\\n``, an image as ``<IMG_CONTEXT>\\n``, text,
  ``<|im_end|>\\n``, ``<|im_start|>assistant\\n``), saved as the processor's chat_template.json.
- generation_config.json (reconstructed, as save_pretrained writes it for a Qwen2 text model):
  bos 151643, eos 151645.
- tokenizer: Qwen2.5-VL's specials (151643–151664) plus the script's additions ``<img>`` 151665,
  ``</img>`` 151666, ``<IMG_CONTEXT>`` 151667, ``<quad>`` … ``</box>`` 151668–151673, named
  ``start_image_token`` / ``end_image_token`` / ``context_image_token`` / ``video_token``; no BOS;
  byte-level BPE for the rest.

Shrink (GQA ratio 7 kept): text hidden 896 → 112, heads 14 → 7, KV heads 2 → 1, intermediate
4864 → 608, layers 24 → 2; vision hidden 1024 → 64, heads 16 → 4, intermediate 4096 → 256,
layers 24 → 2. Tile size, patch size, downsample ratio, vocabulary and token ids are the real
ones (a 37×23 image is 3 × 2 tiles + the thumbnail: 7 × 256 context tokens).
"""
from __future__ import annotations

from pathlib import Path

from ..vlm_common import named_replica_path
from .adapter import hf_classes

__all__ = ["REPLICAS", "REPLICA_NAMES", "replica_path"]

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}")

QWEN25_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                   "<|object_ref_start|>": 151646, "<|object_ref_end|>": 151647,
                   "<|box_start|>": 151648, "<|box_end|>": 151649, "<|quad_start|>": 151650,
                   "<|quad_end|>": 151651, "<|vision_start|>": 151652, "<|vision_end|>": 151653,
                   "<|vision_pad|>": 151654, "<|image_pad|>": 151655, "<|video_pad|>": 151656,
                   "<tool_call>": 151657, "</tool_call>": 151658, "<|fim_prefix|>": 151659,
                   "<|fim_middle|>": 151660, "<|fim_suffix|>": 151661, "<|fim_pad|>": 151662,
                   "<|repo_name|>": 151663, "<|file_sep|>": 151664}
INTERNVL_SPECIALS = {"<img>": 151665, "</img>": 151666, "<IMG_CONTEXT>": 151667,
                     "<quad>": 151668, "</quad>": 151669, "<ref>": 151670, "</ref>": 151671,
                     "<box>": 151672, "</box>": 151673}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

INTERNVL3_1B = {
    "config": {
        "architectures": ["InternVLForConditionalGeneration"],
        "downsample_ratio": 0.5,
        "image_seq_length": 256,
        "image_token_id": 151667,
        "model_type": "internvl",
        "projector_hidden_act": "gelu",
        "text_config": {
            "architectures": ["Qwen2ForCausalLM"],
            "attention_dropout": 0.0,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "hidden_act": "silu",
            "hidden_size": 896,
            "initializer_range": 0.02,
            "intermediate_size": 4864,
            "max_position_embeddings": 32768,
            "max_window_layers": 70,
            "model_type": "qwen2",
            "num_attention_heads": 14,
            "num_hidden_layers": 24,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": 151674,
        },
        "torch_dtype": "bfloat16",
        "transformers_version": "4.52.0.dev0",
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "attention_bias": True,
            "attention_dropout": 0.0,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0,
            "hidden_size": 1024,
            "image_size": [448, 448],
            "intermediate_size": 4096,
            "layer_norm_eps": 1e-06,
            "layer_scale_init_value": 0.1,
            "model_type": "internvl_vision",
            "norm_type": "layer_norm",
            "num_attention_heads": 16,
            "num_channels": 3,
            "num_hidden_layers": 24,
            "patch_size": [14, 14],
            "projection_dropout": 0.0,
            "torch_dtype": "bfloat16",
            "use_absolute_position_embeddings": True,
            "use_mask_token": False,
            "use_mean_pooling": True,
            "use_qk_norm": False,
        },
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
    },
    "shrink": {
        "text_config": {"hidden_size": 112, "intermediate_size": 608, "num_hidden_layers": 2,
                        "max_window_layers": 2, "num_attention_heads": 7,
                        "num_key_value_heads": 1},
        "vision_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                          "num_attention_heads": 4},
    },
    "generation_config": {"bos_token_id": 151643, "eos_token_id": 151645,
                          "transformers_version": "4.52.0.dev0"},
    "preprocessor_config": {
        "crop_to_patches": False,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": IMAGENET_MEAN,
        "image_processor_type": "GotOcr2ImageProcessorFast",
        "image_std": IMAGENET_STD,
        "max_patches": 12,
        "min_patches": 1,
        "processor_class": "InternVLProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": 448, "width": 448},
    },
    "processor_config": {"image_seq_length": 256, "processor_class": "InternVLProcessor"},
    "chat_template": CHAT_TEMPLATE,
    "tokenizer": {"specials": {**QWEN25_SPECIALS, **INTERNVL_SPECIALS},
                  "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "unk": None,
                  "add_bos": False,
                  "named": {"start_image_token": "<img>", "end_image_token": "</img>",
                            "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
                  "byte_start": 0, "max_merges": 300, "model_max_length": 8192},
    "std": 0.15, "seed": 0, "shard": "8MB",
}

REPLICAS = {"replica-internvl3-1b-hf": INTERNVL3_1B}
REPLICA_NAMES = tuple(REPLICAS)


def replica_path(name: str, cache_dir=None) -> Path:
    return named_replica_path(name, REPLICAS, lambda spec: hf_classes()[0], cache_dir)
