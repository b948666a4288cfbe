"""Wan end to end, bit for bit against diffusers' WanPipeline / WanImageToVideoPipeline from the
raw request on CPU float32 (one torch thread, the modules loaded once per tiny model): text-to-
video with and without CFG under both noise conventions, Wan 2.2's two experts, image-to-video
with CLIP embeddings, a FlowMatchEuler folder, the first-block cache against diffusers' hook,
negative controls, and the command line (video files, frames.npy, refusals). A wider matrix is
``slow``."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from tests import pixel_fixtures as px
from tests.test_wan_context import PROMPT, euler_folder, request


def assert_bitwise(ours, ref, cmp):
    assert ours.final_latents.ndim == 5 and ours.images.ndim == 5
    assert np.array_equal(ours.final_latents, ref.final_latents), cmp["final_latents_max_abs_diff"]
    assert ours.images.dtype == np.uint8 and np.array_equal(ours.images, ref.images)
    assert len(ours.step_latents) == len(ref.step_latents) == len(ours.timesteps)
    assert cmp["verdict"] == "bitwise" and cmp["first_divergent_step"] is None


def run(name, req, **kw):
    return px.parity(name, req, **kw)


@pytest.mark.parametrize("cfg,noise,size,frames,steps,seed", [
    (5.0, "torch", (32, 32), 5, 3, 0),
    (1.0, "numpy", (48, 32), 9, 2, 7),
])
def test_text_to_video_bitwise(cfg, noise, size, frames, steps, seed):
    req = request(guidance_scale=cfg, noise=noise, height=size[0], width=size[1],
                  num_frames=frames, num_inference_steps=steps, seed=seed,
                  negative_prompt="static, blurry" if cfg > 1 else None)
    ctx, ours, ref, cmp = run("tiny-wan", req)
    assert_bitwise(ours, ref, cmp)
    assert ours.images.shape == (1, frames) + size + (3,)
    assert (ctx.negative_tokens is not None) == (cfg > 1)
    assert ref.inputs == ("generator" if noise == "torch" else "latents")


def test_bfloat16_bitwise_through_the_torch_step():
    """bfloat16 modules: the step runs as the scheduler's own torch expressions (a bf16 model
    output promotes as in diffusers), with the table's coefficients as 0-d float32 tensors."""
    req = request(seed=3, negative_prompt="grey")
    _, ours, ref, cmp = run("tiny-wan", req, dtype="bfloat16")
    import torch

    assert px.denoiser("tiny-wan", "bfloat16").c["transformer"].dtype == torch.bfloat16
    assert ours.final_latents.dtype == np.float32  # latents stay float32, as in the pipeline
    assert_bitwise(ours, ref, cmp)


def test_two_experts_switch_at_the_boundary():
    req = request(guidance_scale=4.0, guidance_scale_2=2.0, seed=5)
    ctx, ours, ref, cmp = run("tiny-wan22", req)
    assert_bitwise(ours, ref, cmp)
    assert [float(t) >= ctx.boundary_timestep for t in ctx.timesteps] == [True, True, False]
    # negative control: the low-noise step run by the high-noise expert
    _, bad, _, bad_cmp = run("tiny-wan22", req, loop_fault="no_boundary_switch", memoise=True)
    assert [s["bitwise"] for s in bad_cmp["steps"]] == [True, True, False]


def test_image_to_video_bitwise_and_its_mask():
    req = request(input_image=px.input_image(40, 56), seed=2, guidance_scale=3.0)
    ctx, ours, ref, cmp = run("tiny-wan-i2v", req)
    assert_bitwise(ours, ref, cmp)
    assert "clip_pixel_values" in ctx.extra_model_args
    _, _, _, bad = run("tiny-wan-i2v", req, loop_fault="i2v_no_mask")
    assert bad["verdict"] == "mismatch" and bad["first_divergent_step"] == 0


@pytest.mark.parametrize("fault,kind", [("no_corrector", "loop"), ("euler_step", "loop"),
                                        ("decode_multiply_std", "loop"),
                                        ("embeds_not_zeroed", "loop"),
                                        ("unshifted_schedule", "tokenizer")])
def test_negative_controls_are_detected(fault, kind):
    req = request(seed=1)
    key = {"loop_fault" if kind == "loop" else "tokenizer_fault": fault}
    _, ours, ref, cmp = run("tiny-wan", req, memoise=True, **key)
    assert not (np.array_equal(ours.final_latents, ref.final_latents)
                and np.array_equal(ours.decoded, ref.decoded)), fault
    if fault == "no_corrector":  # the corrector first runs at step 1
        assert [s["bitwise"] for s in cmp["steps"]][:2] == [True, False]


