"""Workstation modes on the CPU: offload / quantization / regional compile through the libraries'
own mechanisms keep parity with the reference on the same modules; what the machine cannot run
is refused before loading; memory figures per phase."""
from __future__ import annotations

import json

import numpy as np
import pytest

from harness.errors import RequestError
from harness.memory import MemoryMeter
from harness.workstation import Modes, check_modes
from tests.test_cli_image import left_behind, run_cli


@pytest.mark.parametrize("modes,device,modality,message", [
    (Modes(quantize="fp8wo"), "cpu", "image", "--quantize fp8wo needs a CUDA GPU"),
    (Modes(quantize="nf4"), "cpu", "image", "--quantize nf4 needs"),
    (Modes(quantize="int4"), "cpu", "image", "--quantize must be one of int8wo, fp8wo, nf4"),
    (Modes(offload="disk"), "cpu", "image", "--offload must be one of none, model, group"),
    (Modes(offload="sequential"), "cpu", "image", "on the CPU there is nothing to offload to"),
    (Modes(offload="model"), "cpu", "text", "a VLM is one component"),
    (Modes(compile=True), "cpu", "text", "is for image models"),
    (Modes(quantize="nf4"), "cpu", "text", "for a VLM use int8wo or fp8wo"),
])
def test_modes_the_machine_cannot_run_are_refused(modes, device, modality, message):
    with pytest.raises(RequestError, match=message.replace("(", r"\(")):
        check_modes(modes, device, "float32", modality)


def test_a_refused_mode_exits_2_before_loading(tmp_path):
    out = tmp_path / "o"
    proc = run_cli("--prompt", "a fox", "--quantize", "fp8wo", "--output-dir", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --quantize fp8wo needs a CUDA GPU")
    assert left_behind(out) == [] and left_behind(tmp_path) == []


def test_memory_meter_resets_the_host_peak_per_phase():
    meter = MemoryMeter("cpu")
    with meter.phase("big"):
        block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
        block[::512] = 2.0
        del block
    with meter.phase("small"):
        np.ones(1024)
    big, small = meter.phases["big"]["peak_rss_mib"], meter.phases["small"]["peak_rss_mib"]
    assert big > 0 and small > 0
    if meter.rss_peak_reset:  # Linux >= 4.0: the second phase does not inherit the first's peak
        assert big - small > 32
    summary = meter.summary()
    assert summary["peak_rss_mib"] == max(big, small)
    assert meter.line().startswith("memory: peak host RSS")


@pytest.mark.parametrize("flags", [["--offload", "group", "--quantize", "int8wo"],
                                   ["--offload", "model"]])
def test_image_parity_holds_under_offload_and_quantization(flags, tmp_path):
    """The reference pipeline is built over the same (hooked, quantized) modules: on CPU fp32 the
    run stays bitwise; result.json and the report carry the modes and per-phase memory."""
    out = tmp_path / "o"
    proc = run_cli("--prompt", "a fox", "--height", "64", "--width", "64", "--steps", "3",
                   "--seed", "4", "--parity", *flags, "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["parity"]["verdict"] == "bitwise"
    assert result["modes"]["offload"] == flags[1]
    assert result["modes"]["quantize"] == (flags[3] if len(flags) > 2 else None)
    memory = result["memory"]
    assert set(memory["phases"]) == {"text_encoders", "denoise", "decode"}
    assert memory["load"]["peak_rss_mib"] > 0 and memory["peak_rss_mib"] > 0
    assert "memory: peak host RSS" in proc.stdout
    assert "torchao" not in proc.stderr and "bfloat16 is supported" not in proc.stderr
    if "int8wo" in flags:  # diffusers' own note on int8 with float32 is kept, not printed
        assert any("bfloat16" in line for line in result["load_log"]), result["load_log"]
    assert "Memory" in (out / "report.html").read_text()


def test_int8_weight_only_really_quantizes_the_transformer():
    """The transformer's linear weights are torchao tensors after loading with --quantize int8wo;
    the text encoders and the VAE keep their float weights."""
    import os

    import torch

    from models.flux1 import FluxDenoiser, rules, tiny_path

    folder = tiny_path("tiny-flux1", os.environ["HARNESS_MODEL_CACHE"])
    den = FluxDenoiser.from_folder(folder, rules(folder), progress=False,
                                   modes=Modes(quantize="int8wo"))
    weight = den.c["transformer"].transformer_blocks[0].attn.to_q.weight
    assert "torchao" in type(weight).__module__
    for name in ("text_encoder", "text_encoder_2", "vae"):
        assert all(type(p) is torch.nn.Parameter for p in den.c[name].parameters()), name


def test_vlm_parity_holds_under_group_offload_and_int8(tmp_path):
    from PIL import Image

    from tests.flux_fixtures import input_image

    src = tmp_path / "in.png"
    Image.fromarray(input_image(30, 40)).save(src)
    out = tmp_path / "v"
    proc = run_cli("--model", "tiny-llava", "--prompt", "Describe.", "--image", str(src),
                   "--max-new-tokens", "4", "--chunk-size", "5", "--parity", "--offload", "group",
                   "--quantize", "int8wo", "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["parity"]["verdict"] == "pass" and result["parity"]["tokens_equal"]
    assert result["modes"] == {"offload": "group", "quantize": "int8wo", "compile": False}
    assert set(result["memory"]["phases"]) == {"load", "generate"}


def test_regional_compile_is_timed_apart_and_keeps_parity(tmp_path):
    """--compile: the transformer's repeated blocks compiled (inductor on the CPU); the compile
    happens in the warm-up and is reported as compile_s; the reference runs the same compiled
    blocks, so the run stays bitwise with it."""
    out = tmp_path / "c"
    proc = run_cli("--prompt", "a fox", "--height", "32", "--width", "32", "--steps", "2",
                   "--seed", "1", "--compile", "--parity", "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["modes"]["compile"] is True
    assert result["timings"]["compile_s"] == result["timings"]["warmup_s"] > 0
    assert result["parity"]["verdict"] == "bitwise"
    assert "compile in the warm-up" in proc.stdout
