"""Z-Image family: rules read from a model folder, request → context, tiny recipe, loading.

A Z-Image folder is what ``ZImagePipeline.save_pretrained`` writes (model_index.json, scheduler/,
text_encoder/ (Qwen3), tokenizer/ (Qwen2 BPE with a chat template), transformer/, vae/). The
family tokenizes itself (``build_context``): the prompt goes through the tokenizer's chat template
with ``enable_thinking=True`` and is padded to 512 like ``ZImagePipeline._encode_prompt``. Nothing
here imports torch at module level, so the registry and ``--help`` stay cheap.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cache import ensure_built
from .diffusers_common import (AutoencoderKLGeometry, check_tiny_name, class_name, load_pretrained,
                               offline, read_json, redraw, sha256, versions)

__all__ = [
    "FAMILY", "MODALITY", "TINY_NAMES", "PIPELINE", "REFERENCE", "PIPELINE_CLASSES",
    "TOKENIZER_FAULTS", "tiny_path", "matches", "rules", "ZImageRules", "load_components",
    "reference_pipeline", "build_tiny", "TINY_RECIPE",
]

FAMILY = "z_image"
MODALITY = "image"
TINY_NAMES = ("tiny-z-image",)
PIPELINE = "harness.pipelines.z_image"
REFERENCE = "harness.parity.z_image"
PIPELINE_CLASSES = ("ZImagePipeline", "ZImageImg2ImgPipeline")
#: Deliberately wrong contexts, for the parity tests' negative controls only.
TOKENIZER_FAULTS = ("numpy_linspace_sigmas", "unshifted_schedule")

#: Z-Image-Turbo's scheduler_config.json: a static shift, no dynamic shifting.
Z_IMAGE_TURBO_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0,
                           "use_dynamic_shifting": False}

# Real geometry, shrunken widths (tiny_models.md): the FLUX VAE layout (4 levels, 16 channels,
# 0.3611 / 0.1159), patch 2, 2 heads x 16 dims (rope axes 4+6+6), a 3-layer Qwen3 so that
# hidden_states[-2] is an inner layer; 2 main layers so a first-block cache has a head and a tail.
TINY_RECIPE: dict[str, Any] = {
    "seed": 20251126,
    "tokenizer": {"max_merges": 800, "model_max_length": 32768},
    "text_encoder": {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
    },
    # Text encoder matrices re-drawn from N(0, std) so that the prompt visibly moves the output.
    "text_encoder_init_std": 0.15,
    "transformer": {
        "all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 32,
        "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2, "norm_eps": 1e-5,
        "qk_norm": True, "cap_feat_dim": 32, "rope_theta": 256.0, "t_scale": 1000.0,
        "axes_dims": [4, 6, 6], "axes_lens": [1536, 512, 512],
    },
    # ZImageTransformer2DModel creates these as zeros: draw them, or padding is invisible.
    "pad_token_std": 0.5,
    "vae": {
        "in_channels": 3, "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 4,
        "latent_channels": 16, "scaling_factor": 0.3611, "shift_factor": 0.1159,
        "use_quant_conv": False, "use_post_quant_conv": False, "sample_size": 256,
    },
    "scheduler": Z_IMAGE_TURBO_SCHEDULER,
}

#: Largest pixel area a request may ask for.
MAX_AREA = 2048 * 2048
#: ZImagePipeline's ``max_sequence_length`` default (the chat template counts).
MAX_TEXT_LENGTH = 512
#: ZImagePipeline's own defaults for omitted options.
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 5.0
#: First-block cache threshold when the cache is on and the request gives none (spec §4).
DEFAULT_RESIDUAL_THRESHOLD = 0.06
_SPECIAL_ATTRS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                  "mask_token")


# --------------------------------------------------------------------------------------------------
# registry contract


def matches(folder: str | os.PathLike) -> bool:
    """True for a diffusers folder whose model_index.json names a Z-Image (img2img) pipeline."""
    return class_name(folder) in PIPELINE_CLASSES


def tiny_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of tiny model ``name``, built on first use into the cache (atomically)."""
    check_tiny_name(name, TINY_NAMES, "Z-Image")
    from .chat_tokenizers import QWEN_CHAT_TEMPLATE, QWEN_SPECIALS
    from .text_tokenizers import CORPUS

    corpus = "\n".join(CORPUS) + QWEN_CHAT_TEMPLATE + "".join(QWEN_SPECIALS)
    recipe = {"family": FAMILY, "name": name, "recipe": TINY_RECIPE, "versions": versions(),
              "corpus_sha256": sha256(corpus)}
    return ensure_built(name, recipe, build_tiny, cache_dir)