def test_flow_match_euler_folder_bitwise(tmp_path):
    from harness.parity.pixel import compare
    from harness.tokenizers import PixelGenerationTokenizer
    from models.registry import resolve

    resolved = resolve(str(euler_folder(tmp_path)))
    tok = PixelGenerationTokenizer(resolved)
    den = resolved.family.Denoiser(px.denoiser("tiny-wan").c, tok.rules)
    runner = resolved.family.ReferenceRunner(resolved.path, den.c, tok.rules)
    req = request(seed=4)
    ctx = tok.new_context(req)
    ours = den(ctx, record_steps=True)
    ref = runner(req, ctx)
    assert ref.pipeline == "WanPipeline"
    assert_bitwise(ours, ref, compare(ours, ref))


def test_first_block_cache_against_diffusers_hook():
    from harness.parity.pixel import compare, first_block_cache_section, run_uncached

    req = request(seed=9, num_inference_steps=4, residual_threshold=0.5)
    ctx = px.tokenizer("tiny-wan").new_context(req)
    den = px.denoiser("tiny-wan")
    ours = den(ctx, record_steps=True)
    ref = px.reference("tiny-wan")(req, ctx, residual_threshold=0.5)
    section = first_block_cache_section(ours, run_uncached(den, ctx), ref)
    assert ours.cache["reused"] > 0 and set(ours.cache["streams"]) == {"cond", "uncond"}
    assert section["vs_diffusers_hook"]["applied"] and section["vs_diffusers_hook"]["bitwise"]
    assert compare(ours, ref)["verdict"] == "bitwise"


# --------------------------------------------------------------------------------------------------
# the command line


def _main(argv):
    from harness.generate import main

    return main(argv)


def test_cli_parity_writes_video_frames_and_report(tmp_path, capsys):
    from harness.video import read_video_frames

    out = tmp_path / "run"
    code = _main(["--model", "tiny-wan", "--prompt", PROMPT, "--seed", "3", "--steps", "2",
                  "--num-frames", "5", "--height", "32", "--width", "48", "--format", "webp",
                  "--fps", "8", "--parity", "--quiet", "--output-dir", str(out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["parity"] == "bitwise"
    names = {p.name for p in out.iterdir()}
    assert {"video_0.webp", "reference_0.webp", "frames.npy", "reference_frames.npy",
            "parity.json", "parity.md", "report.html", "result.json"} <= names
    frames = np.load(out / "frames.npy")
    assert frames.shape == (5, 32, 48, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, np.load(out / "reference_frames.npy"))
    assert np.array_equal(read_video_frames(out / "video_0.webp"), frames)  # lossless WebP
    report = json.loads((out / "parity.json").read_text())
    assert report["frames"]["frames_bitwise"] and len(report["frames"]["per_frame"]) == 5
    assert report["frame_rate"] == 8 and report["lossy_note"] is None
    from tests.browser import check_page

    page = check_page(out / "report.html")  # as a person sees it, in headless Chromium
    assert page["network_requests"] == [] and page["console_errors"] == []
    assert page["images"] == 2 and page["images_loaded"], page["broken_images"]  # both strips
    # |diff| heatmap, per-frame differences, per-step latents, per-step timings
    assert page["svg_count"] >= 4 and page["empty_svgs"] == 0
    assert page["title"] == "Video parity: wan — bitwise"
    for needle in ("Frame strips", "Per-frame differences", "num_frames", "WanPipeline"):
        assert needle in page["text"], needle
    result = json.loads((out / "result.json").read_text())
    assert result["resolved"]["num_frames"] == 5 and result["resolved"]["frame_rate"] == 8


@pytest.mark.parametrize("argv,match", [
    (["--model", "tiny-wan", "--num-frames", "6"], "--num-frames must be of the form 4k+1"),
    (["--model", "tiny-wan", "--format", "png"], "--format 'png' is not supported"),
    (["--model", "tiny-wan", "--fps", "0"], "--fps must be an integer"),
    (["--model", "tiny-flux1", "--num-frames", "5"], "--num-frames applies to video models"),
])
def test_cli_refuses_bad_video_flags(tmp_path, capsys, argv, match):
    out = tmp_path / "run"
    assert _main(argv + ["--prompt", "x", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# the wider matrix


@pytest.mark.slow
@pytest.mark.parametrize("seed,shape,steps,cfg", list(itertools.product(
    (0, 123), ((32, 32, 1), (32, 64, 9)), (1, 4), (1.0, 6.0))))
def test_text_to_video_matrix(seed, shape, steps, cfg):
    req = request(seed=seed, height=shape[0], width=shape[1], num_frames=shape[2],
                  num_inference_steps=steps, guidance_scale=cfg)
    _, ours, ref, cmp = run("tiny-wan", req)
    assert_bitwise(ours, ref, cmp)


@pytest.mark.slow
@pytest.mark.parametrize("name,noise,steps", list(itertools.product(
    ("tiny-wan-i2v", "tiny-wan22"), ("torch", "numpy"), (2, 5))))
def test_i2v_and_experts_matrix(name, noise, steps):
    kw = {"input_image": px.input_image(33, 47)} if name.endswith("i2v") else {}
    req = request(seed=steps, noise=noise, num_inference_steps=steps,
                  negative_prompt="grey", **kw)
    _, ours, ref, cmp = run(name, req)
    assert_bitwise(ours, ref, cmp)
