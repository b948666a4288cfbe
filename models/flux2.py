"""FLUX.2 family (Klein and dev layouts): rules read from a model folder, the tiny recipe, loading.

A FLUX.2 folder is what ``Flux2KleinPipeline`` / ``Flux2Pipeline.save_pretrained`` writes:
model_index.json, scheduler/, text_encoder/ (Qwen3 for Klein, Mistral3 for dev), tokenizer/
(a Qwen2 tokenizer, or dev's Pixtral processor), transformer/, vae/ (``AutoencoderKLFlux2`` with
its latent BatchNorm). The layout is read from model_index.json's ``_class_name``; every schedule
constant comes from the scheduler config. The family tokenizes its own prompts (chat template →
``tokenizers``), so ``text_encoders`` is empty and ``build_context`` prepares the whole context.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cache import ensure_built
from .diffusers_common import (AutoencoderKLGeometry, chat_tokenizers_sha256, check_tiny_name,
                               class_name, corpus_sha256, load_pretrained, offline, read_json,
                               redraw, versions)

__all__ = [
    "FAMILY", "MODALITY", "TINY_NAMES", "PIPELINE", "REFERENCE", "PIPELINE_CLASSES",
    "tiny_path", "matches", "rules", "Flux2Rules", "load_components", "reference_pipeline",
    "build_tiny", "TINY_RECIPES", "TOKENIZER_FAULTS", "MAX_AREA",
]

FAMILY = "flux2"
MODALITY = "image"
TINY_NAMES = ("tiny-flux2-klein", "tiny-flux2-dev")
PIPELINE = "harness.pipelines.flux2"
REFERENCE = "harness.parity.flux2"
#: model_index.json class → layout.
PIPELINE_CLASSES = {"Flux2KleinPipeline": "klein", "Flux2Pipeline": "dev"}
#: Deliberately wrong contexts, for the parity tests' negative controls only.
TOKENIZER_FAULTS = ("noise_packed_shape", "unshifted_schedule", "linear_mu", "reference_t_zero")

#: MAX caps FLUX.2 requests at 1024² pixels (pixel_pipelines.md §3).
MAX_AREA = 1024 * 1024
#: Both pipelines pad the prompt to ``max_sequence_length=512``.
MAX_TEXT_LENGTH = 512
#: Hidden-state layers stacked on the feature axis (the pipelines' ``text_encoder_out_layers``).
TEXT_LAYERS = {"klein": (9, 18, 27), "dev": (10, 20, 30)}
#: BFL's documented reference-image limits (diffusers itself sets none): Klein 4, dev 6.
MAX_INPUT_IMAGES = {"klein": 4, "dev": 6}
#: ``Flux2ImageProcessor.check_image_input`` limits and the pipelines' reference-image area.
REF_MIN_SIDE, REF_MAX_ASPECT, REF_MAX_AREA = 64, 8, 1024 * 1024
#: ``_prepare_image_ids(scale=10)``: reference image k has time id 10 + 10k.
REF_TIME_SCALE = 10

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


# --------------------------------------------------------------------------------------------------
# registry contract


def matches(folder: str | os.PathLike) -> bool:
    """True for a diffusers folder whose model_index.json names a FLUX.2 pipeline."""
    return class_name(folder) in PIPELINE_CLASSES


def tiny_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of tiny model ``name``, built on first use into the cache (atomically)."""
    check_tiny_name(name, TINY_NAMES, "FLUX.2")
    recipe = {"family": FAMILY, "name": name, "recipe": TINY_RECIPES[name],
              "versions": versions(), "mistral_template": MISTRAL_CHAT_TEMPLATE,
              "corpus_sha256": corpus_sha256(),
              # the Qwen tokenizer builder lives there (merges, specials, chat template)
              "chat_tokenizers_sha256": chat_tokenizers_sha256()}
    return ensure_built(name, recipe, lambda out: build_tiny(out, name), cache_dir)


# --------------------------------------------------------------------------------------------------
# family rules (numbers only, read from the folder)


