"""Sampling parity: the harness's seeded draw against ``torch.manual_seed(s);
model.generate(do_sample=True, ...)``, settings resolved from the folder's generation_config, the
per-token report fields, the CLI, and a differential test of the warpers against transformers'."""
from __future__ import annotations

import itertools
import json
import shutil

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.vlm_fixtures import family, request, run, tokenizer

#: (family, images, chunk size, temperature, top_k, top_p, seed): top-p < 1, top-k > 0, both,
#: transformers' default top-k 50 (top_k None: the user did not set it), an image and chunked
#: prefill that cuts images (llava, qwen2-vl) or is aligned to them (gemma3).
COMBOS = [
    ("tiny-llava", 1, None, 0.7, None, None, 1),
    ("tiny-llava", 2, 7, 1.3, 20, 0.9, 5),
    ("tiny-qwen2-vl", 1, 3, 0.9, 0, 0.8, 11),
    ("tiny-qwen2-vl", 2, 7, 1.0, 8, None, 2),
    ("tiny-gemma3", 2, 7, 0.6, None, 0.95, 3),
]


def _given(temperature, top_k, top_p) -> dict:
    return {k: v for k, v in (("temperature", temperature), ("top_k", top_k),
                              ("top_p", top_p)) if v is not None}


def _reference_draw(fam, req, n: int, seed: int, **options) -> list[int]:
    """What a user of transformers gets: the processor's inputs, the global RNG seeded, then
    ``generate(do_sample=True)`` with only the options they set (EOS off: exactly n tokens)."""
    import torch

    from harness.parity.vlm import reference_inputs

    inputs = reference_inputs(fam, req)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = fam.model.generate(**inputs, do_sample=True, **options, max_new_tokens=n,
                                 eos_token_id=None)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def _copy_with_generation_config(name: str, tmp_path, **fields):
    """A copy of tiny model ``name`` whose generation_config.json also sets ``fields``."""
    from models.registry import resolve

    folder = tmp_path / name
    resolved = resolve(name)
    shutil.copytree(resolved.path, folder)
    path = folder / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return resolved.family.load(folder)


@pytest.mark.parametrize("name, n_images, chunk, temperature, top_k, top_p, seed", COMBOS)
def test_sampled_tokens_equal_generate(name, n_images, chunk, temperature, top_k, top_p, seed):
    from harness.pipelines.vlm import resolve_sampling

    fam = family(name)
    given_opts = _given(temperature, top_k, top_p)
    resolved = resolve_sampling(fam.folder, given_opts)
    req = request(n_images, temperature=temperature, top_k=resolved["top_k"],
                  top_p=resolved["top_p"], seed=seed, max_new_tokens=8)
    ctx, res = run(name, req, chunk)
    assert res.tokens == _reference_draw(fam, req, 8, seed, **given_opts)
    if chunk is not None:
        assert len(res.chunks) > 1
    # another seed draws other tokens (the comparison is not vacuous)
    other = request(n_images, temperature=temperature, top_k=resolved["top_k"],
                    top_p=resolved["top_p"], seed=seed + 1, max_new_tokens=8)
    assert run(name, other, chunk)[1].tokens != res.tokens


