"""LLaVA-OneVision and LLaVA-NeXT (any-resolution tiles, image newline rows): recognition, the tiny
recipes (images change the output), placeholder counts and tiles equal to the folders' own
processors, one vision call per image over all its tiles, chunked prefill against generate() and
generate(prefill_chunk_size=k) from the raw request, negative controls, refusals before any
forward, the replicas of the real checkpoints and the command line."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.errors import RequestError
from harness.tokenizers import TextAndVisionTokenizer, TextGenerationRequest
from tests.vlm_fixtures import family, odd_images, parity, run, variant

ROOT = Path(__file__).resolve().parents[1]
OV, NEXT = "tiny-llava-onevision", "tiny-llava-next"
CHUNKS = (1, 3, 7, 13, None)
TOL = 1e-4


def _req(images, **kw):
    kw.setdefault("max_new_tokens", 4)
    kw.setdefault("ignore_eos", True)
    return TextGenerationRequest(prompt="Describe the pictures, please.", images=images, **kw)


def _clone(cls, name):
    base = family(name)
    return cls(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})


# -- recognition and the recipe -------------------------------------------------------------------
def test_folders_are_recognised_by_model_type(tmp_path):
    from models import llava, llava_onevision
    from models.registry import resolve

    for name, kind in ((OV, "LlavaOnevisionForConditionalGeneration"),
                       (NEXT, "LlavaNextForConditionalGeneration")):
        resolved = resolve(name)
        assert resolved.family is llava_onevision and resolved.modality == "text"
        assert resolve(str(resolved.path)).family is llava_onevision
        assert not llava.matches(resolved.path)
        assert type(family(name).model).__name__ == kind
    assert not llava_onevision.matches(resolve("tiny-llava").path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llava_next_video"}))
    assert not llava_onevision.matches(other)


@pytest.mark.parametrize("name", (OV, NEXT))
def test_images_change_the_output(name):
    """Re-drawn weights: other pixels move the logits by far more than the parity bound."""
    _, a = run(name, _req(odd_images(1, seed=0), max_new_tokens=1))
    _, b = run(name, _req(odd_images(1, seed=1), max_new_tokens=1))
    assert float((a.logits[0] - b.logits[0]).abs().max()) > 0.05


# -- the processor's layout -----------------------------------------------------------------------
def test_onevision_tiles_one_image_and_not_two():
    """One 37×23 image: base tile + 1×2 tiles of its best pinpoint, 16 + 4×6 unpadded + 4
    newline rows; two images in one prompt: one padded square each, 16 + 1 rows (the
    processor's batch_num_images rule)."""
    tok = TextAndVisionTokenizer(family(OV))
    one = tok.new_context(_req(odd_images(1)))
    assert one.images[0].pixel_values.shape == (3, 3, 32, 32)
    assert one.images[0].num_tokens == 16 + 4 * 6 + 4
    two = tok.new_context(_req(odd_images(2)))
    assert [im.pixel_values.shape[0] for im in two.images] == [1, 1]
    assert [im.num_tokens for im in two.images] == [17, 17]


def test_onevision_large_image_is_shrunk_to_anyres_max_9():
    """A 190×190 image takes 6×6 tiles (24×24 features), more than 9 tiles' worth: the model
    shrinks them to 12×12 (+12 newlines), and the harness counts the same rows."""
    img = (np.random.RandomState(3).rand(190, 190, 3) * 255).astype(np.uint8)
    ctx, res, report = parity(family(OV), _req([img], max_new_tokens=2), 13)
    assert ctx.images[0].pixel_values.shape[0] == 37
    assert ctx.images[0].num_tokens == 16 + 12 * 12 + 12
    assert report["verdict"] == "pass", report["verdict_note"]
    assert res.encoder_calls == 1


def test_next_keeps_cls_rule_and_tiles_every_image():
    """LLaVA-NeXT: CLS dropped ("default"), every image tiled even with two in the prompt."""
    ctx = TextAndVisionTokenizer(family(NEXT)).new_context(_req(odd_images(2)))
    assert [im.pixel_values.shape[0] for im in ctx.images] == [3, 5]
    # 37×23 → 1×2 tiles: 16 base + 4×6 unpadded + 4 newlines; 61×45 → 2×2: 16 + 6×8 + 6
    assert [im.num_tokens for im in ctx.images] == [44, 70]


# -- parity: every chunk size × one and two images ------------------------------------------------
@pytest.mark.parametrize("n_images", (1, 2))
@pytest.mark.parametrize("name", (OV, NEXT))
def test_parity_from_the_raw_request(name, n_images):
    """Ids and pixels equal the processor's; tokens identical and |Δlogit| <= 1e-4 against
    generate() and generate(prefill_chunk_size=k); one encoder call per image; small chunks end
    inside images."""
    fam = family(name)
    for chunk in CHUNKS:
        ctx, res, report = parity(fam, _req(odd_images(n_images)), chunk)
        assert report["verdict"] == "pass", (chunk, report["verdict_note"])
        assert report["input_comparison"]["equal"]
        assert all(e["max_abs_diff"] == 0.0 for e in report["input_comparison"]["pixel_values"])
        for ref in ("generate", "generate_chunked"):
            cmp = report["reference"][ref]
            assert cmp["tokens_equal"] and cmp["max_abs_logit_diff"] <= TOL, (chunk, ref, cmp)
        assert res.encoder_calls == len(ctx.images) == n_images
        if chunk is not None and chunk <= 7:
            assert res.chunks_inside_image > 0


def test_one_vision_call_per_image_over_all_its_tiles():
    """The encoder cache: the vision tower runs once per image, on that image's tiles."""
    fam = family(NEXT)
    tower = fam.model.model.vision_tower
    batches = []
    forward = tower.forward
    tower.forward = lambda pixel_values, *a, **k: (batches.append(pixel_values.shape[0])
                                                   or forward(pixel_values, *a, **k))
    try:
        ctx, _ = run(NEXT, _req(odd_images(2)), 3)
    finally:
        del tower.forward
    assert batches == [im.pixel_values.shape[0] for im in ctx.images] == [3, 5]


# -- negative controls ----------------------------------------------------------------------------
def test_positions_restarting_per_chunk_are_detected():
    """Positions that restart at every chunk (a chunked-prefill bug) must break parity."""
    import torch

    from models.llava_onevision import AnyRes

    class Restart(AnyRes):
        def prompt_positions(self, ctx):
            return (torch.arange(ctx.tokens.prompt_length) % 7)[None]

    _, _, report = parity(_clone(Restart, OV), _req(odd_images(2)), 7)
    assert report["verdict"] == "fail"
    assert report["max_abs_logit_diff"] > 1e-2


def test_a_dropped_tile_is_refused_before_any_forward():
    from models.llava_onevision import AnyRes

    class DropTile(AnyRes):
        def prepare(self, image, options=None):
            prep = super().prepare(image, options)
            prep.pieces[0].pixel_values = prep.pieces[0].pixel_values[:-1]
            return prep

    fam = _clone(DropTile, NEXT)
    with pytest.raises(RequestError, match=r"^image 0: the image processor makes 2 tiles of a "
                                           r"23×37 image but the model's image_grid_pinpoints "
                                           r"give 3$"):
        TextAndVisionTokenizer(fam).new_context(_req(odd_images(1)))


def test_tiles_in_the_wrong_order_are_detected():
    """Swapped grid tiles: the report names the pixel difference (input mismatch) and the
    outputs move (the tiles' order reaches the logits)."""
    from models.llava_onevision import AnyRes

    class Swap(AnyRes):
        def prepare(self, image, options=None):
            prep = super().prepare(image, options)
            pv = prep.pieces[0].pixel_values
            prep.pieces[0].pixel_values = np.ascontiguousarray(pv[[0, 2, 1]])
            return prep

    _, res, report = parity(_clone(Swap, NEXT), _req(odd_images(1)), 7)
    assert report["verdict"] == "input mismatch"
    assert report["verdict_note"].startswith("image 0 pixel values differ by max")
    assert report["max_abs_logit_diff"] > 1e-2


def test_tiling_every_image_of_a_multi_image_prompt_is_an_input_mismatch():
    """OneVision without the multi-image rule (each image tiled as if alone): the prompt ids
    differ from the processor's."""
    from models.llava_onevision import AnyRes

    class AlwaysTile(AnyRes):
        def render_prompt(self, messages):
            text = super().render_prompt(messages)
            self._prompt_images = 1
            return text

    _, _, report = parity(_clone(AlwaysTile, OV), _req(odd_images(2)), None)
    assert report["verdict"] == "input mismatch"
    assert report["verdict_note"].startswith("prompt ids differ at position")


# -- refusals before any forward ------------------------------------------------------------------
@pytest.mark.parametrize("name, edits, message", [
    (OV, {"processor": {"num_image_tokens": 9}},
     r"image 0: the model's vision tower gives 44 encoder rows \(a 23×37 image: base tile \+ 2 "
     r"tiles of 4×4 patches, unpadded to 24 features \+ 4 newlines"),
    (OV, {"preprocessor": {"size": {"height": 24, "width": 24}}},
     r"image 0: the image processor makes 24×24-pixel tiles but the vision tower takes 32×32"),
    (NEXT, {"config": {"vision_feature_select_strategy": "full"}},
     r"a 4×4-patch tile gives 17 features \(vision_feature_select_strategy 'full'\)"),
], ids=["ov-num-image-tokens", "ov-tile-size", "next-cls"])
def test_refused_before_any_forward(tmp_path, name, edits, message):
    from harness.pipelines.vlm import VLMPipeline

    fam = variant(name, tmp_path, **edits)
    calls = []
    for module in (fam.model, fam.model.model):
        forward = module.forward
        module.forward = lambda *a, _f=forward, **k: calls.append(1) or _f(*a, **k)
    with pytest.raises(RequestError, match=message) as err:
        VLMPipeline(fam).generate(TextAndVisionTokenizer(fam).new_context(_req(odd_images(1))))
    assert "\n" not in str(err.value) and calls == []


# -- replicas of the real checkpoints -------------------------------------------------------------
REPLICA_IDS = {"replica-llava-onevision-qwen2-0.5b-ov":
               ("LlavaOnevisionForConditionalGeneration", "<image>", 151646),
               "replica-llava-v1.6-mistral-7b":
               ("LlavaNextForConditionalGeneration", "<image>", 32000)}


@pytest.mark.parametrize("name", sorted(REPLICA_IDS))
def test_replica_layout_and_parity(name):
    """The real files (config cut to 2 layers, generation config, sharded weights, the real
    image-token id, the folder's chat template); parity from the raw request on two odd-sized
    images at the whole prompt and chunks of 64 that cut images."""
    from models.llava_onevision.replicas import REPLICAS
    from models.registry import resolve
    from models.vlm_common import deep_update

    resolved = resolve(name)
    spec = REPLICAS[name]
    folder = resolved.path
    assert json.loads((folder / "config.json").read_text()) == deep_update(spec["config"],
                                                                          spec["shrink"])
    assert json.loads((folder / "generation_config.json").read_text()) == \
        spec["generation_config"]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    fam = family(name)
    cls, token, real_id = REPLICA_IDS[name]
    assert type(fam.model).__name__ == cls and fam.family == "llava_onevision"
    assert fam.image_token_id == real_id == fam.tokenizer.convert_tokens_to_ids(token)
    assert fam.chat_template == spec["chat_template"]
    n_images = 2 if "onevision" in name else 1
    for chunk in (None, 64):
        ctx, res, report = parity(fam, _req(odd_images(n_images), max_new_tokens=3), chunk)
        assert report["verdict"] == "pass", (chunk, report["verdict_note"])
        assert report["tokens_equal"] and report["max_abs_logit_diff"] <= TOL
        assert res.encoder_calls == n_images
    assert res.chunks_inside_image > 0


def test_onevision_replica_single_image_counts_like_the_real_model():
    """A 37×23 image on the real geometry (384-pixel tiles, 27×27 features): 729 base rows +
    17×27 unpadded + 17 newlines = 1205 placeholders, equal to the processor's."""
    from harness.parity.vlm import compare_inputs, reference_inputs

    fam = family("replica-llava-onevision-qwen2-0.5b-ov")
    req = _req(odd_images(1))
    ctx = TextAndVisionTokenizer(fam).new_context(req)
    assert ctx.images[0].num_tokens == 1205
    assert compare_inputs(fam, ctx, reference_inputs(fam, req))["equal"]


def test_chat_messages_with_system_and_history():
    from harness.parity.vlm import compare_inputs, reference_inputs

    fam = family("replica-llava-onevision-qwen2-0.5b-ov")
    messages = [{"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
                {"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "What is it?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Noise."}]},
                {"role": "user", "content": [{"type": "text", "text": "And this?"},
                                             {"type": "image"}]}]
    req = TextGenerationRequest(prompt=messages, images=odd_images(2), max_new_tokens=2)
    ctx = TextAndVisionTokenizer(fam).new_context(req)
    assert compare_inputs(fam, ctx, reference_inputs(fam, req))["equal"]
    assert [im.num_tokens for im in ctx.images] == [730, 730]


# -- the command line -----------------------------------------------------------------------------
def test_cli_parity(tmp_path):
    from PIL import Image

    paths = []
    for i, img in enumerate(odd_images(2)):
        paths.append(str(tmp_path / f"p{i}.png"))
        Image.fromarray(img).save(paths[-1])
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "harness.generate", "--model", OV, "--prompt", "What is shown?",
         "--image", paths[0], "--image", paths[1], "--max-new-tokens", "3", "--chunk-size", "7",
         "--parity", "--output-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "parity.json").read_text())
    assert report["verdict"] == "pass" and report["family"] == "llava_onevision"
    assert report["encoder_calls"] == {"harness": 2, "images": 2}
    assert report["chunks"]["inside_image"] > 0
    result = json.loads((out / "result.json").read_text())
    assert result["model"]["family"] == "llava_onevision"
