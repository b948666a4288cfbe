"""``python -m harness.generate`` for image models, through a subprocess: files, reports, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.flux_fixtures import input_image

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")  # one torch thread: steady timings on a shared box
    return subprocess.run([sys.executable, "-m", "harness.generate", *args], cwd=cwd or REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def left_behind(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_help_does_not_import_torch():
    code = ("import sys, runpy\n"
            "sys.argv = ['harness.generate', '--help']\n"
            "try:\n    runpy.run_module('harness.generate', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--prompt", "--negative-prompt", "--true-cfg-scale", "--num-images", "--image",
                 "--strength", "--format", "--parity", "--max-new-tokens", "--chunk-size",
                 "--top-p", "--model-cache", "--quiet", "--tolerance", "--list-models",
                 "--version"):
        assert flag in proc.stdout
    # every default is stated, the exit codes and the built-in models are listed
    for text in ("default 1)", "(default 0.6)", "FLUX.1 28", "float32 (default)",
                 "exit codes: 0", "3 with", "tiny-z-image",
                 "replica-gemma-3-4b-it"):
        assert text in proc.stdout, text


def test_version_and_list_models_need_no_prompt():
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("harness 0.")
    assert "torch" in version.stdout and "diffusers" in version.stdout
    models = run_cli("--list-models")
    assert models.returncode == 0
    rows = {line.split()[0]: line for line in models.stdout.splitlines()[1:]}
    assert "tiny-flux1" in rows["flux1"] and "replica-pixtral-12b" in rows["pixtral"]
    assert "text" in rows["llava"] and "image" in rows["z_image"]
    assert "tiny-llava-next" in rows["llava_onevision"]
    assert "replica-smolvlm2-256m-video-instruct" in rows["idefics3"]
    assert "replica-internvl3-1b-hf" in rows["internvl"] and "text" in rows["internvl"]
    assert "tiny-qwen2.5-vl" in rows["qwen2_5_vl"]
    assert "replica-qwen2.5-vl-3b-instruct" in rows["qwen2_5_vl"]
    assert "tiny-qwen3-vl" in rows["qwen3_vl"]
    assert "replica-qwen3-vl-4b-instruct" in rows["qwen3_vl"]
    missing = run_cli()
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: the following arguments are required: --prompt"


def test_txt2img_with_parity(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("--prompt", "a red fox in the snow", "--height", "64", "--width", "96",
                   "--steps", "4", "--negative-prompt", "blurry", "--true-cfg-scale", "2.5",
                   "--num-images", "2", "--format", "jpeg", "--output-dir", str(out), "--parity")
    assert proc.returncode == 0, proc.stderr
    files = left_behind(out)
    assert files == sorted(["image_0.jpeg", "image_1.jpeg", "reference_0.png", "reference_1.png",
                            "parity.json", "parity.md", "report.html", "result.json"])
    from PIL import Image

    for name in ("image_0.jpeg", "image_1.jpeg", "reference_0.png"):
        with Image.open(out / name) as im:
            assert im.size == (96, 64)
    result = json.loads((out / "result.json").read_text())
    for key in ("request", "model", "seed", "files", "timings", "device", "dtype",
                "torch_threads", "versions", "schedule", "parity"):
        assert key in result, key
    assert result["model"]["name"] == "tiny-flux1" and result["model"]["family"] == "flux1"
    assert result["request"]["negative_prompt"] == "blurry" and result["resolved"]["true_cfg"]
    assert isinstance(result["seed"], int) and f"seed {result['seed']}" in proc.stdout
    for key in ("load_s", "warmup_s", "steps_s", "per_step_s", "decode_s", "total_s"):
        assert key in result["timings"], key
    assert len(result["timings"]["steps_s"]) == 4
    parity = json.loads((out / "parity.json").read_text())
    for key in ("family", "reference", "request", "verdict", "final_latents_max_abs_diff",
                "image_max_abs_diff", "psnr_db", "steps", "first_divergent_step", "timings_s",
                "torch_threads"):
        assert key in parity, key
    assert parity["verdict"] == "bitwise" and parity["first_divergent_step"] is None
    # the written JPEGs are lossy: compared on the uint8 arrays, and the report says so
    assert parity["output_format"] == "jpeg" and "lossy" in parity["lossy_note"]
    assert len(parity["timings_s"]["reference"]["steps_s"]) == 4
    assert parity["reference"]["pipeline"] == "FluxPipeline"
    assert parity["reference"]["diffusers_version"]
    assert [s["step"] for s in parity["steps"]] == [0, 1, 2, 3]
    assert all(s["latents_max_abs_diff"] == 0 for s in parity["steps"])
    assert {"harness", "reference"} <= set(parity["timings_s"])
    md = (out / "parity.md").read_text()
    assert "bitwise" in md and "reference_1.png" in md and "image_1.jpeg" in md
    assert "mu" in proc.stdout and "wrote" in proc.stdout


def test_img2img_with_parity(tmp_path):
    from PIL import Image

    src = tmp_path / "in.png"
    Image.fromarray(input_image(70, 110)).save(src)
    out = tmp_path / "i2i"
    proc = run_cli("--prompt", "a watercolor painting", "--image", str(src), "--strength", "0.6",
                   "--height", "96", "--width", "128", "--steps", "5", "--seed", "3",
                   "--format", "webp", "--output-dir", str(out), "--parity", "--quiet")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip())  # --quiet: the JSON summary is the only line
    assert summary["output_dir"] == str(out) and summary["status"] == "ok"
    assert summary["parity"] == "bitwise" and "image_0.webp" in summary["files"]
    with Image.open(out / "image_0.webp") as im:
        assert im.size == (128, 96)
    parity = json.loads((out / "parity.json").read_text())
    assert parity["verdict"] == "bitwise"
    assert parity["reference"]["pipeline"] == "FluxImg2ImgPipeline"
    assert len(parity["steps"]) == 3  # int(5 * 0.6) steps kept
    result = json.loads((out / "result.json").read_text())
    assert result["seed"] == 3 and result["resolved"]["img2img"]
    assert result["request"]["input_image"] == str(src)


@pytest.mark.parametrize("args,message", [
    (["--height", "100"], "height must be a multiple of 16"),
    (["--steps", "0"], "--steps must be an integer > 0"),
    (["--format", "gif"], "--format 'gif' is not supported"),
    (["--prompt", ""], "prompt must be a non-empty string"),
    (["--strength", "1.5", "--image", "IMG"], "strength must be in (0, 1]"),
    (["--image", "/no/such/picture.png"], "input image not found"),
    (["--image", "IMG", "--image", "IMG"], "takes at most 1 --image"),
    (["--steps", "four"], "invalid int value"),
    (["--model", "/no/such/model"], "is neither a tiny model"),
])
def test_bad_input_exits_2_with_one_line_and_no_files(args, message, tmp_path):
    from PIL import Image

    img = tmp_path / "img.png"
    Image.fromarray(input_image(32, 32)).save(img)
    args = [str(img) if a == "IMG" else a for a in args]
    out = tmp_path / "never"
    base = [] if "--prompt" in args else ["--prompt", "a cat"]
    proc = run_cli(*base, *args, "--height" if "--height" not in args else "--width", "64",
                   "--output-dir", str(out))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not out.exists()
    assert "num_inference_steps" not in lines[0] and "output_format" not in lines[0]  # flags


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "a-file"
    target.write_text("x")
    proc = run_cli("--prompt", "a cat", "--output-dir", str(target))
    assert proc.returncode == 2 and "is not a folder" in proc.stderr
    assert target.read_text() == "x"


def test_bad_input_keeps_an_existing_output_dir_untouched(tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_cli("--prompt", "a cat", "--width", "30", "--output-dir", str(out))
    assert proc.returncode == 2
    assert left_behind(out) == ["keep.txt"]


# --------------------------------------------------------------------------------------------------
# output folders are written as a set


def test_a_run_replaces_a_previous_run_only_with_overwrite(tmp_path):
    out = tmp_path / "run"
    base = ("--prompt", "a fox", "--height", "32", "--width", "32", "--steps", "2", "--seed", "1",
            "--output-dir", str(out), "--quiet")
    first = run_cli(*base, "--num-images", "2")
    assert first.returncode == 0, first.stderr
    assert left_behind(out) == ["image_0.png", "image_1.png", "result.json"]
    again = run_cli(*base)
    assert again.returncode == 2 and "is not empty; pass --overwrite" in again.stderr
    assert left_behind(out) == ["image_0.png", "image_1.png", "result.json"]
    replaced = run_cli(*base, "--overwrite", "--format", "jpeg")
    assert replaced.returncode == 0, replaced.stderr
    # the new set as a whole: no stale image_1.png from the first run
    assert left_behind(out) == ["image_0.jpeg", "result.json"]
    assert json.loads((out / "result.json").read_text())["files"] == ["image_0.jpeg"]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no staging left


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    proc = run_cli("--prompt", "a fox", "--output-dir", str(out), "--overwrite")
    assert proc.returncode == 2 and "holds no result.json" in proc.stderr
    assert left_behind(out) == ["notes.txt"]


def test_an_interrupt_leaves_the_previous_set_whole(tmp_path, monkeypatch):
    """KeyboardInterrupt while the new run writes its last file: the old set stays as it was and
    the half-written new one is gone."""
    import harness.parity.report as report
    from harness.generate import main

    out = tmp_path / "run"
    args = ["--prompt", "a fox", "--height", "32", "--width", "32", "--steps", "2", "--seed",
            "1", "--output-dir", str(out), "--quiet"]
    assert main(args + ["--num-images", "2"]) == 0
    before = {p: (out / p).read_bytes() for p in left_behind(out)}

    def interrupted(path, payload):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "atomic_write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(args + ["--overwrite", "--seed", "2"])
    assert {p: (out / p).read_bytes() for p in left_behind(out)} == before
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []
