"""Idefics3 and SmolVLM (image splitting with row/column tokens and a global image): recognition,
the tiny recipes (images change the output), tiles and tags equal to the folders' own processors,
one vision call per image over all its tiles, chunked prefill against generate() and
generate(prefill_chunk_size=k) from the raw request, negative controls, refusals before any
forward, the replicas of SmolVLM-256M-Instruct and SmolVLM2-256M-Video-Instruct and the command
line."""
from __future__ import annotations

import numpy as np
import pytest

from harness.errors import RequestError
from harness.tokenizers import TextAndVisionTokenizer
from tests.vlm_family_checks import (CHUNKS, TOL, assert_fails_on_logits,
                                     assert_images_change_the_output, assert_parity_grid,
                                     assert_pixels_mismatch_detected,
                                     assert_refused_before_any_forward, assert_replica_files,
                                     cli_parity, req, restarting_positions_report, vision_batches,
                                     with_rule, with_tiles)
from tests.vlm_fixtures import family, parity, variant

IDEFICS3, SMOLVLM = "tiny-idefics3", "tiny-smolvlm"


# -- recognition and the recipe -------------------------------------------------------------------
def test_folders_are_recognised_by_model_type():
    from models import idefics3, llava, llava_onevision
    from models.registry import resolve

    for name, kind in ((IDEFICS3, "Idefics3ForConditionalGeneration"),
                       (SMOLVLM, "SmolVLMForConditionalGeneration")):
        resolved = resolve(name)
        assert resolved.family is idefics3 and resolved.modality == "text"
        assert resolve(str(resolved.path)).family is idefics3
        assert not llava.matches(resolved.path) and not llava_onevision.matches(resolved.path)
        assert type(family(name).model).__name__ == kind
    assert not idefics3.matches(resolve("tiny-llava").path)


@pytest.mark.parametrize("name", (IDEFICS3, SMOLVLM))
def test_images_change_the_output(name):
    assert_images_change_the_output(name)


# -- the processor's layout -----------------------------------------------------------------------
def test_split_layout_rows_columns_and_global_tile():
    """37×23 → longest edge 128 → 128×96: 3 rows × 4 columns of 32-pixel tiles + the global
    tile; the range runs from the first to the last <image>, only <image> gets encoder rows."""
    fam = family(IDEFICS3)
    ctx = TextAndVisionTokenizer(fam).new_context(req(1))
    im = ctx.images[0]
    assert im.pixel_values.shape == (13, 3, 32, 32) and im.num_embeddings == 13 * 4
    text = fam.tokenizer.decode(ctx.tokens.prompt[im.start_idx - 2:im.end_idx + 1])
    first_row = "".join(f"<fake_token_around_image><row_1_col_{c}>" + "<image>" * 4
                        for c in range(1, 5))
    assert text.startswith(first_row[:-len("<image>" * 4)] + "<image>" * 4)
    assert "<row_3_col_4>" in text and "<row_4_col_1>" not in text
    assert text.endswith("\n\n<fake_token_around_image><global-img>" + "<image>" * 4
                         + "<fake_token_around_image>")


def test_tall_image_and_no_splitting_option():
    """A 20×70 (w×h) image splits into 4 rows × 2 columns; with the request option
    ``do_image_splitting=False`` only the global tile is left; both equal the processor."""
    tall = (np.random.RandomState(5).rand(70, 20, 3) * 255).astype(np.uint8)
    ctx, _, report = parity(family(IDEFICS3), req([tall], max_new_tokens=2), 7)
    assert ctx.images[0].pixel_values.shape[0] == 4 * 2 + 1
    assert report["verdict"] == "pass", report["verdict_note"]
    request = req(2, max_new_tokens=2, image_options={"do_image_splitting": False})
    ctx, res, report = parity(family(SMOLVLM), request, 3)
    assert [im.pixel_values.shape[0] for im in ctx.images] == [1, 1]
    assert [im.num_tokens for im in ctx.images] == [4, 4]
    assert report["verdict"] == "pass", report["verdict_note"]


# -- parity: every chunk size × one and two images ------------------------------------------------
#: The full chunk grid on the Idefics3 layout; SmolVLM's model code is Idefics3's under another
#: name (its own processor and pixel shuffle 4×4 here): one cutting chunk and the whole prompt.
GRID = [(IDEFICS3, n, CHUNKS) for n in (1, 2)] + [(SMOLVLM, n, (3, None)) for n in (1, 2)]


@pytest.mark.parametrize("name, n_images, chunks", GRID,
                         ids=[f"{g[0][5:]}-{g[1]}img" for g in GRID])
def test_parity_from_the_raw_request(name, n_images, chunks):
    """Ids and pixels equal the processor's; tokens identical and |Δlogit| <= 1e-4 against
    generate() and generate(prefill_chunk_size=k); one encoder call per image; small chunks end
    inside images (between tiles and inside them)."""
    assert_parity_grid(name, n_images, chunks)


def test_one_vision_call_per_image_over_all_its_tiles():
    assert vision_batches(IDEFICS3, "vision_model", 5)[0] == [13, 13]


