"""Qwen-Image and Qwen-Image-Edit(-Plus): context pieces and end-to-end parity against diffusers.

One process, each tiny model loaded once, one torch thread for both sides. The references draw
their own noise (and, for edit models, resize, process and VAE-encode the input images
themselves), so everything the context holds is checked, not just the loop.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import pickle

import numpy as np
import pytest
import torch

from harness.errors import RequestError
from tests.qwen_fixtures import (EDIT, EDIT_PROMPT, NEGATIVE, PLUS, PROMPT, T2I, denoiser,
                                 parity, portrait, reference, request, resolved, tokenizer)
from tests.test_cli_image import run_cli

CFG = {"negative_prompt": NEGATIVE, "true_cfg_scale": 4.0}


def assert_bitwise(ours, ref, cmp):
    assert ours.final_latents.shape == ref.final_latents.shape
    assert np.array_equal(ours.final_latents, ref.final_latents), cmp["final_latents_max_abs_diff"]
    assert ours.images.dtype == np.uint8 and np.array_equal(ours.images, ref.images), \
        cmp["image_max_abs_diff"]
    assert np.array_equal(ours.decoded, ref.decoded)
    assert len(ours.step_latents) == len(ref.step_latents)
    assert cmp["verdict"] == "bitwise" and cmp["first_divergent_step"] is None


# --------------------------------------------------------------------------------------------------
# pipeline constants, tokenizer, processor


def test_pipeline_constants_match_diffusers():
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus_mod
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import (
        calculate_dimensions as diffusers_dims)

    from models.qwen_image import SPECS, calculate_dimensions

    for name in (T2I, EDIT, PLUS):
        pipe = reference(name).pipeline()
        spec = SPECS[type(pipe).__name__]
        assert spec.template == pipe.prompt_template_encode
        assert spec.drop_idx == pipe.prompt_template_encode_start_idx
        assert pipe.vae_scale_factor == tokenizer(name).rules.vae_scale_factor == 8
    assert SPECS["QwenImageEditPlusPipeline"].condition_area == plus_mod.CONDITION_IMAGE_SIZE
    assert SPECS["QwenImageEditPlusPipeline"].vae_area == plus_mod.VAE_IMAGE_SIZE
    for w, h in itertools.product((1, 31, 60, 90, 120, 640, 1000, 4000), repeat=2):
        assert calculate_dimensions(1024 * 1024, w / h) == diffusers_dims(1024 * 1024, w / h)[:2]
        assert calculate_dimensions(384 * 384, w / h) == plus_mod.calculate_dimensions(
            384 * 384, w / h)


def test_scheduler_config_is_the_real_one():
    cfg = tokenizer().rules.scheduler_config
    assert (cfg["max_image_seq_len"], cfg["max_shift"], cfg["shift_terminal"]) == (8192, 0.9, 0.02)
    assert cfg["use_dynamic_shifting"] and cfg["base_image_seq_len"] == 256


@pytest.mark.parametrize("name", (T2I, PLUS))
def test_template_prefix_is_exactly_the_drop(name):
    """The tiny vocabulary tokenizes the system prefix into whole words, like the real one: the
    pipeline's fixed drop (34 / 64) removes exactly the template prefix."""
    rules = tokenizer(name).rules
    prefix = rules.spec.template.split("{}")[0]
    if rules.spec.edit:
        prefix = prefix.split("<|vision_start|>")[0]
    assert len(rules.tokenizer().encode(prefix).ids) == rules.drop_idx


@pytest.mark.parametrize("prompt", [
    PROMPT, "A Photo Of A CAT, 4K!!", "  lots   of\twhite\nspace  ", "unicode: 你好, émoji 🐱, ñ",
    "It's here; they're fine -- (brackets) [x] #tag 50%", "<|im_end|> special text inside",
])
def test_tokens_equal_the_pipeline_tokenizer(prompt):
    pipe = reference(T2I).pipeline()
    ctx = tokenizer().new_context(request(prompt=prompt))
    txt = pipe.prompt_template_encode.format(prompt)
    ids = pipe.tokenizer([txt], max_length=1024 + 34, padding=True, truncation=True).input_ids[0]
    assert ctx.tokens.all.tolist() == ids
    assert ctx.mask.all() and len(ctx.mask) == len(ids)


