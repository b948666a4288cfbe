"""FLUX.2 (Klein and dev layouts): context pieces against diffusers, bitwise end-to-end parity
against Flux2KleinPipeline / Flux2Pipeline, negative controls, request errors and the CLI.

One process, each tiny model loaded once, one torch thread for both sides. The reference draws its
own noise from a generator seeded like the request, so the initial latents are checked too.
"""
from __future__ import annotations

import itertools
import json
import os
import pickle

import numpy as np
import pytest
import torch

from harness.errors import RequestError
from tests.flux2_fixtures import (DEV, KLEIN, PROMPT, context, input_image, parity, reference,
                                  request, tokenizer)
from tests.test_cli_image import run_cli



def assert_bitwise(ours, ref, cmp):
    assert ours.final_latents.shape == ref.final_latents.shape
    assert np.array_equal(ours.final_latents, ref.final_latents), cmp["final_latents_max_abs_diff"]
    assert ours.images.dtype == np.uint8 and np.array_equal(ours.images, ref.images), \
        cmp["image_max_abs_diff"]
    assert len(ours.step_latents) == len(ref.step_latents) == len(ours.timesteps)
    assert cmp["verdict"] == "bitwise" and cmp["first_divergent_step"] is None


# --------------------------------------------------------------------------------------------------
# context pieces against what the pipelines compute


@pytest.mark.parametrize("name", (KLEIN, DEV))
@pytest.mark.parametrize("prompt", [
    PROMPT, "A Photo Of A CAT, 4K!!", "  lots   of\twhite\nspace  ",
    "unicode: 你好, émoji 🐱, ñ and ß", "a [IMG] tag and <|im_start|> inside",
])
def test_prompt_tokens_match_the_pipeline(name, prompt):
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    pipe = reference(name).pipeline()
    if name == KLEIN:
        text = pipe.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True,
            enable_thinking=False)
        enc = pipe.tokenizer(text, padding="max_length", truncation=True, max_length=512)
        ids, mask = enc["input_ids"], enc["attention_mask"]
    else:
        enc = pipe.tokenizer.apply_chat_template(
            format_input([prompt]), add_generation_prompt=False, tokenize=True, return_dict=True,
            padding="max_length", truncation=True, max_length=512)
        ids, mask = enc["input_ids"][0], enc["attention_mask"][0]
    ctx = context(request(prompt=prompt, guidance_scale=1.0), name=name)
    assert np.array_equal(ctx.tokens.all, np.asarray(ids)) and len(ctx.tokens) == 512
    assert np.array_equal(ctx.mask, np.asarray(mask, dtype=bool))


def test_context_layout_matches_the_pipeline():
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu, retrieve_timesteps

    pipe = reference(KLEIN).pipeline()
    req = request(height=96, width=160, num_images_per_prompt=2, seed=3, num_inference_steps=7,
                  input_images=[input_image(80, 120, 0), input_image(100, 70, 1)])
    ctx = context(req)
    gen = torch.Generator("cpu").manual_seed(3)
    latents, ids = pipe.prepare_latents(2, 32, 96, 160, torch.float32, torch.device("cpu"), gen)
    assert ctx.latents.shape == (2, 6 * 10, 128)
    from _fast import flux2_pack

    assert np.array_equal(ctx.latents, flux2_pack(np.ascontiguousarray(
        ctx.latents.transpose(0, 2, 1)).reshape(2, 128, 6, 10)))
    assert np.array_equal(ctx.latents, latents.numpy())  # drawn (2, 128, 6, 10), then packed
    assert ctx.latent_image_ids.dtype == np.int64 and np.array_equal(ctx.latent_image_ids, ids)
    embeds = torch.zeros(2, 512, 48)
    assert np.array_equal(ctx.text_ids, pipe._prepare_text_ids(embeds).numpy())
    assert np.array_equal(ctx.negative_text_ids, ctx.text_ids)  # CFG: guidance 4 > 1
    mu = compute_empirical_mu(60, 7)
    assert ctx.extra_model_args["mu"] == mu
    timesteps, _ = retrieve_timesteps(pipe.scheduler, 7, "cpu",
                                      sigmas=np.linspace(1.0, 1 / 7, 7), mu=mu)
    assert np.array_equal(ctx.timesteps, timesteps.numpy())
    assert np.array_equal(ctx.sigmas, pipe.scheduler.sigmas.numpy())
    # reference images: 80x112 and 96x64 after the crop; ids (10 + 10k, r, c, 0)
    assert [im.shape for im in ctx.input_images] == [(80, 112, 3), (96, 64, 3)]
    grids = [torch.zeros(1, 128, 5, 7), torch.zeros(1, 128, 6, 4)]
    ref_ids = pipe._prepare_image_ids(grids).repeat(2, 1, 1)
    assert np.array_equal(ctx.extra_model_args["reference_ids"], ref_ids.numpy())
    from PIL import Image

    for pil, nhwc in zip([input_image(80, 120, 0), input_image(100, 70, 1)],
                         ctx.extra_model_args["reference_nhwc"]):
        pil = Image.fromarray(pil)
        w, h = pil.size[0] // 16 * 16, pil.size[1] // 16 * 16
        want = pipe.image_processor.preprocess(pil, height=h, width=w, resize_mode="crop")
        assert np.array_equal(nhwc, want.permute(0, 2, 3, 1).numpy())
    clone = pickle.loads(pickle.dumps(ctx))
    assert np.array_equal(clone.latents, ctx.latents) and clone.extra_model_args.keys() == \
        ctx.extra_model_args.keys()


