"""PixelGenerationTokenizer.new_context(): validation, tokens, schedule, noise, ids, input images.

Each piece is compared with what diffusers' FluxPipeline / FluxImg2ImgPipeline compute themselves.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from harness.errors import RequestError
from tests.flux_fixtures import NEGATIVE, input_image, reference, request, tokenizer

PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT, 4K!!",
    "  lots   of\twhite\nspace  ",
    "unicode: 你好, émoji 🐱, ñ and ß",
    "It's here; they're fine -- (brackets) [x] {y} #tag @me 50%",
    " ".join(["word"] * 120),  # longer than CLIP's 77: truncated like diffusers
]


def ref_pipe():
    return reference().pipeline(img2img=False)


# --------------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("kw,message", [
    ({"prompt": ""}, "prompt must be a non-empty string"),
    ({"prompt": "   "}, "prompt must be a non-empty string"),
    ({"height": 100}, "height must be a multiple of 16"),
    ({"width": 72}, "width must be a multiple of 16"),
    ({"height": 0}, "height must be at least 16"),
    ({"width": 8}, "width must be at least 16"),
    ({"height": 2.5}, "height must be an integer"),
    ({"height": 4096, "width": 4096}, "exceeds the model's cap"),
    ({"num_inference_steps": 0}, "num_inference_steps must be an integer > 0"),
    ({"num_inference_steps": -3}, "num_inference_steps must be an integer > 0"),
    ({"num_images_per_prompt": 0}, "num_images_per_prompt must be an integer >= 1"),
    ({"guidance_scale": -1.0}, "guidance_scale must be a finite number >= 0"),
    ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number >= 0"),
    ({"true_cfg_scale": 0.0}, "true_cfg_scale must be a finite number > 0"),
    ({"strength": 0.0}, "strength must be in (0, 1]"),
    ({"strength": 1.5}, "strength must be in (0, 1]"),
    ({"residual_threshold": 0.0}, "residual_threshold must be > 0"),
    ({"output_format": "gif"}, "output_format 'gif' is not supported"),
    ({"noise": "jax"}, "noise convention 'jax' is not supported"),
    ({"seed": -1}, "seed must be an integer"),
    ({"seed": 2 ** 32, "noise": "numpy"}, "seed must be an integer in [0, 4294967295]"),
    ({"input_image": "/nonexistent/picture.png"}, "input image not found"),
    ({"input_image": np.zeros((4, 4), dtype=np.float32)}, "input image arrays must be uint8"),
    ({"input_image": 42}, "input_image must be a path, a PIL image or a uint8 array"),
    ({"input_image": np.zeros((32, 32, 3), np.uint8), "strength": 1e-17},
     "leaves 0 of 4 denoising steps"),
])
def test_bad_requests_raise_clear_errors(kw, message):
    with pytest.raises(RequestError) as err:
        tokenizer().new_context(request(**kw))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_prompt_too_long_for_t5():
    prompt = " ".join(f"w{i}" for i in range(600))
    with pytest.raises(RequestError, match=r"prompt too long: \d+ tokens > 512"):
        tokenizer().new_context(request(prompt=prompt))


def test_unreadable_image_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(RequestError, match="cannot read input image"):
        tokenizer().new_context(request(input_image=str(bad)))


def test_defaults_are_the_pipelines_own():
    """FluxPipeline's defaults: default_sample_size 128 x VAE factor 8 (not the VAE config's
    sample_size, 256 in the tiny model), 28 steps, guidance 3.5 (FluxImg2ImgPipeline: 7.0)."""
    ctx = tokenizer().new_context(request(height=None, width=None, num_inference_steps=None))
    rules = tokenizer().rules
    assert rules.vae_config["sample_size"] == 256
    assert (ctx.height, ctx.width) == (rules.default_size, rules.default_size) == (1024, 1024)
    assert ctx.num_inference_steps == 28 and ctx.guidance_scale == 3.5
    i2i = tokenizer().new_context(request(input_image=input_image(), num_inference_steps=None))
    assert i2i.guidance_scale == 7.0 and i2i.strength == 0.6
    assert ctx.output_format == "jpeg"


def test_seed_is_picked_and_recorded_when_absent():
    ctx = tokenizer().new_context(request(seed=None))
    seed = ctx.extra_model_args["seed"]
    again = tokenizer().new_context(request(seed=seed))
    assert np.array_equal(ctx.latents, again.latents)


# --------------------------------------------------------------------------------------------------
# tokens


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tokens_match_diffusers_tokenization(prompt):
    import contextlib

    pipe = ref_pipe()
    long = len(prompt.split()) > 70
    with pytest.warns(UserWarning, match="truncated to 77") if long else contextlib.nullcontext():
        ctx = tokenizer().new_context(request(prompt=prompt))
    clip = pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer_max_length,
                          truncation=True, return_tensors="np")
    t5 = pipe.tokenizer_2(prompt, padding="max_length", max_length=512, truncation=True,
                          return_tensors="np")
    assert np.array_equal(ctx.tokens.all, clip.input_ids[0])
    assert np.array_equal(ctx.tokens_2.all, t5.input_ids[0])
    assert np.array_equal(ctx.mask, clip.attention_mask[0].astype(bool))
    assert np.array_equal(ctx.extra_model_args["mask_2"], t5.attention_mask[0].astype(bool))
    assert ctx.tokens.all.dtype == np.int64 and len(ctx.tokens) == 77 and len(ctx.tokens_2) == 512


def test_unknown_characters_do_not_become_clip_eos():
    """Every byte symbol is in the CLIP vocab, so no character maps to <|endoftext|>."""
    ctx = tokenizer().new_context(request(prompt="ðŸ± 你好 ∑ ©"))
    ids = ctx.tokens.all[ctx.mask]
    eos = ids[-1]
    assert np.count_nonzero(ids == eos) == 1


def test_negatives_only_when_true_cfg_runs():
    tok = tokenizer()
    off = tok.new_context(request(negative_prompt=NEGATIVE, true_cfg_scale=1.0))
    assert off.explicit_negative_prompt and off.negative_tokens is None
    assert off.negative_tokens_2 is None and off.negative_text_ids.size == 0
    none = tok.new_context(request(true_cfg_scale=4.0))
    assert not none.explicit_negative_prompt and none.negative_tokens is None
    on = tok.new_context(request(negative_prompt=NEGATIVE, true_cfg_scale=4.0))
    ref = tok.new_context(request(prompt=NEGATIVE))
    assert on.explicit_negative_prompt
    assert np.array_equal(on.negative_tokens.all, ref.tokens.all)
    assert np.array_equal(on.negative_tokens_2.all, ref.tokens_2.all)
    assert np.array_equal(on.negative_mask, ref.mask)
    assert on.negative_text_ids.shape == (512, 3)


# --------------------------------------------------------------------------------------------------
# schedule


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (1024, 1024), (512, 768)])
@pytest.mark.parametrize("steps", [1, 4, 28, 50])
def test_schedule_matches_flux_pipeline(size, steps):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    h, w = size
    ctx = tokenizer().new_context(request(height=h, width=w, num_inference_steps=steps))
    sched = ref_pipe().scheduler
    seq = (h // 16) * (w // 16)
    cfg = sched.config
    mu = calculate_shift(seq, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift,
                         cfg.max_shift)
    ts, _ = retrieve_timesteps(sched, steps, "cpu", sigmas=np.linspace(1.0, 1 / steps, steps),
                               mu=mu)
    assert ctx.extra_model_args["mu"] == mu
    assert ctx.timesteps.dtype == np.float32 and ctx.sigmas.dtype == np.float32
    assert np.array_equal(ctx.timesteps, ts.numpy())
    assert np.array_equal(ctx.sigmas, sched.sigmas.numpy())


def test_flux_reference_values_1024():
    ctx = tokenizer().new_context(request(height=1024, width=1024, num_inference_steps=4))
    assert ctx.extra_model_args["mu"] == pytest.approx(1.15)
    np.testing.assert_allclose(ctx.timesteps, [1000, 904.53076, 759.5109, 512.8441], rtol=1e-6)


@pytest.mark.parametrize("steps,strength,kept", [(50, 0.6, 30), (10, 0.25, 3), (4, 0.3, 2),
                                                 (28, 1.0, 28)])
def test_img2img_schedule_is_trimmed_like_get_timesteps(steps, strength, kept):
    ctx = tokenizer().new_context(request(num_inference_steps=steps, strength=strength,
                                          input_image=input_image()))
    full = tokenizer().new_context(request(num_inference_steps=steps))
    t_start = steps - kept
    assert ctx.extra_model_args["t_start"] == t_start
    assert np.array_equal(ctx.timesteps, full.timesteps[t_start:])
    assert np.array_equal(ctx.sigmas, full.sigmas[t_start:])


# --------------------------------------------------------------------------------------------------
# noise, ids


@pytest.mark.parametrize("size,n", [((64, 64), 1), ((96, 160), 2)])
def test_noise_and_ids_match_prepare_latents(size, n):
    h, w = size
    pipe = ref_pipe()
    ctx = tokenizer().new_context(request(height=h, width=w, num_images_per_prompt=n, seed=11))
    latents, ids = pipe.prepare_latents(n, 16, h, w, torch.float32, torch.device("cpu"),
                                        torch.Generator("cpu").manual_seed(11))
    assert ctx.latents.dtype == np.float32 and ctx.latents.shape == tuple(latents.shape)
    assert np.array_equal(ctx.latents, latents.numpy())
    assert ctx.latent_image_ids.dtype == np.float32
    assert np.array_equal(ctx.latent_image_ids, ids.numpy())
    assert ctx.text_ids.dtype == np.int64 and ctx.text_ids.shape == (512, 3)
    assert not ctx.text_ids.any()


def test_bfloat16_noise_is_drawn_in_bfloat16():
    ctx = tokenizer("bfloat16").new_context(request(seed=3))
    g = torch.Generator("cpu").manual_seed(3)
    raw = torch.randn((1, 16, 8, 8), generator=g, dtype=torch.bfloat16)
    packed = ref_pipe()._pack_latents(raw, 1, 16, 8, 8)
    assert np.array_equal(ctx.latents, packed.float().numpy())


def test_img2img_consumes_the_generator_for_the_vae_sample_first():
    ctx = tokenizer().new_context(request(height=96, width=160, seed=4, num_images_per_prompt=2,
                                          input_image=input_image()))
    g = torch.Generator("cpu").manual_seed(4)
    vae_noise = torch.randn((1, 16, 12, 20), generator=g)
    noise = torch.randn((2, 16, 12, 20), generator=g)
    assert np.array_equal(ctx.extra_model_args["vae_sample_noise"], vae_noise.numpy())
    assert np.array_equal(ctx.latents, ref_pipe()._pack_latents(noise, 2, 16, 12, 20).numpy())


def test_numpy_noise_convention():
    ctx = tokenizer().new_context(request(seed=9, noise="numpy"))
    expect = np.random.RandomState(9).standard_normal((1, 16, 8, 8)).astype(np.float32)
    assert np.array_equal(ctx.latents, ref_pipe()._pack_latents(
        torch.from_numpy(expect), 1, 16, 8, 8).numpy())


# --------------------------------------------------------------------------------------------------
# input image


@pytest.mark.parametrize("kind", ["array", "rgba_pil", "path", "gray_array"])
def test_input_image_preprocessing_matches_vae_image_processor(kind, tmp_path):
    from PIL import Image

    pixels = input_image(70, 130, seed=3)
    source = {
        "array": pixels,
        "rgba_pil": Image.fromarray(pixels).convert("RGBA"),
        "gray_array": pixels[:, :, 0],
        "path": str(tmp_path / "in.png"),
    }[kind]
    if kind == "path":
        Image.fromarray(pixels).save(source)
    ctx = tokenizer().new_context(request(height=96, width=160, input_image=source))
    rgb = (Image.fromarray(pixels[:, :, 0]) if kind == "gray_array" else Image.fromarray(pixels))
    expect = reference().pipeline(img2img=True).image_processor.preprocess(
        rgb.convert("RGB"), height=96, width=160)
    got = ctx.extra_model_args["image_nhwc"]
    assert got.shape == (1, 96, 160, 3) and got.dtype == np.float32
    assert np.array_equal(got.transpose(0, 3, 1, 2), expect.numpy())
    assert ctx.input_image.dtype == np.uint8 and ctx.input_image.shape == (96, 160, 3)


def test_context_pickles_with_every_field():
    ctx = tokenizer().new_context(request(negative_prompt=NEGATIVE, true_cfg_scale=2.0,
                                          input_image=input_image(), output_format="webp"))
    back = pickle.loads(pickle.dumps(ctx))
    for name in ("latents", "timesteps", "sigmas", "latent_image_ids", "text_ids", "mask",
                 "negative_mask", "input_image"):
        assert np.array_equal(getattr(back, name), getattr(ctx, name)), name
    for name in ("tokens", "tokens_2", "negative_tokens", "negative_tokens_2"):
        assert np.array_equal(getattr(back, name).all, getattr(ctx, name).all), name
    for key, value in ctx.extra_model_args.items():
        assert np.array_equal(back.extra_model_args[key], value) if isinstance(
            value, np.ndarray) else back.extra_model_args[key] == value
    assert back.output_format == "webp" and back.request_id == ctx.request_id
