"""Replicas of black-forest-labs/FLUX.2-klein-4B and FLUX.2-dev: configs verbatim except depth
(and widths where memory demands), built offline from seeded random weights.

Sources ("R:" marks a value reconstructed, not read from a public copy):
- transformer/config.json: huggingface/diffusers scripts/convert_flux2_to_diffusers.py
  (get_flux2_transformer_config: "klein-4b" and "flux2-dev"); the Klein-4B file itself is quoted
  verbatim in public code (FLUX.2-klein-base-4B and FLUX.2-klein-4B ship the same file). dev's
  guidance_embeds true is the class default the script relies on.
- vae/config.json: AutoencoderKLFlux2() defaults (the conversion script builds the VAE with the
  defaults; diffusers 0.42.1's signature): latent_channels 32, batch_norm_eps 1e-4,
  patch_size [2, 2], quant convs on.
- scheduler/scheduler_config.json: the script copies FLUX.1-dev's scheduler (dynamic shifting,
  shift 3.0, 256->4096, 0.5->1.15); R: the full key list save_pretrained writes.
- model_index.json: Klein: Flux2KleinPipeline with is_distilled true, Qwen3ForCausalLM,
  Qwen2TokenizerFast (public copies of the file list); dev: Flux2Pipeline with
  Mistral3ForConditionalGeneration and PixtralProcessor (the script's AutoProcessor of
  Mistral-Small-3.1). R: _diffusers_version strings.
- text_encoder/config.json: Klein: Qwen/Qwen3-4B's config (hidden 2560, 36 layers, 32/8 heads,
  head_dim 128, max_position_embeddings 40960, rope_theta 1e6, tied embeddings, vocab 151936);
  dev: mistralai/Mistral-Small-3.2-24B-Instruct-2506's Mistral3 config (the script's text
  encoder), R: from memory of the model card's config.json.
- tokenizer/: Klein: Qwen3's tokenizer_config.json (added tokens at 151643.., <|endoftext|> pad,
  <|im_end|> eos, model_max_length 40960 R) with Qwen3's chat template (enable_thinking);
  dev: a Tekken-like vocabulary whose first 1000 ids are Mistral's control tokens at their real
  ids (<unk> 0, <s> 1, </s> 2, [INST] 3, [/INST] 4, [IMG] 10, <pad> 11, [IMG_BREAK] 12,
  [IMG_END] 13, [SYSTEM_PROMPT] 17, [/SYSTEM_PROMPT] 18), PixtralProcessor's
  processor_config.json / preprocessor_config.json (R: key lists), and Mistral-Small-3.1's chat
  template (default system prompt, strftime_now date; public copy, see MISTRAL_SMALL_TEMPLATE).
  PixtralProcessor itself needs torchvision (not installed): the reference gets the tokenizer, as
  for the tiny dev model.

Reduced: transformer 5+20 (Klein) / 8+48 (dev) blocks -> 1+1, 24 / 48 heads -> 2 (head dim 128,
rope axes 32x4, rope_theta 2000, mlp_ratio 3 kept), joint_attention_dim = 3 x the reduced text
width; text encoders 2560 / 5120 wide -> 32 (2 heads of the real head_dim 128, 1 KV head),
intermediate -> 64, depth 36 -> 28 (Klein stacks layers 9, 18, 27) and 40 -> 31 (dev stacks 10,
20, 30): one layer past the last stacked one, so no stacked state is the final-normed output;
Pixtral vision tower 24 layers x 1024 -> 1 x 32; VAE 128/256/512/512 -> 32/64/64/64 channels,
layers_per_block 2 -> 1. Vocab sizes kept (151936 / 131072).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

from models.pixtral.replicas import MISTRAL_SMALL_31_TEMPLATE

from .common import (build_replica, qwen3_chat_template, qwen_tokenizer, save_sharded,
                     strip_private, write_configs, write_json)

NAMES = ("FLUX.2-klein-4B", "FLUX.2-dev")

SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.36.0.dev0",
    "base_image_seq_len": 256, "base_shift": 0.5, "invert_sigmas": False,
    "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
    "shift_terminal": None, "stochastic_sampling": False, "time_shift_type": "exponential",
    "use_beta_sigmas": False, "use_dynamic_shifting": True, "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

_COMMON = {
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "transformer": ["diffusers", "Flux2Transformer2DModel"],
    "vae": ["diffusers", "AutoencoderKLFlux2"],
}
MODEL_INDEX = {
    "FLUX.2-klein-4B": {"_class_name": "Flux2KleinPipeline", "_diffusers_version": "0.37.0.dev0",
                        "is_distilled": True, **_COMMON,
                        "text_encoder": ["transformers", "Qwen3ForCausalLM"],
                        "tokenizer": ["transformers", "Qwen2TokenizerFast"]},
    "FLUX.2-dev": {"_class_name": "Flux2Pipeline", "_diffusers_version": "0.36.0.dev0", **_COMMON,
                   "text_encoder": ["transformers", "Mistral3ForConditionalGeneration"],
                   "tokenizer": ["transformers", "PixtralProcessor"]},
}
MODEL_INDEX = {k: dict(sorted(v.items())) for k, v in MODEL_INDEX.items()}

_TRANSFORMER = {
    "_class_name": "Flux2Transformer2DModel", "_diffusers_version": "0.36.0.dev0",
    "attention_head_dim": 128, "axes_dims_rope": [32, 32, 32, 32], "eps": 1e-06,
    "in_channels": 128, "mlp_ratio": 3.0, "out_channels": None, "patch_size": 1,
    "rope_theta": 2000, "timestep_guidance_channels": 256,
}
TRANSFORMER = {
    "FLUX.2-klein-4B": {**_TRANSFORMER, "_diffusers_version": "0.37.0.dev0",
                        "guidance_embeds": False, "joint_attention_dim": 7680,
                        "num_attention_heads": 24, "num_layers": 5, "num_single_layers": 20},
    "FLUX.2-dev": {**_TRANSFORMER, "guidance_embeds": True, "joint_attention_dim": 15360,
                   "num_attention_heads": 48, "num_layers": 8, "num_single_layers": 48},
}

VAE = {
    "_class_name": "AutoencoderKLFlux2", "_diffusers_version": "0.36.0.dev0", "act_fn": "silu",
    "batch_norm_eps": 0.0001, "batch_norm_momentum": 0.1,
    "block_out_channels": [128, 256, 512, 512], "decoder_block_out_channels": None,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 32,
    "layers_per_block": 2, "mid_block_add_attention": True,
    "norm_num_groups": 32, "out_channels": 3, "patch_size": [2, 2], "sample_size": 1024,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "use_post_quant_conv": True,
    "use_quant_conv": True,
}

QWEN3_4B = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 2560, "initializer_range": 0.02, "intermediate_size": 9728,
    "max_position_embeddings": 40960, "max_window_layers": 36, "model_type": "qwen3",
    "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
    "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}
QWEN3_TOKENIZER_CONFIG = {
    "add_bos_token": False, "add_prefix_space": False,
    "additional_special_tokens": None,  # filled below (Qwen2.5/3's 13 chat/vision specials)
    "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
    "errors": "replace", "model_max_length": 40960, "pad_token": "<|endoftext|>",
    "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
}

MISTRAL3 = {
    "architectures": ["Mistral3ForConditionalGeneration"], "image_token_index": 10,
    "model_type": "mistral3", "multimodal_projector_bias": False,
    "projector_hidden_act": "gelu", "spatial_merge_size": 2,
    "text_config": {
        "attention_dropout": 0.0, "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120,
        "initializer_range": 0.02, "intermediate_size": 32768,
        "max_position_embeddings": 131072, "model_type": "mistral", "num_attention_heads": 32,
        "num_hidden_layers": 40, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
        "rope_theta": 1000000000.0, "sliding_window": None, "use_cache": True,
        "vocab_size": 131072,
    },
    "torch_dtype": "bfloat16", "transformers_version": "4.52.4",
    "vision_config": {
        "attention_dropout": 0.0, "head_dim": 64, "hidden_act": "silu", "hidden_size": 1024,
        "image_size": 1540, "initializer_range": 0.02, "intermediate_size": 4096,
        "model_type": "pixtral", "num_attention_heads": 16, "num_channels": 3,
        "num_hidden_layers": 24, "patch_size": 14, "rope_theta": 10000.0,
    },
    "vision_feature_layer": -1,
}
#: Mistral's control tokens at their real ids (Tekken: ids 0..999 are control tokens).
MISTRAL_CONTROL = {"<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4,
                   "[AVAILABLE_TOOLS]": 5, "[/AVAILABLE_TOOLS]": 6, "[TOOL_RESULTS]": 7,
                   "[/TOOL_RESULTS]": 8, "[TOOL_CALLS]": 9, "[IMG]": 10, "<pad>": 11,
                   "[IMG_BREAK]": 12, "[IMG_END]": 13, "[PREFIX]": 14, "[MIDDLE]": 15,
                   "[SUFFIX]": 16, "[SYSTEM_PROMPT]": 17, "[/SYSTEM_PROMPT]": 18,
                   "[TOOL_CONTENT]": 19}
MISTRAL_NUM_CONTROL = 1000
PIXTRAL_PROCESSOR_CONFIG = {"image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]",
                            "image_token": "[IMG]", "patch_size": 14,
                            "processor_class": "PixtralProcessor", "spatial_merge_size": 2}
PIXTRAL_PREPROCESSOR_CONFIG = {
    "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "PixtralImageProcessorFast",
    "image_std": [0.26862954, 0.26130258, 0.27577711], "patch_size": {"height": 14, "width": 14},
    "processor_class": "PixtralProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"longest_edge": 1540},
}
# Mistral-Small-3.1's default system message and chat template: the VLM replica's transcription
# (models/pixtral/replicas.py names its sources), the same files FLUX.2-dev's tokenizer ships.
MISTRAL_SMALL_TEMPLATE = MISTRAL_SMALL_31_TEMPLATE

REDUCE = {
    "transformer": {"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 2,
                    "joint_attention_dim": 96},
    "vae": {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1},
    "qwen3": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
              "num_key_value_heads": 1, "num_hidden_layers": 28, "max_window_layers": 28},
    "mistral_text": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "num_hidden_layers": 31},
    "pixtral": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                "head_dim": 16, "num_hidden_layers": 1},
}
SHARDS = {"FLUX.2-klein-4B": {"transformer": 1, "text_encoder": 2, "vae": 1},
          "FLUX.2-dev": {"transformer": 7, "text_encoder": 10, "vae": 1}}
RECIPE = {"seed": 20260115, "text_encoder_init_std": 0.15, "bn_std": 0.5, "merges": 600}


def configs(name: str) -> dict:
    """Fresh copies of every config of the replica (transformers fills nested config dicts in
    place when it builds a model; that must not leak into the recipe)."""
    return copy.deepcopy(_configs(name))


def _configs(name: str) -> dict:
    cfg = {"model_index": MODEL_INDEX[name], "scheduler": SCHEDULER,
           "transformer": {**TRANSFORMER[name], **REDUCE["transformer"]},
           "vae": {**VAE, **REDUCE["vae"]}}
    if name == "FLUX.2-klein-4B":
        cfg["text_encoder"] = {**QWEN3_4B, **REDUCE["qwen3"]}
    else:
        cfg["text_encoder"] = {**MISTRAL3,
                               "text_config": {**MISTRAL3["text_config"],
                                               **REDUCE["mistral_text"]},
                               "vision_config": {**MISTRAL3["vision_config"],
                                                 **REDUCE["pixtral"]}}
    return cfg


def replica_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    if name not in NAMES:
        raise ValueError(f"unknown FLUX.2 replica {name!r}; known: {', '.join(NAMES)}")
    recipe = {"configs": configs(name), "recipe": RECIPE, "shards": SHARDS[name],
              "tokenizer": QWEN3_TOKENIZER_CONFIG, "template": MISTRAL_SMALL_TEMPLATE}
    return build_replica(name, recipe, lambda out: build(out, name), __file__, cache_dir)


def _qwen3(out: Path, cfg: dict, gen, shards: int) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from models.diffusers_common import redraw

    from .common import QWEN_ADDITIONAL_SPECIAL

    qwen_tokenizer(out / "tokenizer", added=26, max_merges=RECIPE["merges"],
                   config={**QWEN3_TOKENIZER_CONFIG, "chat_template": qwen3_chat_template(),
                           "additional_special_tokens": QWEN_ADDITIONAL_SPECIAL})
    torch.manual_seed(RECIPE["seed"])
    model = Qwen3ForCausalLM(Qwen3Config(**strip_private(cfg))).eval()
    redraw(model, RECIPE["text_encoder_init_std"], gen)
    save_sharded(model, out / "text_encoder", shards)


def _mistral3(out: Path, cfg: dict, gen, shards: int) -> None:
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import (Mistral3Config, Mistral3ForConditionalGeneration,
                              PreTrainedTokenizerFast)

    from models.diffusers_common import redraw
    from models.flux2.context import dev_system_message

    from .common import byte_bpe_tokenizer

    named = set(MISTRAL_CONTROL.values())
    control = dict(MISTRAL_CONTROL)
    control.update({f"<SPECIAL_{i}>": i for i in range(MISTRAL_NUM_CONTROL) if i not in named})
    # byte pieces and merges after the control block, as Tekken numbers them
    vocab, merges = byte_bpe_tokenizer(texts=[dev_system_message()],
                                       max_merges=RECIPE["merges"], specials={})
    vocab = {p: i + MISTRAL_NUM_CONTROL for p, i in vocab.items()}
    vocab.update(control)
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False)
                             for t, _ in sorted(control.items(), key=lambda kv: kv[1])])
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="<pad>")
    tok.chat_template = MISTRAL_SMALL_TEMPLATE
    tok.model_max_length = 131072
    tok.save_pretrained(str(out / "tokenizer"))
    write_json(out / "tokenizer" / "processor_config.json", PIXTRAL_PROCESSOR_CONFIG)
    write_json(out / "tokenizer" / "preprocessor_config.json", PIXTRAL_PREPROCESSOR_CONFIG)

    torch.manual_seed(RECIPE["seed"])
    model = Mistral3ForConditionalGeneration(Mistral3Config(**strip_private(cfg))).eval()
    redraw(model, RECIPE["text_encoder_init_std"], gen)
    save_sharded(model, out / "text_encoder", shards)


def build(out: Path, name: str) -> None:
    """Write the replica of ``name`` into ``out``; deterministic."""
    import torch
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers.utils import logging as hf_logging

    from models.diffusers_common import offline_env

    offline_env()
    hf_logging.disable_progress_bar()
    out = Path(out)
    cfg = configs(name)
    shards = SHARDS[name]
    gen = torch.Generator("cpu").manual_seed(RECIPE["seed"])
    if name == "FLUX.2-klein-4B":
        _qwen3(out, cfg["text_encoder"], gen, shards["text_encoder"])
    else:
        _mistral3(out, cfg["text_encoder"], gen, shards["text_encoder"])

    torch.manual_seed(RECIPE["seed"] + 2)
    save_sharded(Flux2Transformer2DModel.from_config(strip_private(cfg["transformer"])),
                 out / "transformer", shards["transformer"])
    torch.manual_seed(RECIPE["seed"] + 3)
    vae = AutoencoderKLFlux2.from_config(strip_private(cfg["vae"]))
    with torch.no_grad():  # non-trivial latent statistics, so the de-normalisation shows
        n = vae.bn.running_mean.shape[0]
        vae.bn.running_mean.copy_(torch.randn(n, generator=gen) * RECIPE["bn_std"])
        vae.bn.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
    save_sharded(vae, out / "vae", shards["vae"])

    write_configs(out, cfg)
