"""Checks the per-family VLM test files share (Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision/NeXT,
Idefics3/SmolVLM, InternVL): the request they run, a family with one rule changed, exact parity
over a chunk grid, refusals before any forward, replica files, chat inputs, the CLI parity run."""
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
from tests.vlm_fixtures import family, odd_images, parity, run

ROOT = Path(__file__).resolve().parents[1]
CHUNKS = (1, 3, 7, 13, None)
TOL = 1e-4

#: A system turn, an answered turn with an image and a new question with an image.
SYSTEM_AND_HISTORY = [{"role": "system", "content": "Answer in one word."},
                      {"role": "user", "content": [{"type": "image"},
                                                   {"type": "text", "text": "What is it?"}]},
                      {"role": "assistant", "content": "Noise."},
                      {"role": "user", "content": [{"type": "text", "text": "And this one?"},
                                                   {"type": "image"}]}]


def req(images, **kw) -> TextGenerationRequest:
    """The family tests' request: ``images`` (a list, or a count of odd-sized images), 4 tokens
    past EOS unless told."""
    if isinstance(images, int):
        images = odd_images(images)
    kw.setdefault("max_new_tokens", 4)
    kw.setdefault("ignore_eos", True)
    return TextGenerationRequest(prompt="Describe the pictures, please.", images=images, **kw)


def with_rule(cls, name_or_family):
    """The loaded family (or tiny model ``name``'s) as an instance of ``cls``, a subclass that
    changes one rule (a negative control)."""
    base = family(name_or_family) if isinstance(name_or_family, str) else name_or_family
    return cls(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})


def with_tiles(cls, edit):
    """Subclass of family class ``cls`` whose first image piece's tiles are ``edit(tiles)``."""

    class EditedTiles(cls):
        def prepare(self, image, options=None):
            prep = super().prepare(image, options)
            prep.pieces[0].pixel_values = np.ascontiguousarray(edit(prep.pieces[0].pixel_values))
            return prep

    return EditedTiles


def restarting_positions_report(cls, name):
    """Parity report (two images, chunks of 7) of ``cls`` with positions that restart every
    7 tokens, as a chunked-prefill bug would."""
    import torch

    class Restart(cls):
        def prompt_positions(self, ctx):
            return (torch.arange(ctx.tokens.prompt_length) % 7)[None]

    return parity(with_rule(Restart, name), req(2), 7)[2]


def flat_positions_report(cls, name):
    """Parity report (two images, chunks of 7) of M-RoPE family class ``cls`` fed plain 1-D
    positions on all four rows and no decode offset."""
    import torch

    class Flat(cls):
        def prompt_positions(self, ctx):
            return torch.arange(ctx.tokens.prompt_length).view(1, 1, -1).expand(4, 1, -1)

        def position_state(self, prompt_positions):
            return 0

    return parity(with_rule(Flat, name), req(2), 7)[2]


def assert_structured_output_parity(name):
    """A JSON-schema request through two images in chunks of 7: valid JSON, tokens identical and
    pre-mask logits within TOL against generate() with llguidance's logits processor."""
    from harness.structured import check_json
    from tests.test_structured_vlm import PERSON

    request = req(2, max_new_tokens=80, ignore_eos=False, json_schema=PERSON)
    _, res, report = parity(family(name), request, 7)
    assert report["verdict"] == "pass", report["verdict_note"]
    assert report["tokens_equal"] and report["max_abs_logit_diff"] <= TOL
    assert check_json(report["texts"]["harness"], PERSON)["valid"]
    assert res.constraint["mask_changed_tokens"] > 0 and res.chunks_inside_image > 0


def assert_fails_on_logits(report):
    """A negative control detected: the verdict fails and the logits moved past 1e-2."""
    assert report["verdict"] == "fail" and report["max_abs_logit_diff"] > 1e-2


def assert_images_change_the_output(name):
    """Re-drawn weights: another odd image moves tiny model ``name``'s first logits by more than
    0.05, far past the parity bound."""
    _, a = run(name, req(odd_images(1, seed=0), max_new_tokens=1))
    _, b = run(name, req(odd_images(1, seed=1), max_new_tokens=1))
    assert float((a.logits[0] - b.logits[0]).abs().max()) > 0.05


def vision_batches(name, tower: str, chunk_size):
    """The number of tiles each call of tiny model ``name``'s vision tower (``model.model.<tower>``)
    gets while two odd images run in chunks of ``chunk_size``, and the run's context."""
    module = getattr(family(name).model.model, tower)
    batches = []
    forward = module.forward

    def counting(*a, **k):
        batches.append((k["pixel_values"] if "pixel_values" in k else a[0]).shape[0])
        return forward(*a, **k)

    module.forward = counting
    try:
        ctx, _ = run(name, req(2), chunk_size)
    finally:
        del module.forward
    return batches, ctx


def assert_recognised(family_name, names, others=()):
    """Each of ``names`` (tiny or replica), and its folder passed as a plain path, resolves to
    ``family_name``; none of the ``others`` family modules claims the folder."""
    from models.registry import resolve

    for name in names:
        resolved = resolve(name)
        assert resolved.family.FAMILY == family_name
        assert resolve(str(resolved.path)).family.FAMILY == family_name  # as a plain folder
        assert not any(other.matches(resolved.path) for other in others)


def assert_exact(report, n_images, where=None):
    """Pass verdict, ids and pixels equal the processor's, tokens identical and |Δlogit| <= TOL
    against every reference run, one encoder call per image."""
    assert report["verdict"] == "pass", (where, report["verdict_note"])
    inputs = report["input_comparison"]
    assert inputs["equal"] and inputs["prompt_ids"]["equal"]
    assert [e["max_abs_diff"] for e in inputs["pixel_values"]] == [0.0] * n_images
    assert {"generate", "generate_chunked"} <= set(report["reference"])
    for name, ref in report["reference"].items():
        assert ref["tokens_equal"] and ref["max_abs_logit_diff"] <= TOL, (where, name, ref)
    assert report["encoder_calls"] == {"harness": n_images, "images": n_images}


def assert_parity_grid(name, n_images, chunks=CHUNKS, *, small_chunks_cut=True):
    """Exact parity of ``req(n_images)`` at every chunk size of ``chunks``; some chunk ends
    inside an image (every chunk of 7 or less when ``small_chunks_cut``)."""
    fam = family(name)
    inside = 0
    for chunk in chunks:
        ctx, res, report = parity(fam, req(n_images), chunk)
        assert_exact(report, n_images, chunk)
        assert res.encoder_calls == len(ctx.images) == n_images and len(res.tokens) == 4
        if small_chunks_cut and chunk is not None and chunk <= 7:
            assert res.chunks_inside_image > 0, chunk
        inside += res.chunks_inside_image
    assert inside > 0


def assert_positions_match_rope_index(name):
    """The context's M-RoPE positions (two images) equal transformers' get_rope_index, and the
    decode offset its delta."""
    import torch

    fam = family(name)
    ctx = TextAndVisionTokenizer(fam).new_context(req(2))
    inputs = fam.context_inputs(ctx)
    ref, delta = fam.model.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"])
    ours = fam.prompt_positions(ctx)
    assert torch.equal(ours[1:], ref)
    assert fam.position_state(ours) == int(delta)


def assert_pixels_mismatch_detected(report):
    """The report names the pixel difference and the outputs moved."""
    assert report["verdict"] == "input mismatch"
    assert report["verdict_note"].startswith("image 0 pixel values differ by max")
    assert report["max_abs_logit_diff"] > 1e-2


def assert_refused_before_any_forward(fam, message, request=None):
    """Generating ``request`` (one odd image) on ``fam`` is refused with one line matching
    ``message`` before the model's forward runs."""
    from harness.pipelines.vlm import VLMPipeline

    calls = []
    for module in (fam.model, fam.model.model):
        forward = module.forward
        module.forward = lambda *a, _f=forward, **k: calls.append(1) or _f(*a, **k)
    with pytest.raises(RequestError, match=message) as err:
        VLMPipeline(fam).generate(TextAndVisionTokenizer(fam).new_context(request or req(1)))
    assert "\n" not in str(err.value) and calls == []


def assert_dropped_encoder_row_refused(cls, name, message):
    """Family class ``cls`` with its encoder returning one row short is refused (two images)
    with ``message`` before the language model runs."""
    from harness.pipelines.vlm import VLMPipeline

    class Dropped(cls):
        def encode(self, image):
            return super().encode(image)[:-1]

    fam = with_rule(Dropped, name)
    ctx = TextAndVisionTokenizer(fam).new_context(req(2))
    with pytest.raises(RequestError, match=message):
        VLMPipeline(fam).generate(ctx)


def assert_replica_files(name, spec) -> Path:
    """Replica ``name``'s folder holds ``spec``'s config (shrunk), its generation config and
    sharded weights; returns the folder."""
    from models.registry import resolve
    from models.vlm_common import deep_update

    folder = resolve(name).path
    assert json.loads((folder / "config.json").read_text()) == deep_update(spec["config"],
                                                                          spec["shrink"])
    assert json.loads((folder / "generation_config.json").read_text()) == \
        spec["generation_config"]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    return folder


def chat_context(name, messages):
    """``messages`` with two odd images on model ``name``: (family, context); the context's ids
    and pixels are asserted equal to the processor's."""
    from harness.parity.vlm import compare_inputs, reference_inputs

    fam = family(name)
    request = TextGenerationRequest(prompt=messages, images=odd_images(2), max_new_tokens=2)
    ctx = TextAndVisionTokenizer(fam).new_context(request)
    result = compare_inputs(fam, ctx, reference_inputs(fam, request))
    assert result["equal"], result["first_difference"]
    return fam, ctx


def cli_parity(tmp_path, model, family_name, max_new_tokens):
    """``harness.generate --parity`` on two odd images in PNG files, chunks of 7: it exits 0
    and its parity.json passes with one encoder call per image and a chunk inside an image;
    returns (parity.json, result.json) as dicts."""
    from PIL import Image

    paths = []
    for i, pixels in enumerate(odd_images(2)):
        paths.append(str(tmp_path / f"p{i}.png"))
        Image.fromarray(pixels).save(paths[-1])
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "harness.generate", "--model", model, "--prompt", "What is shown?",
         "--image", paths[0], "--image", paths[1], "--max-new-tokens", str(max_new_tokens),
         "--chunk-size", "7", "--parity", "--output-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "parity.json").read_text())
    result = json.loads((out / "result.json").read_text())
    assert report["verdict"] == "pass" and report["family"] == family_name
    assert report["encoder_calls"] == {"harness": 2, "images": 2}
    assert report["chunks"]["inside_image"] > 0
    assert result["model"]["family"] == family_name
    return report, result
