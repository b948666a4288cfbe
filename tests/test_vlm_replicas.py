"""Replicas of real checkpoints (their config.json, processor settings, chat templates,
generation configs and special-token ids; random weights, 2 layers, small widths): the folder
layout, then end-to-end parity from the raw request — the reference's inputs built by the folder's
own processor and chat template — at several chunk sizes including 1 and the whole prompt."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.tokenizers import TextAndVisionTokenizer, TextGenerationRequest
from tests.vlm_fixtures import REPLICAS, family, odd_images, parity

ROOT = Path(__file__).resolve().parents[1]

#: Real ids of the image placeholder token (the config's and the tokenizer's).
IMAGE_TOKEN = {"replica-llava-1.5-7b": ("<image>", 32000),
               "replica-qwen2-vl-2b-instruct": ("<|image_pad|>", 151655),
               "replica-qwen2-vl-7b-instruct": ("<|image_pad|>", 151655),
               "replica-mistral-small-3.1": ("[IMG]", 10),
               "replica-pixtral-12b": ("[IMG]", 10),
               "replica-gemma-3-4b-it": ("<image_soft_token>", 262144)}
FAMILY = {"replica-llava-1.5-7b": ("llava", "LlavaForConditionalGeneration"),
          "replica-qwen2-vl-2b-instruct": ("qwen2_vl", "Qwen2VLForConditionalGeneration"),
          "replica-qwen2-vl-7b-instruct": ("qwen2_vl", "Qwen2VLForConditionalGeneration"),
          "replica-mistral-small-3.1": ("pixtral", "Mistral3ForConditionalGeneration"),
          "replica-pixtral-12b": ("pixtral", "LlavaForConditionalGeneration"),
          "replica-gemma-3-4b-it": ("gemma3", "Gemma3ForConditionalGeneration")}


def _req(n_images=2, **kw):
    kw.setdefault("max_new_tokens", 3)
    kw.setdefault("ignore_eos", True)
    return TextGenerationRequest(prompt="Describe the pictures, please.",
                                 images=odd_images(n_images), **kw)


@pytest.mark.parametrize("name", REPLICAS)
def test_replica_folder_is_the_real_layout(name):
    from models.registry import resolve
    from models.vlm_common import deep_update

    resolved = resolve(name)
    spec = getattr(resolved.family, "replicas").REPLICAS[name]
    folder = resolved.path
    assert json.loads((folder / "config.json").read_text()) == \
        deep_update(spec["config"], spec["shrink"])
    assert json.loads((folder / "generation_config.json").read_text()) == \
        spec["generation_config"]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    fam = family(name)
    assert (fam.family, type(fam.model).__name__) == FAMILY[name]
    token, real_id = IMAGE_TOKEN[name]
    assert fam.image_token_id == real_id == fam.tokenizer.convert_tokens_to_ids(token)
    assert fam.vocab_size > real_id
    assert fam.chat_template == spec["chat_template"]


#: (replica, images, chunk sizes): every replica at the whole prompt, 1 and a size that cuts
#: images; LLaVA's chunk-1 run takes one image (a 1191-token prompt with two).
RUNS = [("replica-llava-1.5-7b", 2, (None, 7)), ("replica-llava-1.5-7b", 1, (1,)),
        ("replica-qwen2-vl-2b-instruct", 2, (None, 1, 5)),
        ("replica-qwen2-vl-7b-instruct", 2, (None, 1)),
        ("replica-mistral-small-3.1", 2, (None, 1, 5)),
        ("replica-pixtral-12b", 2, (None, 1, 5)),
        ("replica-gemma-3-4b-it", 2, (None, 1, 64))]


@pytest.mark.parametrize("name, n_images, chunks", RUNS,
                         ids=[f"{r[0][8:]}-{r[1]}img" for r in RUNS])
def test_replica_parity_from_the_raw_request(name, n_images, chunks):
    fam = family(name)
    for chunk in chunks:
        ctx, res, report = parity(fam, _req(n_images), chunk)
        assert report["verdict"] == "pass", (chunk, report["verdict_note"],
                                             report["tolerance"])
        ids = report["input_comparison"]["prompt_ids"]
        assert ids["equal"] and ids["harness_length"] == ids["processor_length"]
        assert all(e["max_abs_diff"] == 0.0 for e in report["input_comparison"]["pixel_values"])
        assert res.encoder_calls == len(ctx.images) == n_images
        tol = report["tolerance"]
        assert tol["measured"] <= tol["bound"]
        if fam.bidirectional_images:
            assert res.chunks_inside_image == 0


def test_qwen2_vl_prompt_uses_the_folders_template():
    """The harness renders through the folder's chat template: its default system turn is in the
    prompt, and the prompt equals the processor's."""
    fam = family("replica-qwen2-vl-2b-instruct")
    ctx = TextAndVisionTokenizer(fam).new_context(_req())
    text = fam.tokenizer.decode(ctx.tokens.prompt[:ctx.images[0].start_idx])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                           "<|im_start|>user\n<|vision_start|>")
    assert fam.tokenizer.decode(ctx.tokens.prompt[-8:]).endswith("<|im_start|>assistant\n")