def test_defaults_come_from_the_folders_generation_config(tmp_path):
    """Gemma 3's shipped top_k 64 / top_p 0.95: the harness resolves them from the file as
    generate() does when the user gives only a temperature and a seed."""
    from harness.parity.vlm import run_parity
    from harness.pipelines.vlm import resolve_sampling
    from harness.tokenizers import TextAndVisionTokenizer

    fam = _copy_with_generation_config("tiny-gemma3", tmp_path, top_k=64, top_p=0.95)
    resolved = resolve_sampling(fam.folder, {"temperature": 0.9})
    assert (resolved["top_k"], resolved["top_p"]) == (64, 0.95)
    assert resolved["sources"] == {"temperature": "user", "top_k": "generation_config.json",
                                   "top_p": "generation_config.json"}
    req = request(1, temperature=0.9, top_k=64, top_p=0.95, seed=7, max_new_tokens=6)
    _, res = run("tiny-gemma3", req, 5, fam=fam)
    assert res.tokens == _reference_draw(fam, req, 6, 7, temperature=0.9)
    report = run_parity(fam, TextAndVisionTokenizer(fam), req, res, 5,
                        user_sampling={"temperature": 0.9})
    assert report["verdict"] == "pass" and report["sampling_note"] is None
    ref = report["sampling"]["reference"]
    assert [p["name"] for p in ref["processors"]] == ["TemperatureLogitsWarper",
                                                      "TopKLogitsWarper", "TopPLogitsWarper"]
    assert (ref["top_k"], ref["top_p"], ref["seed"]) == (64, 0.95, 7)
    # a harness that ignored the folder (transformers' bare defaults) is an input mismatch
    bare = request(1, temperature=0.9, top_k=50, top_p=1.0, seed=7, max_new_tokens=6)
    _, res2 = run("tiny-gemma3", bare, 5, fam=fam)
    report2 = run_parity(fam, TextAndVisionTokenizer(fam), bare, res2, 5,
                         user_sampling={"temperature": 0.9})
    assert report2["verdict"] == "input mismatch"
    assert "TopKLogitsWarper(top_k=50" in report2["verdict_note"]


def test_a_processor_the_harness_lacks_is_named(tmp_path):
    """A folder whose generation_config adds a repetition penalty: generate() applies it, the
    harness cannot; the report says so (input mismatch) instead of comparing silently."""
    from harness.parity.vlm import run_parity
    from harness.tokenizers import TextAndVisionTokenizer

    fam = _copy_with_generation_config("tiny-llava", tmp_path, repetition_penalty=1.3)
    req = request(1, temperature=0.8, top_k=50, seed=2, max_new_tokens=4)
    _, res = run("tiny-llava", req, None, fam=fam)
    report = run_parity(fam, TextAndVisionTokenizer(fam), req, res, None,
                        user_sampling={"temperature": 0.8})
    assert report["verdict"] == "input mismatch"
    assert "RepetitionPenaltyLogitsProcessor(penalty=1.3" in report["sampling_note"]
    assert report["sampling"]["first_difference"] in report["verdict_note"]


def test_nothing_else_consumes_the_rng():
    """n sampled tokens cost exactly n multinomial draws of the vocabulary on both sides: the
    global RNG after generate() and the harness's generator end in the same state as a fresh
    generator that made n such draws."""
    import torch

    fam = family("tiny-qwen2-vl")
    n, seed, vocab = 6, 9, fam.vocab_size
    req = request(1, temperature=0.8, top_k=50, seed=seed, max_new_tokens=n)
    replay = torch.Generator().manual_seed(seed)
    for _ in range(n):
        torch.multinomial(torch.full((1, vocab), 1.0 / vocab), 1, generator=replay)
    _reference_draw(fam, req, n, seed, temperature=0.8)
    assert torch.equal(torch.get_rng_state(), replay.get_state())
    gen = torch.Generator().manual_seed(seed)
    _, res = run("tiny-qwen2-vl", req, 5, generator=gen)
    assert len(res.tokens) == n and torch.equal(gen.get_state(), replay.get_state())