@dataclass(frozen=True)
class Flux2Rules(AutoencoderKLGeometry):
    """FLUX.2 rules the tokenizer and the loop ask for, read from a model folder's configs."""

    folder: Path
    layout: str                      # "klein" (Qwen3, CFG) or "dev" (Mistral3, embedded guidance)
    scheduler_config: dict = field(repr=False)
    vae_config: dict = field(repr=False)
    transformer_config: dict = field(repr=False)
    tokenizer_dir: Path = field(repr=False)
    chat_template: str = field(repr=False)
    pad_token: str = field(repr=False)
    padding_side: str = "right"
    is_distilled: bool = False
    family: str = FAMILY
    text_encoders: tuple = ()        # the family tokenizes itself (build_context)
    image_role: str = "conditioning"

    # ---------------------------------------------------------------------------- geometry
    @property
    def latent_channels(self) -> int:
        return int(self.transformer_config["in_channels"]) // 4

    @property
    def max_area(self) -> int:
        return MAX_AREA

    @property
    def max_input_images(self) -> int:
        return MAX_INPUT_IMAGES[self.layout]

    @property
    def default_size(self) -> int:
        """The VAE's sample size, capped by the area limit (1024 for real FLUX.2; tiny: 256)."""
        return min(int(self.vae_config.get("sample_size") or 1024), 1024)

    @property
    def default_steps(self) -> int:
        """The pipelines' default 50; step-distilled Klein runs 4."""
        return 4 if self.is_distilled else 50

    @property
    def default_guidance_scale(self) -> float:
        """Both pipelines default to 4.0 (distilled Klein ignores it; 1.0 says so)."""
        return 1.0 if self.is_distilled else 4.0

    @property
    def max_text_length(self) -> int:
        return MAX_TEXT_LENGTH

    @property
    def text_layers(self) -> tuple[int, ...]:
        return TEXT_LAYERS[self.layout]

    @property
    def passes_guidance(self) -> bool:
        """dev always feeds the (unscaled) guidance embedding; Klein passes ``guidance=None``."""
        return self.layout == "dev"

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the unpatchified latents, as ``prepare_latents`` floors them."""
        f = self.size_multiple
        return 2 * (int(height) // f), 2 * (int(width) // f)

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        h, w = self.latent_size(height, width)
        return h // 2, w // 2

    def noise_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """FLUX.2 draws the noise already patchified: (B, 4C, h/2, w/2)."""
        return (batch, 4 * self.latent_channels) + self.token_grid(height, width)

    def image_seq_len(self, height: int, width: int) -> int:
        h2, w2 = self.token_grid(height, width)
        return h2 * w2

    def uses_cfg(self, guidance_scale: float) -> bool:
        """Klein: CFG with the empty negative prompt iff ``guidance_scale > 1``, not distilled."""
        return self.layout == "klein" and guidance_scale > 1 and not self.is_distilled

    # ---------------------------------------------------------------------------- schedule
    def mu(self, height: int, width: int, num_steps: int) -> float:
        """The empirical mu of ``compute_empirical_mu`` (packed sequence length, step count)."""
        from _fast import empirical_mu

        return empirical_mu(self.image_seq_len(height, width), num_steps)

    def schedule(self, num_steps: int, height: int, width: int, *, shifted: bool = True,
                 linear_mu: bool = False):
        """(timesteps float32 (N,), sigmas float32 (N+1,), mu) as the pipelines make them.

        ``shifted=False`` skips the shift and ``linear_mu`` uses FLUX.1's mu instead of the
        empirical one (wrong variants, for negative controls).
        """
        from _fast import calculate_shift, flow_match_sigmas

        cfg = self.scheduler_config
        if linear_mu:
            mu = calculate_shift(self.image_seq_len(height, width),
                                 cfg.get("base_image_seq_len", 256),
                                 cfg.get("max_image_seq_len", 4096),
                                 cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        else:
            mu = self.mu(height, width, num_steps)
        dynamic = bool(cfg.get("use_dynamic_shifting")) and shifted
        timesteps, sigmas = flow_match_sigmas(
            num_steps,
            shift=float(cfg.get("shift", 1.0)) if shifted else 1.0,
            use_dynamic_shifting=dynamic,
            mu=mu if dynamic else None,
            time_shift_type=cfg.get("time_shift_type", "exponential"),
            shift_terminal=cfg.get("shift_terminal"),
            invert_sigmas=bool(cfg.get("invert_sigmas", False)),
            num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
            use_karras_sigmas=bool(cfg.get("use_karras_sigmas", False)),
            use_exponential_sigmas=bool(cfg.get("use_exponential_sigmas", False)),
        )
        return timesteps, sigmas, (mu if cfg.get("use_dynamic_shifting") else None)

    # ---------------------------------------------------------------------------- layouts
    def pack(self, noise: np.ndarray) -> np.ndarray:
        """(B, 128, h2, w2) → tokens (B, h2·w2, 128), a transposed view like ``_pack_latents``.

        The view costs nothing, and the loop hands the transformer exactly diffusers' strides;
        ``_fast.flux2_pack`` makes the same values C-contiguous (~0.6 ms at 1024²) when needed.
        """
        b, c, h2, w2 = noise.shape
        return noise.reshape(b, c, h2 * w2).transpose(0, 2, 1)

    def latent_image_ids(self, height: int, width: int, batch: int = 1) -> np.ndarray:
        """int64 (B, seq, 4) rows (0, r, c, 0) (``_prepare_latent_ids``)."""
        from _fast import flux2_image_ids

        return flux2_image_ids(*self.token_grid(height, width), batch=batch)

    def text_ids(self, batch: int, length: int) -> np.ndarray:
        """int64 (B, L, 4) rows (0, 0, 0, l) (``_prepare_text_ids``)."""
        from _fast import flux2_text_ids

        return flux2_text_ids(batch, length)

    def reference_ids(self, grids: list[tuple[int, int]], batch: int,
                      t_zero: bool = False) -> np.ndarray:
        """int64 (B, N, 4): reference image k's tokens at time 10 + 10k (``_prepare_image_ids``)."""
        from _fast import flux2_reference_ids

        return flux2_reference_ids(grids, batch=batch, scale=0 if t_zero else REF_TIME_SCALE)

    # ---------------------------------------------------------------------------- context
    def warm(self) -> None:
        """Load the cached numba kernels once, outside the first request."""
        from _fast import scatter_by_ids, unpatchify_latents

        m = self.size_multiple
        self.schedule(2, 2 * m, 2 * m)
        tokens = self.pack(np.zeros(self.noise_shape(1, 2 * m, 2 * m), dtype=np.float32))
        ids = self.latent_image_ids(2 * m, 2 * m)
        self.text_ids(1, 2)
        self.reference_ids([(2, 2)], 1)
        x = scatter_by_ids(tokens, ids, 2, 2)
        unpatchify_latents(x)
        _prompt_encoder(self)("warm-up")  # tokenizer.json, the jinja template, transformers utils

    def build_context(self, tokenizer, request, opt: dict, fault: str | None = None):
        """The FLUX.2 context of a request ``_validate`` has checked (``_build_context``)."""
        return _build_context(self, tokenizer, request, opt, fault)