# --------------------------------------------------------------------------------------------------
# the chat tokenizer (harness side: ``tokenizers`` + transformers' own jinja renderer)


@functools.lru_cache(maxsize=8)
def _load_tokenizer(tokenizer_dir: str):
    from .text_tokenizers import load_fast_tokenizer

    return load_fast_tokenizer(tokenizer_dir)


def _chat_template(tokenizer_dir: Path, cfg: dict) -> str:
    path = tokenizer_dir / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if not isinstance(template, str):
        raise ValueError(f"{tokenizer_dir} has no chat template (chat_template.jinja or "
                         f"tokenizer_config.json 'chat_template')")
    return template


def _token(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value or None


# --------------------------------------------------------------------------------------------------
# family rules (numbers only, read from the folder)


@dataclass(frozen=True)
class ZImageRules(AutoencoderKLGeometry):
    """Z-Image rules the tokenizer and the loop ask for, read from a model folder's configs."""

    folder: Path
    scheduler_config: dict = field(repr=False)
    vae_config: dict = field(repr=False)
    transformer_config: dict = field(repr=False)
    tokenizer_dir: Path = field(repr=False)
    chat_template: str = field(repr=False)
    special_tokens: dict = field(repr=False)   # transformers' special_tokens_map (template vars)
    pad_token: str = "<|endoftext|>"
    padding_side: str = "right"
    family: str = FAMILY
    #: The family tokenizes itself (``build_context``); no generic per-encoder tokenizers.
    text_encoders: tuple = ()
    image_role: str = "img2img"

    # ---------------------------------------------------------------------------- geometry
    @property
    def patch_size(self) -> int:
        return int(self.transformer_config.get("all_patch_size", [2])[0])

    @property
    def latent_channels(self) -> int:
        return int(self.transformer_config["in_channels"])

    @property
    def max_area(self) -> int:
        return MAX_AREA

    @property
    def max_input_images(self) -> int:
        return 1

    @property
    def default_steps(self) -> int:
        return DEFAULT_STEPS

    @property
    def default_guidance_scale(self) -> float:
        return DEFAULT_GUIDANCE

    @property
    def default_residual_threshold(self) -> float:
        return DEFAULT_RESIDUAL_THRESHOLD

    @property
    def max_text_length(self) -> int:
        return MAX_TEXT_LENGTH

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the latents, as ZImagePipeline.prepare_latents computes them."""
        f = self.size_multiple
        return 2 * (int(height) // f), 2 * (int(width) // f)

    def noise_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """(B, C, h, w): Z-Image never packs; the transformer patchifies."""
        h, w = self.latent_size(height, width)
        return (batch, self.latent_channels, h, w)

    def vae_sample_shape(self, height: int, width: int) -> tuple[int, ...]:
        return self.noise_shape(1, height, width)

    def image_seq_len(self, height: int, width: int) -> int:
        h, w = self.latent_size(height, width)
        return (h // 2) * (w // 2)

    # ---------------------------------------------------------------------------- schedule
    def mu(self, height: int, width: int) -> float | None:
        """mu as ZImagePipeline computes it; None when the scheduler ignores it (static shift)."""
        cfg = self.scheduler_config
        if not cfg.get("use_dynamic_shifting"):
            return None
        from _fast import calculate_shift

        return calculate_shift(self.image_seq_len(height, width),
                               cfg.get("base_image_seq_len", 256),
                               cfg.get("max_image_seq_len", 4096),
                               cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))

    def schedule(self, num_steps: int, height: int, width: int, *, fault: str | None = None):
        """(timesteps float32 (N,), sigmas float32 (N+1,), mu), same bits as ZImagePipeline.

        Base sigmas are ``torch.linspace(1, 1/N, N)`` reproduced by ``_fast.z_image_sigmas`` for
        this CPU's torch build. ``fault``: "numpy_linspace_sigmas" uses numpy's linspace (FLUX's
        base), "unshifted_schedule" drops the shift — wrong variants for negative controls.
        """
        import torch

        from _fast import flow_match_sigmas, z_image_sigmas

        cfg = self.scheduler_config
        mu = self.mu(height, width)
        shifted = fault != "unshifted_schedule"
        kw = dict(
            shift=float(cfg.get("shift", 1.0)) if shifted else 1.0,
            use_dynamic_shifting=bool(cfg.get("use_dynamic_shifting")) and shifted,
            mu=mu if shifted else None,
            time_shift_type=cfg.get("time_shift_type", "exponential"),
            shift_terminal=cfg.get("shift_terminal"),
            invert_sigmas=bool(cfg.get("invert_sigmas", False)),
            num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
            use_karras_sigmas=bool(cfg.get("use_karras_sigmas", False)),
            use_exponential_sigmas=bool(cfg.get("use_exponential_sigmas", False)),
        )
        if fault == "numpy_linspace_sigmas":
            timesteps, sigmas = flow_match_sigmas(num_steps, **kw)
        else:
            # torch.linspace's last bits depend on the CPU kernel torch picked (FMA or not).
            fma = torch.backends.cpu.get_cpu_capability() != "DEFAULT"
            timesteps, sigmas = z_image_sigmas(num_steps, fma=fma, **kw)
        return timesteps, sigmas, mu

    def model_times(self, timesteps: np.ndarray) -> np.ndarray:
        """The transformer's time ``(1000 − t) / 1000`` in float32, as the pipeline's tensors."""
        t = np.asarray(timesteps, dtype=np.float32)
        return (np.float32(1000.0) - t) / np.float32(1000.0)

    def warm(self) -> None:
        """Load the tokenizer, the jinja renderer and the cached schedule kernels once."""
        self.encode_prompt("warm up")
        self.schedule(2, 2 * self.size_multiple, 2 * self.size_multiple)
        self.model_times(np.ones(2, np.float32))

    # ---------------------------------------------------------------------------- text
    @property
    def tokenizer(self):
        return _load_tokenizer(str(self.tokenizer_dir))

    def render_prompt(self, text: str) -> str:
        """``tokenizer.apply_chat_template([user text], add_generation_prompt=True,
        enable_thinking=True, tokenize=False)`` with transformers' own jinja renderer."""
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            conversations=[[{"role": "user", "content": text}]], chat_template=self.chat_template,
            add_generation_prompt=True, **self.special_tokens, enable_thinking=True)
        return rendered[0]

    def encode_prompt(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (512,), mask bool (512,)) padded like the pipeline's tokenizer call.

        diffusers truncates silently at 512; the harness refuses instead.
        """
        from harness.errors import RequestError

        tok = self.tokenizer
        ids = tok.encode(self.render_prompt(text)).ids
        limit = self.max_text_length
        if len(ids) > limit:
            raise RequestError(f"prompt too long: {len(ids)} tokens > {limit} (the limit of the "
                               f"Qwen3 text encoder, chat template included)")
        pad = tok.token_to_id(self.pad_token)
        out = np.full(limit, pad, dtype=np.int64)
        mask = np.zeros(limit, dtype=bool)
        sl = slice(0, len(ids)) if self.padding_side == "right" else slice(limit - len(ids), limit)
        out[sl] = ids
        mask[sl] = True
        return out, mask

    @staticmethod
    def uses_cfg(guidance_scale: float) -> bool:
        """ZImagePipeline runs CFG when ``guidance_scale > 0`` (not > 1)."""
        return guidance_scale > 0

    # ---------------------------------------------------------------------------- request
    def build_context(self, tokenizer, request, opt: dict, fault: str | None = None):
        """The PixelContext of a validated request (``PixelGenerationTokenizer`` hook)."""
        from _fast.tokens import TokenBuffer
        from harness.context import PixelContext
        from harness.context.text import new_request_id
        from harness.errors import RequestError
        from harness.tokenizers.pixel import _check_size, _preprocess_image, load_input_image

        if fault is not None and fault not in TOKENIZER_FAULTS:
            raise ValueError(
                f"unknown Z-Image tokenizer fault {fault!r}; known: {', '.join(TOKENIZER_FAULTS)}")
        height, width, steps, seed = opt["height"], opt["width"], opt["steps"], opt["seed"]
        batch = request.num_images_per_prompt
        image = None
        if request.input_image is not None:
            image = load_input_image(request.input_image)
            # ZImageImg2ImgPipeline defaults the size to the image's own, floored to 16.
            m = self.size_multiple
            if request.height is None:
                height = _check_size("height (from the input image)", image.height // m * m, m)
            if request.width is None:
                width = _check_size("width (from the input image)", image.width // m * m, m)
            if height * width > self.max_area:
                raise RequestError(f"image area {width}x{height} = {width * height} pixels "
                                   f"exceeds the model's cap of {self.max_area} pixels")

        tokens, mask = self.encode_prompt(request.prompt)
        cfg = self.uses_cfg(opt["guidance"])
        negative = self.encode_prompt(request.negative_prompt or "") if cfg else None

        timesteps, sigmas, mu = self.schedule(steps, height, width, fault=fault)
        t_start = 0
        if image is not None:  # get_timesteps: keep the last steps
            from _fast import trim_for_strength

            try:
                timesteps, sigmas, t_start = trim_for_strength(timesteps, sigmas, steps,
                                                               float(request.strength))
            except ValueError as exc:
                raise RequestError(str(exc)) from None
            timesteps, sigmas = timesteps.copy(), sigmas.copy()

        # txt2img noise is float32 whatever the model dtype; img2img draws the VAE sample (VAE
        # dtype) and then the noise (prompt-embedding dtype) from the same generator.
        model_dt = tokenizer.dtype
        noise_dt = "float32" if image is None else model_dt
        draws = [(self.noise_shape(batch, height, width), noise_dt)]
        if image is not None:
            draws.insert(0, (self.vae_sample_shape(height, width), model_dt))
        noises = _draw(draws, seed, request.noise)

        extra: dict[str, Any] = {"seed": seed, "mu": mu, "t_start": t_start}
        ctx_kw: dict[str, Any] = {}
        if negative is not None:
            ctx_kw["negative_tokens"] = TokenBuffer(negative[0])
            ctx_kw["negative_mask"] = negative[1]
        if image is not None:
            pixels, image_nhwc = _preprocess_image(image, height, width)
            ctx_kw["input_image"] = pixels
            extra["image_nhwc"] = image_nhwc
            extra["vae_sample_noise"] = noises[0]
        return PixelContext(
            tokens=TokenBuffer(tokens), mask=mask,
            request_id=request.request_id or new_request_id(),
            model_name=tokenizer.model_name,
            explicit_negative_prompt=request.negative_prompt is not None,
            timesteps=timesteps, sigmas=sigmas, latents=noises[-1],
            height=height, width=width, num_inference_steps=steps,
            guidance_scale=opt["guidance"], true_cfg_scale=opt["true_cfg_scale"],
            strength=float(request.strength),
            cfg_normalization=request.cfg_normalization,
            cfg_truncation=float(request.cfg_truncation),
            num_images_per_prompt=batch, output_format=opt["format"],
            residual_threshold=request.residual_threshold, extra_model_args=extra, **ctx_kw)


def _draw(draws: list[tuple[tuple[int, ...], str]], seed: int,
          convention: str) -> list[np.ndarray]:
    """Draw in order from one seeded generator; float32 arrays holding the drawn dtype's values."""
    if convention == "numpy":
        rs = np.random.RandomState(seed)
        return [rs.standard_normal(s).astype(np.float32) for s, _ in draws]
    import torch

    gen = torch.Generator("cpu").manual_seed(seed)
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    return [torch.randn(s, generator=gen, dtype=table[d]).float().numpy() for s, d in draws]