def test_report_per_token_prompt_text_and_image_ranges():
    import torch

    from harness.parity.vlm import run_parity

    req = request(2, temperature=1.1, top_k=30, top_p=0.9, seed=4, max_new_tokens=6)
    ctx, res = run("tiny-llava", req, 7)
    report = run_parity(family("tiny-llava"), tokenizer("tiny-llava"), req, res, 7)
    assert report["verdict"] == "pass" and report["sampling"]["mode"] == "sampled"
    decode = family("tiny-llava").tokenizer.decode
    rows = report["per_token"]
    assert [r["position"] for r in rows] == list(range(6))
    for i, row in enumerate(rows):
        tok = res.tokens[i]
        assert row["harness"]["token"] == row["reference"]["token"] == tok
        assert row["harness"]["text"] == decode([tok])
        assert row["harness"]["logit"] == pytest.approx(float(res.logits[i][tok]), abs=0)
        assert abs(row["reference"]["logit"] - row["harness"]["logit"]) <= 1e-4
        top = row["harness_top"]
        assert len(top) == 5 and top[0][0] == int(torch.argmax(res.logits[i]))
        assert [t[2] for t in top] == sorted((t[2] for t in top), reverse=True)
        assert [t[0] for t in top] == [t[0] for t in row["reference_top"]]
        assert row["max_abs_logit_diff"] <= 1e-4
    assert report["prompt_text"].count("<image>×16") == 2 and "<image><image>" not in \
        report["prompt_text"]
    assert report["prompt_text"].startswith("<s>")  # special tokens visible
    assert report["image_ranges"] == [[im.start_idx, im.end_idx] for im in ctx.images]
    assert report["texts"]["harness"] == decode(res.tokens, skip_special_tokens=True)
    assert report["texts"]["reference"] == report["texts"]["harness"]
    assert report["chunks"]["ranges"] and report["chunks"]["inside_image"] > 0


def test_per_token_stops_after_the_first_divergence():
    import torch

    from harness.parity.vlm import ReferenceRun, per_token

    rows = [torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) + i for i in range(4)]
    ref = ReferenceRun([6, 6, 5, 6], rows, 0.0, None)
    out = per_token(lambda ids: f"t{ids[0]}", [6, 6, 4, 6], rows, ref)
    assert [r["position"] for r in out] == [0, 1, 2]
    assert out[2]["harness"] == {"token": 4, "text": "t4", "logit": 6.0}
    assert out[2]["reference"]["token"] == 5 and out[2]["max_abs_logit_diff"] == 0.0
    assert out[0]["harness_top"][0] == [6, "t6", 6.0]


def test_pixtral_prompt_text_counts_each_placeholder_kind():
    from harness.parity.vlm import prompt_text

    fam = family("tiny-pixtral")
    ctx = tokenizer("tiny-pixtral").new_context(request(1))
    text = prompt_text(fam.tokenizer.decode, ctx.tokens.prompt, ctx.vision_token_ids)
    im = ctx.images[0]
    span = ctx.tokens.prompt[im.start_idx:im.end_idx].tolist()
    img, brk = ctx.vision_token_ids
    assert f"[IMG]×{span.count(img)}+[IMG_BREAK]×{span.count(brk)}" in text


# -- the warpers against transformers' own, on crafted logits --------------------------------------
def _hf_processors(temperature: float, top_k: int, top_p: float):
    """The list generate() builds for these options (transformers' own order and classes)."""
    model = family("tiny-llava").model
    gc, _ = model._prepare_generation_config(None, do_sample=True, temperature=temperature,
                                             top_k=top_k, top_p=top_p)
    return model._get_logits_processor(generation_config=gc)


_ONE_BELOW_ONE = 0.9999999403953552  # the float32 just below 1.0
#: (scores, temperature, top_k, top_p) on which every other order of the three warpers gives
#: another result than transformers' (temperature, top-k, top-p): rounding ties after the
#: temperature, and top-p measured before/after the temperature and the top-k cut.
DISCRIMINATING = [([1.0, _ONE_BELOW_ONE, 0.5, -1.0], 0.99, 1, 0.9999),
                  ([2.0, 1.0, 0.9, 0.0, -1.0], 0.5, 4, 0.7),
                  ([2.0, 1.0, 0.9, 0.0, -1.0], 2.0, 2, 0.5)]


def test_crafted_logits_tell_every_warper_order_apart():
    """Each of the five other orders differs from transformers' on some crafted case, so the
    differential test below fails if the harness's order changes."""
    import torch

    for order in itertools.permutations(range(3)):
        if order == (0, 1, 2):
            continue
        differs = False
        for scores, t, k, p in DISCRIMINATING:
            procs = list(_hf_processors(t, k, p))
            assert [type(x).__name__ for x in procs] == ["TemperatureLogitsWarper",
                                                         "TopKLogitsWarper", "TopPLogitsWarper"]
            base = torch.tensor([scores], dtype=torch.float32)
            hf, other = base.clone(), base.clone()
            for proc in procs:
                hf = proc(None, hf)
            for i in order:
                other = procs[i](None, other)
            differs |= not torch.equal(hf, other)
        assert differs, order


