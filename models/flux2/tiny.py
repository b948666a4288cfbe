"""The tiny FLUX.2 models (``tiny-flux2-klein``, ``tiny-flux2-dev``): real geometry and schedule,
shrunken widths, text encoders deep enough for the real hidden-state layers; built offline."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..cache import ensure_built
from ..diffusers_common import (chat_tokenizers_sha256, check_tiny_name, corpus_sha256,
                                offline_env, read_json, redraw, save_config_model, versions,
                                write_model_index)
from .context import dev_system_message
from .rules import FAMILY

__all__ = ["TINY_NAMES", "TINY_REQUEST_DEFAULTS", "TINY_RECIPES", "FLUX2_SCHEDULER", "MISTRAL_CHAT_TEMPLATE",
           "tiny_path", "build_tiny"]

TINY_NAMES = ("tiny-flux2-klein", "tiny-flux2-dev")
#: What the CLI fills in for a tiny model when the user leaves it out (as if typed, so the
#: reference gets it too): the pipeline's defaults (1024², 28-50 steps) are for real checkpoints,
#: and a tiny model's default request should finish in seconds. Size only for text-to-image.
TINY_REQUEST_DEFAULTS = {"height": 256, "width": 256, "steps": 8}

#: The scheduler config FLUX.2 checkpoints ship (FLUX.1-dev's; mu comes from the empirical fit).
FLUX2_SCHEDULER = {
    "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
    "time_shift_type": "exponential",
}

_VAE = {
    "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 4,
    "latent_channels": 32, "sample_size": 256, "use_quant_conv": True, "use_post_quant_conv": True,
    "batch_norm_eps": 1e-4, "patch_size": [2, 2],
}
_TRANSFORMER = {
    "patch_size": 1, "in_channels": 128, "num_layers": 1, "num_single_layers": 1,
    "attention_head_dim": 16, "num_attention_heads": 2, "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0, "axes_dims_rope": [4, 4, 4, 4], "rope_theta": 2000,
}
# Real geometry, shrunken widths (tiny_models.md): 4-level VAE (factor 8) with 32 latent channels
# and non-trivial BatchNorm statistics, 1 double + 1 single block of 2 heads x 16 dims,
# in_channels 128; text encoders deep enough for the real hidden-state layers (28 / 31 layers)
# but 16 wide, so joint_attention_dim = 3 x 16.
TINY_RECIPES: dict[str, dict[str, Any]] = {
    "tiny-flux2-klein": {
        "seed": 20260115, "layout": "klein", "is_distilled": False, "tokenizer_merges": 600,
        "text_encoder": {
            "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 28,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
            "max_position_embeddings": 1024, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
        },
        "text_encoder_init_std": 0.15, "bn_std": 0.5,
        "transformer": dict(_TRANSFORMER, joint_attention_dim=48, guidance_embeds=False),
        "vae": _VAE, "scheduler": FLUX2_SCHEDULER,
    },
    "tiny-flux2-dev": {
        "seed": 20251125, "layout": "dev", "tokenizer_merges": 600,
        "text_encoder": {
            "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 31,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
            "max_position_embeddings": 1024, "rope_theta": 1000000000.0, "rms_norm_eps": 1e-5,
            "sliding_window": None,
        },
        "vision_encoder": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "image_size": 64, "patch_size": 8,
                           "num_channels": 3},
        "text_encoder_init_std": 0.15, "bn_std": 0.5,
        "transformer": dict(_TRANSFORMER, joint_attention_dim=48, guidance_embeds=True),
        "vae": _VAE, "scheduler": FLUX2_SCHEDULER,
    },
}


def tiny_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of tiny model ``name``, built on first use into the cache (atomically)."""
    check_tiny_name(name, TINY_NAMES, "FLUX.2")
    recipe = {"family": FAMILY, "name": name, "recipe": TINY_RECIPES[name],
              "versions": versions(), "mistral_template": MISTRAL_CHAT_TEMPLATE,
              "corpus_sha256": corpus_sha256(),
              # the Qwen tokenizer builder lives there (merges, specials, chat template)
              "chat_tokenizers_sha256": chat_tokenizers_sha256()}
    return ensure_built(name, recipe, lambda out: build_tiny(out, name), cache_dir)


