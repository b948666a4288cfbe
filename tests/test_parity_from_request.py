"""Parity starts from the user's request (image families): the diffusers reference gets only what
the user gave and makes its own choices; the report compares both sides' resolved inputs first,
says where the harness goes beyond the reference, and refuses what would crash mid-forward.

Finding 2 (default size), finding 3 (silent extension) and the pre-load refusals of the issue, on
folders the project did not shape for the harness: a FLUX.1 folder with diffusers' own test-dummy
geometry (1-level VAE, ``sample_size`` 32, default scheduler) and edited copies of the tiny models.
"""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.errors import RequestError
from tests.pixel_fixtures import input_image
from tests.test_cli_image import left_behind, run_cli


def _copy(name: str, dest: Path) -> Path:
    from models.registry import resolve

    shutil.copytree(resolve(name).path, dest)
    return dest


def _edit_json(path: Path, **changes) -> None:
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@functools.lru_cache(maxsize=None)
def dummy_flux_folder() -> Path:
    """A FLUX.1 folder with diffusers' FluxPipeline test-dummy transformer/VAE/scheduler
    (tests/pipelines/flux/test_pipeline_flux.py: 1-level VAE with sample_size 32, in_channels 4,
    default FlowMatchEulerDiscreteScheduler) and the tiny model's tokenizers and text encoders.
    FluxPipeline's default size there is 128 x 1 = 128; the VAE's sample_size says 32."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    out = Path(tempfile.mkdtemp(prefix="dummy-flux-")) / "dummy-flux"
    _copy("tiny-flux1", out)
    for part in ("transformer", "vae", "scheduler"):
        shutil.rmtree(out / part)
    torch.manual_seed(0)
    FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                           pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]
                           ).save_pretrained(out / "transformer")
    torch.manual_seed(0)
    AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,),
                  layers_per_block=1, latent_channels=1, norm_num_groups=1, use_quant_conv=False,
                  use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035
                  ).save_pretrained(out / "vae")
    FlowMatchEulerDiscreteScheduler().save_pretrained(out / "scheduler")
    return out


# --------------------------------------------------------------------------------------------------
# finding 2: default sizes as each diffusers pipeline computes them


def test_default_size_is_the_pipelines_not_the_vae_sample_size(tmp_path):
    """No --height/--width: FluxPipeline makes default_sample_size (128) x VAE factor (1) = 128,
    and so must the harness (it used to take the VAE's sample_size, 32). The reference is called
    without a size and makes its own choice; the report compares both sides' choices."""
    out = tmp_path / "run"
    proc = run_cli("--model", str(dummy_flux_folder()), "--prompt", "a squirrel eating a burger",
                   "--steps", "2", "--seed", "0", "--output-dir", str(out), "--parity")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert (result["resolved"]["height"], result["resolved"]["width"]) == (128, 128)
    parity = json.loads((out / "parity.json").read_text())
    assert parity["verdict"] == "bitwise", parity["verdict_note"]
    inputs = parity["input_comparison"]
    assert inputs["equal"] and "height" not in inputs["reference_given"]
    rows = {r["setting"]: r for r in inputs["settings"]}
    assert rows["height"]["reference"] == rows["height"]["harness"] == 128
    assert rows["guidance_scale"]["reference"] == 3.5 and rows["num_inference_steps"]["equal"]
    # What FluxPipeline fed its two text encoders, recorded during its run: the same ids.
    assert rows["text_encoder call 0 (prompt) ids"]["equal"]
    assert rows["text_encoder_2 call 0 (prompt) ids"]["reference"] == "512 ids"
    assert "## Inputs" in (out / "parity.md").read_text()


def test_default_sizes_follow_each_pipelines_rule(tmp_path):
    from harness.tokenizers import PixelGenerationRequest, PixelGenerationTokenizer
    from models.registry import resolve

    def default(folder):
        tok = PixelGenerationTokenizer(resolve(str(folder)))
        ctx = tok.new_context(PixelGenerationRequest(prompt="a cat", num_inference_steps=2,
                                                     seed=0))
        return tok.rules, (ctx.height, ctx.width)

    rules, size = default(resolve("tiny-flux1").path)
    assert rules.vae_config["sample_size"] == 256 and size == (1024, 1024)  # 128 x 8
    # QwenImagePipeline: 128 x 2^len(temperal_downsample): a 2-level temporal VAE gives 512.
    qwen = _copy("tiny-qwen-image", tmp_path / "qwen")
    _edit_json(qwen / "vae" / "config.json", temperal_downsample=[False, True])
    assert PixelGenerationTokenizer(resolve(str(qwen))).rules.default_size == 512
    # ZImagePipeline has its own fixed default: 1024 whatever the VAE.
    assert PixelGenerationTokenizer(resolve("tiny-z-image")).rules.default_size == 1024


def test_a_wrong_harness_default_is_an_input_mismatch(tmp_path, monkeypatch):
    """Negative control: a harness default that differs from the pipeline's (guidance 3.0 vs
    FluxPipeline's 3.5) must show up as an input mismatch naming the setting, even though the
    reference now makes its own choice (before, it was handed the harness's value)."""
    from harness.parity.pixel import compare_inputs, verdict_of
    from models.flux1.rules import Flux1Rules
    from tests import flux_fixtures as fx

    monkeypatch.setattr(Flux1Rules, "default_guidance_scale", 3.0)
    req = fx.request(seed=0, guidance_scale=None)
    ctx = fx.tokenizer().new_context(req)
    ours = fx.denoiser()(ctx, record_steps=True)
    ref = fx.reference()(req, ctx)
    from harness.parity.pixel import compare

    inputs = compare_inputs(ctx, ref)
    verdict, note = verdict_of(inputs, compare(ours, ref))
    assert verdict == "input mismatch" and note.startswith("guidance_scale: harness 3.0")
    assert "guidance_scale" not in ref.given


def test_different_prompt_ids_are_an_input_mismatch():
    """Negative controls on what the text encoders were fed: one changed id, a missing negative
    prompt, different VL-encoder pixels: each is an input mismatch naming where."""
    from harness.parity.pixel import compare_inputs
    from tests import qwen_fixtures as qf

    req = qf.request(input_images=[qf.portrait()], negative_prompt="blurry", true_cfg_scale=4.0,
                     num_inference_steps=2)
    ctx = qf.tokenizer(qf.EDIT).new_context(req)
    ref = qf.reference_result(qf.EDIT, req, ctx)
    runner = qf.reference(qf.EDIT)
    ours = runner.harness_encoder_inputs(ctx)
    good = compare_inputs(ctx, ref, ours)
    assert good["equal"], good["first_difference"]
    assert len(ref.encoder_inputs["text_encoder"]) == 2  # prompt and negative prompt

    ids = ours["text_encoder"][0]["input_ids"].copy()
    ids[70] += 1
    bad = dict(ours, text_encoder=[{**ours["text_encoder"][0], "input_ids": ids},
                                   ours["text_encoder"][1]])
    out = compare_inputs(ctx, ref, bad)
    assert not out["equal"] and "first difference at position 70" in out["first_difference"]
    no_negative = dict(ours, text_encoder=ours["text_encoder"][:1])
    assert "call 1 (negative prompt)" in compare_inputs(ctx, ref, no_negative)["first_difference"]
    pixels = ours["text_encoder"][0]["pixel_values"] + np.float32(1e-3)
    shifted = dict(ours, text_encoder=[{**c, "pixel_values": pixels} for c in ours["text_encoder"]])
    note = compare_inputs(ctx, ref, shifted)["first_difference"]
    assert "pixel_values" in note and "max |Δ| 0.001" in note


# --------------------------------------------------------------------------------------------------
# finding 3: where the harness goes beyond the reference, the report says so


def _zimage_img2img(tmp_path, *size: str):
    from PIL import Image

    src = tmp_path / "in.png"
    Image.fromarray(input_image(80, 120, 3)).save(src)
    out = tmp_path / f"run{'-'.join(size)}"
    proc = run_cli("--model", "tiny-z-image", "--prompt", "a red fox", "--image", str(src),
                   "--steps", "3", "--guidance-scale", "0", "--seed", "1", *size,
                   "--output-dir", str(out), "--parity")
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads((out / "parity.json").read_text())


def test_zimage_img2img_of_another_size_is_a_stated_extension(tmp_path):
    proc, parity = _zimage_img2img(tmp_path, "--height", "64", "--width", "64")
    inputs = parity["input_comparison"]
    assert parity["verdict"] == "bitwise (extension)", parity["verdict_note"]
    assert "ZImageImg2ImgPipeline refuses an input of another size" in inputs["extension"]
    assert "extension" in parity["verdict_note"] and "extension" in proc.stdout
    assert inputs["reference_given"]["image"] == "<PIL 64x64>"  # the harness's resized copy


def test_zimage_img2img_at_the_images_own_size_gets_the_raw_image(tmp_path):
    proc, parity = _zimage_img2img(tmp_path)
    inputs = parity["input_comparison"]
    assert parity["verdict"] == "bitwise" and inputs["extension"] is None
    assert inputs["reference_given"]["image"] == "<PIL 120x80>"  # as the user gave it
    assert "height" not in inputs["reference_given"]
    rows = {r["setting"]: r for r in inputs["settings"]}
    assert (rows["height"]["reference"], rows["width"]["reference"]) == (80, 112)
    assert rows["strength"]["reference"] == 0.6 and rows["timesteps"]["equal"]


# --------------------------------------------------------------------------------------------------
# refused before loading, in one line, where a traceback came


def test_flux2_text_layers_beyond_the_encoder_are_refused(tmp_path):
    from models.flux2 import rules

    folder = _copy("tiny-flux2-klein", tmp_path / "klein")
    _edit_json(folder / "text_encoder" / "config.json", num_hidden_layers=12)
    with pytest.raises(ValueError, match=r"layers 9, 18, 27, but the text encoder .* has 12 "
                                         r"layers \(hidden states 0\.\.12\)"):
        rules(folder)
    out = tmp_path / "run"
    proc = run_cli("--model", str(folder), "--prompt", "a cat", "--output-dir", str(out))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "has 12 layers" in proc.stderr
    assert left_behind(out) == []


def test_zimage_size_beyond_the_rope_tables_is_refused(tmp_path):
    from harness.tokenizers import PixelGenerationRequest, PixelGenerationTokenizer
    from models.registry import resolve

    folder = _copy("tiny-z-image", tmp_path / "zi")
    _edit_json(folder / "transformer" / "config.json", axes_lens=[1536, 8, 16])
    tok = PixelGenerationTokenizer(resolve(str(folder)))
    ok = tok.new_context(PixelGenerationRequest(prompt="a cat", height=128, width=256, seed=0))
    assert (ok.height, ok.width) == (128, 256)  # 8 x 16 rope rows/cols: the limit itself
    with pytest.raises(RequestError, match=r"height 144 needs 9 rope positions on axis 1, but "
                                           r"the transformer's axes_lens allows 8 \(at most "
                                           r"128 pixels\)"):
        tok.new_context(PixelGenerationRequest(prompt="a cat", height=144, width=64, seed=0))
    out = tmp_path / "run"
    proc = run_cli("--model", str(folder), "--prompt", "a cat", "--height", "512", "--width",
                   "64", "--output-dir", str(out))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "axes_lens allows 8" in proc.stderr and left_behind(out) == []


def test_reference_gets_only_what_the_user_gave():
    """The reference's arguments are the request's, not the harness's resolution."""
    from tests import flux_fixtures as fx

    req = fx.request(seed=0, num_inference_steps=2, height=None, width=None, guidance_scale=None)
    kwargs = fx.reference().call_kwargs(req, fx.tokenizer().new_context(req))
    assert set(kwargs) == {"prompt", "num_images_per_prompt", "num_inference_steps"}
    assert np.isclose(fx.tokenizer().rules.default_guidance(False), 3.5)


# --------------------------------------------------------------------------------------------------
# exit codes: CI can gate on --parity


def test_parity_exit_code_is_3_unless_bitwise(tmp_path, monkeypatch, capsys):
    """In-process run of the command: a harness default that differs from FluxPipeline's makes
    an input mismatch, and --parity then exits 3 (with or without --tolerance); the last stdout
    line is the JSON summary either way."""
    from harness.generate import main
    from models.flux1.rules import Flux1Rules

    args = ["--prompt", "a fox", "--height", "32", "--width", "32", "--steps", "2", "--seed", "0",
            "--quiet", "--parity"]
    assert main(args + ["--output-dir", str(tmp_path / "ok")]) == 0
    ok = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ok == {**ok, "status": "ok", "exit_code": 0, "parity": "bitwise"}

    monkeypatch.setattr(Flux1Rules, "default_guidance_scale", 3.0)
    for extra in ([], ["--tolerance", "0.5"]):
        out = tmp_path / f"bad{len(extra)}"
        assert main(args + ["--output-dir", str(out)] + extra) == 3
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["status"] == "parity failed" and summary["parity"] == "input mismatch"
        assert (out / "parity.json").exists()  # the report stays: it says why


@pytest.mark.parametrize("extra, message", [
    (["--parity", "--tolerance", "0"], "--tolerance: must be a number > 0"),
    (["--parity", "--tolerance", "x"], "--tolerance: must be a number > 0"),
    (["--tolerance", "1e-3"], "--tolerance applies to --parity only"),
])
def test_bad_tolerance_exits_2(tmp_path, extra, message):
    out = tmp_path / "run"
    proc = run_cli("--prompt", "a fox", "--output-dir", str(out), *extra)
    assert proc.returncode == 2 and message in proc.stderr and left_behind(out) == []