@pytest.mark.parametrize("name,n_images", [(EDIT, 1), (PLUS, 2)])
def test_edit_tokens_and_pixels_equal_the_pipeline_processor(name, n_images):
    """Placeholders expanded per image and the VL encoder's pixel input, as Qwen2VLProcessor makes
    them from the pipeline's resized prompt images (Plus: 384² area, Edit: 1024² area)."""
    images = [portrait(0), np.ascontiguousarray(portrait(1)[:50])][:n_images]
    req = request(input_images=images, negative_prompt=NEGATIVE, true_cfg_scale=4.0)
    ctx = tokenizer(name).new_context(req)
    pipe = reference(name).pipeline()
    from PIL import Image

    pil = [Image.fromarray(im) for im in images]
    if name == PLUS:
        cond = [pipe.image_processor.resize(im, h, w) for im, (w, h) in
                zip(pil, ctx.extra_model_args["condition_image_sizes"])]
        text = pipe.prompt_template_encode.format(
            "".join(f"Picture {i + 1}: <|vision_start|><|image_pad|><|vision_end|>"
                    for i in range(n_images)) + EDIT_PROMPT)
        assert [s[0] * s[1] for s in ctx.extra_model_args["condition_image_sizes"]] != [
            s[0] * s[1] for s in ctx.extra_model_args["vae_image_sizes"]]
    else:
        (w, h), = ctx.extra_model_args["vae_image_sizes"]
        cond = [pipe.image_processor.resize(pil[0], h, w)]
        text = pipe.prompt_template_encode.format(EDIT_PROMPT)
    out = pipe.processor(text=[text], images=cond, padding=True, return_tensors="pt")
    assert ctx.tokens.all.tolist() == out["input_ids"][0].tolist()
    assert np.array_equal(ctx.extra_model_args["pixel_values"], out["pixel_values"].numpy())
    assert np.array_equal(ctx.extra_model_args["image_grid_thw"], out["image_grid_thw"].numpy())
    assert [np.array_equal(a, np.asarray(b)) for a, b in zip(ctx.prompt_images, cond)] == \
        [True] * n_images
    # The VAE copies: VaeImageProcessor.preprocess at the 1 MP target, NHWC in [-1, 1].
    for im, arr, (w, h) in zip(pil, ctx.vae_condition_images,
                               ctx.extra_model_args["vae_image_sizes"]):
        ref = pipe.image_processor.preprocess(im, h, w)
        assert np.array_equal(arr, ref.permute(0, 2, 3, 1).numpy())
        assert abs(w * h - 1024 * 1024) < 64 * 1024
    assert ctx.negative_tokens is not None and len(ctx.negative_text_ids) == \
        len(ctx.negative_tokens.all) - 64


def test_tokenizer_build_is_deterministic(tmp_path):
    from models.chat_tokenizers import build_qwen_tokenizer
    from models.qwen_image import QWEN_IMAGE_SPECIALS, TINY_RECIPE, templates_corpus

    build_qwen_tokenizer(tmp_path, extra_texts=templates_corpus(), specials=QWEN_IMAGE_SPECIALS,
                         chat_template=None, **TINY_RECIPE["tokenizer"])
    built = resolved(T2I).path / "tokenizer"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (built / name).read_bytes(), name


# --------------------------------------------------------------------------------------------------
# context: schedule, noise, ids