_scores = st.lists(st.one_of(st.sampled_from([0.0, 1.0, -1.0, 2.5, _ONE_BELOW_ONE]),
                             st.floats(-30, 30, width=32)), min_size=2, max_size=40)


@settings(max_examples=150, deadline=None)
@given(scores=_scores,
       temperature=st.one_of(st.sampled_from([1.0, 0.99, 0.5, 2.0]), st.floats(0.05, 4.0)),
       top_k=st.integers(0, 45),
       top_p=st.one_of(st.just(1.0), st.floats(0.01, 1.0)),
       seed=st.integers(0, 2 ** 31 - 1))
@example(*DISCRIMINATING[0], 0)
@example(*DISCRIMINATING[1], 0)
@example(*DISCRIMINATING[2], 0)
def test_warp_and_draw_equal_transformers(scores, temperature, top_k, top_p, seed):
    """``warp`` equals generate()'s processor list bit for bit (-inf where it filters), the
    described steps equal that list, and the seeded draw picks the same token."""
    import torch

    from harness.context import SamplingParams
    from harness.parity.vlm import describe_processor
    from harness.pipelines.vlm import sample_token, warp, warper_steps

    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    procs = _hf_processors(temperature, top_k, top_p)
    logits = torch.tensor(scores, dtype=torch.float32)
    hf = procs(None, logits[None].clone())
    assert torch.equal(warp(logits[None].clone(), params), hf)
    assert warper_steps(params) == [describe_processor(p) for p in procs]
    probs = torch.nn.functional.softmax(hf, dim=-1)
    ref = int(torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)))
    assert sample_token(logits, params, torch.Generator().manual_seed(seed)) == ref


def test_cli_sampled_parity(tmp_path):
    """``--temperature 0.8 --seed 3 --parity`` compares the sampled run itself: exit 0, pass,
    no note about a greedy stand-in; the resolved settings are in result.json."""
    import numpy as np
    from PIL import Image

    from tests.test_cli_text import _cli

    pic = tmp_path / "p.png"
    Image.fromarray((np.random.RandomState(1).rand(40, 52, 3) * 255).astype(np.uint8)).save(pic)
    out = tmp_path / "run"
    proc = _cli("--model", "tiny-llava", "--prompt", "What is shown?", "--image", str(pic),
                "--max-new-tokens", "6", "--chunk-size", "9", "--temperature", "0.8",
                "--seed", "3", "--parity", "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    parity = json.loads((out / "parity.json").read_text())
    result = json.loads((out / "result.json").read_text())
    assert parity["verdict"] == "pass" and parity["tokens_equal"]
    assert parity["sampling_note"] is None and "greedy" not in (out / "parity.md").read_text()
    assert parity["harness"]["tokens"] == result["token_ids"]
    assert parity["sampling"]["equal"] and parity["sampling"]["harness"]["seed"] == 3
    assert result["resolved"]["top_k"] == 50 and not result["resolved"]["greedy"]
    assert result["resolved"]["sampling_sources"]["top_k"] == "transformers default"
    assert len(parity["per_token"]) == len(result["token_ids"])


def test_top_k_without_temperature_is_said_to_do_nothing(tmp_path):
    """Greedy stays the default; a --top-k given without --temperature is reported unused."""
    import argparse

    from harness import vlm_run
    from models.registry import resolve

    args = argparse.Namespace(prompt="hi", max_new_tokens=3, top_k=5, parity=True)
    payload = vlm_run.run(args, resolve("tiny-llava"), tmp_path)
    assert payload["resolved"]["greedy"] and payload["parity"]["verdict"] == "pass"
    note = payload["parity"]["sampling_note"]
    assert "--top-k has no effect at temperature 0" in note
    assert json.loads((tmp_path / "parity.json").read_text())["sampling"]["mode"] == "greedy"
