"""Parity from the user's request, on the tiny models and variants of their folders: the harness
lays out prompts and pixels exactly as each family's Hugging Face processor does for the processor
settings real checkpoints use; the report compares inputs before outputs (``input mismatch``);
configs that cannot work are refused before any forward with the numbers; the tolerance logic
(reference floor, near-tie top-k)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from harness.errors import RequestError
from harness.tokenizers import TextAndVisionTokenizer, TextGenerationRequest
from tests.vlm_fixtures import family, odd_images, parity, variant


def _req(images, **kw):
    kw.setdefault("max_new_tokens", 3)
    kw.setdefault("ignore_eos", True)
    return TextGenerationRequest(prompt="Describe the pictures, please.", images=images, **kw)


def _inputs_equal(report):
    ids = report["input_comparison"]["prompt_ids"]
    assert report["input_comparison"]["equal"], report["verdict_note"]
    assert ids["harness_length"] == ids["processor_length"]
    return ids["harness_length"]


# -- finding 1: Pixtral / Mistral3 lays out patch × spatial_merge_size -----------------------------
def test_mistral3_folder_storing_the_vision_patch(tmp_path):
    """A Mistral3 folder whose preprocessor_config.json stores the *vision* patch (8, merge 2):
    a 37×23 image becomes 48×32 pixels and 2 rows × 3 [IMG] (PixtralProcessor's patch × merge
    = 16), not 40×24 and 1×2 from the saved patch; ids and pixels equal the processor's."""
    fam = variant("tiny-pixtral", tmp_path, preprocessor={"patch_size": {"height": 8,
                                                                          "width": 8}})
    ctx, res, report = parity(fam, _req(odd_images(1)), 5)
    im = ctx.images[0]
    assert im.pixel_values.shape == (3, 32, 48)
    assert im.num_embeddings == 6 and im.num_tokens == 2 * 3 + 1  # 2 rows of 3, one break
    assert report["verdict"] == "pass", report["verdict_note"]
    _inputs_equal(report)


# -- LLaVA: feature-select strategy, additional tokens ---------------------------------------------
def test_llava_full_strategy_keeps_cls(tmp_path):
    """``vision_feature_select_strategy`` "full" (config and processor): 16 patches + CLS."""
    fam = variant("tiny-llava", tmp_path, config={"vision_feature_select_strategy": "full"},
                  processor={"vision_feature_select_strategy": "full"})
    ctx, _, report = parity(fam, _req(odd_images(2)), 7)
    assert [im.num_tokens for im in ctx.images] == [17, 17]
    assert report["verdict"] == "pass", report["verdict_note"]


# -- Qwen2-VL: min_pixels / max_pixels and the size dict ------------------------------------------
def test_qwen2_vl_pixel_bounds_forms(tmp_path):
    """The top-level ``min_pixels``/``max_pixels`` form (what the Qwen2-VL repositories ship) and
    the ``size`` dict form of the same bounds lay out the same grids, equal to the processor's."""
    grids = []
    for form, bounds in (("pixels", {"min_pixels": 32 * 32, "max_pixels": 40 * 40,
                                     "size": None}),
                         ("size", {"size": {"shortest_edge": 32 * 32,
                                            "longest_edge": 40 * 40}})):
        fam = variant("tiny-qwen2-vl", tmp_path / form, preprocessor=bounds)
        ctx, _, report = parity(fam, _req(odd_images(2)), 3)
        assert report["verdict"] == "pass", (form, report["verdict_note"])
        grids.append([im.grid_thw for im in ctx.images])
    assert grids[0] == grids[1]
    # 37×23 → 48×32 px (min_pixels 1024 scales it up), 61×45 → 40×32 px (max_pixels 1600)
    assert grids[0] == [(1, 4, 6), (1, 4, 5)]


