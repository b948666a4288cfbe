"""Qwen2.5-VL (issue #14): recognition of the real folder layout, inputs equal to
Qwen2_5_VLProcessor's, one vision call per image through a window-attention tower, chunked
prefill with explicit M-RoPE positions, parity from the raw request against generate() and
generate(prefill_chunk_size=k) at chunk sizes {1, 3, 7, 13, whole} × {1, 2} odd-sized images,
negative controls that must be detected, and the command line."""
from __future__ import annotations

import json

import numpy as np
import pytest

from harness.tokenizers import TextAndVisionTokenizer
from tests.vlm_family_checks import (SYSTEM_AND_HISTORY, TOL, assert_dropped_encoder_row_refused,
                                     assert_exact, assert_fails_on_logits, assert_parity_grid,
                                     assert_positions_match_rope_index, assert_recognised,
                                     assert_replica_files, assert_structured_output_parity,
                                     chat_context, cli_parity, flat_positions_report, req,
                                     with_rule)
from tests.vlm_fixtures import family, parity

NAME = "tiny-qwen2.5-vl"
REPLICA = "replica-qwen2.5-vl-3b-instruct"


# -- recognition and the replica of the real checkpoint -------------------------------------------
def test_real_folder_layout_is_recognised_as_qwen2_5_vl():
    from models import qwen2_vl

    assert_recognised("qwen2_5_vl", (REPLICA, NAME), (qwen2_vl,))


def test_replica_is_the_real_layout():
    from models.qwen2_5_vl.replicas import REPLICAS

    spec = REPLICAS[REPLICA]
    folder = assert_replica_files(REPLICA, spec)
    config = json.loads((folder / "config.json").read_text())
    assert config["vision_config"]["window_size"] == 112
    fam = family(REPLICA)
    assert type(fam.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert fam.image_token_id == 151655 == fam.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert fam.model.model.visual.fullatt_block_indexes == [1]
    assert fam.chat_template == spec["chat_template"]


# -- parity from the raw request: every chunk size, one and two odd-sized images ------------------
@pytest.mark.parametrize("n_images", (1, 2))
def test_parity_at_every_chunk_size(n_images):
    """Tokens identical and |Δlogit| <= 1e-4 against generate() and
    generate(prefill_chunk_size=k); ids and pixels equal the processor's; one vision call per
    image; some chunks end inside images."""
    assert_parity_grid(NAME, n_images, small_chunks_cut=False)


def test_windows_are_exercised_and_one_call_per_image_equals_the_batched_call():
    """The test images span several 2×2 attention windows (padded ones too), and the encoder
    cache's one call per image equals the vision tower on both images at once, bit for bit."""
    import torch

    fam = family(NAME)
    ctx = TextAndVisionTokenizer(fam).new_context(req(2))
    assert [im.grid_thw for im in ctx.images] == [(1, 3, 5), (1, 5, 6)]
    inputs = fam.context_inputs(ctx)
    with torch.inference_mode():
        batched = fam.model.get_image_features(
            pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
            return_dict=True).pooler_output
        for im, rows in zip(ctx.images, batched):
            assert torch.equal(fam.encode(im), rows)


def test_positions_match_transformers_rope_index():
    assert_positions_match_rope_index(NAME)


# -- negative controls: each must be detected -----------------------------------------------------
def test_full_attention_instead_of_windows_is_detected():
    """A vision tower run with every block attending to the whole image (no windows) changes the
    encoder rows; the report fails on the logits."""
    from models.qwen2_5_vl import Qwen25VL

    class NoWindows(Qwen25VL):
        def encode(self, image):
            visual = self.model.model.visual
            saved = visual.fullatt_block_indexes
            visual.fullatt_block_indexes = list(range(len(visual.blocks)))
            try:
                return super().encode(image)
            finally:
                visual.fullatt_block_indexes = saved

    _, _, report = parity(with_rule(NoWindows, NAME), req(2), 7)
    assert report["input_comparison"]["equal"]
    assert_fails_on_logits(report)


def test_one_dimensional_positions_are_detected():
    from models.qwen2_5_vl import Qwen25VL

    report = flat_positions_report(Qwen25VL, NAME)
    assert_fails_on_logits(report)


def test_a_dropped_encoder_row_is_refused_before_the_language_model():
    from models.qwen2_5_vl import Qwen25VL

    assert_dropped_encoder_row_refused(
        Qwen25VL, NAME, r"image 0: the vision encoder returned 14 rows but the prompt has 15 "
                     r"placeholders")


# -- the replica: the real generation config, chat messages ---------------------------------------
def test_replica_parity_and_its_repetition_penalty():
    """As shipped, the 3B's generation_config applies a repetition penalty of 1.05 that the
    harness does not: the report is an input mismatch that names it. With the penalty at 1.0
    the replica passes from the raw request at the whole prompt, chunk 1 and chunk 5."""
    fam = family(REPLICA)
    _, _, report = parity(fam, req(2, max_new_tokens=3), None)
    assert report["verdict"] == "input mismatch"
    assert "RepetitionPenaltyLogitsProcessor(penalty=1.05" in report["verdict_note"]
    assert report["input_comparison"]["equal"]
    gc = fam.model.generation_config
    saved, gc.repetition_penalty = gc.repetition_penalty, 1.0
    try:
        for chunk in (None, 1, 5):
            _, res, report = parity(fam, req(2, max_new_tokens=3), chunk)
            assert_exact(report, 2)
    finally:
        gc.repetition_penalty = saved


def test_replica_chat_messages_with_system_and_history():
    fam, ctx = chat_context(REPLICA, SYSTEM_AND_HISTORY)
    text = fam.tokenizer.decode(ctx.tokens.prompt)
    assert text.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>")


def test_command_line_with_parity(tmp_path):
    report, result = cli_parity(tmp_path, NAME, "qwen2_5_vl", 4)
    assert result["model"]["family"] == "qwen2_5_vl" and len(result["token_ids"]) == 4
    assert report["verdict"] == "pass" and report["max_abs_logit_diff"] <= TOL
    assert report["chunks"]["inside_image"] > 0 and report["encoder_calls"]["harness"] == 2
    assert report["input_comparison"]["equal"]
    assert np.isfinite(report["tolerance"]["bound"])


def test_structured_output_parity_with_images_and_chunks():
    """A JSON-schema request: valid JSON, tokens identical and pre-mask logits within 1e-4
    against generate() with llguidance's logits processor, chunks of 7 through two images."""
    assert_structured_output_parity(NAME)
