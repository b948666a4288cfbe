"""Wan's request → VideoPixelContext against the pipelines' own preprocessing: recognition of the
three tiny folders, request refusals, the UMT5 prompt path (cleaning, 512 padding, truncation),
the 5-D noise in prepare_latents' shape under both conventions, the schedules (UniPC and a
FlowMatchEuler folder), Wan 2.2's boundary, the I2V image preprocessing. No weights are run."""
from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from harness.errors import RequestError
from tests import pixel_fixtures as px

PROMPT = "a red fox runs through fresh snow"


def request(**kw):
    kw.setdefault("height", 32)
    kw.setdefault("width", 32)
    kw.setdefault("num_frames", 5)
    kw.setdefault("num_inference_steps", 3)
    kw.setdefault("prompt", PROMPT)
    return px.request(**kw)


def test_registry_and_folder_rules():
    from models import wan
    from models.registry import resolve

    t2v, i2v, two = (px.resolved(n) for n in wan.TINY_NAMES)
    assert t2v.family is wan and t2v.modality == "image" and wan.matches(t2v.path)
    assert resolve(str(t2v.path)).family is wan
    r = px.tokenizer("tiny-wan").rules
    assert (r.video, r.i2v, r.two_experts, r.unipc, r.size_multiple) == (True, False, False,
                                                                         True, 16)
    assert (r.default_height, r.default_width, r.default_num_frames) == (480, 832, 81)
    ri = px.tokenizer("tiny-wan-i2v").rules
    assert ri.i2v and ri.has_image_encoder and ri.max_input_images == 1
    r2 = px.tokenizer("tiny-wan22").rules
    assert r2.two_experts and r2.boundary_timestep == 875.0


def test_refusals_name_the_option_before_any_weights():
    tok = px.tokenizer("tiny-wan")
    cases = [(dict(num_frames=6), "4k\\+1 .* got 6 \\(nearest: 5 or 9\\)"),
             (dict(num_frames=0), "positive integer"),
             (dict(height=40), "height must be a multiple of 16"),
             (dict(frame_rate=0), "frame_rate must be an integer"),
             (dict(guidance_scale_2=3.0), "guidance_scale_2 applies to two-expert"),
             (dict(output_format="jpeg"), "allowed: mp4, webp, gif"),
             (dict(input_image=px.input_image()), "takes no input image")]
    for kw, match in cases:
        with pytest.raises(RequestError, match=match):
            tok.new_context(request(**kw))
    with pytest.raises(RequestError, match="animates an input image"):
        px.tokenizer("tiny-wan-i2v").new_context(request())
    with pytest.raises(RequestError, match="num_frames applies to video models"):
        px.tokenizer("tiny-flux1").new_context(px.request(num_frames=5))