def _unsupported_scheduler(cfg: dict) -> str | None:
    for key in ("use_beta_sigmas", "stochastic_sampling", "use_flow_sigmas"):
        if cfg.get(key):
            return key
    return None


def rules(folder: str | os.PathLike) -> ZImageRules:
    """Read the Z-Image rules of a model folder (configs only; no weights, no torch)."""
    folder = Path(folder)
    tok_dir = folder / "tokenizer"
    try:
        sched = read_json(folder / "scheduler" / "scheduler_config.json")
        vae = read_json(folder / "vae" / "config.json")
        transformer = read_json(folder / "transformer" / "config.json")
        tok_cfg = read_json(tok_dir / "tokenizer_config.json")
        if not (tok_dir / "tokenizer.json").is_file():
            raise FileNotFoundError(2, "missing", str(tok_dir / "tokenizer.json"))
    except FileNotFoundError as exc:
        raise ValueError(
            f"{folder} is not a complete Z-Image folder: missing {exc.filename}") from None
    bad = _unsupported_scheduler(sched)
    if bad:
        raise ValueError(f"scheduler option {bad!r} of {folder} is not supported by the harness")
    specials = {k: _token(tok_cfg.get(k)) for k in _SPECIAL_ATTRS}
    specials = {k: v for k, v in specials.items() if v is not None}
    return ZImageRules(
        folder=folder, scheduler_config=sched, vae_config=vae, transformer_config=transformer,
        tokenizer_dir=tok_dir, chat_template=_chat_template(tok_dir, tok_cfg),
        special_tokens=specials, pad_token=specials.get("pad_token", "<|endoftext|>"),
        padding_side=tok_cfg.get("padding_side") or "right")