def test_dev_context_has_no_cfg_and_numpy_noise_is_max_convention():
    ctx = context(request(guidance_scale=4.0, seed=9, noise="numpy"), name=DEV)
    assert ctx.negative_tokens is None and not ctx.extra_model_args["cfg"]
    want = np.random.RandomState(9).standard_normal((1, 128, 4, 4)).astype(np.float32)
    assert np.array_equal(ctx.latents, want.reshape(1, 128, 16).transpose(0, 2, 1))


@pytest.mark.parametrize("kw,message", [
    ({"height": 1024, "width": 1040}, "exceeds the model's cap of 1048576"),
    ({"height": 2048, "width": 2048}, "exceeds the model's cap"),
    ({"negative_prompt": "blurry"}, "FLUX.2 takes no negative prompt"),
    ({"true_cfg_scale": 3.0}, "FLUX.2 has no true_cfg_scale"),
    ({"input_image": np.zeros((64, 64, 3), np.uint8)}, "FLUX.2 has no img2img"),
    ({"cfg_truncation": 0.5}, "Z-Image options"),
    ({"residual_threshold": 0.06}, "FLUX.2 has no first-block cache"),
    ({"input_images": [np.zeros((64, 64, 3), np.uint8)] * 5}, "at most 4 input images"),
    ({"input_images": [np.zeros((32, 80, 3), np.uint8)]}, "reference image too small: 80x32"),
    ({"input_images": [np.zeros((64, 600, 3), np.uint8)]}, "aspect ratio too extreme"),
    ({"prompt": " ".join(["zebra"] * 600)}, "prompt too long: "),
])
def test_bad_requests(kw, message):
    with pytest.raises(RequestError, match=message.replace("(", r"\(")):
        tokenizer(KLEIN).new_context(request(**kw))


def test_area_cap_allows_1024_squared_and_large_references_are_resized():
    ctx = tokenizer(KLEIN).new_context(request(height=1024, width=1024, num_inference_steps=1))
    assert ctx.latents.shape == (1, 64 * 64, 128)
    big = np.full((1100, 1000, 3), 7, np.uint8)  # 1.1 MP: scaled to 1024² area, then cropped
    ctx = context(request(height=None, width=None, input_images=[big]))
    assert ctx.input_images[0].shape == (1072, 976, 3) and (ctx.height, ctx.width) == (1072, 976)


# --------------------------------------------------------------------------------------------------
# end-to-end parity


