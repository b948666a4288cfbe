"""LLaVA-OneVision and LLaVA-NeXT (any-resolution tiles, image newline rows): recognition, the tiny
recipes (images change the output), placeholder counts and tiles equal to the folders' own
processors, one vision call per image over all its tiles, chunked prefill against generate() and
generate(prefill_chunk_size=k) from the raw request, negative controls, refusals before any
forward, the replicas of the real checkpoints and the command line."""
from __future__ import annotations

import json

import numpy as np
import pytest

from harness.errors import RequestError
from harness.tokenizers import TextAndVisionTokenizer
from tests.vlm_family_checks import (TOL, assert_fails_on_logits, assert_images_change_the_output,
                                     assert_parity_grid, assert_pixels_mismatch_detected,
                                     assert_refused_before_any_forward, assert_replica_files,
                                     chat_context, cli_parity, req, restarting_positions_report,
                                     vision_batches, with_rule, with_tiles)
from tests.vlm_fixtures import family, parity, variant

OV, NEXT = "tiny-llava-onevision", "tiny-llava-next"


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
    assert_images_change_the_output(name)


# -- the processor's layout -----------------------------------------------------------------------
def test_onevision_tiles_one_image_and_not_two():
    """One 37×23 image: base tile + 1×2 tiles of its best pinpoint, 16 + 4×6 unpadded + 4
    newline rows; two images in one prompt: one padded square each, 16 + 1 rows (the
    processor's batch_num_images rule)."""
    tok = TextAndVisionTokenizer(family(OV))
    one = tok.new_context(req(1))
    assert one.images[0].pixel_values.shape == (3, 3, 32, 32)
    assert one.images[0].num_tokens == 16 + 4 * 6 + 4
    two = tok.new_context(req(2))
    assert [im.pixel_values.shape[0] for im in two.images] == [1, 1]
    assert [im.num_tokens for im in two.images] == [17, 17]


def test_onevision_large_image_is_shrunk_to_anyres_max_9():
    """A 190×190 image takes 6×6 tiles (24×24 features), more than 9 tiles' worth: the model
    shrinks them to 12×12 (+12 newlines), and the harness counts the same rows."""
    img = (np.random.RandomState(3).rand(190, 190, 3) * 255).astype(np.uint8)
    ctx, res, report = parity(family(OV), req([img], max_new_tokens=2), 13)
    assert ctx.images[0].pixel_values.shape[0] == 37
    assert ctx.images[0].num_tokens == 16 + 12 * 12 + 12
    assert report["verdict"] == "pass", report["verdict_note"]
    assert res.encoder_calls == 1


def test_next_keeps_cls_rule_and_tiles_every_image():
    """LLaVA-NeXT: CLS dropped ("default"), every image tiled even with two in the prompt."""
    ctx = TextAndVisionTokenizer(family(NEXT)).new_context(req(2))
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
    assert_parity_grid(name, n_images)


def test_one_vision_call_per_image_over_all_its_tiles():
    """The encoder cache: the vision tower runs once per image, on that image's tiles."""
    batches, ctx = vision_batches(NEXT, "vision_tower", 3)
    assert batches == [im.pixel_values.shape[0] for im in ctx.images] == [3, 5]


# -- negative controls ----------------------------------------------------------------------------
def test_positions_restarting_per_chunk_are_detected():
    """Positions that restart at every chunk (a chunked-prefill bug) must break parity."""
    from models.llava_onevision import AnyRes

    report = restarting_positions_report(AnyRes, OV)
    assert_fails_on_logits(report)


def test_a_dropped_tile_is_refused_before_any_forward():
    from models.llava_onevision import AnyRes

    DropTile = with_tiles(AnyRes, lambda tiles: tiles[:-1])

    fam = with_rule(DropTile, NEXT)
    with pytest.raises(RequestError, match=r"^image 0: the image processor makes 2 tiles of a "
                                           r"23×37 image but the model's image_grid_pinpoints "
                                           r"give 3$"):
        TextAndVisionTokenizer(fam).new_context(req(1))


def test_tiles_in_the_wrong_order_are_detected():
    """Swapped grid tiles: the report names the pixel difference (input mismatch) and the
    outputs move (the tiles' order reaches the logits)."""
    from models.llava_onevision import AnyRes

    Swap = with_tiles(AnyRes, lambda pv: pv[[0, 2, 1]])

    _, res, report = parity(with_rule(Swap, NEXT), req(1), 7)
    assert_pixels_mismatch_detected(report)


def test_tiling_every_image_of_a_multi_image_prompt_is_an_input_mismatch():
    """OneVision without the multi-image rule (each image tiled as if alone): the prompt ids
    differ from the processor's."""
    from models.llava_onevision import AnyRes

    class AlwaysTile(AnyRes):
        def render_prompt(self, messages):
            text = super().render_prompt(messages)
            self._prompt_images = 1
            return text

    _, _, report = parity(with_rule(AlwaysTile, OV), req(2), None)
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
    assert_refused_before_any_forward(variant(name, tmp_path, **edits), message)


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

    spec = REPLICAS[name]
    assert_replica_files(name, spec)
    fam = family(name)
    cls, token, real_id = REPLICA_IDS[name]
    assert type(fam.model).__name__ == cls and fam.family == "llava_onevision"
    assert fam.image_token_id == real_id == fam.tokenizer.convert_tokens_to_ids(token)
    assert fam.chat_template == spec["chat_template"]
    n_images = 2 if "onevision" in name else 1
    for chunk in (None, 64):
        ctx, res, report = parity(fam, req(n_images, max_new_tokens=3), chunk)
        assert report["verdict"] == "pass", (chunk, report["verdict_note"])
        assert report["tokens_equal"] and report["max_abs_logit_diff"] <= TOL
        assert res.encoder_calls == n_images
    assert res.chunks_inside_image > 0


def test_onevision_replica_single_image_counts_like_the_real_model():
    """A 37×23 image on the real geometry (384-pixel tiles, 27×27 features): 729 base rows +
    17×27 unpadded + 17 newlines = 1205 placeholders, equal to the processor's."""
    from harness.parity.vlm import compare_inputs, reference_inputs

    fam = family("replica-llava-onevision-qwen2-0.5b-ov")
    request = req(1)
    ctx = TextAndVisionTokenizer(fam).new_context(request)
    assert ctx.images[0].num_tokens == 1205
    assert compare_inputs(fam, ctx, reference_inputs(fam, request))["equal"]


def test_chat_messages_with_system_and_history():
    messages = [{"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
                {"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "What is it?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Noise."}]},
                {"role": "user", "content": [{"type": "text", "text": "And this?"},
                                             {"type": "image"}]}]
    _, ctx = chat_context("replica-llava-onevision-qwen2-0.5b-ov", messages)
    assert [im.num_tokens for im in ctx.images] == [730, 730]


# -- the command line -----------------------------------------------------------------------------
def test_cli_parity(tmp_path):
    cli_parity(tmp_path, OV, "llava_onevision", 3)
