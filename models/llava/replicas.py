"""Replica of llava-hf/llava-1.5-7b-hf: the real repository's files, random weights, depth 2.

Sources (no hub access here; public copies of the files):
- config.json: the repository's file as printed by transformers 4.36 in public issue threads and
  test fixtures (``image_token_index`` 32000, ``pad_token_id`` 32001, vocab 32064, CLIP-L/14-336
  tower, ``vision_feature_layer`` -2, ``vision_feature_select_strategy`` "default"); the text model
  fields it leaves out are LlamaConfig's defaults (hidden 4096, 32 layers, 32 heads, 11008).
- preprocessor_config.json: CLIPImageProcessor of openai/clip-vit-large-patch14-336 (resize
  shortest edge 336, centre crop 336×336, CLIP mean/std, bicubic), as llava-hf ships it.
- processor_config.json: LlavaProcessor settings of llava-hf checkpoints (patch_size 14,
  ``vision_feature_select_strategy`` "default", ``num_additional_image_tokens`` 1).
- chat_template.json: llava-hf's LLaVA-1.5 template ("USER: " + images as "<image>\\n" + text +
  " " ... "ASSISTANT:"), as quoted in public code that copies it.
- generation_config.json: bos 1, eos 2, pad 32001 (transformers 4.36).
- tokenizer: Llama's special tokens at their ids (<unk> 0, <s> 1, </s> 2, <image> 32000,
  <pad> 32001), BOS prepended like Llama's tokenizer; byte-level BPE for the rest (the real
  SentencePiece vocabulary is not reproduced).

Shrink (memory and time; head counts scaled with the width, ratios kept): text hidden 4096 → 64,
heads 32 → 4 (head_dim 128 → 16, MHA as the real), intermediate 11008 → 172 (ratio 2.69), layers
32 → 2; vision hidden 1024 → 64, heads 16 → 4, intermediate 4096 → 256, layers 24 → 2. Image size,
patch size, vocabulary and token ids are the real ones.
"""
from __future__ import annotations

from pathlib import Path

from ..vlm_common import named_replica_path
from .adapter import hf_classes

__all__ = ["REPLICAS", "REPLICA_NAMES", "replica_path", "CLIP_MEAN", "CLIP_STD", "CLIP_L_336",
           "CLIP_L_336_SHRINK", "llama_tokenizer"]

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
#: CLIP ViT-L/14 at 336 px as the LLaVA-1.5 and LLaVA-NeXT configs carry it, and both replicas' cut.
CLIP_L_336 = {
    "hidden_size": 1024,
    "image_size": 336,
    "intermediate_size": 4096,
    "model_type": "clip_vision_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "projection_dim": 768,
    "vocab_size": 32000,
}
CLIP_L_336_SHRINK = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                     "num_attention_heads": 4}


def llama_tokenizer(model_max_length: int) -> dict:
    """The replica tokenizer of a Llama/Mistral-vocabulary LLaVA: the SentencePiece specials at
    their ids, <image> 32000 and <pad> 32001 appended, BOS prepended."""
    return {"specials": {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": 32000, "<pad>": 32001},
            "bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>", "add_bos": True,
            "named": {"image_token": "<image>"}, "byte_start": 3, "max_merges": 300,
            "model_max_length": model_max_length}

LLAVA_15_7B = {
    "config": {
        "architectures": ["LlavaForConditionalGeneration"],
        "ignore_index": -100,
        "image_token_index": 32000,
        "model_type": "llava",
        "pad_token_id": 32001,
        "projector_hidden_act": "gelu",
        "text_config": {
            "_name_or_path": "lmsys/vicuna-7b-v1.5",
            "architectures": ["LlamaForCausalLM"],
            "max_position_embeddings": 4096,
            "model_type": "llama",
            "rms_norm_eps": 1e-05,
            "torch_dtype": "float16",
            "vocab_size": 32064,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.36.0.dev0",
        "vision_config": CLIP_L_336,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": 32064,
    },
    "shrink": {
        "text_config": {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 4},
        "vision_config": CLIP_L_336_SHRINK,
    },
    "generation_config": {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
                          "pad_token_id": 32001, "transformers_version": "4.36.0.dev0"},
    "preprocessor_config": {
        "crop_size": {"height": 336, "width": 336},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_processor_type": "CLIPImageProcessor",
        "image_std": CLIP_STD,
        "processor_class": "LlavaProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": 336},
    },
    "processor_config": {"image_token": "<image>", "num_additional_image_tokens": 1,
                         "patch_size": 14, "processor_class": "LlavaProcessor",
                         "vision_feature_select_strategy": "default"},
    "chat_template": CHAT_TEMPLATE,
    "tokenizer": llama_tokenizer(4096),
    "std": 0.15, "seed": 0, "shard": "4MB",
}

REPLICAS = {"replica-llava-1.5-7b": LLAVA_15_7B}
REPLICA_NAMES = tuple(REPLICAS)


def replica_path(name: str, cache_dir=None) -> Path:
    return named_replica_path(name, REPLICAS, lambda spec: hf_classes()[0], cache_dir)
