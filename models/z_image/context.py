"""Z-Image request → context: the chat prompt, the torch-exact schedule (trimmed for img2img),
the noise in diffusers' draw order and dtype, and the img2img input image (what
``ZImageRules.build_context`` returns)."""
from __future__ import annotations

from typing import Any


from _fast.tokens import TokenBuffer
from harness.context import PixelContext
from harness.context.text import new_request_id
from harness.errors import RequestError
from harness.images import check_size, load_input_image

from ..diffusers_common import negative_and_image_fields
from .rules import ZImageRules

__all__ = ["TOKENIZER_FAULTS", "build_context"]

#: Deliberately wrong contexts, for the parity tests' negative controls only.
TOKENIZER_FAULTS = ("numpy_linspace_sigmas", "unshifted_schedule")


def _check_rope_positions(rules: ZImageRules, height: int, width: int, text_len: int) -> None:
    """ZImageTransformer2DModel looks its rope up at (frame, row, col) positions: the caption on
    frames 1..L' (L' = text length padded to 32), the image on frame L'+1 with H/16 rows and W/16
    columns; each axis's table holds ``axes_lens`` positions. Past them, torch fails mid-forward."""
    lens = rules.transformer_config.get("axes_lens")
    if not lens:
        return
    h, w = rules.latent_size(height, width)
    rows, cols = h // rules.patch_size, w // rules.patch_size
    frames = text_len + (-text_len) % 32 + 2  # caption frames 1..L', then the image's frame
    m = rules.size_multiple
    for axis, (name, need, size) in enumerate((("the prompt", frames, None),
                                               ("height", rows, height), ("width", cols, width))):
        if need > int(lens[axis]):
            what = (f"{name} {size} needs {need} rope positions on axis {axis}" if size else
                    f"{name} ({text_len} tokens) needs {need} rope positions on axis 0")
            limit = (f" (at most {int(lens[axis]) * m} pixels)" if size else "")
            raise RequestError(f"{what}, but the transformer's axes_lens allows "
                               f"{int(lens[axis])}{limit}")


def build_context(rules: ZImageRules, tokenizer, request, opt: dict,
                  fault: str | None = None) -> PixelContext:
    """The PixelContext of a request ``PixelGenerationTokenizer`` has validated."""
    if fault is not None and fault not in TOKENIZER_FAULTS:
        raise ValueError(
            f"unknown Z-Image tokenizer fault {fault!r}; known: {', '.join(TOKENIZER_FAULTS)}")
    height, width, steps, seed = opt["height"], opt["width"], opt["steps"], opt["seed"]
    batch = request.num_images_per_prompt
    image = None
    if request.input_image is not None:
        image = load_input_image(request.input_image)
        # ZImageImg2ImgPipeline defaults the size to the image's own, floored to 16.
        m = rules.size_multiple
        if request.height is None:
            height = check_size("height (from the input image)", image.height // m * m, m)
        if request.width is None:
            width = check_size("width (from the input image)", image.width // m * m, m)
        if height * width > rules.max_area:
            raise RequestError(f"image area {width}x{height} = {width * height} pixels "
                               f"exceeds the model's cap of {rules.max_area} pixels")

    tokens, mask = rules.encode_prompt(request.prompt)
    cfg = rules.uses_cfg(opt["guidance"])
    negative = rules.encode_prompt(request.negative_prompt or "") if cfg else None
    _check_rope_positions(rules, height, width,
                          max(int(m.sum()) for m in (mask, negative[1] if cfg else mask)))

    timesteps, sigmas, mu = rules.schedule(steps, height, width, fault=fault)
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
    draws = [(rules.noise_shape(batch, height, width), noise_dt)]
    if image is not None:
        draws.insert(0, (rules.vae_sample_shape(height, width), model_dt))
    noises = tokenizer.draw_noise([s for s, _ in draws], seed, request.noise,
                                  [d for _, d in draws])

    extra: dict[str, Any] = {"seed": seed, "mu": mu, "t_start": t_start}
    ctx_kw = negative_and_image_fields(negative, image, height, width, extra)
    if image is not None:
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
