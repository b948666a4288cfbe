"""Replicas of llava-hf/llava-onevision-qwen2-0.5b-ov-hf and llava-hf/llava-v1.6-mistral-7b-hf:
the real repositories' files, random weights, depth 2.

Sources (no hub access here; public copies of the files):
- OneVision config.json: transformers' conversion script (convert_llava_onevision_weights_to_hf.py:
  SigLIP-so400m/14-384 tower cut to 26 layers without head, ``num_image_tokens`` 729, "full"
  features, Qwen2-0.5B-Instruct text model, vocabulary padded to 152000 after adding ``<image>``
  151646 and ``<video>`` 151647) and LlavaOnevisionConfig's defaults it keeps (the 36 pinpoints
  384…2304, ``vision_aspect_ratio`` "anyres_max_9", ``vision_feature_layer`` -1, gelu projector).
  Reconstructed: the exact key order and the ``transformers_version``; Qwen2-0.5B's text fields
  (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, rope θ 1e6, tied embeddings).
- OneVision preprocessor_config.json: LlavaOnevisionImageProcessor built from the SigLIP tower's
  processor (384×384, mean/std 0.5, bicubic) with the default pinpoints; processor_config.json and
  chat_template.json as the conversion script writes them (``<|im_start|>role\\n``, images first
  as ``<image>\\n``, then the text, ``<|im_end|>\\n``).
- NeXT config.json: llava-v1.6-mistral-7b-hf's file as quoted in TensorRT-LLM's tests (five
  pinpoints 336…1008, CLIP-L/14-336, ``vision_feature_layer`` -2, "default", Mistral-7B-Instruct
  v0.2 text model with the fields it leaves to MistralConfig's defaults); preprocessor and
  processor settings as printed from the loaded processor in public threads (shortest edge 336,
  centre crop 336, CLIP mean/std, ``patch_size`` 14, ``num_additional_image_tokens`` 1); its
  chat_template.json (``[INST] `` + images as ``<image>\\n`` + text + `` [/INST]``, no generation
  prompt; an assistant turn ends ``</s> `` as in the processor printed from the hub, older copies
  write ``<\\s>``). Reconstructed: generation_config.json (bos 1, eos 2).
- Tokenizers: the real special tokens at their real ids (Qwen2's 151643–151645 plus ``<image>``
  151646 / ``<video>`` 151647, no BOS; Llama's ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<image>`` 32000,
  ``<pad>`` 32001 with BOS prepended); byte-level BPE for the rest.

Shrink (head counts scaled with the width, GQA ratios kept): OneVision text hidden 896 → 112,
heads 14 → 7, KV heads 2 → 1, intermediate 4864 → 608, layers 24 → 2; NeXT text hidden 4096 → 128,
heads 32 → 8, KV heads 8 → 2, intermediate 14336 → 448, layers 32 → 2; vision towers to hidden
64, 4 heads, 2 layers. Tile size, patch size, pinpoints, vocabulary and token ids are the real
ones (so a 23×37 image is 1205 OneVision placeholders, as on the real model).
"""
from __future__ import annotations

from pathlib import Path

from ..llava.replicas import CLIP_L_336, CLIP_L_336_SHRINK, CLIP_MEAN, CLIP_STD, llama_tokenizer
from ..vlm_common import named_replica_path
from .adapter import hf_classes

__all__ = ["REPLICAS", "REPLICA_NAMES", "replica_path"]

OV_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> '}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}")

SIGLIP_MEAN = [0.5, 0.5, 0.5]
OV_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

