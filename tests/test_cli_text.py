"""``python -m harness.generate`` with VLMs, through a subprocess: results, parity, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "harness.generate", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("pics")
    rs = np.random.RandomState(0)
    paths = []
    for i, shape in enumerate(((40, 52, 3), (36, 30, 3))):
        path = folder / f"p{i}.png"
        Image.fromarray((rs.rand(*shape) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    bad = folder / "not_an_image.png"
    bad.write_text("hello")
    return paths + [str(bad)]


def test_generate_with_parity(pictures, tmp_path):
    out = tmp_path / "run"
    proc = _cli("--model", "tiny-llava", "--prompt", "What is shown?", "--image", pictures[0],
                "--image", pictures[1], "--max-new-tokens", "6", "--chunk-size", "7",
                "--parity", "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["model"]["family"] == "llava" and result["model"]["name"] == "tiny-llava"
    assert len(result["token_ids"]) == 6 and result["final_status"] == "maximum_length"
    assert result["prompt_token_ids"].count(3) == 32  # two images × 16 <image> placeholders
    assert result["text"] in proc.stdout
    for key in ("load", "prefill", "decode", "total", "per_token"):
        assert result["timings"][key] >= 0
    parity = json.loads((out / "parity.json").read_text())
    for key in ("family", "reference", "request", "verdict", "tokens_equal", "max_abs_logit_diff",
                "first_divergent_token", "chunks", "encoder_calls", "timings"):
        assert key in parity
    assert parity["verdict"] == "pass" and parity["max_abs_logit_diff"] <= 1e-4
    assert parity["chunks"]["inside_image"] > 0 and parity["encoder_calls"]["harness"] == 2
    # honest reports: where and how it ran, on both files
    for doc in (result, parity):
        assert doc["device"] == "cpu" and doc["dtype"] == "float32" and doc["torch_threads"] >= 1
    assert result["resolved"]["chunk_size"] == 7 and result["resolved"]["greedy"]
    assert parity["sampling_note"] is None
    assert (out / "parity.md").read_text().startswith("# VLM parity")


def test_local_folder_and_sampling(pictures, tmp_path):
    from models.registry import resolve

    folder = resolve("tiny-qwen2-vl").path
    out = tmp_path / "q"
    args = ("--model", str(folder), "--prompt", "hi", "--image", pictures[0],
            "--max-new-tokens", "4", "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9",
            "--seed", "5", "--quiet", "--output-dir", str(out))
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["model"]["family"] == "qwen2_vl" and result["request"]["seed"] == 5
    again = tmp_path / "q2"
    proc2 = _cli(*args[:-1], str(again))
    assert proc2.returncode == 0, proc2.stderr
    assert json.loads((again / "result.json").read_text())["token_ids"] == result["token_ids"]
    # --parity with sampling flags compares the sampled run itself with generate(do_sample=True)
    checked = tmp_path / "q3"
    proc3 = _cli(*args[:-1], str(checked), "--parity")
    assert proc3.returncode == 0, proc3.stderr
    parity = json.loads((checked / "parity.json").read_text())
    assert parity["sampling_note"] is None and parity["sampling"]["mode"] == "sampled"
    assert parity["harness"]["tokens"] == result["token_ids"] and parity["tokens_equal"]


@pytest.mark.parametrize("extra, message", [
    (("--image", "/nonexistent/x.png"), "no such file"),
    (("--image", "BAD"), "cannot read image"),
    (("--chunk-size", "0"), "--chunk-size"),
    (("--max-new-tokens", "0"), "--max-new-tokens"),
    (("--temperature", "-1"), "--temperature"),
    (("--top-p", "1.5"), "--top-p"),
    (("--steps", "4"), "image-generation flag"),
    (("--prompt", "<image>"), "placeholder"),
])
def test_bad_input_exits_2_and_writes_nothing(pictures, tmp_path, extra, message):
    extra = tuple(pictures[2] if e == "BAD" else e for e in extra)
    out = tmp_path / "never"
    base = ["--model", "tiny-llava", "--output-dir", str(out)]
    if "--prompt" not in extra:
        base += ["--prompt", "hello"]
    proc = _cli(*base, *extra)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no staging folder left
