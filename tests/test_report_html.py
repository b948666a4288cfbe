"""report.html as a person sees it: rendered in headless Chromium (tests/browser.py), every image
and plot loaded, nothing fetched from the network; plus the console and tiny-default rules of the
same issue (a quiet run of every kind, tiny models' request defaults)."""
from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

from harness.parity.html import image_report_html, vlm_report_html
from tests.browser import check_page
from tests.flux_fixtures import input_image
from tests.test_cli_image import run_cli

#: What a library (not the harness) prints when it warns.
LIBRARY_NOISE = re.compile(r"\[transformers\]|warn|deprecat|FutureWarning|torchvision",
                           re.IGNORECASE)


def harness_lines(stderr: str) -> list[str]:
    """stderr without the harness's own progress bars."""
    return [ln for ln in re.split(r"[\r\n]+", stderr) if ln.strip() and "step/s" not in ln
            and not ln.startswith("denoise:")]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """One FLUX.1 img2img run with the first-block cache, written as lossy WebP, with --parity."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("report")
    src = tmp / "in.png"
    Image.fromarray(input_image(48, 80)).save(src)
    out = tmp / "run"
    proc = run_cli("--prompt", "a fox", "--image", str(src), "--height", "64", "--width", "64",
                   "--steps", "4", "--strength", "1.0", "--seed", "5", "--format", "webp",
                   "--residual-threshold", "0.05", "--parity", "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_image_report_renders_in_chromium(image_run):
    out, _ = image_run
    page = check_page(out / "report.html")
    assert page["network_requests"] == [] and page["console_errors"] == []
    # the input image, both outputs: every one decoded with a size
    assert page["images"] == 3 and page["images_loaded"], page["broken_images"]
    # |diff| heatmap, per-step latents, per-step timings, first-block cache timeline
    assert page["svg_count"] >= 4 and page["empty_svgs"] == 0
    text = page["text"]
    assert page["title"].startswith("Image parity: flux1")
    for needle in ("bitwise", "lossy", "WEBP", "Per-step latents", "Resolved settings",
                   "First-block cache", "FluxImg2ImgPipeline", "Environment", "torch_threads"):
        assert needle in text, needle
    html = (out / "report.html").read_text()  # no reference to fetch, even one Chromium skipped
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:|//)""", html)


def test_image_parity_json_is_the_machine_readable_side(image_run):
    out, proc = image_run
    parity = json.loads((out / "parity.json").read_text())
    assert parity["output_format"] == "webp" and "uint8 arrays" in parity["lossy_note"]
    assert len(parity["timings_s"]["reference"]["steps_s"]) == len(parity["steps"]) == 4
    assert parity["reference"]["log"] == []
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "report.html" in summary["files"]


def test_image_report_shows_a_divergence(image_run):
    """A report of differing runs: the heatmap is amplified and says how many pixels differ; the
    per-step curve marks the first divergent step (rendered, not just written)."""
    out, _ = image_run
    report = json.loads((out / "parity.json").read_text())
    report = copy.deepcopy(report)
    for i, step in enumerate(report["steps"]):
        d = 0.0 if i < 2 else 10.0 ** (i - 6)
        step.update(latents_max_abs_diff=d, latents_mean_abs_diff=d / 3, bitwise=d == 0)
    report.update(verdict="mismatch", first_divergent_step=2, images_bitwise=False)
    ours = np.zeros((1, 16, 16, 3), np.uint8)
    ref = ours.copy()
    ref[0, 3, 4] = (0, 7, 2)
    html = image_report_html(report, ours, ref, files=["image_0.png"])
    assert "first divergent step 2" in html
    assert "|Δ| max 7, 1 px differ" in html and "amplified" in html
    assert 'class="badge bad"' in html
    path = out.parent / "mismatch.html"
    path.write_text(html)
    page = check_page(path)
    assert page["images_loaded"] and page["network_requests"] == []