def rules(folder: str | os.PathLike) -> Flux2Rules:
    """Read the FLUX.2 rules of a model folder (configs only; no weights, no torch)."""
    folder = Path(folder)
    layout = PIPELINE_CLASSES.get(class_name(folder) or "")
    if layout is None:
        raise ValueError(f"{folder} is not a FLUX.2 folder (model_index.json names none of "
                         f"{', '.join(PIPELINE_CLASSES)})")
    try:
        index = read_json(folder / "model_index.json")
        sched = read_json(folder / "scheduler" / "scheduler_config.json")
        vae = read_json(folder / "vae" / "config.json")
        transformer = read_json(folder / "transformer" / "config.json")
        tok_cfg = read_json(folder / "tokenizer" / "tokenizer_config.json")
    except FileNotFoundError as exc:
        raise ValueError(
            f"{folder} is not a complete FLUX.2 folder: missing {exc.filename}") from None
    for key in ("use_beta_sigmas", "stochastic_sampling", "use_flow_sigmas"):
        if sched.get(key):
            raise ValueError(
                f"scheduler option {key!r} of {folder} is not supported by the harness")
    template = _chat_template(folder / "tokenizer", tok_cfg)
    if template is None:
        raise ValueError(f"the tokenizer of {folder} has no chat template")
    return Flux2Rules(
        folder=folder, layout=layout, scheduler_config=sched, vae_config=vae,
        transformer_config=transformer, tokenizer_dir=folder / "tokenizer",
        chat_template=template,
        pad_token=_token(tok_cfg.get("pad_token"),
                         "<|endoftext|>" if layout == "klein" else "<pad>"),
        padding_side=str(tok_cfg.get("padding_side") or "right"),
        is_distilled=bool(index.get("is_distilled", False)))