ONEVISION_05B = {
    "config": {
        "architectures": ["LlavaOnevisionForConditionalGeneration"],
        "ignore_index": -100,
        "image_grid_pinpoints": OV_PINPOINTS,
        "image_token_index": 151646,
        "model_type": "llava_onevision",
        "projector_hidden_act": "gelu",
        "text_config": {
            "_name_or_path": "Qwen/Qwen2-0.5B-Instruct",
            "architectures": ["Qwen2ForCausalLM"],
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "hidden_size": 896,
            "intermediate_size": 4864,
            "max_position_embeddings": 32768,
            "max_window_layers": 24,
            "model_type": "qwen2",
            "num_attention_heads": 14,
            "num_hidden_layers": 24,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            "tie_word_embeddings": True,
            "torch_dtype": "bfloat16",
            "use_sliding_window": False,
            "vocab_size": 152000,
        },
        "tie_word_embeddings": True,
        "torch_dtype": "float16",
        "transformers_version": "4.45.0.dev0",
        "use_image_newline_parameter": True,
        "video_token_index": 151647,
        "vision_aspect_ratio": "anyres_max_9",
        "vision_config": {
            "hidden_size": 1152,
            "image_size": 384,
            "intermediate_size": 4304,
            "model_type": "siglip_vision_model",
            "num_attention_heads": 16,
            "num_hidden_layers": 26,
            "patch_size": 14,
            "vision_use_head": False,
        },
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
    },
    "shrink": {
        "text_config": {"hidden_size": 112, "intermediate_size": 608, "num_hidden_layers": 2,
                        "max_window_layers": 2, "num_attention_heads": 7,
                        "num_key_value_heads": 1},
        "vision_config": {"hidden_size": 64, "intermediate_size": 240, "num_hidden_layers": 2,
                          "num_attention_heads": 4},
    },
    "generation_config": {"_from_model_config": True, "bos_token_id": 151643,
                          "eos_token_id": 151645, "transformers_version": "4.45.0.dev0"},
    "preprocessor_config": {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_pad": True,
        "do_rescale": True,
        "do_resize": True,
        "image_grid_pinpoints": OV_PINPOINTS,
        "image_mean": SIGLIP_MEAN,
        "image_processor_type": "LlavaOnevisionImageProcessor",
        "image_std": SIGLIP_MEAN,
        "processor_class": "LlavaOnevisionProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": 384, "width": 384},
    },
    "processor_config": {"image_token": "<image>", "num_image_tokens": 729,
                         "processor_class": "LlavaOnevisionProcessor", "video_token": "<video>",
                         "vision_aspect_ratio": "anyres_max_9",
                         "vision_feature_select_strategy": "full"},
    "chat_template": OV_CHAT_TEMPLATE,
    "tokenizer": {"specials": {"<|endoftext|>": 151643, "<|im_start|>": 151644,
                               "<|im_end|>": 151645, "<image>": 151646, "<video>": 151647},
                  "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "unk": None,
                  "add_bos": False, "named": {"image_token": "<image>", "video_token": "<video>"},
                  "byte_start": 0, "max_merges": 300, "model_max_length": 32768},
    "std": 0.15, "seed": 0, "shard": "8MB",
}

NEXT_MISTRAL_7B = {
    "config": {
        "architectures": ["LlavaNextForConditionalGeneration"],
        "ignore_index": -100,
        "image_grid_pinpoints": NEXT_PINPOINTS,
        "image_token_index": 32000,
        "model_type": "llava_next",
        "projector_hidden_act": "gelu",
        "text_config": {
            "_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2",
            "architectures": ["MistralForCausalLM"],
            "intermediate_size": 14336,
            "max_position_embeddings": 32768,
            "model_type": "mistral",
            "num_key_value_heads": 8,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            "torch_dtype": "bfloat16",
            "vocab_size": 32064,
        },
        "torch_dtype": "float16",
        "transformers_version": "4.39.0.dev0",
        "use_image_newline_parameter": True,
        "vision_config": CLIP_L_336,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": 32064,
    },
    "shrink": {
        "text_config": {"hidden_size": 128, "intermediate_size": 448, "num_hidden_layers": 2,
                        "num_attention_heads": 8, "num_key_value_heads": 2},
        "vision_config": CLIP_L_336_SHRINK,
    },
    "generation_config": {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
                          "transformers_version": "4.39.0.dev0"},
    "preprocessor_config": {
        "aspect_ratio_setting": "anyres",
        "crop_size": {"height": 336, "width": 336},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_pad": True,
        "do_rescale": True,
        "do_resize": True,
        "image_grid_pinpoints": NEXT_PINPOINTS,
        "image_mean": CLIP_MEAN,
        "image_processor_type": "LlavaNextImageProcessor",
        "image_std": CLIP_STD,
        "processor_class": "LlavaNextProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": 336},
    },
    "processor_config": {"image_token": "<image>", "num_additional_image_tokens": 1,
                         "patch_size": 14, "processor_class": "LlavaNextProcessor",
                         "vision_feature_select_strategy": "default"},
    "chat_template": NEXT_CHAT_TEMPLATE,
    "tokenizer": llama_tokenizer(32768),
    "std": 0.15, "seed": 0, "shard": "4MB",
}

REPLICAS = {"replica-llava-onevision-qwen2-0.5b-ov": ONEVISION_05B,
            "replica-llava-v1.6-mistral-7b": NEXT_MISTRAL_7B}
REPLICA_NAMES = tuple(REPLICAS)


def replica_path(name: str, cache_dir=None) -> Path:
    return named_replica_path(name, REPLICAS,
                              lambda spec: hf_classes(spec["config"]["model_type"])[0], cache_dir)
