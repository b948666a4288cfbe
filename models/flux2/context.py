"""FLUX.2 request → context: the chat-templated prompt tokens, reference-image preprocessing,
schedule, patchified noise and 4-axis ids (what ``Flux2Rules.build_context`` returns)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import RequestError
from harness.images import load_input_image

from ..diffusers_common import read_json, special_token
from .rules import (NO_FIRST_BLOCK_CACHE, REF_MAX_AREA, REF_MAX_ASPECT, REF_MIN_SIDE, Flux2Rules)

__all__ = ["TOKENIZER_FAULTS", "build_context", "prompt_encoder", "reference_crop",
           "dev_system_message"]

#: Deliberately wrong contexts, for the parity tests' negative controls only.
TOKENIZER_FAULTS = ("noise_packed_shape", "unshifted_schedule", "linear_mu", "reference_t_zero")


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


class _PromptEncoder:
    """Chat template + ``tokenizers`` encoding padded to 512, as the pipelines' text encoders see
    it: Klein ``apply_chat_template(add_generation_prompt=True, enable_thinking=False)`` then the
    tokenizer; dev the system + user turn of ``format_input`` through the processor."""

    def __init__(self, r: Flux2Rules):
        from ..text_tokenizers import load_fast_tokenizer

        self.rules = r
        self.tok = load_fast_tokenizer(r.tokenizer_dir)
        cfg = read_json(r.tokenizer_dir / "tokenizer_config.json")
        if (r.tokenizer_dir / "special_tokens_map.json").is_file():  # older checkpoints
            cfg = {**read_json(r.tokenizer_dir / "special_tokens_map.json"), **cfg}
        # apply_chat_template renders with the tokenizer's special tokens as template variables.
        self.specials = {k: special_token(cfg.get(k), "") for k in
                         ("bos_token", "eos_token", "unk_token", "pad_token")
                         if cfg.get(k) is not None}
        self.pad_id = self.tok.token_to_id(r.pad_token)
        if self.pad_id is None:
            raise ValueError(f"pad token {r.pad_token!r} is not in the tokenizer of "
                             f"{r.tokenizer_dir}")
        self.system_message = dev_system_message() if r.layout == "dev" else None

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


def dev_system_message() -> str:
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


def prompt_encoder(r: Flux2Rules) -> _PromptEncoder:
    if r.tokenizer_dir not in _ENCODERS:
        _ENCODERS[r.tokenizer_dir] = _PromptEncoder(r)
    return _ENCODERS[r.tokenizer_dir]


def _reference_image(source, multiple: int):
    """(uint8 HxWx3 pixels, float32 1xHxWx3 in [-1, 1]) of one reference image, exactly as
    ``Flux2ImageProcessor.preprocess(resize_mode="crop")`` after the pipelines' area resize.

    Diffusers hands the VAE an NCHW view of the NHWC buffer; the loop rebuilds that view.
    """
    from PIL import Image

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
    if request.negative_prompt is not None:
        raise RequestError("FLUX.2 takes no negative prompt (Klein's CFG uses the empty prompt; "
                           "dev has embedded guidance): drop negative_prompt")
    if request.true_cfg_scale not in (None, 1.0):
        raise RequestError("FLUX.2 has no true_cfg_scale; use guidance_scale (Klein: CFG when "
                           "> 1, dev: embedded guidance)")
    if request.input_image is not None:
        raise RequestError("FLUX.2 has no img2img; pass reference images as input_images")
    if request.residual_threshold is not None:
        raise RequestError(NO_FIRST_BLOCK_CACHE)
    if request.cfg_truncation != 1.0 or request.cfg_normalization:
        raise RequestError("cfg_truncation / cfg_normalization are Z-Image options; FLUX.2 "
                           "takes neither")


def build_context(r: Flux2Rules, tokenizer, request, opt: dict, fault: str | None):
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

    encode = prompt_encoder(r)
    tokens, mask = encode(request.prompt)
    cfg = r.uses_cfg(opt["guidance"])
    negative = encode("") if cfg else None

    timesteps, sigmas, mu = r.schedule(steps, height, width,
                                       shifted=fault != "unshifted_schedule",
                                       linear_mu=fault == "linear_mu")
    shape = r.noise_shape(batch, height, width)
    if fault == "noise_packed_shape":
        shape = (batch, r.image_seq_len(height, width), shape[1])
    (noise,) = tokenizer.draw_noise([shape], seed, request.noise)
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