# --------------------------------------------------------------------------------------------------
# loading (tiny and real weights alike)


def _text_encoder_class(folder: Path):
    """The transformers class model_index.json names (Qwen3Model for Z-Image-Turbo)."""
    import transformers

    name = read_json(folder / "model_index.json").get("text_encoder", [None, "Qwen3Model"])[1]
    if name not in ("Qwen3Model", "Qwen3ForCausalLM"):
        raise ValueError(f"text encoder class {name!r} of {folder} is not supported "
                         f"(expected Qwen3Model or Qwen3ForCausalLM)")
    return getattr(transformers, name)


def load_components(folder: str | os.PathLike, *, device: str = "cpu",
                    dtype: str = "float32") -> dict:
    """Text encoder, transformer and VAE via ``from_pretrained(..., local_files_only=True)``."""
    offline()
    from diffusers import AutoencoderKL, ZImageTransformer2DModel

    return load_pretrained(folder, {"text_encoder": _text_encoder_class(Path(folder)),
                                    "transformer": ZImageTransformer2DModel,
                                    "vae": AutoencoderKL}, device=device, dtype=dtype)


def reference_pipeline(components: dict, folder: str | os.PathLike, *, img2img: bool):
    """diffusers' ZImagePipeline / ZImageImg2ImgPipeline over the same loaded modules, with the
    folder's scheduler and transformers tokenizer (the parity reference)."""
    offline()
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImageImg2ImgPipeline, ZImagePipeline
    from transformers import AutoTokenizer

    folder = Path(folder)
    cls = ZImageImg2ImgPipeline if img2img else ZImagePipeline
    pipe = cls(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(
            folder / "scheduler", local_files_only=True),
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True),
        **components,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------------------------------