def build_tiny(out: Path, name: str = "tiny-flux2-klein") -> None:
    """Write tiny FLUX.2 model ``name`` into ``out`` with ``save_pretrained``; deterministic."""
    offline_env()
    import torch
    from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler,
                           Flux2Transformer2DModel)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    r = TINY_RECIPES[name]
    out = Path(out)
    gen = torch.Generator("cpu").manual_seed(r["seed"])
    if r["layout"] == "klein":
        _build_qwen3(out, r, gen)
    else:
        _build_mistral3(out, r, gen)

    torch.manual_seed(r["seed"] + 2)
    save_config_model(Flux2Transformer2DModel, r["transformer"], out / "transformer")

    torch.manual_seed(r["seed"] + 3)
    vae_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in r["vae"].items()}
    vae = AutoencoderKLFlux2(**vae_cfg)
    with torch.no_grad():  # non-trivial latent statistics, so the de-normalisation shows
        n = vae.bn.running_mean.shape[0]
        vae.bn.running_mean.copy_(torch.randn(n, generator=gen) * r["bn_std"])
        vae.bn.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
    vae.save_pretrained(out / "vae", safe_serialization=True)

    FlowMatchEulerDiscreteScheduler(**r["scheduler"]).save_pretrained(out / "scheduler")
    components: dict[str, Any] = {
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["diffusers", "Flux2Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLFlux2"],
    }
    if r["layout"] == "klein":
        write_model_index(out, "Flux2KleinPipeline", components | {
            "is_distilled": r["is_distilled"],
            "text_encoder": ["transformers", "Qwen3ForCausalLM"],
            "tokenizer": ["transformers", "Qwen2TokenizerFast"]})
    else:
        write_model_index(out, "Flux2Pipeline", components | {
            "text_encoder": ["transformers", "Mistral3ForConditionalGeneration"],
            "tokenizer": ["transformers", "PixtralProcessor"]})


def _build_qwen3(out: Path, r: dict, gen) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from ..chat_tokenizers import build_qwen_tokenizer

    build_qwen_tokenizer(out / "tokenizer", max_merges=r["tokenizer_merges"])
    from ..text_tokenizers import saved_vocab_size

    vocab = read_json(out / "tokenizer" / "tokenizer.json")
    added = {t["content"]: t["id"] for t in vocab["added_tokens"]}
    torch.manual_seed(r["seed"])
    model = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=saved_vocab_size(out / "tokenizer"), pad_token_id=added["<|endoftext|>"],
        eos_token_id=added["<|im_end|>"], bos_token_id=None, **r["text_encoder"])).eval()
    redraw(model, r["text_encoder_init_std"], gen)
    model.save_pretrained(out / "text_encoder", safe_serialization=True)


#: Mistral (Pixtral) special tokens of the tiny dev tokenizer, in Mistral's id order.
MISTRAL_SPECIALS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]",
                    "[IMG_END]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "<pad>")

#: A small Mistral-Small-3.1-like template: BOS, ``[SYSTEM_PROMPT]…[/SYSTEM_PROMPT]``,
#: ``[INST]…[/INST]``; content is a string or a list of text/image blocks.
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set text = namespace(v='') -%}"
    "{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'text' -%}{%- set text.v = text.v + block['text'] -%}"
    "{%- else -%}{%- set text.v = text.v + '[IMG]' -%}{%- endif -%}"
    "{%- endfor -%}{%- set text = text.v -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' -}}"
    "{%- elif message['role'] == 'user' -%}{{- '[INST]' + text + '[/INST]' -}}"
    "{%- else -%}{{- text + eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
)


def _build_mistral3(out: Path, r: dict, gen) -> None:
    """Tiny Mistral3 (Pixtral vision + Mistral text, 31 layers) and a byte-level BPE tokenizer
    that learned the system message too (so a templated prompt stays well under 512 tokens)."""
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import (Mistral3Config, Mistral3ForConditionalGeneration,
                              PreTrainedTokenizerFast)

    from ..chat_tokenizers import learn_byte_merges
    from ..text_tokenizers import CORPUS, bytes_to_unicode

    specials = list(MISTRAL_SPECIALS)
    merges = learn_byte_merges(list(CORPUS) + [dev_system_message()], r["tokenizer_merges"],
                               specials=specials)
    vocab = {s: i for i, s in enumerate(specials)}
    for piece in list(bytes_to_unicode().values()) + ["".join(m) for m in merges]:
        vocab.setdefault(piece, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="<pad>")
    # Only the tokenizer is saved: PixtralProcessor needs torchvision, and its text-only
    # apply_chat_template equals the tokenizer's when the template starts with BOS.
    tok.chat_template = MISTRAL_CHAT_TEMPLATE
    tok.save_pretrained(str(out / "tokenizer"))
    vis = r["vision_encoder"]

    torch.manual_seed(r["seed"])
    model = Mistral3ForConditionalGeneration(Mistral3Config(
        text_config=dict(model_type="mistral", vocab_size=len(tok), bos_token_id=vocab["<s>"],
                         eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"],
                         **r["text_encoder"]),
        vision_config=dict(model_type="pixtral", **vis),
        image_token_index=vocab["[IMG]"], spatial_merge_size=1, vision_feature_layer=-1)).eval()
    redraw(model, r["text_encoder_init_std"], gen)
    model.save_pretrained(out / "text_encoder", safe_serialization=True)