# -- negative controls ----------------------------------------------------------------------------
def test_positions_restarting_per_chunk_are_detected():
    from models.idefics3 import Idefics3

    report = restarting_positions_report(Idefics3, IDEFICS3)
    assert_fails_on_logits(report)


def test_a_dropped_tile_is_refused_before_any_forward():
    from models.idefics3 import Idefics3

    DropTile = with_tiles(Idefics3, lambda tiles: tiles[:-1])

    with pytest.raises(RequestError, match=r"^image 0: the image processor makes 12 tiles for a "
                                           r"3×4 split \+ global image$"):
        TextAndVisionTokenizer(with_rule(DropTile, IDEFICS3)).new_context(req(1))


def test_tiles_in_the_wrong_order_are_detected():
    """The global tile moved to the front: the report names the pixel difference and the
    outputs move."""
    from models.idefics3 import Idefics3

    GlobalFirst = with_tiles(Idefics3, lambda pv: np.roll(pv, 1, axis=0))

    _, _, report = parity(with_rule(GlobalFirst, IDEFICS3), req(1), 7)
    assert_pixels_mismatch_detected(report)


def test_wrong_row_column_tags_are_an_input_mismatch():
    """Every tile tagged <row_1_col_1>: same encoder rows, other prompt ids."""
    import re

    from models.idefics3 import Idefics3

    class OneTag(Idefics3):
        def prepare(self, image, options=None):
            prep = super().prepare(image, options)
            prep.text = re.sub(r"<row_\d_col_\d>", "<row_1_col_1>", prep.text)
            ids = np.asarray(self.tokenizer(prep.text, add_special_tokens=False)["input_ids"])
            at = np.flatnonzero(ids == self.image_token_id)
            prep.pieces[0].placeholder_ids = ids[at[0]:at[-1] + 1].tolist()
            return prep

    _, _, report = parity(with_rule(OneTag, IDEFICS3), req(1), None)
    assert report["verdict"] == "input mismatch"
    assert report["verdict_note"].startswith("prompt ids differ at position")


# -- refusals before any forward ------------------------------------------------------------------
@pytest.mark.parametrize("edits, message", [
    ({"processor": {"image_seq_len": 9}},
     r"image 0: the model's vision tower gives 52 encoder rows \(13 tiles of 4×4 patches pixel-"
     r"shuffled 2×2 \(scale_factor\)\) but the processor lays out 117 placeholders"),
    ({"preprocessor": {"max_image_size": {"longest_edge": 24}}},
     r"image 0: the image processor makes 24×24-pixel tiles but the vision tower takes 32×32"),
], ids=["image-seq-len", "tile-size"])
def test_refused_before_any_forward(tmp_path, edits, message):
    assert_refused_before_any_forward(variant(IDEFICS3, tmp_path, **edits), message)


# -- replicas of the real checkpoints -------------------------------------------------------------
REPLICA_CLASSES = {"replica-smolvlm-256m-instruct": "Idefics3ForConditionalGeneration",
                   "replica-smolvlm2-256m-video-instruct": "SmolVLMForConditionalGeneration"}


@pytest.mark.parametrize("name", sorted(REPLICA_CLASSES))
def test_replica_layout_and_parity(name):
    """The real files (config cut to 2 layers, generation config, sharded weights, the real
    token ids, the folder's chat template); parity from the raw request with chunks of 64 that
    cut images (generate() and generate(prefill_chunk_size=64) both judged): SmolVLM at its
    real split (37×23 → 12 tiles of 512 + the global tile, 832 image tokens), SmolVLM2 on two
    images with the request option do_image_splitting=False."""
    from models.idefics3.replicas import REPLICAS

    spec = REPLICAS[name]
    assert_replica_files(name, spec)
    fam = family(name)
    assert type(fam.model).__name__ == REPLICA_CLASSES[name] and fam.family == "idefics3"
    assert fam.image_token_id == 49190 == fam.tokenizer.convert_tokens_to_ids("<image>")
    assert fam.tokenizer.convert_tokens_to_ids("<row_6_col_6>") == 49188
    assert fam.chat_template == spec["chat_template"]
    if "smolvlm2" in name:
        request = req(2, max_new_tokens=3, image_options={"do_image_splitting": False})
    else:
        request = req(1, max_new_tokens=3)
    ctx, res, report = parity(fam, request, 64)
    assert report["verdict"] == "pass", report["verdict_note"]
    assert report["tokens_equal"] and report["max_abs_logit_diff"] <= TOL
    assert res.encoder_calls == len(ctx.images) and res.chunks_inside_image > 0
    tiles = [im.pixel_values.shape[0] for im in ctx.images]
    assert tiles == ([1, 1] if "smolvlm2" in name else [13])
    assert [im.num_embeddings for im in ctx.images] == [64 * t for t in tiles]


# -- the command line -----------------------------------------------------------------------------
def test_cli_parity(tmp_path):
    cli_parity(tmp_path, SMOLVLM, "idefics3", 3)