def test_vlm_report_renders_in_chromium(tmp_path):
    from PIL import Image

    src = tmp_path / "cat.png"
    Image.fromarray(input_image(40, 56)).save(src)
    out = tmp_path / "vlm"
    proc = run_cli("--model", "tiny-llava", "--prompt", "Describe the image.", "--image", str(src),
                   "--chunk-size", "9", "--max-new-tokens", "5", "--parity", "--output-dir",
                   str(out))
    assert proc.returncode == 0, proc.stderr
    assert not [ln for ln in harness_lines(proc.stderr) if LIBRARY_NOISE.search(ln)], proc.stderr
    page = check_page(out / "report.html")
    assert page["network_requests"] == [] and page["console_errors"] == []
    assert page["images"] == 1 and page["images_loaded"]  # the input image as given
    assert page["svg_count"] >= 2  # the |Δlogit| curve, the chunk plan against the images
    text = page["text"]
    for needle in ("VLM parity: llava", "pass", "Prompt (special tokens visible)", "<image>",
                   "Generated text", "harness top-5", "reference top-5", "Prefill chunks",
                   "prompt ids"):
        assert needle in text, needle
    report = json.loads((out / "parity.json").read_text())
    assert len(report["per_token"]) == 5 and report["image_ranges"]
    assert "report.html" in json.loads(proc.stdout.strip().splitlines()[-1])["files"]


def test_vlm_report_renders_without_optional_sections():
    """A minimal report (no per-token data, no chunks) still renders every section it has."""
    report = {"family": "llava", "verdict": "fail", "verdict_note": "max |Δlogit| 1 exceeds",
              "output_verdict": "fail", "tokens_equal": False, "max_abs_logit_diff": 1.0,
              "first_divergent_token": 0, "reference": {"generate": {
                  "per_step_max_abs_logit_diff": [1.0], "tokens_equal": False}}}
    html = vlm_report_html(report)
    assert 'class="badge bad"' in html and "first divergent token 0" in html


def test_a_flux1_parity_run_prints_no_library_warning(image_run):
    """The FLUX.1 run above (img2img, first-block cache, WebP): no torchvision fallback or other
    library warning on the console."""
    _, proc = image_run
    noisy = [ln for ln in harness_lines(proc.stderr) if LIBRARY_NOISE.search(ln)]
    assert not noisy, noisy


def test_a_qwen_image_parity_run_prints_no_library_warning(tmp_path):
    """diffusers' own note from the reference pipeline (QwenImagePipeline on its default
    true_cfg_scale 4.0 without a negative prompt) stays off the console and is kept in
    parity.json instead."""
    proc = run_cli("--model", "tiny-qwen-image", "--prompt", "a fox", "--height", "64", "--width",
                   "64", "--steps", "2", "--seed", "1", "--parity", "--output-dir",
                   str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    noisy = [ln for ln in harness_lines(proc.stderr) if LIBRARY_NOISE.search(ln)]
    assert not noisy, noisy
    log = json.loads((tmp_path / "o" / "parity.json").read_text())["reference"]["log"]
    assert any("true_cfg_scale" in entry for entry in log), log


def test_tiny_models_get_tiny_defaults_and_say_so(tmp_path):
    """A tiny model's default request is small (filled in as if typed, so the reference gets it
    too); a flag the user gives wins; the report and result.json record what was filled in."""
    proc = run_cli("--model", "tiny-z-image", "--prompt", "a fox", "--seed", "2", "--parity",
                   "--output-dir", str(tmp_path / "t"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "t" / "result.json").read_text())
    assert result["tiny_request_defaults"] == {"height": 256, "width": 256, "steps": 8}
    assert (result["resolved"]["height"], result["resolved"]["num_inference_steps"]) == (256, 8)
    assert "filled in from its recipe" in proc.stdout
    parity = json.loads((tmp_path / "t" / "parity.json").read_text())
    assert parity["verdict"] == "bitwise"
    given = parity["input_comparison"]["reference_given"]
    assert given["height"] == 256 and given["num_inference_steps"] == 8
    assert "Filled in from the tiny model" in (tmp_path / "t" / "report.html").read_text()
    own = run_cli("--model", "tiny-z-image", "--prompt", "a fox", "--steps", "1", "--width",
                  "128", "--output-dir", str(tmp_path / "u"))
    assert own.returncode == 0, own.stderr
    result = json.loads((tmp_path / "u" / "result.json").read_text())
    assert result["tiny_request_defaults"] == {"height": 256}
    assert (result["resolved"]["height"], result["resolved"]["width"],
            result["resolved"]["num_inference_steps"]) == (256, 128, 1)
