"""Request → PixelContext: validation, tokens, schedule, noise, ids, input-image preprocessing.

Everything family-specific (latent layout, schedule constants, encoder lengths, CFG rule) is asked
of the family's rules object (``family.rules(folder)`` of the resolved model it is handed); this
module only follows them and never imports a family.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from _fast.tokens import TokenBuffer
from harness.context import PixelContext
from harness.context.outputs import OUTPUT_FORMATS
from harness.context.text import new_request_id
from harness.errors import RequestError
from harness.images import check_size, is_int, is_real, load_input_image, preprocess_image

__all__ = ["PixelGenerationRequest", "PixelGenerationTokenizer", "NOISE_CONVENTIONS",
           "TOKENIZER_FAULTS", "load_input_image"]

#: "torch": torch.randn with a seeded CPU generator, diffusers' exact shape and order.
#: "numpy": MAX's convention, ``np.random.RandomState(seed).standard_normal(shape)`` as float32.
NOISE_CONVENTIONS = ("torch", "numpy")
#: Deliberately wrong variants, for the parity tests' negative controls only.
TOKENIZER_FAULTS = ("noise_packed_shape", "unshifted_schedule")
_MAX_SEED = {"torch": 2 ** 63 - 1, "numpy": 2 ** 32 - 1}
#: img2img strength when a request gives none (FluxImg2ImgPipeline's and ZImageImg2ImgPipeline's).
DEFAULT_STRENGTH = 0.6


@dataclass(kw_only=True)
class PixelGenerationRequest:
    """An image-generation request; ``None`` options take the model's defaults (the same defaults
    its diffusers pipeline applies, so a parity reference called with only the options set here
    makes the same choices).

    ``input_image`` (path, PIL image or uint8 HxW[xC] array) makes it img2img with ``strength``
    (default 0.6);
    ``input_images`` are conditioning images for families that take several (FLUX.2 reference
    images, Qwen-Image-Edit). ``cfg_normalization`` (True ≡ 1.0, a float is a factor) and
    ``cfg_truncation`` are Z-Image's CFG options. Video models (Wan) take ``num_frames``,
    ``frame_rate`` and Wan 2.2's ``guidance_scale_2``; their ``output_format`` (default: the
    model's, mp4) is a video container.
    """

    prompt: str
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    true_cfg_scale: float | None = None
    seed: int | None = None
    num_images_per_prompt: int = 1
    input_image: Any = None
    input_images: list[Any] | None = None
    strength: float | None = None
    cfg_normalization: bool | float | None = None
    cfg_truncation: float | None = None
    output_format: str | None = None
    residual_threshold: float | None = None
    noise: str = "torch"
    request_id: str | None = None
    num_frames: int | None = None
    frame_rate: int | None = None
    guidance_scale_2: float | None = None


# --------------------------------------------------------------------------------------------------
# validation


def _validate(req: PixelGenerationRequest, rules) -> dict:
    """Every request rule of pixel_pipelines.md §3; returns the resolved options."""
    if not isinstance(req.prompt, str) or not req.prompt.strip():
        raise RequestError("prompt must be a non-empty string")
    if req.negative_prompt is not None and not isinstance(req.negative_prompt, str):
        raise RequestError(
            f"negative_prompt must be a string, got {type(req.negative_prompt).__name__}")
    m = rules.size_multiple
    default_h = getattr(rules, "default_height", rules.default_size)
    default_w = getattr(rules, "default_width", rules.default_size)
    height = check_size("height", default_h if req.height is None else req.height, m)
    width = check_size("width", default_w if req.width is None else req.width, m)
    if height * width > rules.max_area:
        raise RequestError(f"image area {width}x{height} = {width * height} pixels exceeds the "
                           f"model's cap of {rules.max_area} pixels")
    steps = rules.default_steps if req.num_inference_steps is None else req.num_inference_steps
    if not is_int(steps) or steps <= 0:
        raise RequestError(f"num_inference_steps must be an integer > 0, got {steps!r}")
    if not is_int(req.num_images_per_prompt) or req.num_images_per_prompt < 1:
        raise RequestError(f"num_images_per_prompt must be an integer >= 1, got "
                           f"{req.num_images_per_prompt!r}")
    img2img = req.input_image is not None
    guidance = (rules.default_guidance(img2img) if req.guidance_scale is None
                else req.guidance_scale)
    if not is_real(guidance) or guidance < 0:
        raise RequestError(f"guidance_scale must be a finite number >= 0, got {guidance!r}")
    true_cfg = (getattr(rules, "default_true_cfg_scale", 1.0) if req.true_cfg_scale is None
                else req.true_cfg_scale)
    if not is_real(true_cfg) or true_cfg <= 0:
        raise RequestError(f"true_cfg_scale must be a finite number > 0, got {true_cfg!r}")
    strength = DEFAULT_STRENGTH if req.strength is None else req.strength
    if not is_real(strength) or not 0 < strength <= 1:
        raise RequestError(f"strength must be in (0, 1], got {strength!r}")
    truncation = 1.0 if req.cfg_truncation is None else req.cfg_truncation
    if not is_real(truncation) or truncation <= 0:
        raise RequestError(f"cfg_truncation must be a finite number > 0, got {truncation!r}")
    normalization = False if req.cfg_normalization is None else req.cfg_normalization
    if not (isinstance(normalization, bool) or (is_real(normalization) and normalization >= 0)):
        raise RequestError(f"cfg_normalization must be a bool or a number >= 0 (0 = off), got "
                           f"{normalization!r}")
    if req.input_image is not None and req.input_images:
        raise RequestError("give either input_image (img2img) or input_images (conditioning), "
                           "not both")
    if req.input_images is not None and len(req.input_images) > rules.max_input_images:
        raise RequestError(f"this model takes at most {rules.max_input_images} input images, got "
                           f"{len(req.input_images)}")
    if req.residual_threshold is not None and (
            not is_real(req.residual_threshold) or req.residual_threshold <= 0):
        raise RequestError(
            f"residual_threshold must be > 0 when given, got {req.residual_threshold!r}")
    video = _video_options(req, rules)
    allowed = tuple(getattr(rules, "output_formats", OUTPUT_FORMATS))
    fmt = req.output_format
    if fmt is None:  # the model's own default (jpeg for image models, mp4 for video)
        fmt = getattr(rules, "default_output_format", "jpeg")
    fmt = str(fmt).lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in allowed:
        raise RequestError(f"output_format {req.output_format!r} is not supported; allowed: "
                           f"{', '.join(allowed)}")
    if req.noise not in NOISE_CONVENTIONS:
        raise RequestError(f"noise convention {req.noise!r} is not supported; allowed: "
                           f"{', '.join(NOISE_CONVENTIONS)}")
    seed = req.seed
    if seed is None:
        seed = secrets.randbelow(2 ** 31)
    elif not is_int(seed) or not 0 <= seed <= _MAX_SEED[req.noise]:
        raise RequestError(f"seed must be an integer in [0, {_MAX_SEED[req.noise]}] for "
                           f"{req.noise} noise, got {seed!r}")
    return {"height": height, "width": width, "steps": int(steps), "guidance": float(guidance),
            "true_cfg_scale": float(true_cfg), "format": fmt, "seed": int(seed),
            "strength": float(strength), "cfg_truncation": float(truncation),
            "cfg_normalization": normalization, **video}


def _video_options(req: PixelGenerationRequest, rules) -> dict:
    """num_frames / frame_rate / guidance_scale_2 of a video model ({} for image models, which
    refuse them)."""
    given = [n for n in ("num_frames", "frame_rate", "guidance_scale_2")
             if getattr(req, n) is not None]
    if not getattr(rules, "video", False):
        if given:
            raise RequestError(f"{given[0]} applies to video models; this model makes images")
        return {}
    frames = rules.check_num_frames(rules.default_num_frames if req.num_frames is None
                                    else req.num_frames)
    fps = rules.default_frame_rate if req.frame_rate is None else req.frame_rate
    if not is_int(fps) or not 1 <= fps <= 240:
        raise RequestError(f"frame_rate must be an integer in [1, 240], got {fps!r}")
    g2 = req.guidance_scale_2
    if g2 is not None and (not is_real(g2) or g2 < 0):
        raise RequestError(f"guidance_scale_2 must be a finite number >= 0, got {g2!r}")
    return {"num_frames": frames, "frame_rate": int(fps), "guidance_scale_2": g2}


# --------------------------------------------------------------------------------------------------
# the tokenizer


class _Encoder:
    """One fast tokenizer (``tokenizers``) padded to its encoder's length."""

    def __init__(self, spec):
        self.spec = spec
        self.tok = spec.load()
        self.pad_id = self.tok.token_to_id(spec.pad_token)
        if self.pad_id is None:
            raise ValueError(f"pad token {spec.pad_token!r} is not in the tokenizer of "
                             f"{spec.tokenizer_dir}")
        ids = self.tok.encode("").ids
        self.eos_id = ids[-1] if ids else self.pad_id

    def __call__(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (L,), mask bool (L,)); too long → truncated (warning) or RequestError."""
        ids = self.tok.encode(text).ids
        n, limit = len(ids), self.spec.max_length
        if n > limit:
            if not self.spec.truncate:
                raise RequestError(f"prompt too long: {n} tokens > {limit} (the limit of the "
                                   f"{self.spec.role} text encoder)")
            warnings.warn(f"prompt truncated to {limit} tokens for the {self.spec.role} text "
                          f"encoder ({n} tokens given)", stacklevel=5)
            # transformers' truncation=True with the post-processor keeps the first limit-1
            # tokens and closes with the end token (diffusers warns and carries on).
            ids = ids[:limit - 1] + [self.eos_id]
        out = np.full(limit, self.pad_id, dtype=np.int64)
        out[:len(ids)] = ids
        mask = np.zeros(limit, dtype=bool)
        mask[:len(ids)] = True
        return out, mask


class PixelGenerationTokenizer:
    """Turns ``PixelGenerationRequest`` into a ``PixelContext`` for one model folder.

    ``model`` is a resolved model: what ``models.resolve(name_or_folder)`` returns (its
    ``family`` module, ``path`` and ``name``); the harness itself never looks families up. ``dtype``
    is the dtype the model will run in: diffusers draws the noise in the prompt-embedding dtype,
    so bfloat16 noise differs from float32 noise.

    Context layout (FLUX.1): ``tokens``/``mask`` CLIP (77), ``tokens_2`` T5 (512), ``latents`` the
    packed noise (float32 holding model-dtype values), ``timesteps``/``sigmas`` already trimmed for
    img2img. ``extra_model_args``: ``seed``, ``mu`` (None without dynamic shift), ``t_start``,
    ``mask_2`` / ``negative_mask_2`` (T5 masks), and for img2img ``image_nhwc`` (float32
    1xHxWx3 in [-1, 1]) and ``vae_sample_noise`` (the VAE posterior sample's noise, drawn first).
    """

    def __init__(self, model: Any, *, dtype: str = "float32"):
        if not all(hasattr(model, attr) for attr in ("family", "path", "name")):
            raise TypeError(f"PixelGenerationTokenizer takes a resolved model, e.g. "
                            f"models.resolve({os.fspath(model)!r})" if isinstance(
                                model, (str, os.PathLike)) else
                            f"PixelGenerationTokenizer takes a resolved model "
                            f"(models.resolve(...)), got {type(model).__name__}")
        resolved = model
        modality = getattr(resolved.family, "MODALITY", None)
        if modality != "image":
            raise ValueError(f"model {resolved.name!r} is a {modality} model, not an "
                             f"image-generation model")
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype {dtype!r} is not supported; allowed: float32, bfloat16")
        self.model = resolved
        self.rules = resolved.family.rules(resolved.path)
        self.dtype = dtype
        self._encoders = {spec.role: _Encoder(spec) for spec in self.rules.text_encoders}
        self._warm()

    def _warm(self) -> None:
        """Import torch and load the cached numba kernels once, outside the first request."""
        import torch  # noqa: F401

        if hasattr(self.rules, "warm"):
            self.rules.warm()
            return
        m = self.rules.size_multiple
        self.rules.schedule(2, 2 * m, 2 * m)
        self.rules.pack(np.zeros(self.rules.noise_shape(1, 2 * m, 2 * m), dtype=np.float32))
        self.rules.latent_image_ids(2 * m, 2 * m)

    @property
    def model_name(self) -> str:
        return self.model.name

    def _tokenize(self, text: str) -> dict[str, tuple]:
        # Non-truncating encoders (T5) first: a too-long prompt fails before any warning.
        order = sorted(self._encoders.items(), key=lambda kv: kv[1].spec.truncate)
        return {role: enc(text) for role, enc in order}

    def draw_noise(self, shapes: list[tuple[int, ...]], seed: int, convention: str,
                   dtypes: list[str] | None = None) -> list[np.ndarray]:
        """Draw the noises in order from one seeded generator: float32 arrays holding the values
        of each draw's dtype (``dtypes``, default the model dtype; diffusers draws in the dtype
        of the tensor the noise joins). numpy draws are float32 whatever the dtype."""
        if convention == "numpy":
            rs = np.random.RandomState(seed)
            return [rs.standard_normal(s).astype(np.float32) for s in shapes]
        import torch

        gen = torch.Generator("cpu").manual_seed(seed)
        dtypes = dtypes or [self.dtype] * len(shapes)
        return [torch.randn(s, generator=gen, dtype=getattr(torch, d)).float().numpy()
                for s, d in zip(shapes, dtypes)]

    def new_context(self, request: PixelGenerationRequest, *,
                    fault: str | None = None) -> PixelContext:
        """Validate ``request`` and prepare every number the denoise loop needs.

        ``fault`` (test-only, one of ``TOKENIZER_FAULTS``) builds a deliberately wrong context.
        """
        rules = self.rules
        build = getattr(rules, "build_context", None)
        if build is None and fault is not None and fault not in TOKENIZER_FAULTS:
            raise ValueError(
                f"unknown tokenizer fault {fault!r}; known: {', '.join(TOKENIZER_FAULTS)}")
        opt = _validate(request, rules)
        # Families read the request: hand them the resolved options, never None.
        request = dataclasses.replace(
            request, true_cfg_scale=opt["true_cfg_scale"], strength=opt["strength"],
            cfg_truncation=opt["cfg_truncation"], cfg_normalization=opt["cfg_normalization"])
        if build is not None:  # the family prepares its own context (and checks its own faults)
            return build(self, request, opt, fault=fault)
        height, width, steps, seed = opt["height"], opt["width"], opt["steps"], opt["seed"]
        batch = request.num_images_per_prompt

        image = None
        if request.input_image is not None:
            image = load_input_image(request.input_image)
        tokens = self._tokenize(request.prompt)
        explicit_negative = request.negative_prompt is not None
        true_cfg = rules.uses_true_cfg(request.true_cfg_scale, explicit_negative)
        negative = self._tokenize(request.negative_prompt) if true_cfg else None

        timesteps, sigmas, mu = rules.schedule(steps, height, width,
                                               shifted=fault != "unshifted_schedule")
        t_start = 0
        if image is not None:  # FluxImg2ImgPipeline.get_timesteps: keep the last steps
            from _fast import trim_for_strength

            try:
                timesteps, sigmas, t_start = trim_for_strength(timesteps, sigmas, steps,
                                                               float(request.strength))
            except ValueError as exc:  # zero steps left (inputs were validated above)
                raise RequestError(str(exc)) from None
            timesteps, sigmas = timesteps.copy(), sigmas.copy()

        # img2img consumes the generator for the VAE posterior sample before the noise.
        shapes = [rules.noise_shape(batch, height, width)]
        if fault == "noise_packed_shape":
            shapes = [(batch, rules.image_seq_len(height, width), 4 * rules.latent_channels)]
        if image is not None:
            shapes.insert(0, rules.vae_sample_shape(height, width))
        draws = self.draw_noise(shapes, seed, request.noise)
        noise = draws[-1]
        latents = noise if fault == "noise_packed_shape" else rules.pack(noise)

        extra: dict[str, Any] = {"seed": seed, "mu": mu, "t_start": t_start}
        primary, secondary = tokens["tokens"], tokens.get("tokens_2")
        if secondary is not None:
            extra["mask_2"] = secondary[1]
        ctx_kw: dict[str, Any] = {}
        if negative is not None:
            ctx_kw["negative_tokens"] = TokenBuffer(negative["tokens"][0])
            ctx_kw["negative_mask"] = negative["tokens"][1]
            if "tokens_2" in negative:
                ctx_kw["negative_tokens_2"] = TokenBuffer(negative["tokens_2"][0])
                extra["negative_mask_2"] = negative["tokens_2"][1]
        text_len = len(secondary[0]) if secondary is not None else len(primary[0])
        if image is not None:
            pixels, image_nhwc = preprocess_image(image, height, width)
            ctx_kw["input_image"] = pixels
            extra["image_nhwc"] = image_nhwc
            extra["vae_sample_noise"] = draws[0]

        return PixelContext(
            tokens=TokenBuffer(primary[0]),
            mask=primary[1],
            tokens_2=TokenBuffer(secondary[0]) if secondary is not None else None,
            request_id=request.request_id or new_request_id(),
            model_name=self.model_name,
            explicit_negative_prompt=explicit_negative,
            timesteps=timesteps,
            sigmas=sigmas,
            latents=latents,
            latent_image_ids=rules.latent_image_ids(height, width),
            text_ids=rules.text_ids(text_len),
            negative_text_ids=rules.text_ids(text_len) if negative is not None else np.zeros(
                0, dtype=np.int64),
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=opt["guidance"],
            true_cfg_scale=float(request.true_cfg_scale),
            strength=float(request.strength),
            num_images_per_prompt=batch,
            output_format=opt["format"],
            residual_threshold=request.residual_threshold,
            extra_model_args=extra,
            **ctx_kw,
        )