def _chat_template(tok_dir: Path, tok_cfg: dict) -> str | None:
    """The chat template: chat_template.jinja, chat_template.json or tokenizer_config.json."""
    if (tok_dir / "chat_template.jinja").is_file():
        return (tok_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if (tok_dir / "chat_template.json").is_file():
        return read_json(tok_dir / "chat_template.json").get("chat_template")
    return tok_cfg.get("chat_template")


def _token(value, default: str) -> str:
    if isinstance(value, dict):
        value = value.get("content")
    return value or default


# --------------------------------------------------------------------------------------------------
# loading (tiny and real weights alike)


def load_components(folder: str | os.PathLike, *, device: str = "cpu",
                    dtype: str = "float32") -> dict:
    """Text encoder, transformer and VAE via ``from_pretrained(..., local_files_only=True)``."""
    offline()
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    layout = rules(folder).layout
    if layout == "klein":
        from transformers import Qwen3ForCausalLM as TextEncoder
    else:
        from transformers import Mistral3ForConditionalGeneration as TextEncoder
    return load_pretrained(folder, {"text_encoder": TextEncoder,
                                    "transformer": Flux2Transformer2DModel,
                                    "vae": AutoencoderKLFlux2}, device=device, dtype=dtype)


def reference_pipeline(components: dict, folder: str | os.PathLike, *, is_distilled=None):
    """diffusers' own Flux2KleinPipeline / Flux2Pipeline over the same loaded modules, with the
    folder's scheduler and tokenizer (the parity reference)."""
    offline()
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Pipeline

    folder = Path(folder)
    r = rules(folder)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler",
                                                                local_files_only=True)
    if r.layout == "klein":
        from transformers import Qwen2TokenizerFast

        tok = Qwen2TokenizerFast.from_pretrained(folder / "tokenizer", local_files_only=True)
        pipe = Flux2KleinPipeline(
            scheduler=scheduler, tokenizer=tok,
            is_distilled=r.is_distilled if is_distilled is None else is_distilled, **components)
    else:
        # The tokenizer stands in for dev's PixtralProcessor (which needs torchvision): for text
        # whose template starts with BOS both encode with add_special_tokens=False.
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        pipe = Flux2Pipeline(scheduler=scheduler, tokenizer=tok, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------------------------------
# the tiny recipe


def build_tiny(out: Path, name: str = "tiny-flux2-klein") -> None:
    """Write tiny FLUX.2 model ``name`` into ``out`` with ``save_pretrained``; deterministic."""
    offline()
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
    cfg = dict(r["transformer"])
    cfg["axes_dims_rope"] = tuple(cfg["axes_dims_rope"])
    Flux2Transformer2DModel(**cfg).save_pretrained(out / "transformer", safe_serialization=True)

    torch.manual_seed(r["seed"] + 3)
    vae_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in r["vae"].items()}
    vae = AutoencoderKLFlux2(**vae_cfg)
    with torch.no_grad():  # non-trivial latent statistics, so the de-normalisation shows
        n = vae.bn.running_mean.shape[0]
        vae.bn.running_mean.copy_(torch.randn(n, generator=gen) * r["bn_std"])
        vae.bn.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
    vae.save_pretrained(out / "vae", safe_serialization=True)

    FlowMatchEulerDiscreteScheduler(**r["scheduler"]).save_pretrained(out / "scheduler")
    _write_model_index(out, r)


