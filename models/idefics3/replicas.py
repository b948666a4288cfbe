"""Replicas of HuggingFaceTB/SmolVLM-256M-Instruct (the ``idefics3`` layout) and
HuggingFaceTB/SmolVLM2-256M-Video-Instruct (the ``smolvlm`` layout): the real repositories' files,
random weights, depth 2.

Sources (no hub access here; public copies of the files, recalled where marked):
- config.json: the repositories' files as published with transformers 4.46 / 4.50: ``scale_factor``
  4, ``image_token_id`` 49190, vision tower 768 wide, 12 layers, 12 heads, patch 16, image 512
  (``max_image_size`` 512, ``size`` 2048 inside it), SmolLM2-135M text model (hidden 576, 30
  layers, 9 heads, 3 KV heads, head_dim 64, intermediate 1536, rope θ 100000, 8192 positions,
  vocabulary 49280, pad 2, untied). Reconstructed: training-only keys the loader ignores
  (perceiver/neftune/transformers.js settings) are left out.
- preprocessor_config.json: the Idefics3 / SmolVLM image processor with ``size`` longest edge
  2048, ``max_image_size`` 512, splitting on, mean/std 0.5, LANCZOS (resample 1); SmolVLM2's adds
  its video sampling settings.
- processor_config.json: ``image_seq_len`` 64 (512 / 16 = 32 patches per side, shuffled 4×4).
- chat template: SmolVLM-Instruct's ("<|im_start|>" once, ``User:`` turns, images as
  ``<image>``, ``<end_of_utterance>\\n``, ``Assistant:``); SmolVLM2's is transformers'
  ``processing_smolvlm.DEFAULT_CHAT_TEMPLATE`` (string contents and videos too).
- generation_config.json (reconstructed): bos 1, eos [2, 49279], pad 2.
- tokenizer: SmolLM2's specials (``<|endoftext|>`` 0, ``<|im_start|>`` 1 = BOS, ``<|im_end|>`` 2)
  and the vision tokens at their real ids (``<global-img>`` 49152, ``<row_1_col_1>`` …
  ``<row_6_col_6>`` 49153–49188, ``<fake_token_around_image>`` 49189, ``<image>`` 49190,
  ``<end_of_utterance>`` 49279), named as SmolVLM's tokenizer names them; no BOS is added by the
  tokenizer (the template writes it); byte-level BPE for the rest.

Shrink (GQA ratio 3 kept): text hidden 576 → 96, heads 9 → 6, KV heads 3 → 2, head_dim 64 → 16,
intermediate 1536 → 256, layers 30 → 2; vision hidden 768 → 64, heads 12 → 4, intermediate
3072 → 256, layers 12 → 2. Tile size, patch size, scale factor, vocabulary and token ids are the
real ones (a 37×23 image is 12 tiles + the global one: 13 × 64 image tokens).
"""
from __future__ import annotations

from pathlib import Path

from ..vlm_common import deep_update, named_replica_path
from .adapter import hf_classes

__all__ = ["REPLICAS", "REPLICA_NAMES", "replica_path"]

SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
SMOLVLM2_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'] is string %}{{': ' + message['content']}}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}"
    "{{ '<video>' }}{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")

SPECIALS = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<global-img>": 49152,
            **{f"<row_{r}_col_{c}>": 49152 + 6 * (r - 1) + c
               for r in range(1, 7) for c in range(1, 7)},
            "<fake_token_around_image>": 49189, "<image>": 49190, "<end_of_utterance>": 49279}
NAMED = {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
         "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"}

_TEXT = {
    "architectures": ["VLlama3ForCausalLM"],
    "head_dim": 64,
    "hidden_size": 576,
    "initializer_range": 0.041666666666666664,
    "intermediate_size": 1536,
    "max_position_embeddings": 8192,
    "model_type": "llama",
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "pad_token_id": 2,
    "rms_norm_eps": 1e-05,
    "rope_theta": 100000,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 49280,
}
_VISION = {
    "hidden_size": 768,
    "image_size": 512,
    "intermediate_size": 3072,
    "max_image_size": {"longest_edge": 512},
    "model_type": "idefics3",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "patch_size": 16,
    "size": {"longest_edge": 2048},
    "tie_word_embeddings": False,
    "use_base_siglip": False,
    "vocab_size": 49280,
}
SMOLVLM_256M = {
    "architectures": ["Idefics3ForConditionalGeneration"],
    "image_token_id": 49190,
    "model_type": "idefics3",
    "scale_factor": 4,
    "text_config": _TEXT,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.46.0",
    "use_cache": True,
    "vision_config": _VISION,
    "vocab_size": 49280,
}
SMOLVLM2_256M = deep_update(SMOLVLM_256M, {
    "architectures": ["SmolVLMForConditionalGeneration"], "model_type": "smolvlm",
    "transformers_version": "4.50.0.dev0",
    "vision_config": {"model_type": "smolvlm_vision"}})

_PREPROCESSOR = {"do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True,
                 "do_pad": True, "do_rescale": True, "do_resize": True,
                 "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "Idefics3ImageProcessor",
                 "image_std": [0.5, 0.5, 0.5], "max_image_size": {"longest_edge": 512},
                 "processor_class": "Idefics3Processor", "resample": 1,
                 "rescale_factor": 0.00392156862745098, "size": {"longest_edge": 2048}}
_PREPROCESSOR2 = {**_PREPROCESSOR, "image_processor_type": "SmolVLMImageProcessor",
                  "processor_class": "SmolVLMProcessor",
                  "video_sampling": {"fps": 1, "max_frames": 64,
                                     "video_size": {"longest_edge": 512}}}
_SHRINK = {"text_config": {"hidden_size": 96, "head_dim": 16, "intermediate_size": 256,
                           "num_attention_heads": 6, "num_key_value_heads": 2,
                           "num_hidden_layers": 2},
           "vision_config": {"hidden_size": 64, "intermediate_size": 256,
                             "num_attention_heads": 4, "num_hidden_layers": 2}}
_GENERATION = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": [2, 49279],
               "pad_token_id": 2, "transformers_version": "4.46.0"}
_TOKENIZER = {"specials": SPECIALS, "bos": "<|im_start|>", "eos": "<end_of_utterance>",
              "pad": "<|im_end|>", "unk": "<|endoftext|>", "add_bos": False, "named": NAMED,
              "byte_start": 3, "max_merges": 300, "model_max_length": 8192,
              "texts": ["User: Assistant:"]}


def _spec(config, preprocessor, processor_class, template) -> dict:
    return {"config": config, "shrink": _SHRINK, "generation_config": _GENERATION,
            "preprocessor_config": preprocessor,
            "processor_config": {"image_seq_len": 64, "processor_class": processor_class},
            "chat_template": template, "tokenizer": _TOKENIZER,
            "std": 0.15, "seed": 0, "shard": "4MB"}


REPLICAS = {
    "replica-smolvlm-256m-instruct": _spec(SMOLVLM_256M, _PREPROCESSOR, "Idefics3Processor",
                                           SMOLVLM_TEMPLATE),
    "replica-smolvlm2-256m-video-instruct": _spec(SMOLVLM2_256M, _PREPROCESSOR2,
                                                  "SmolVLMProcessor", SMOLVLM2_TEMPLATE),
}
REPLICA_NAMES = tuple(REPLICAS)


def replica_path(name: str, cache_dir=None) -> Path:
    return named_replica_path(name, REPLICAS,
                              lambda spec: hf_classes(spec["config"]["model_type"])[0], cache_dir)
