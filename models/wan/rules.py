"""Wan rules read from a model folder: which folders are Wan (WanPipeline text-to-video,
WanImageToVideoPipeline), and every number the tokenizer and the loop ask for (geometry, frame
rule, schedule, the two-expert boundary, prompt cleaning and UMT5 padding). Configs only: no
weights, no torch at import.

A Wan folder is what the pipelines' ``save_pretrained`` writes: model_index.json (with
``boundary_ratio`` / ``expand_timesteps``), scheduler/ (UniPCMultistepScheduler with flow
prediction as the real checkpoints ship, or FlowMatchEulerDiscreteScheduler), text_encoder/
(UMT5EncoderModel), tokenizer/ (T5/UMT5 fast tokenizer), transformer/ (and transformer_2/ for Wan
2.2's low-noise expert), vae/ (AutoencoderKLWan) and, for Wan 2.1 image-to-video, image_encoder/
(CLIPVisionModel) with image_processor/.
"""
from __future__ import annotations

import functools
import html
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import RequestError

from ..diffusers_common import class_name, read_json
from ..image_rules import ImageRulesDefaults

__all__ = ["FAMILY", "MODALITY", "PIPELINE_CLASSES", "SCHEDULERS", "VIDEO_FORMATS", "matches",
           "rules", "WanRules", "prompt_clean"]

FAMILY = "wan"
#: Pixel generation (the registry knows "image" and "text"); ``WanRules.video`` marks video.
MODALITY = "image"
PIPELINE_CLASSES = ("WanPipeline", "WanImageToVideoPipeline")
SCHEDULERS = ("UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler")
#: What a Wan request may ask to be written (``harness.video``); frames are compared before.
VIDEO_FORMATS = ("mp4", "webp", "gif")

#: UniPC options the harness does not reproduce: a folder switching one on is refused.
_UNIPC_UNSUPPORTED = ("thresholding", "use_karras_sigmas", "use_exponential_sigmas",
                      "use_beta_sigmas", "solver_p", "rescale_betas_zero_snr")
_EULER_UNSUPPORTED = ("use_dynamic_shifting", "use_karras_sigmas", "use_exponential_sigmas",
                      "use_beta_sigmas", "stochastic_sampling", "invert_sigmas")


def matches(folder: str | os.PathLike) -> bool:
    """True for a diffusers folder of WanPipeline or WanImageToVideoPipeline."""
    return class_name(folder) in PIPELINE_CLASSES


def prompt_clean(text: str) -> str:
    """The Wan pipelines' ``prompt_clean``: ftfy (when installed, as diffusers checks), HTML
    entities unescaped twice, stripped, whitespace runs collapsed to one space."""
    import regex

    if importlib.util.find_spec("ftfy") is not None:
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip()


@functools.lru_cache(maxsize=8)
def _load_tokenizer(tokenizer_dir: str):
    from ..text_tokenizers import load_fast_tokenizer

    return load_fast_tokenizer(tokenizer_dir)


@functools.lru_cache(maxsize=8)
def load_image_processor(folder: str):
    """The folder's CLIP image processor (PIL backend), as the I2V pipeline calls it."""
    from ..diffusers_common import offline_env

    offline_env()
    return clip_image_processor_class().from_pretrained(folder, local_files_only=True)


def clip_image_processor_class():
    """transformers' CLIP image processor: the PIL one without torchvision (the class
    transformers falls back to, without its warning)."""
    import transformers

    if importlib.util.find_spec("torchvision") is None:
        return transformers.CLIPImageProcessorPil
    return transformers.CLIPImageProcessor


def _component(index: dict, name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None


def _torch_math(name: str):
    """torch's own float32 ``log`` / ``expm1`` (CPU) as numpy → numpy, for ``_fast.unipc``."""
    import torch

    fn = getattr(torch, name)
    return lambda a: fn(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))).numpy()