def test_prompt_path_matches_the_pipeline_tokenizer_call():
    """Cleaning (HTML entities twice, whitespace), </s>, <pad> to 512 and the mask, as
    WanPipeline._get_t5_prompt_embeds tokenizes; a prompt past 512 tokens truncates with a
    warning (diffusers truncates silently)."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean as theirs
    from transformers import AutoTokenizer

    from models.wan import prompt_clean

    rules = px.tokenizer("tiny-wan").rules
    hf = AutoTokenizer.from_pretrained(rules.tokenizer_dir, local_files_only=True)
    long = " ".join(["snowy mountain lake"] * 400)
    for text in ("  a  fox &amp;amp; a\t hare\n", "plain", "", "&lt;b&gt; bold", long):
        assert prompt_clean(text) == theirs(text)
        ref = hf([theirs(text)], padding="max_length", max_length=512, truncation=True,
                 add_special_tokens=True, return_attention_mask=True, return_tensors="np")
        ids, mask, truncated = rules.encode_prompt(text)
        assert np.array_equal(ids, ref.input_ids[0]) and np.array_equal(mask, ref.attention_mask[0])
        assert truncated == (text is long)
    with pytest.warns(UserWarning, match="truncated to 512"):
        px.tokenizer("tiny-wan").new_context(request(prompt=long))


@pytest.mark.parametrize("noise", ["torch", "numpy"])
def test_context_fields_and_noise(noise):
    tok = px.tokenizer("tiny-wan")
    ctx = tok.new_context(request(seed=11, noise=noise, num_images_per_prompt=2,
                                  negative_prompt="blur", height=48, num_frames=9))
    shape = (2, 16, 3, 6, 4)  # (B, z, (F-1)//4+1, H/8, W/8)
    if noise == "torch":
        want = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(11),
                           dtype=torch.float32).numpy()
    else:
        want = np.random.RandomState(11).standard_normal(shape).astype(np.float32)
    assert ctx.latents.dtype == np.float32 and np.array_equal(ctx.latents, want)
    assert type(ctx).__name__ == "VideoPixelContext"
    assert (ctx.num_frames, ctx.frame_rate, ctx.output_format) == (9, 16, "mp4")
    assert ctx.negative_tokens is not None and ctx.guidance_scale == 5.0
    assert ctx.step_coefficients.shape == (3, 14) and ctx.boundary_timestep is None
    assert pickle.loads(pickle.dumps(ctx)) == ctx
    # CFG off at guidance <= 1: no negative prompt is encoded
    assert tok.new_context(request(guidance_scale=1.0)).negative_tokens is None


def test_negative_control_frames_drawn_last_moves_the_noise():
    tok = px.tokenizer("tiny-wan")
    good = tok.new_context(request(seed=3, num_frames=9))
    bad = tok.new_context(request(seed=3, num_frames=9), fault="noise_frames_last")
    assert good.latents.shape == bad.latents.shape and not np.array_equal(good.latents,
                                                                          bad.latents)


def test_schedule_and_table_match_the_folder_scheduler():
    from diffusers import UniPCMultistepScheduler

    for name in ("tiny-wan", "tiny-wan22"):
        rules = px.tokenizer(name).rules
        sched = UniPCMultistepScheduler.from_pretrained(rules.folder / "scheduler",
                                                        local_files_only=True)
        for n in (1, 3, 8, 50):
            sched.set_timesteps(n)
            ts, sg, table = rules.schedule(n)
            assert np.array_equal(ts, sched.timesteps.numpy().astype(np.float32))
            assert np.array_equal(sg, sched.sigmas.numpy()) and table.shape == (n, 14)
        _, _, unshifted = rules.schedule(8, fault="unshifted_schedule")
        assert not np.array_equal(unshifted, rules.schedule(8)[2])


def test_two_expert_boundary_and_second_scale():
    tok = px.tokenizer("tiny-wan22")
    ctx = tok.new_context(request())
    assert list(ctx.timesteps) == [999, 960, 857] and ctx.boundary_timestep == 875.0
    assert ctx.guidance_scale_2 == ctx.guidance_scale  # the pipelines' default
    assert tok.new_context(request(guidance_scale_2=2.5)).guidance_scale_2 == 2.5


def euler_folder(tmp_path, shift=5.0):
    """tiny-wan with a FlowMatchEulerDiscreteScheduler (the components linked, not copied)."""
    src = px.resolved("tiny-wan").path
    dst = tmp_path / "wan-euler"
    dst.mkdir()
    for part in src.iterdir():
        if part.name not in ("scheduler", "model_index.json", ".complete", "recipe.json"):
            (dst / part.name).symlink_to(part)
    (dst / "scheduler").mkdir()
    (dst / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
         "shift": shift, "use_dynamic_shifting": False}))
    index = json.loads((src / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    (dst / "model_index.json").write_text(json.dumps(index))
    return dst


def test_flow_match_euler_folder_schedule(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from models.wan import flow_match_default_sigmas, rules

    folder = euler_folder(tmp_path)
    r = rules(folder)
    assert not r.unipc
    for shift in (1.0, 3.0, 5.0, 7.5):
        sched = FlowMatchEulerDiscreteScheduler(shift=shift)
        for n in (1, 2, 5, 13, 50):
            sched.set_timesteps(n)
            ts, sg = flow_match_default_sigmas(n, shift=shift)
            assert np.array_equal(ts, sched.timesteps.numpy())
            assert np.array_equal(sg, sched.sigmas.numpy())
    ts, sg, table = r.schedule(4)
    assert table.size == 0 and ts.dtype == np.float32


def test_unsupported_folders_are_refused(tmp_path):
    from models.wan import rules

    src = px.resolved("tiny-wan").path
    for key, value, match in (("solver_order", 3, "solver_order"),
                              ("use_karras_sigmas", True, "use_karras_sigmas"),
                              ("prediction_type", "epsilon", "flow prediction")):
        dst = tmp_path / key
        shutil.copytree(src, dst)
        cfg = dst / "scheduler" / "scheduler_config.json"
        cfg.write_text(json.dumps(json.loads(cfg.read_text()) | {key: value}))
        with pytest.raises(ValueError, match=match):
            rules(dst)


def test_i2v_image_preprocessing():
    """The input image resized as VideoProcessor.preprocess does, and the CLIP pixels as
    CLIPImageProcessor gives them to the image encoder."""
    from diffusers.video_processor import VideoProcessor
    from PIL import Image

    tok = px.tokenizer("tiny-wan-i2v")
    img = px.input_image(70, 50)
    ctx = tok.new_context(request(input_image=img, height=48, width=32))
    theirs = VideoProcessor(vae_scale_factor=8).preprocess(Image.fromarray(img), height=48,
                                                           width=32)
    ours = torch.from_numpy(ctx.extra_model_args["image_nhwc"]).permute(0, 3, 1, 2)
    assert torch.equal(ours, theirs)
    clip = tok.rules.image_processor()(images=Image.fromarray(img), return_tensors="pt")
    assert np.array_equal(ctx.extra_model_args["clip_pixel_values"],
                          clip["pixel_values"].numpy())