@pytest.mark.parametrize("seed,size,steps,guidance", list(itertools.product(
    (0, 1), ((64, 64), (96, 160)), (1, 4), (1.0, 4.0))),
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_klein_bitwise(seed, size, steps, guidance):
    h, w = size
    req = request(seed=seed, height=h, width=w, num_inference_steps=steps, guidance_scale=guidance)
    ctx, ours, ref, cmp = parity(req)
    assert (ctx.negative_tokens is not None) == (guidance > 1)
    assert ref.pipeline == "Flux2KleinPipeline" and ref.inputs == "generator"
    assert ours.images.shape == (1, h, w, 3)
    assert_bitwise(ours, ref, cmp)


def test_klein_28_steps_bitwise():
    ctx, ours, ref, cmp = parity(request(seed=2, height=64, width=96, num_inference_steps=28))
    assert_bitwise(ours, ref, cmp)


@pytest.mark.parametrize("kw", [
    {"input_images": [input_image(80, 120, 0)]},
    {"input_images": [input_image(80, 120, 0), input_image(100, 70, 1)],
     "num_images_per_prompt": 2, "height": 96, "width": 160},
    {"input_images": [input_image(100, 70, 1)], "height": None, "width": None, "noise": "numpy"},
], ids=("one_reference", "two_references_two_images", "size_from_reference_numpy_noise"))
def test_klein_reference_images_bitwise(kw):
    req = request(seed=4, **kw)
    ctx, ours, ref, cmp = parity(req)
    n_ref = sum((im.shape[0] // 16) * (im.shape[1] // 16) for im in ctx.input_images)
    assert ctx.extra_model_args["reference_ids"].shape == (req.num_images_per_prompt, n_ref, 4)
    assert_bitwise(ours, ref, cmp)
    if req.num_images_per_prompt == 2:
        assert not np.array_equal(ours.images[0], ours.images[1])


def test_klein_distilled_ignores_guidance_bitwise():
    req = request(seed=1, num_inference_steps=4, guidance_scale=4.0)
    ctx, ours, ref, cmp = parity(req, distilled=True)
    assert ctx.negative_tokens is None and ctx.num_inference_steps == 4
    assert_bitwise(ours, ref, cmp)
    # Without steps, Flux2KleinPipeline runs its own default 50, distilled or not: so does the
    # harness (a user of a step-distilled Klein passes 4, as the model card does).
    default = tokenizer(KLEIN, "float32", True).new_context(request(num_inference_steps=None))
    assert default.num_inference_steps == 50 and default.negative_tokens is None


def test_klein_bfloat16_bitwise():
    req = request(seed=0, height=64, width=96, input_images=[input_image(80, 120, 0)])
    ctx, ours, ref, cmp = parity(req, dtype="bfloat16")
    assert_bitwise(ours, ref, cmp)


@pytest.mark.parametrize("kw", [
    {"guidance_scale": 4.0},
    {"guidance_scale": 2.5, "height": 96, "width": 160, "seed": 1, "num_inference_steps": 1},
    {"guidance_scale": 1.0, "input_images": [input_image(80, 120, 0)], "num_images_per_prompt": 2},
], ids=("txt2img", "96x160_1step", "reference_two_images"))
def test_dev_bitwise(kw):
    ctx, ours, ref, cmp = parity(request(**kw), name=DEV)
    assert ref.pipeline == "Flux2Pipeline"
    assert_bitwise(ours, ref, cmp)


@pytest.mark.parametrize("name,fault,kind,refs", [
    (KLEIN, "noise_packed_shape", "tokenizer", False),
    (KLEIN, "unshifted_schedule", "tokenizer", False),
    (KLEIN, "linear_mu", "tokenizer", False),
    (KLEIN, "reference_t_zero", "tokenizer", True),
    (KLEIN, "timestep_not_divided", "loop", False),
    (KLEIN, "no_bn_denorm", "loop", False),
    (KLEIN, "last_layer_only", "loop", False),
    (KLEIN, "cfg_unguided", "loop", False),
    (DEV, "guidance_x1000", "loop", False),
])
def test_negative_controls_are_detected(name, fault, kind, refs):
    req = request(seed=0, input_images=[input_image(80, 120, 0)] if refs else None)
    faults = {"loop_fault": fault} if kind == "loop" else {"tokenizer_fault": fault}
    _, _, _, cmp = parity(req, name=name, **faults)
    assert cmp["verdict"] == "mismatch"
    assert cmp["image_max_abs_diff"] > 0
    if fault == "no_bn_denorm":  # only the decode differs
        assert cmp["final_latents_bitwise"] and "decode path" in cmp["verdict_note"]
    else:
        assert cmp["final_latents_max_abs_diff"] > 1e-3 and cmp["first_divergent_step"] == 0


# --------------------------------------------------------------------------------------------------
# the CLI




def test_cli_reference_image_with_parity(tmp_path):
    from PIL import Image

    ref_png = tmp_path / "ref.png"
    Image.fromarray(input_image(80, 120, 0)).save(ref_png)
    out = tmp_path / "run"
    proc = run_cli("--model", KLEIN, "--prompt", "a red fox in the snow", "--height", "64",
                   "--width", "96", "--steps", "2", "--guidance-scale", "3.0", "--image",
                   str(ref_png), "--seed", "5", "--output-dir", str(out), "--parity")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == sorted(["image_0.png", "reference_0.png", "parity.json",
                                              "parity.md", "report.html", "result.json"])
    parity = json.loads((out / "parity.json").read_text())
    assert parity["verdict"] == "bitwise"
    assert parity["reference"]["pipeline"] == "Flux2KleinPipeline"
    assert all(s["latents_max_abs_diff"] == 0 for s in parity["steps"])
    result = json.loads((out / "result.json").read_text())
    assert result["model"]["family"] == "flux2" and result["resolved"]["true_cfg"]


@pytest.mark.parametrize("args,message", [
    (("--height", "1024", "--width", "1040"), "exceeds the model's cap"),
    (("--image", "a.png") * 5, "at most 4 --image"),
])
def test_cli_bad_inputs(tmp_path, args, message):
    out = tmp_path / "run"
    proc = run_cli("--model", KLEIN, "--prompt", "a fox", "--steps", "1", "--output-dir",
                   str(out), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists()
