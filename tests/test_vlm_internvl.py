"""InternVL (dynamic tiles, pixel shuffle): recognition, the tiny recipe (images change the
output), tiles and context tokens equal to InternVLProcessor's, one vision call per image over all
its tiles, chunked prefill against generate() and generate(prefill_chunk_size=k) from the raw
request, negative controls, refusals before any forward, the replica of InternVL3-1B-hf and the
command line."""
from __future__ import annotations

import json

import numpy as np
import pytest

from harness.errors import RequestError
from harness.tokenizers import TextAndVisionTokenizer
from tests.vlm_family_checks import (TOL, assert_fails_on_logits, assert_images_change_the_output,
                                     assert_parity_grid, assert_pixels_mismatch_detected,
                                     assert_refused_before_any_forward, assert_replica_files,
                                     cli_parity, req, restarting_positions_report, vision_batches,
                                     with_rule, with_tiles)
from tests.vlm_fixtures import family, parity, variant

NAME = "tiny-internvl"


def test_folders_are_recognised_by_model_type(tmp_path):
    from models import internvl, llava
    from models.registry import resolve

    resolved = resolve(NAME)
    assert resolved.family is internvl and resolved.modality == "text"
    assert resolve(str(resolved.path)).family is internvl
    assert not llava.matches(resolved.path) and not internvl.matches(resolve("tiny-llava").path)
    assert type(family(NAME).model).__name__ == "InternVLForConditionalGeneration"
    remote = tmp_path / "remote"
    remote.mkdir()  # the original remote-code layout is not transformers' InternVL
    (remote / "config.json").write_text(json.dumps({"model_type": "internvl_chat"}))
    assert not internvl.matches(remote)


def test_images_change_the_output():
    assert_images_change_the_output(NAME)


def test_tiles_follow_the_aspect_ratio_and_the_processor():
    """37×23 → 3×2 tiles + thumbnail; 61×45 → 4×3 + thumbnail; 4 context tokens per tile between
    <img> and </img>; the request option max_patches=2 leaves 2×1 + thumbnail for the first and
    one tile, no thumbnail, for the second (1×1 is nearer its aspect ratio than 2×1)."""
    fam = family(NAME)
    tok = TextAndVisionTokenizer(fam)
    ctx = tok.new_context(req(2))
    assert [im.pixel_values.shape[0] for im in ctx.images] == [7, 13]
    assert [im.num_tokens for im in ctx.images] == [28, 52]
    ids = ctx.tokens.prompt.tolist()
    first = ctx.images[0]
    assert fam.tokenizer.decode(ids[first.start_idx - 1:first.end_idx + 1]) == \
        "<img>" + "<IMG_CONTEXT>" * 28 + "</img>"
    ctx, _, report = parity(fam, req(2, max_new_tokens=2, image_options={"max_patches": 2}), 5)
    assert [im.pixel_values.shape[0] for im in ctx.images] == [3, 1]
    assert report["verdict"] == "pass", report["verdict_note"]


@pytest.mark.parametrize("n_images", (1, 2))
def test_parity_from_the_raw_request(n_images):
    assert_parity_grid(NAME, n_images)


def test_one_vision_call_per_image_over_all_its_tiles():
    assert vision_batches(NAME, "vision_tower", 3)[0] == [7, 13]


# -- negative controls ----------------------------------------------------------------------------
def test_positions_restarting_per_chunk_are_detected():
    from models.internvl import InternVL

    report = restarting_positions_report(InternVL, NAME)
    assert_fails_on_logits(report)


def test_a_dropped_tile_is_refused_before_any_forward():
    from models.internvl import InternVL

    DropThumbnail = with_tiles(InternVL, lambda tiles: tiles[:-1])

    with pytest.raises(RequestError, match=r"^image 0: the model's vision tower gives 24 encoder "
                                           r"rows \(6 tiles of 4×4 patches pixel-shuffled to "
                                           r"2×2 \(downsample_ratio 0.5\)\) but the processor "
                                           r"lays out 28 placeholders for it$"):
        TextAndVisionTokenizer(with_rule(DropThumbnail, NAME)).new_context(req(1))


def test_tiles_in_the_wrong_order_are_detected():
    from models.internvl import InternVL

    ThumbnailFirst = with_tiles(InternVL, lambda pv: np.roll(pv, 1, axis=0))

    _, _, report = parity(with_rule(ThumbnailFirst, NAME), req(1), 7)
    assert_pixels_mismatch_detected(report)


def test_tiling_left_off_is_an_input_mismatch():
    """InternVLProcessor turns crop_to_patches on per call; a harness that kept the folder's
    setting (off) lays out one tile per image: other ids than the processor's."""
    from models.internvl import InternVL

    class FolderSetting(InternVL):
        def prepare(self, image, options=None):
            return super().prepare(image, {**(options or {}), "crop_to_patches": False})

    _, _, report = parity(with_rule(FolderSetting, NAME), req(1), None)
    assert report["verdict"] == "input mismatch"
    assert report["verdict_note"].startswith("prompt ids differ at position")


@pytest.mark.parametrize("edits, message", [
    ({"processor": {"image_seq_length": 9}},
     r"image 0: the model's vision tower gives 28 encoder rows .* but the processor lays out 63 "
     r"placeholders"),
    ({"preprocessor": {"size": {"height": 24, "width": 24}}},
     r"image 0: the image processor makes 24×24-pixel tiles but the vision tower takes 32×32"),
    ({"config": {"vision_feature_select_strategy": "full"}},
     r"vision_feature_select_strategy 'full' keeps the CLS row"),
], ids=["image-seq-length", "tile-size", "cls"])
def test_refused_before_any_forward(tmp_path, edits, message):
    assert_refused_before_any_forward(variant(NAME, tmp_path, **edits), message)


def test_replica_layout_and_parity():
    """InternVL3-1B-hf's files (config cut to 2 layers, sharded weights, the real token ids, the
    conversion script's chat template); a 37×23 image at the real geometry (448-pixel tiles:
    3×2 + thumbnail, 7 × 256 context tokens) with chunks of 512 that cut it."""
    from models.internvl.replicas import REPLICAS

    name = "replica-internvl3-1b-hf"
    spec = REPLICAS[name]
    assert_replica_files(name, spec)
    fam = family(name)
    assert fam.family == "internvl" and fam.chat_template == spec["chat_template"]
    assert fam.image_token_id == 151667 == fam.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert fam.tokenizer.convert_tokens_to_ids(["<img>", "</img>"]) == [151665, 151666]
    ctx, res, report = parity(fam, req(1, max_new_tokens=3), 512)
    assert ctx.images[0].pixel_values.shape == (7, 3, 448, 448)
    assert ctx.images[0].num_tokens == 7 * 256
    assert report["verdict"] == "pass", report["verdict_note"]
    assert report["tokens_equal"] and report["max_abs_logit_diff"] <= TOL
    assert res.encoder_calls == 1 and res.chunks_inside_image > 0


def test_cli_parity(tmp_path):
    cli_parity(tmp_path, NAME, "internvl", 3)