def test_mistral_small_layout_and_system_prompt():
    """Mistral-Small-3.1 (vision patch 14 in preprocessor_config, merge 2): a 37×23 image is
    56×28 pixels, one row of two [IMG]; the template's default system prompt comes first."""
    fam = family("replica-mistral-small-3.1")
    ctx = TextAndVisionTokenizer(fam).new_context(_req())
    ids = ctx.tokens.prompt.tolist()
    assert ids[:2] == [1, 17]  # <s> [SYSTEM_PROMPT]
    first = ctx.images[0]
    assert first.pixel_values.shape == (3, 28, 56)
    assert ids[first.start_idx:first.end_idx + 1] == [10, 10, 13]  # [IMG] [IMG] [IMG_END]
    second = ctx.images[1]  # 61×45 → 84×56: two rows of three
    assert second.pixel_values.shape == (3, 56, 84)
    assert ids[second.start_idx:second.end_idx + 1] == [10, 10, 10, 12, 10, 10, 10, 13]


@pytest.mark.parametrize("name", ["replica-qwen2-vl-2b-instruct", "replica-mistral-small-3.1",
                                  "replica-gemma-3-4b-it", "replica-llava-1.5-7b"])
def test_chat_messages_with_system_and_history(name):
    """A system turn, an answered turn with an image and a new question with an image: the
    harness's ids and pixels equal the processor's (inputs only)."""
    from harness.parity.vlm import compare_inputs, reference_inputs

    imgs = odd_images(2)
    messages = [{"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "What is it?"}]},
                {"role": "assistant", "content": "Noise."},
                {"role": "user", "content": [{"type": "text", "text": "And this one?"},
                                             {"type": "image"}]}]
    if name == "replica-llava-1.5-7b":
        messages = messages[1:]
    fam = family(name)
    req = TextGenerationRequest(prompt=messages, images=imgs, max_new_tokens=2)
    ctx = TextAndVisionTokenizer(fam).new_context(req)
    result = compare_inputs(fam, ctx, reference_inputs(fam, req))
    assert result["equal"], result["first_difference"]
    if name != "replica-llava-1.5-7b":
        assert "Answer in one word." in fam.tokenizer.decode(ctx.tokens.prompt)


def test_cli_parity_on_a_replica(tmp_path):
    rs = np.random.RandomState(1)
    from PIL import Image

    paths = []
    for i, shape in enumerate(((23, 37, 3), (45, 61, 3))):
        path = tmp_path / f"p{i}.png"
        Image.fromarray((rs.rand(*shape) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "harness.generate", "--model", "replica-qwen2-vl-2b-instruct",
         "--prompt", "What is shown?", "--image", paths[0], "--image", paths[1],
         "--max-new-tokens", "3", "--chunk-size", "5", "--parity", "--output-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "parity.json").read_text())
    assert report["verdict"] == "pass" and report["verdict_note"] is None
    assert report["input_comparison"]["harness"]["prompt_length"] == \
        report["input_comparison"]["processor"]["prompt_length"]
    assert {"bound", "floor", "measured"} <= set(report["tolerance"])
    assert "## Inputs" in (out / "parity.md").read_text()
    result = json.loads((out / "result.json").read_text())
    assert result["parity"]["verdict"] == "pass"