# the tiny recipe


def build_tiny(out: Path) -> None:
    """Write the tiny Z-Image into ``out`` with ``save_pretrained`` (safetensors), deterministic."""
    offline()
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model
    from transformers.utils import logging as hf_logging

    from .chat_tokenizers import QWEN_CHAT_TEMPLATE, build_qwen_tokenizer

    hf_logging.disable_progress_bar()
    r = TINY_RECIPE
    out = Path(out)
    # The chat template's words go into the merges, as the real vocabulary has them whole.
    vocab = build_qwen_tokenizer(out / "tokenizer", extra_texts=[QWEN_CHAT_TEMPLATE],
                                 **r["tokenizer"])
    tok_vocab = read_json(out / "tokenizer" / "tokenizer.json")
    added = {t["content"]: t["id"] for t in tok_vocab["added_tokens"]}
    gen = torch.Generator("cpu").manual_seed(r["seed"])

    torch.manual_seed(r["seed"])
    te = Qwen3Model(Qwen3Config(
        vocab_size=vocab, pad_token_id=added["<|endoftext|>"], eos_token_id=added["<|im_end|>"],
        bos_token_id=None, **r["text_encoder"])).eval()
    redraw(te, r["text_encoder_init_std"], gen)
    te.save_pretrained(out / "text_encoder", safe_serialization=True)

    torch.manual_seed(r["seed"] + 1)
    cfg = dict(r["transformer"])
    for key in ("all_patch_size", "all_f_patch_size"):
        cfg[key] = tuple(cfg[key])
    transformer = ZImageTransformer2DModel(**cfg).eval()
    with torch.no_grad():
        for p in (transformer.x_pad_token, transformer.cap_pad_token):
            p.copy_(torch.randn(p.shape, generator=gen) * r["pad_token_std"])
    transformer.save_pretrained(out / "transformer", safe_serialization=True)

    torch.manual_seed(r["seed"] + 2)
    vae = dict(r["vae"])
    for key in ("down_block_types", "up_block_types", "block_out_channels"):
        vae[key] = tuple(vae[key])
    AutoencoderKL(**vae).save_pretrained(out / "vae", safe_serialization=True)

    FlowMatchEulerDiscreteScheduler(**r["scheduler"]).save_pretrained(out / "scheduler")
    _write_model_index(out)


def _write_model_index(out: Path) -> None:
    """model_index.json as ``ZImagePipeline.save_pretrained`` writes it (Turbo's classes)."""
    from diffusers import __version__ as diffusers_version

    index = {
        "_class_name": "ZImagePipeline",
        "_diffusers_version": diffusers_version,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3Model"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "ZImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
