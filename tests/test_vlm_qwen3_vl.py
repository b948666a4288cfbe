"""Qwen3-VL (issue #14): recognition of the real folder layout, inputs equal to Qwen3VLProcessor's,
one vision call per image whose deepstack features are cached with its rows, chunked prefill that
hands each chunk its rows of both (the model adds the deepstack rows to its first layers at the
image positions), parity from the raw request against generate() and
generate(prefill_chunk_size=k) at chunk sizes {1, 3, 7, 13, whole} × {1, 2} odd-sized images,
negative controls that must be detected, and the command line."""
from __future__ import annotations

import json

import pytest

from harness.pipelines.vlm_family import VLMFamily
from harness.tokenizers import TextAndVisionTokenizer
from tests.vlm_family_checks import (SYSTEM_AND_HISTORY, TOL, assert_dropped_encoder_row_refused,
                                     assert_exact, assert_fails_on_logits, assert_parity_grid,
                                     assert_positions_match_rope_index, assert_recognised,
                                     assert_replica_files, assert_structured_output_parity,
                                     chat_context, cli_parity, flat_positions_report, req,
                                     with_rule)
from tests.vlm_fixtures import family, parity

NAME = "tiny-qwen3-vl"
REPLICA = "replica-qwen3-vl-4b-instruct"


# -- recognition and the replica of the real checkpoint -------------------------------------------
def test_real_folder_layout_is_recognised_as_qwen3_vl():
    from models import qwen2_5_vl, qwen2_vl

    assert_recognised("qwen3_vl", (REPLICA, NAME), (qwen2_5_vl, qwen2_vl))


def test_replica_is_the_real_layout():
    from models.qwen3_vl.replicas import REPLICAS

    spec = REPLICAS[REPLICA]
    folder = assert_replica_files(REPLICA, spec)
    config = json.loads((folder / "config.json").read_text())
    assert config["text_config"]["rope_scaling"]["mrope_interleaved"] is True
    fam = family(REPLICA)
    assert type(fam.model).__name__ == "Qwen3VLForConditionalGeneration"
    assert fam.image_token_id == 151655 == fam.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert fam.deepstack_layers == 3 and fam.text_config.num_hidden_layers == 4
    assert fam.chat_template == spec["chat_template"]
    # Qwen3-VL's template has no default system turn
    ctx = TextAndVisionTokenizer(fam).new_context(req(1))
    assert fam.tokenizer.decode(ctx.tokens.prompt[:ctx.images[0].start_idx]) == \
        "<|im_start|>user\n<|vision_start|>"


# -- parity from the raw request: every chunk size, one and two odd-sized images ------------------
@pytest.mark.parametrize("n_images", (1, 2))
def test_parity_at_every_chunk_size(n_images):
    """Tokens identical and |Δlogit| <= 1e-4 against generate() and
    generate(prefill_chunk_size=k); ids and pixels equal the processor's; one vision call per
    image; some chunks end inside images (their deepstack rows split with them)."""
    assert_parity_grid(NAME, n_images, small_chunks_cut=False)


def test_one_call_per_image_keeps_rows_and_deepstack_features_of_the_batched_call():
    import torch

    fam = family(NAME)
    ctx = TextAndVisionTokenizer(fam).new_context(req(2))
    inputs = fam.context_inputs(ctx)
    with torch.inference_mode():
        out = fam.model.get_image_features(pixel_values=inputs["pixel_values"],
                                           image_grid_thw=inputs["image_grid_thw"],
                                           return_dict=True)
        for i, im in enumerate(ctx.images):
            cached = fam.encode(im)
            assert cached.shape == (im.num_embeddings, 1 + fam.deepstack_layers, 64)
            assert torch.equal(cached[:, 0], out.pooler_output[i])
            for k, layer in enumerate(out.deepstack_features):
                assert torch.equal(cached[:, 1 + k], layer[i])


def test_positions_match_transformers_rope_index():
    assert_positions_match_rope_index(NAME)


def test_the_images_change_the_answer():
    """The tiny model's re-drawn weights make the tokens follow the images."""
    from tests.vlm_fixtures import run

    tokens = {tuple(run(NAME, req(n, max_new_tokens=6))[1].tokens) for n in (0, 1, 2)}
    assert len(tokens) == 3 and all(len(set(t)) > 1 for t in tokens)


# -- negative controls: each must be detected -----------------------------------------------------
def test_dropping_deepstack_is_detected():
    """Placing only the merged rows into the embeddings (Qwen2-VL's way) loses the deepstack
    features: the inputs are equal, the logits are not."""
    from models.qwen3_vl import Qwen3VL

    class NoDeepstack(Qwen3VL):
        def place_rows(self, embeds, placed):
            return VLMFamily.place_rows(self, embeds, [(o, r[:, 0]) for o, r in placed])

    _, _, report = parity(with_rule(NoDeepstack, NAME), req(2), 7)
    assert report["input_comparison"]["equal"]
    assert_fails_on_logits(report)


def test_deepstack_features_in_the_wrong_layers_are_detected():
    from models.qwen3_vl import Qwen3VL

    class Reversed(Qwen3VL):
        def encode(self, image):
            rows = super().encode(image)
            return rows[:, [0, *range(rows.shape[1] - 1, 0, -1)]]

    _, _, report = parity(with_rule(Reversed, NAME), req(2), 7)
    assert_fails_on_logits(report)


def test_one_dimensional_positions_are_detected():
    from models.qwen3_vl import Qwen3VL

    report = flat_positions_report(Qwen3VL, NAME)
    assert_fails_on_logits(report)


def test_a_dropped_encoder_row_is_refused_before_the_language_model():
    from models.qwen3_vl import Qwen3VL

    assert_dropped_encoder_row_refused(
        Qwen3VL, NAME, r"image 0: the vision encoder returned 14 rows but the prompt has 15 "
                     r"placeholders")


# -- the replica, chat messages, structured output, the command line ------------------------------
def test_replica_chat_messages_with_system_and_history():
    fam, ctx = chat_context(REPLICA, SYSTEM_AND_HISTORY)
    assert fam.tokenizer.decode(ctx.tokens.prompt).startswith(
        "<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\n<|vision_start|>")


def test_structured_output_parity_with_images_and_chunks():
    assert_structured_output_parity(NAME)


def test_replica_parity_from_the_raw_request():
    """The real folder layout (4 text layers, 3 of them taking deepstack rows): exact at chunk 5
    with two images and chunk 1 with one, against generate() and its own chunked prefill (the
    generation config's sampling settings are overridden to greedy on both sides)."""
    fam = family(REPLICA)
    for n_images, chunk in ((2, 5), (1, 1)):
        _, res, report = parity(fam, req(n_images, max_new_tokens=3), chunk)
        assert_exact(report, n_images)


def test_command_line_with_parity(tmp_path):
    report, result = cli_parity(tmp_path, NAME, "qwen3_vl", 4)
    assert result["model"]["family"] == "qwen3_vl" and len(result["token_ids"]) == 4
    assert report["verdict"] == "pass" and report["max_abs_logit_diff"] <= TOL
    assert report["chunks"]["inside_image"] > 0 and report["encoder_calls"]["harness"] == 2
    assert report["input_comparison"]["equal"]