def _build_qwen3(out: Path, r: dict, gen) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from .chat_tokenizers import build_qwen_tokenizer

    build_qwen_tokenizer(out / "tokenizer", max_merges=r["tokenizer_merges"])
    from .text_tokenizers import saved_vocab_size

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

    from .chat_tokenizers import learn_byte_merges
    from .text_tokenizers import CORPUS, bytes_to_unicode

    specials = list(MISTRAL_SPECIALS)
    merges = learn_byte_merges(list(CORPUS) + [_dev_system_message()], r["tokenizer_merges"],
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


def _write_model_index(out: Path, r: dict) -> None:
    """model_index.json as ``save_pretrained`` of the layout's pipeline writes it."""
    from diffusers import __version__ as diffusers_version

    index: dict[str, Any] = {
        "_diffusers_version": diffusers_version,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["diffusers", "Flux2Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLFlux2"],
    }
    if r["layout"] == "klein":
        index.update({"_class_name": "Flux2KleinPipeline", "is_distilled": r["is_distilled"],
                      "text_encoder": ["transformers", "Qwen3ForCausalLM"],
                      "tokenizer": ["transformers", "Qwen2TokenizerFast"]})
    else:
        index.update({"_class_name": "Flux2Pipeline",
                      "text_encoder": ["transformers", "Mistral3ForConditionalGeneration"],
                      "tokenizer": ["transformers", "PixtralProcessor"]})
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def reference_crop(size: tuple[int, int], multiple: int) -> tuple[int, int, tuple | None]:
    """(width, height, resize-to or None) of a reference image as the pipelines prepare it:
    above 1024² resized to that area (``_resize_to_target_area``), then floored to ``multiple``
    and centre-cropped."""
    w, h = size
    resize = None
    if w * h > REF_MAX_AREA:
        scale = math.sqrt(REF_MAX_AREA / (w * h))
        w, h = int(w * scale), int(h * scale)
        resize = (w, h)
    return (w // multiple) * multiple, (h // multiple) * multiple, resize


# --------------------------------------------------------------------------------------------------
# request → context


class _PromptEncoder:
    """Chat template + ``tokenizers`` encoding padded to 512, as the pipelines' text encoders see
    it: Klein ``apply_chat_template(add_generation_prompt=True, enable_thinking=False)`` then the
    tokenizer; dev the system + user turn of ``format_input`` through the processor."""

    def __init__(self, r: Flux2Rules):
        from .text_tokenizers import load_fast_tokenizer

        self.rules = r
        self.tok = load_fast_tokenizer(r.tokenizer_dir)
        cfg = read_json(r.tokenizer_dir / "tokenizer_config.json")
        if (r.tokenizer_dir / "special_tokens_map.json").is_file():  # older checkpoints
            cfg = {**read_json(r.tokenizer_dir / "special_tokens_map.json"), **cfg}
        # apply_chat_template renders with the tokenizer's special tokens as template variables.
        self.specials = {k: _token(cfg.get(k), "") for k in
                         ("bos_token", "eos_token", "unk_token", "pad_token")
                         if cfg.get(k) is not None}
        self.pad_id = self.tok.token_to_id(r.pad_token)
        if self.pad_id is None:
            raise ValueError(f"pad token {r.pad_token!r} is not in the tokenizer of "
                             f"{r.tokenizer_dir}")
        self.system_message = _dev_system_message() if r.layout == "dev" else None

    def render(self, prompt: str) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        if self.rules.layout == "klein":
            messages = [{"role": "user", "content": prompt}]
            kw = {"add_generation_prompt": True, "enable_thinking": False}
        else:  # Flux2Pipeline.format_input drops "[IMG]" from the prompt text
            messages = [
                {"role": "system", "content": [{"type": "text", "text": self.system_message}]},
                {"role": "user",
                 "content": [{"type": "text", "text": prompt.replace("[IMG]", "")}]},
            ]
            kw = {"add_generation_prompt": False}
        rendered, _ = render_jinja_template([messages], chat_template=self.rules.chat_template,
                                            **self.specials, **kw)
        return rendered[0]

    def __call__(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (512,), mask bool (512,)); a longer templated prompt is a RequestError."""
        from harness.errors import RequestError

        text = self.render(prompt)
        bos = self.specials.get("bos_token")
        # The processor adds no special tokens when the template already starts with BOS.
        add_special = self.rules.layout == "klein" or not (bos and text.startswith(bos))
        ids = self.tok.encode(text, add_special_tokens=add_special).ids
        n, limit = len(ids), self.rules.max_text_length
        if n > limit:
            raise RequestError(f"prompt too long: {n} tokens > {limit} (the text encoder's limit, "
                               f"chat template included)")
        out = np.full(limit, self.pad_id, dtype=np.int64)
        mask = np.zeros(limit, dtype=bool)
        sl = slice(limit - n, limit) if self.rules.padding_side == "left" else slice(0, n)
        out[sl] = ids
        mask[sl] = True
        return out, mask


def _dev_system_message() -> str:
    """Flux2Pipeline's SYSTEM_MESSAGE, read from the installed diffusers source (importing the
    pipelines package costs ~2 s; the constant is a plain string literal)."""
    import ast
    from importlib.util import find_spec

    path = Path(find_spec("diffusers").origin).parent / "pipelines" / "flux2" / "system_messages.py"
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "SYSTEM_MESSAGE" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"no SYSTEM_MESSAGE in {path}")


_ENCODERS: dict[Path, _PromptEncoder] = {}


def _prompt_encoder(r: Flux2Rules) -> _PromptEncoder:
    if r.tokenizer_dir not in _ENCODERS:
        _ENCODERS[r.tokenizer_dir] = _PromptEncoder(r)
    return _ENCODERS[r.tokenizer_dir]


def _reference_image(source, multiple: int):
    """(uint8 HxWx3 pixels, float32 1xHxWx3 in [-1, 1]) of one reference image, exactly as
    ``Flux2ImageProcessor.preprocess(resize_mode="crop")`` after the pipelines' area resize.

    Diffusers hands the VAE an NCHW view of the NHWC buffer; the loop rebuilds that view.
    """
    from PIL import Image

    from harness.errors import RequestError
    from harness.tokenizers.pixel import load_input_image

    image = load_input_image(source)
    w0, h0 = image.size
    if w0 < REF_MIN_SIDE or h0 < REF_MIN_SIDE:
        raise RequestError(f"reference image too small: {w0}x{h0}; both sides must be at least "
                           f"{REF_MIN_SIDE} pixels")
    if max(w0 / h0, h0 / w0) > REF_MAX_ASPECT:
        raise RequestError(f"reference image aspect ratio too extreme: {w0}x{h0}; at most "
                           f"{REF_MAX_ASPECT}:1 is allowed")
    width, height, resize = reference_crop((w0, h0), multiple)
    if resize is not None:
        image = image.resize(resize, Image.Resampling.LANCZOS)
    iw, ih = image.size
    left, top = (iw - width) // 2, (ih - height) // 2  # Flux2ImageProcessor._resize_and_crop
    image = image.crop((left, top, left + width, top + height))
    pixels = np.asarray(image, dtype=np.uint8)
    x = 2.0 * (pixels.astype(np.float32) / 255.0) - 1.0
    return pixels, x.reshape((1,) + x.shape).copy()


def _check_options(r: Flux2Rules, request) -> None:
    from harness.errors import RequestError

    if request.negative_prompt is not None:
        raise RequestError("FLUX.2 takes no negative prompt (Klein's CFG uses the empty prompt; "
                           "dev has embedded guidance): drop negative_prompt")
    if request.true_cfg_scale not in (None, 1.0):
        raise RequestError("FLUX.2 has no true_cfg_scale; use guidance_scale (Klein: CFG when "
                           "> 1, dev: embedded guidance)")
    if request.input_image is not None:
        raise RequestError("FLUX.2 has no img2img; pass reference images as input_images")
    if request.residual_threshold is not None:
        from harness.pipelines.flux2 import NO_FIRST_BLOCK_CACHE

        raise RequestError(NO_FIRST_BLOCK_CACHE)
    if request.cfg_truncation != 1.0 or request.cfg_normalization:
        raise RequestError("cfg_truncation / cfg_normalization are Z-Image options; FLUX.2 "
                           "takes neither")


def _build_context(r: Flux2Rules, tokenizer, request, opt: dict, fault: str | None):
    """Tokens, schedule, patchified noise, 4-axis ids and reference images of one request."""
    from _fast.tokens import TokenBuffer

    from harness.context import PixelContext
    from harness.context.text import new_request_id

    if fault is not None and fault not in TOKENIZER_FAULTS:
        raise ValueError(f"unknown FLUX.2 tokenizer fault {fault!r}; known: "
                         f"{', '.join(TOKENIZER_FAULTS)}")
    _check_options(r, request)
    height, width, steps, seed = opt["height"], opt["width"], opt["steps"], opt["seed"]
    batch = request.num_images_per_prompt

    refs = [_reference_image(src, r.size_multiple) for src in request.input_images or []]
    if refs:  # the pipelines default to the last reference image's size
        height = height if request.height is not None else refs[-1][0].shape[0]
        width = width if request.width is not None else refs[-1][0].shape[1]

    encode = _prompt_encoder(r)
    tokens, mask = encode(request.prompt)
    cfg = r.uses_cfg(opt["guidance"])
    negative = encode("") if cfg else None

    timesteps, sigmas, mu = r.schedule(steps, height, width,
                                       shifted=fault != "unshifted_schedule",
                                       linear_mu=fault == "linear_mu")
    shape = r.noise_shape(batch, height, width)
    if fault == "noise_packed_shape":
        shape = (batch, r.image_seq_len(height, width), shape[1])
    (noise,) = tokenizer._draw([shape], seed, request.noise)
    latents = noise if fault == "noise_packed_shape" else r.pack(noise)

    extra: dict[str, Any] = {"seed": seed, "mu": mu, "t_start": 0, "cfg": cfg,
                             "text_layers": r.text_layers}
    ctx_kw: dict[str, Any] = {}
    if negative is not None:
        ctx_kw["negative_tokens"] = TokenBuffer(negative[0])
        ctx_kw["negative_mask"] = negative[1]
        ctx_kw["negative_text_ids"] = r.text_ids(batch, len(negative[0]))
    if refs:
        ctx_kw["input_images"] = [p for p, _ in refs]
        extra["reference_nhwc"] = [x for _, x in refs]
        grids = [(p.shape[0] // r.size_multiple, p.shape[1] // r.size_multiple) for p, _ in refs]
        extra["reference_ids"] = r.reference_ids(grids, batch, t_zero=fault == "reference_t_zero")

    return PixelContext(
        tokens=TokenBuffer(tokens),
        mask=mask,
        request_id=request.request_id or new_request_id(),
        model_name=tokenizer.model_name,
        timesteps=timesteps,
        sigmas=sigmas,
        latents=latents,
        latent_image_ids=r.latent_image_ids(height, width, batch),
        text_ids=r.text_ids(batch, len(tokens)),
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=opt["guidance"],
        num_images_per_prompt=batch,
        output_format=opt["format"],
        residual_threshold=request.residual_threshold,
        extra_model_args=extra,
        **ctx_kw,
    )