# -- Gemma 3: pan-and-scan ------------------------------------------------------------------------
def test_gemma3_pan_and_scan_on_request():
    """``do_pan_and_scan`` as a request option: the original and its crops, each its own
    soft-token range, laid out as Gemma3Processor writes them; parity passes."""
    img = (np.random.RandomState(0).rand(20, 80, 3) * 255).astype(np.uint8)
    req = _req([img], image_options={"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 8})
    ctx, res, report = parity(family("tiny-gemma3"), req, 7)
    assert len(ctx.images) == 5 and res.encoder_calls == 5  # the image and 4 crops
    assert res.chunks_inside_image == 0
    assert report["verdict"] == "pass", report["verdict_note"]


def test_gemma3_folder_pan_and_scan_is_overridden_like_the_processor(tmp_path):
    """Gemma3Processor passes its own ``do_pan_and_scan=False``, overriding the folder's: the
    harness does the same (one image range), and equals the processor."""
    fam = variant("tiny-gemma3", tmp_path, preprocessor={
        "do_pan_and_scan": True, "pan_and_scan_min_crop_size": 8,
        "pan_and_scan_max_num_crops": 4, "pan_and_scan_min_ratio_to_activate": 1.2})
    img = (np.random.RandomState(0).rand(20, 80, 3) * 255).astype(np.uint8)
    ctx, _, report = parity(fam, _req([img]), None)
    assert len(ctx.images) == 1
    assert report["verdict"] == "pass", report["verdict_note"]


def test_unknown_image_option_is_refused():
    with pytest.raises(RequestError, match="bogus"):
        TextAndVisionTokenizer(family("tiny-gemma3")).new_context(
            _req(odd_images(1), image_options={"bogus": 1}))


# -- refusals before any forward: encoder rows vs placeholders, with the numbers ------------------
REFUSALS = [
    ("tiny-gemma3", {"processor": {"image_seq_length": 9}},
     r"vision tower gives 16 encoder rows \(8×8 patches average-pooled 2×2 \(config "
     r"mm_tokens_per_image 16\)\) but the processor lays out 9 placeholders"),
    ("tiny-gemma3", {"preprocessor": {"size": {"height": 28, "width": 28}}},
     r"image 0: the image processor makes 28×28 pixels but the vision tower takes 32×32"),
    ("tiny-llava", {"processor": {"num_additional_image_tokens": 0}},
     r"vision tower gives 16 encoder rows .* but the processor lays out 15 placeholders"),
    ("tiny-qwen2-vl", {"preprocessor": {"merge_size": 1}},
     r"makes a 6×9 patch grid, which the vision tower cannot merge 2×2 \(spatial_merge_size\)"),
    ("tiny-pixtral", {"processor": {"spatial_merge_size": 1}},
     r"cannot be merged 2×2|vision tower gives \d+ encoder rows"),
]


@pytest.mark.parametrize("name, edits, message", REFUSALS,
                         ids=["gemma3-seq-length", "gemma3-size", "llava-cls", "qwen2-vl-merge",
                              "pixtral-merge"])
def test_rows_vs_placeholders_refused_before_any_forward(tmp_path, name, edits, message):
    from harness.pipelines.vlm import VLMPipeline

    fam = variant(name, tmp_path, **edits)
    calls = []
    for module in (fam.model, fam.model.model):
        forward = module.forward
        module.forward = lambda *a, _f=forward, **k: calls.append(1) or _f(*a, **k)
    with pytest.raises(RequestError, match=message) as err:
        ctx = TextAndVisionTokenizer(fam).new_context(_req(odd_images(2)))
        VLMPipeline(fam).generate(ctx)
    assert "\n" not in str(err.value) and "ImageMetadata" not in str(err.value)
    assert calls == []


def test_refusal_is_one_line_exit_2_on_the_command_line(tmp_path):
    """Gemma 3 whose image processor makes 28×28 pixels for a 32×32 vision tower: today's
    traceback inside the vision tower becomes one line, exit code 2, no output left behind."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    variant("tiny-gemma3", tmp_path, preprocessor={"size": {"height": 28, "width": 28}})
    picture = tmp_path / "p.png"
    Image.fromarray(odd_images(1)[0]).save(picture)
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "never"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.generate", "--model", str(tmp_path / "tiny-gemma3"),
         "--prompt", "hi", "--image", str(picture), "--output-dir", str(out)],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Warning" not in ln
             and not ln.startswith(" ")]
    assert lines == ["error: image 0: the image processor makes 28×28 pixels but the vision "
                     "tower takes 32×32 (vision_config.image_size)"], proc.stderr
    assert not out.exists()


# -- negative controls: the report must say "input mismatch" --------------------------------------
def test_wrong_placeholder_count_is_an_input_mismatch():
    """A Pixtral layout without [IMG_BREAK] tokens: the same encoder rows, fewer placeholders in
    the prompt than the processor writes."""
    from models.pixtral import Pixtral

    class NoBreaks(Pixtral):
        def prepare(self, image, options=None):
            prep = super().prepare(image, options)
            piece = prep.pieces[0]
            keep = [i for i in piece.placeholder_ids if i == self.image_token_id]
            piece.placeholder_ids, piece.embedding_positions = keep, None
            prep.text = self.image_marker * len(keep) + "[IMG_END]"
            return prep

    base = family("tiny-pixtral")
    fam = NoBreaks(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
    _, _, report = parity(fam, _req(odd_images(2)), 5)
    assert report["verdict"] == "input mismatch"
    assert report["verdict_note"].startswith("prompt ids differ at position")
    assert report["input_comparison"]["prompt_ids"]["harness_length"] < \
        report["input_comparison"]["prompt_ids"]["processor_length"]


def test_different_resize_is_an_input_mismatch():
    """A LLaVA image processor resizing with NEAREST instead of the folder's BICUBIC: same ids,
    same shapes, different pixels."""
    import copy

    base = family("tiny-llava")
    proc = copy.deepcopy(base.image_processor)
    proc.resample = 0  # PIL NEAREST
    fam = dataclasses.replace(base, image_processor=proc)
    _, _, report = parity(fam, _req(odd_images(2)), None)
    assert report["verdict"] == "input mismatch"
    assert report["input_comparison"]["prompt_ids"]["equal"]
    assert report["verdict_note"].startswith("image 0 pixel values differ by max")
    assert report["input_comparison"]["pixel_values"][0]["max_abs_diff"] > 0.01


def test_report_records_both_inputs_and_the_bound():
    _, _, report = parity(family("tiny-qwen2-vl"), _req(odd_images(2)), 3)
    inputs = report["input_comparison"]
    for side in ("harness", "processor"):
        assert inputs[side]["prompt_length"] == inputs["prompt_ids"]["harness_length"]
        assert len(inputs[side]["images"]) == 2
    tol = report["tolerance"]
    assert tol["floor"] is not None and tol["measured"] == report["max_abs_logit_diff"]
    assert tol["bound"] == max(tol["fixed"], tol["floor_factor"] * tol["floor"])


# -- tolerance logic ------------------------------------------------------------------------------
def _fake(tokens, rows):
    import torch

    from harness.parity.vlm import ReferenceRun

    return ReferenceRun(list(tokens), [torch.tensor(r, dtype=torch.float32) for r in rows],
                        0.0, None)


def _report(ours, refs, floor):
    from types import SimpleNamespace

    from harness.context import GenerationStatus
    from harness.parity.vlm import parity_report

    result = SimpleNamespace(tokens=ours.tokens, final_status=GenerationStatus.MAXIMUM_LENGTH,
                             chunks=[], chunks_inside_image=0, encoder_calls=0, prefill_s=0.0,
                             decode_s=0.0)
    return parity_report(family_name="x", request={}, ours=result, ours_logits=ours.logits,
                         refs=refs, num_images=0, chunk_size=1, floor=floor)


def test_bound_follows_the_reference_floor():
    """|Δlogit| 5.4e-4 (llava-1.5 at real width, chunk 1) fails the fixed 1e-4 bound but passes
    when the reference's own chunked prefill moves logits by 2e-4 (bound 4 × floor)."""
    ref = _fake([1, 2], [[0.0, 5.0, 1.0], [0.0, 1.0, 5.0]])
    ours = _fake([1, 2], [[5.4e-4, 5.0, 1.0], [0.0, 1.0, 5.0]])
    assert _report(ours, {"generate": ref}, None)["verdict"] == "fail"
    report = _report(ours, {"generate": ref}, 2e-4)
    assert report["verdict"] == "pass"
    assert report["tolerance"]["bound"] == pytest.approx(8e-4)
    assert _report(ours, {"generate": ref}, 1e-4)["verdict"] == "fail"


def test_near_tie_flip_needs_top_k_on_both_sides():
    """A greedy flip between two near-tied tokens passes (each in the other's top-5) and is
    reported; a flip within the logit bound to a token outside the reference's top-5 fails."""
    row = [0.0, 3.0, 3.00002, 2.0, 1.0, 0.5, -1.0, -2.0]
    ref = _fake([2, 1], [row, row])
    flipped = list(row)
    flipped[1] = 3.00004
    ours = _fake([1, 1], [flipped, row])
    report = _report(ours, {"generate": ref}, None)
    assert report["verdict"] == "pass" and report["first_divergent_token"] == 0
    tie = report["reference"]["generate"]["near_tie"]
    assert tie["within_top_k"] and tie["position"] == 0
    assert tie["harness_token_rank_in_reference"] == 1
    crowded = [3.0 + k * 1e-5 for k in range(8)]  # the reference picks token 7
    boosted = list(crowded)
    boosted[0] += 9e-5  # within 1e-4, but token 0 ranks 8th in the reference
    report = _report(_fake([0], [boosted]), {"generate": _fake([7], [crowded])}, None)
    assert report["max_abs_logit_diff"] < 1e-4 and report["verdict"] == "fail"
    assert not report["reference"]["generate"]["near_tie"]["within_top_k"]