@dataclass(frozen=True)
class WanRules(ImageRulesDefaults):
    """Wan rules the tokenizer and the loop ask for, read from a model folder's configs."""

    folder: Path
    pipeline_class: str
    model_index: dict = field(repr=False)
    scheduler_config: dict = field(repr=False)
    vae_config: dict = field(repr=False)
    transformer_config: dict = field(repr=False)
    transformer_2_config: dict | None = field(repr=False)
    tokenizer_dir: Path = field(repr=False)
    pad_token: str = "<pad>"
    family: str = FAMILY
    #: The family tokenizes itself (``build_context``).
    text_encoders: tuple = ()
    #: A video family: frames, frame rate and video containers.
    video: bool = True
    output_formats: tuple = VIDEO_FORMATS
    default_output_format: str = "mp4"

    # ------------------------------------------------------------------ the pipelines' defaults
    default_height = 480
    default_width = 832
    default_num_frames = 81
    default_steps = 50
    default_guidance_scale = 5.0
    #: export_to_video's and the Wan examples' frame rate.
    default_frame_rate = 16
    #: ``max_sequence_length`` of the pipelines' ``__call__``.
    max_text_length = 512
    #: First-block cache threshold when the cache is on and the request gives none.
    default_residual_threshold = 0.05
    #: MAX's cap on one frame's area (720p, the largest Wan resolution).
    max_area = 1280 * 720
    max_frames = 241

    # ------------------------------------------------------------------ structure
    @property
    def i2v(self) -> bool:
        return self.pipeline_class == "WanImageToVideoPipeline"

    @property
    def image_role(self) -> str:
        return "img2img" if self.i2v else "none"

    @property
    def max_input_images(self) -> int:
        return 1 if self.i2v else 0

    @property
    def has_image_encoder(self) -> bool:
        """Wan 2.1 image-to-video: CLIP image embeddings enter the cross-attention."""
        return self.i2v and self.transformer_config.get("image_dim") is not None

    @property
    def two_experts(self) -> bool:
        return self.transformer_2_config is not None

    @property
    def boundary_ratio(self) -> float | None:
        return self.model_index.get("boundary_ratio")

    @property
    def boundary_timestep(self) -> float | None:
        """``boundary_ratio × num_train_timesteps``: steps with t >= it run ``transformer``."""
        if self.boundary_ratio is None:
            return None
        return self.boundary_ratio * self.scheduler_config.get("num_train_timesteps", 1000)

    @property
    def scheduler_class(self) -> str:
        return self.scheduler_config.get("_class_name", "UniPCMultistepScheduler")

    @property
    def unipc(self) -> bool:
        return self.scheduler_class == "UniPCMultistepScheduler"

    # ------------------------------------------------------------------ geometry
    @property
    def vae_scale_factor(self) -> int:
        return int(self.vae_config.get("scale_factor_spatial") or 8)

    @property
    def vae_scale_factor_temporal(self) -> int:
        return int(self.vae_config.get("scale_factor_temporal") or 4)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(p) for p in self.transformer_config.get("patch_size", (1, 2, 2)))

    @property
    def size_multiple(self) -> int:
        """Height/width multiple: the VAE's spatial factor times the transformer's patch."""
        return self.vae_scale_factor * self.patch_size[1]

    @property
    def default_size(self) -> int:
        return self.default_height

    @property
    def latent_channels(self) -> int:
        """Channels of the noise: the VAE's z_dim (the I2V transformer takes 2·z + 4 more)."""
        return int(self.vae_config.get("z_dim", 16))

    def latent_frames(self, num_frames: int) -> int:
        return (int(num_frames) - 1) // self.vae_scale_factor_temporal + 1

    def noise_shape(self, batch: int, height: int, width: int, num_frames: int) -> tuple:
        """(B, C, F', H/8, W/8): prepare_latents' torch.randn shape."""
        v = self.vae_scale_factor
        return (batch, self.latent_channels, self.latent_frames(num_frames), int(height) // v,
                int(width) // v)

    def check_num_frames(self, value) -> int:
        """``value`` as a frame count of the 4k+1 form the VAE needs (k = temporal factor)."""
        from harness.images import is_int

        k = self.vae_scale_factor_temporal
        if not is_int(value) or value < 1:
            raise RequestError(f"num_frames must be a positive integer of the form {k}k+1, got "
                               f"{value!r}")
        if (value - 1) % k:
            lo = (value - 1) // k * k + 1
            raise RequestError(f"num_frames must be of the form {k}k+1 (1, {k + 1}, "
                               f"{2 * k + 1}, ...), got {value} (nearest: {lo} or {lo + k})")
        if value > self.max_frames:
            raise RequestError(f"num_frames {value} exceeds the model's cap of "
                               f"{self.max_frames}")
        return int(value)

    # ------------------------------------------------------------------ schedule
    def schedule(self, num_steps: int, *, fault: str | None = None):
        """(timesteps (N,), sigmas float32 (N+1,), coefficient table float32 (N, K) or empty):
        what the pipeline's ``scheduler.set_timesteps(N)`` makes, and for UniPC the multistep
        coefficients of every step (``_fast.unipc``) with torch's CPU log/expm1.

        UniPC timesteps are whole numbers (int64 in the scheduler, exact in float32);
        FlowMatchEuler's scheduler-default path (WanPipeline passes no sigmas) is float32.
        ``fault="unshifted_schedule"`` drops the flow shift (a negative control)."""
        cfg = self.scheduler_config
        shift_key = "flow_shift" if self.unipc else "shift"
        shift = 1.0 if fault == "unshifted_schedule" else float(cfg.get(shift_key, 1.0))
        if not self.unipc:
            ts, sg = flow_match_default_sigmas(num_steps, shift=shift,
                                               num_train_timesteps=cfg.get("num_train_timesteps",
                                                                           1000),
                                               shift_terminal=cfg.get("shift_terminal"))
            return ts, sg, np.zeros((0, 0), np.float32)
        from _fast.unipc import unipc_flow_sigmas

        ts, sg = unipc_flow_sigmas(
            num_steps, flow_shift=shift,
            num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
            shift_terminal=cfg.get("shift_terminal"),
            final_sigmas_type=cfg.get("final_sigmas_type", "zero"))
        # int64 in the scheduler; float32 holds them exactly and the transformer's sinusoidal
        # embedding casts them to float32 first, so the context keeps the seed's float32.
        return ts.astype(np.float32), sg, self.coefficients(sg)

    def coefficients(self, sigmas: np.ndarray, log=None, expm1=None) -> np.ndarray:
        """The UniPC coefficient table of ``sigmas`` (log/expm1: torch's CPU math by default)."""
        from _fast.unipc import unipc_coefficients

        cfg = self.scheduler_config
        return unipc_coefficients(
            sigmas, solver_order=int(cfg.get("solver_order", 2)),
            solver_type=cfg.get("solver_type", "bh2"),
            lower_order_final=bool(cfg.get("lower_order_final", True)),
            disable_corrector=tuple(cfg.get("disable_corrector") or ()),
            log=log or _torch_math("log"), expm1=expm1 or _torch_math("expm1"))

    # ------------------------------------------------------------------ text
    @property
    def tokenizer(self):
        return _load_tokenizer(str(self.tokenizer_dir))

    def encode_prompt(self, text: str) -> tuple[np.ndarray, np.ndarray, bool]:
        """(ids int64 (512,), mask bool (512,), truncated) as the pipelines' tokenizer call:
        the cleaned prompt, ``</s>`` appended, truncated to 511 tokens + ``</s>`` like
        ``truncation=True`` (diffusers goes on silently; the caller warns), padded with <pad>."""
        tok = self.tokenizer
        ids = tok.encode(prompt_clean(text)).ids
        limit = self.max_text_length
        truncated = len(ids) > limit
        if truncated:
            eos = tok.encode("").ids
            ids = ids[:limit - 1] + eos[-1:]
        pad = tok.token_to_id(self.pad_token)
        if pad is None:
            raise ValueError(f"pad token {self.pad_token!r} is not in {self.tokenizer_dir}")
        out = np.full(limit, pad, dtype=np.int64)
        out[:len(ids)] = ids
        mask = np.zeros(limit, dtype=bool)
        mask[:len(ids)] = True
        return out, mask, truncated

    @staticmethod
    def uses_cfg(guidance_scale: float) -> bool:
        """The Wan pipelines run CFG (a negative pass, "" by default) when guidance_scale > 1."""
        return guidance_scale > 1.0

    def image_processor(self):
        return load_image_processor(str(self.folder / "image_processor"))

    # ------------------------------------------------------------------ request → context
    def warm(self) -> None:
        """Load the tokenizer and compile/load the cached schedule kernels once."""
        self.encode_prompt("warm up")
        self.schedule(3)
        if self.has_image_encoder:
            self.image_processor()

    def build_context(self, tokenizer, request, opt: dict, fault: str | None = None):
        from .context import build_context

        return build_context(self, tokenizer, request, opt, fault)


def flow_match_default_sigmas(num_steps: int, *, shift: float, num_train_timesteps: int = 1000,
                              shift_terminal: float | None = None):
    """(timesteps float32 (N,), sigmas float32 (N+1,)) of ``FlowMatchEulerDiscreteScheduler(
    shift=...).set_timesteps(N)`` without sigmas (what WanPipeline asks): the end points of the
    constructor's float32 shifted table, ``np.linspace`` between them in float64, the shift
    applied a second time in float64 (as diffusers does), cast to float32, times T in float32."""
    f32 = np.float32
    T = int(num_train_timesteps)
    n = int(num_steps)
    if n < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    # __init__: sigmas = linspace(1, T, T)[::-1] / T in float32, shifted in float32.
    ends = np.array([T, 1], dtype=np.float32) / f32(T)
    ends = (f32(shift) * ends) / (f32(1.0) + f32(shift - 1) * ends)
    sigma_max, sigma_min = float(ends[0]), float(ends[1])
    ts = np.linspace(sigma_max * T, sigma_min * T, n)
    s = ts / T
    s = shift * s / (1 + (shift - 1) * s)
    if shift_terminal:
        one_minus = 1 - s
        scale = one_minus[-1] / (1 - shift_terminal)
        s = 1 - (one_minus / scale)
    sigmas = s.astype(np.float32)
    timesteps = sigmas * f32(T)
    return timesteps.astype(np.float32), np.concatenate([sigmas, np.zeros(1, np.float32)])


def _unsupported(index: dict, sched: dict, transformer: dict) -> str | None:
    cls = sched.get("_class_name")
    if cls not in SCHEDULERS:
        return f"scheduler {cls!r} (supported: {', '.join(SCHEDULERS)})"
    if cls == "UniPCMultistepScheduler":
        if sched.get("prediction_type") != "flow_prediction" or not sched.get("use_flow_sigmas"):
            return "a UniPC scheduler without flow prediction / flow sigmas"
        if sched.get("use_dynamic_shifting"):
            return "UniPC use_dynamic_shifting (WanPipeline passes no mu)"
        if int(sched.get("solver_order", 2)) not in (1, 2):
            return f"UniPC solver_order {sched.get('solver_order')}"
        if sched.get("predict_x0") is False:
            return "UniPC predict_x0 false"
        bad = [k for k in _UNIPC_UNSUPPORTED if sched.get(k)]
    else:
        bad = [k for k in _EULER_UNSUPPORTED if sched.get(k)]
    if bad:
        return f"scheduler option {bad[0]!r}"
    if index.get("expand_timesteps"):
        return "expand_timesteps (Wan 2.2 TI2V's per-token timesteps)"
    patch = transformer.get("patch_size", [1, 2, 2])
    if patch[1] != patch[2]:
        return f"a non-square patch {patch}"
    return None


def rules(folder: str | os.PathLike) -> WanRules:
    """Read the Wan rules of a model folder (configs only; no weights, no torch)."""
    folder = Path(folder)
    try:
        index = read_json(folder / "model_index.json")
        sched = read_json(folder / "scheduler" / "scheduler_config.json")
        vae = read_json(folder / "vae" / "config.json")
        transformer = read_json(folder / "transformer" / "config.json")
        transformer_2 = (read_json(folder / "transformer_2" / "config.json")
                         if _component(index, "transformer_2") else None)
        tok_dir = folder / "tokenizer"
        if not (tok_dir / "tokenizer.json").is_file():
            raise FileNotFoundError(2, "missing", str(tok_dir / "tokenizer.json"))
        pipeline = index["_class_name"]
        if pipeline == "WanImageToVideoPipeline" and transformer.get("image_dim") is not None:
            for part in ("image_encoder/config.json", "image_processor/preprocessor_config.json"):
                if not (folder / part).is_file():
                    raise FileNotFoundError(2, "missing", str(folder / part))
    except FileNotFoundError as exc:
        raise ValueError(f"{folder} is not a complete Wan folder: missing {exc.filename}") from None
    if not _component(index, "transformer"):
        raise ValueError(f"{folder}: a Wan folder without 'transformer' is not supported")
    bad = _unsupported(index, sched, transformer)
    if bad:
        raise ValueError(f"{folder}: {bad} is not supported by the harness")
    if index.get("boundary_ratio") is not None and transformer_2 is None:
        raise ValueError(f"{folder}: boundary_ratio is set but there is no transformer_2")
    tok_cfg = {}
    if (folder / "tokenizer" / "tokenizer_config.json").is_file():
        tok_cfg = read_json(folder / "tokenizer" / "tokenizer_config.json")
    pad = tok_cfg.get("pad_token") or "<pad>"
    pad = pad.get("content") if isinstance(pad, dict) else pad
    return WanRules(folder=folder, pipeline_class=pipeline, model_index=index,
                    scheduler_config=sched, vae_config=vae, transformer_config=transformer,
                    transformer_2_config=transformer_2, tokenizer_dir=folder / "tokenizer",
                    pad_token=pad)