@pytest.mark.parametrize("steps,size", [(2, (64, 64)), (4, (96, 160)), (28, (128, 128))])
def test_schedule_equals_the_pipeline_scheduler(steps, size):
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    h, w = size
    ctx = tokenizer().new_context(request(height=h, width=w, num_inference_steps=steps))
    sched = reference(T2I).pipeline().scheduler
    cfg = sched.config
    seq = (h // 16) * (w // 16)
    mu = calculate_shift(seq, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift,
                         cfg.max_shift)
    assert ctx.extra_model_args["mu"] == mu
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    assert np.array_equal(ctx.timesteps, sched.timesteps.numpy())
    assert np.array_equal(ctx.sigmas, sched.sigmas.numpy())
    # shift_terminal stretches the schedule so that the last sigma is 0.02 (float32 rounding).
    assert abs(float(ctx.sigmas[-2]) - 0.02) < 1e-6 and ctx.sigmas[-1] == 0


@pytest.mark.parametrize("noise", ("torch", "numpy"))
def test_noise_is_drawn_in_the_one_frame_shape(noise):
    ctx = tokenizer().new_context(request(height=96, width=160, num_images_per_prompt=2, seed=5,
                                          noise=noise))
    if noise == "torch":
        raw = torch.randn((2, 1, 16, 12, 20), generator=torch.Generator().manual_seed(5)).numpy()
    else:
        raw = np.random.RandomState(5).standard_normal((2, 1, 16, 12, 20)).astype(np.float32)
    packed = torch.from_numpy(raw).view(2, 16, 6, 2, 10, 2).permute(0, 2, 4, 1, 3, 5)
    assert np.array_equal(ctx.latents, packed.reshape(2, 60, 64).numpy())


def _rope_from_ids(pos_embed, img_ids, txt_ids):
    """Gather QwenEmbedRope's tables at the context's ids: negative rows/cols index the negative
    table from its end, every axis takes its own slice of the frequencies."""
    split = [a // 2 for a in pos_embed.axes_dim]
    pos, neg = pos_embed.pos_freqs.split(split, dim=1), pos_embed.neg_freqs.split(split, dim=1)

    def axis(k, idx):
        idx = torch.from_numpy(np.asarray(idx))
        return torch.where((idx >= 0)[:, None], pos[k][idx.clamp(min=0)],
                           neg[k][(idx + neg[k].shape[0]).clamp(max=neg[k].shape[0] - 1)])

    img = torch.cat([axis(k, img_ids[:, k]) for k in range(3)], dim=1)
    txt = torch.cat([axis(k, txt_ids[:, k]) for k in range(3)], dim=1)
    return img, txt


@pytest.mark.parametrize("name,size", [(T2I, (64, 64)), (T2I, (96, 160)), (T2I, (160, 96)),
                                       (PLUS, (64, 96))])
def test_context_ids_are_the_positions_the_transformer_uses(name, size):
    """The transformer builds its rope from img_shapes and the text length; the loop derives the
    shapes from the context's ids. Gathering the rope tables at those ids must give exactly the
    model's own frequencies, image and text alike."""
    h, w = size
    kw = {"input_images": [portrait(0), np.ascontiguousarray(portrait(1)[:50])]} \
        if name == PLUS else {}
    ctx = tokenizer(name).new_context(request(height=h, width=w, **kw))
    den = denoiser(name)
    shapes = den._shapes(ctx)
    assert shapes[0] == (1, h // 16, w // 16)
    noise_ids = ctx.latent_image_ids[: (h // 16) * (w // 16)]
    assert noise_ids[:, 0].max() == 0  # the noise grid sits on frame 0, centred rows and cols
    assert (noise_ids[:, 1].min(), noise_ids[:, 1].max()) == (-(h // 16 - h // 32), h // 32 - 1)
    assert (noise_ids[:, 2].min(), noise_ids[:, 2].max()) == (-(w // 16 - w // 32), w // 32 - 1)
    assert [f for f, *_ in shapes] == [1] * len(shapes) and len(shapes) == 1 + len(kw.get(
        "input_images", []))
    pos_embed = den.c["transformer"].pos_embed
    length = len(ctx.tokens.all) - ctx.extra_model_args["drop_idx"]
    vid, txt = pos_embed([shapes], max_txt_seq_len=length, device=torch.device("cpu"))
    ours_vid, ours_txt = _rope_from_ids(pos_embed, ctx.latent_image_ids, ctx.text_ids)
    assert torch.equal(vid, ours_vid) and torch.equal(txt, ours_txt)


def test_loop_refuses_ids_the_transformer_would_not_use():
    from _fast import qwen_image_ids

    ctx = tokenizer().new_context(request(height=64, width=96))
    ctx.latent_image_ids = qwen_image_ids([(1, 4, 6)], scale_rope=False)  # uncentred
    with pytest.raises(ValueError, match="centred Qwen-Image grid"):
        denoiser()(ctx)
    ctx = tokenizer().new_context(request(height=64, width=96))
    ctx.text_ids = ctx.text_ids + 1
    with pytest.raises(ValueError, match="text positions"):
        denoiser()(ctx)


# --------------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("name,kw,message", [
    (T2I, {"input_image": np.zeros((32, 32, 3), np.uint8)}, "has no img2img mode"),
    (T2I, {"input_images": [np.zeros((32, 32, 3), np.uint8)]}, "takes at most 0 input images"),
    (T2I, {"height": 72}, "height must be a multiple of 16"),
    (T2I, {"prompt": " ".join(f"w{i}" for i in range(600))}, "prompt too long"),
    (EDIT, {}, "edits images: give 1 to 1 input image"),
    (EDIT, {"input_images": [portrait(), portrait()]}, "takes at most 1 input images"),
    (PLUS, {"input_images": [portrait()] * 4}, "takes at most 3 input images"),
    (PLUS, {"input_images": [np.zeros((2, 900, 3), np.uint8)]}, "aspect ratios beyond 200:1"),
    (PLUS, {"input_image": portrait()}, "give the image(s) to edit as input_images"),
    (PLUS, {"input_images": ["/no/such/picture.png"]}, "input image not found"),
    (PLUS, {"input_images": [portrait()], "prompt": " ".join(f"w{i}" for i in range(1500))},
     "run past the transformer's 4096 positions"),
])
def test_bad_requests_raise_clear_errors(name, kw, message):
    with pytest.raises(RequestError) as err:
        tokenizer(name).new_context(request(**kw))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_one_step_is_refused_because_diffusers_returns_nan():
    """shift_terminal's stretch divides by 1 - sigma_last = 0 for one step: QwenImagePipeline then
    decodes an all-NaN image. The harness refuses the request instead of reproducing that."""
    with pytest.raises(RequestError, match="at least 2 for this model"):
        tokenizer().new_context(request(num_inference_steps=1))
    out = reference().pipeline()(prompt=PROMPT, height=32, width=32, num_inference_steps=1,
                                 generator=torch.Generator().manual_seed(0), output_type="np")
    assert np.isnan(out.images).all()


def test_edit_defaults_to_the_last_image_size_and_pickles():
    req = request(input_images=[portrait(0), np.zeros((40, 80, 3), np.uint8)], height=None,
                  width=None)
    ctx = tokenizer(PLUS).new_context(req)
    assert (ctx.width, ctx.height) == ctx.extra_model_args["vae_image_sizes"][-1] == (1440, 736)
    assert len(ctx.prompt_images) == len(ctx.vae_condition_images) == 2
    back = pickle.loads(pickle.dumps(ctx))
    assert np.array_equal(back.latent_image_ids, ctx.latent_image_ids)
    assert all(np.array_equal(a, b) for a, b in zip(back.vae_condition_images,
                                                    ctx.vae_condition_images))


# --------------------------------------------------------------------------------------------------
# end-to-end parity


@pytest.mark.parametrize(
    "seed,size,steps,cfg", list(itertools.product((0, 1), ((64, 64), (96, 160)), (2, 4),
                                                  (False, True))),
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_txt2img_bitwise(seed, size, steps, cfg):
    h, w = size
    req = request(seed=seed, height=h, width=w, num_inference_steps=steps, **(CFG if cfg else {}))
    ctx, ours, ref, cmp = parity(req)
    assert ref.pipeline == "QwenImagePipeline" and ref.inputs == "generator"
    assert (ctx.negative_tokens is not None) == cfg
    assert ours.images.shape == (1, h, w, 3)
    assert_bitwise(ours, ref, cmp)


@pytest.mark.parametrize("kw", [
    {"num_inference_steps": 28, "height": 128, "width": 96, "negative_prompt": "",
     "true_cfg_scale": 4.0},
    {"num_images_per_prompt": 2, "negative_prompt": NEGATIVE, "true_cfg_scale": 2.5, "seed": 7},
    {"noise": "numpy", "seed": 11},
], ids=("28_steps_empty_negative", "two_images", "numpy_noise"))
def test_txt2img_options_bitwise(kw):
    ctx, ours, ref, cmp = parity(request(**kw))
    if kw.get("num_images_per_prompt") == 2:
        assert not np.array_equal(ours.images[0], ours.images[1])
    assert ref.inputs == ("latents" if kw.get("noise") == "numpy" else "generator")
    assert_bitwise(ours, ref, cmp)


def test_bfloat16_bitwise():
    req = request(height=64, width=96, seed=2, **CFG)
    assert_bitwise(*parity(req, dtype="bfloat16")[1:])


def test_edit_one_image_bitwise():
    """QwenImageEditPipeline: prompt and VAE copies both at ~1 MP, two outputs per prompt, CFG."""
    req = request(input_images=[portrait(0)], height=64, width=96, num_inference_steps=2,
                  num_images_per_prompt=2, **CFG)
    ctx, ours, ref, cmp = parity(req, EDIT)
    assert ref.pipeline == "QwenImageEditPipeline"
    assert ctx.extra_model_args["vae_image_sizes"] == [(832, 1248)]
    assert ours.images.shape == (2, 64, 96, 3)
    assert_bitwise(ours, ref, cmp)


def test_edit_plus_two_images_bitwise():
    """QwenImageEditPlusPipeline: prompt images at 384², VAE images at 1 MP, "Picture k" labels,
    the image latents of both pictures after the noise tokens."""
    req = request(input_images=[portrait(0), np.ascontiguousarray(portrait(1)[:50])],
                  height=96, width=64, num_inference_steps=2, seed=3)
    ctx, ours, ref, cmp = parity(req, PLUS)
    assert ref.pipeline == "QwenImageEditPlusPipeline"
    assert ctx.extra_model_args["condition_image_sizes"] == [(320, 480), (416, 352)]
    assert_bitwise(ours, ref, cmp)


@pytest.mark.parametrize("threshold", (1e-9, 0.5), ids=("never_reuses", "reuses"))
def test_first_block_cache_matches_diffusers_hook_bitwise(threshold):
    """residual_threshold: the generic cache in this loop (streams cond / uncond, as the pipeline
    names its calls) against diffusers' FirstBlockCache hook at the same threshold."""
    from harness.parity.pixel import run_uncached
    from harness.parity.pixel import compare

    req = request(num_inference_steps=8, residual_threshold=threshold, **CFG)
    ctx = tokenizer().new_context(req)
    ours = denoiser()(ctx, record_steps=True)
    ref = reference()(req, ctx, residual_threshold=threshold)
    assert ref.first_block_cache["applied"] and ref.first_block_cache["contexts"] == "pipeline"
    assert_bitwise(ours, ref, compare(ours, ref))
    assert set(ours.cache["streams"]) == {"cond", "uncond"}
    cost = float(np.abs(ours.final_latents - run_uncached(denoiser(), ctx).final_latents).max())
    if threshold < 1e-6:
        assert ours.cache["reused"] == 0 and cost == 0
    else:  # tiny model: rel 0.27..0.64 per step; measured cost ~2.6e-2
        assert ours.cache["reused"] > 0 and 0 < cost < 0.2


# --------------------------------------------------------------------------------------------------
# negative controls


@pytest.mark.parametrize("fault,kind", [
    ("no_norm_rescale", "loop"),
    ("timestep_not_divided", "loop"),
    ("drop_off_by_one", "tokenizer"),
    ("no_shift_terminal", "tokenizer"),
])
def test_negative_controls_are_detected(fault, kind):
    req = request(seed=0, height=64, width=64, num_inference_steps=4, **CFG)
    faults = {"loop_fault": fault} if kind == "loop" else {"tokenizer_fault": fault}
    _, _, _, cmp = parity(req, **faults)
    assert cmp["verdict"] == "mismatch"
    assert cmp["final_latents_max_abs_diff"] > 1e-4
    assert cmp["image_max_abs_diff"] > 0
    assert cmp["first_divergent_step"] == 0


def test_decode_multiplying_by_std_is_not_bitwise():
    """``x / (1/std)`` and ``x * std`` round differently: the latents stay equal, the decoded
    image does not."""
    req = request(seed=1, height=64, width=96, num_inference_steps=4, **CFG)
    _, ours, ref, cmp = parity(req, loop_fault="decode_multiply_std")
    assert cmp["final_latents_bitwise"] and cmp["decoded_max_abs_diff"] > 0


def test_prompt_image_at_the_wrong_target_is_detected():
    """Plus: the VL encoder's copy belongs at 384², not at the VAE's 1 MP."""
    req = request(input_images=[portrait(0)])
    good = tokenizer(PLUS).new_context(req)
    bad = tokenizer(PLUS).new_context(req, fault="prompt_image_at_vae_size")
    assert len(bad.tokens.all) > len(good.tokens.all)
    assert bad.extra_model_args["pixel_values"].shape != good.extra_model_args["pixel_values"].shape


# --------------------------------------------------------------------------------------------------
# command line




def test_cli_txt2img_with_parity(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("--model", T2I, "--prompt", "a red fox in the snow", "--height", "64",
                   "--width", "96", "--steps", "6", "--negative-prompt", "blurry",
                   "--true-cfg-scale", "4", "--seed", "4", "--residual-threshold", "0.5",
                   "--output-dir", str(out), "--parity")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["image_0.png", "parity.json", "parity.md",
                                       "reference_0.png", "report.html", "result.json"]
    parity_doc = json.loads((out / "parity.json").read_text())
    assert parity_doc["verdict"] == "bitwise" and parity_doc["family"] == "qwen_image"
    assert parity_doc["reference"]["pipeline"] == "QwenImagePipeline"
    assert all(s["latents_max_abs_diff"] == 0 for s in parity_doc["steps"])
    result = json.loads((out / "result.json").read_text())
    assert result["resolved"]["true_cfg"] and result["schedule"]["mu"] is not None
    assert result["first_block_cache"]["reused"] > 0  # bitwise against diffusers' own hook
    assert parity_doc["first_block_cache"]["vs_diffusers_hook"]["bitwise"]


@pytest.mark.parametrize("model,args,message", [
    (EDIT, [], "edits images: give 1 to 1 input image"),
    (T2I, ["--image", "IMG"], "takes no --image"),
])
def test_cli_bad_input_exits_2(model, args, message, tmp_path):
    from PIL import Image

    img = tmp_path / "img.png"
    Image.fromarray(portrait()).save(img)
    out = tmp_path / "never"
    proc = run_cli("--model", model, "--prompt", "a cat", "--height", "64", "--width", "64",
                   *[str(img) if a == "IMG" else a for a in args], "--output-dir", str(out))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not out.exists()


def test_tiny_folders_are_small_and_complete():
    for name in (T2I, EDIT, PLUS):
        folder = resolved(name).path
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert size < 4 * 1024 * 1024, (name, size)
        assert (folder / "processor").is_dir() == (name != T2I)
        digest = hashlib.sha256((folder / "vae" / "diffusion_pytorch_model.safetensors")
                                .read_bytes()).hexdigest()
        assert digest == hashlib.sha256((resolved(T2I).path / "vae" /
                                         "diffusion_pytorch_model.safetensors").read_bytes()
                                        ).hexdigest()
