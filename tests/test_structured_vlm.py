"""Structured output through the VLM loop on every tiny family: outputs that parse and validate,
parity with generate() + llguidance's own logits processor (text-only and with images, chunked
prefill, greedy and sampled), a dead matcher, stop strings and the length limit, the command."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.context import GenerationStatus
from harness.structured import check_json
from tests.test_structured import LARK, REGEX, SCHEMAS, TINY_VLMS
from tests.vlm_fixtures import family, parity, request, run

ROOT = Path(__file__).resolve().parents[1]
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 6},
    "tags": {"type": "array", "maxItems": 3, "items": {"enum": ["a", "bb", 1]}},
    "n": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["name", "tags", "n"], "additionalProperties": False}


def _text(name, res) -> str:
    return family(name).tokenizer.decode(res.tokens, skip_special_tokens=True)


def _eos(name) -> set[int]:
    return family(name).eos_token_ids()


@pytest.mark.parametrize("name", TINY_VLMS)
def test_every_family_gives_valid_json_text_only(name):
    ctx, res = run(name, request(0, max_new_tokens=80, ignore_eos=False, json_schema=PERSON))
    text = _text(name, res)
    assert res.final_status is GenerationStatus.END_OF_SEQUENCE
    assert res.tokens[-1] in _eos(name) and not _eos(name) & set(res.tokens[:-1])
    assert check_json(text, PERSON)["valid"], text
    assert res.constraint["dead_matcher"] is None
    assert res.constraint["masked_steps"] == len(res.tokens)
    assert 0 < res.constraint["mask_changed_tokens"] <= len(res.tokens)
    # the mask mattered: unconstrained, the same request does not give this text
    _, free = run(name, request(0, max_new_tokens=len(res.tokens), ignore_eos=False))
    assert free.tokens != res.tokens


@pytest.mark.parametrize("name", TINY_VLMS)
def test_parity_with_images_and_chunked_prefill(name, tmp_path):
    """Tokens identical and pre-mask logits within 1e-4 against generate() with llguidance's
    logits processor, two images, chunks of 7 that cut through images where allowed."""
    ctx, res, rep = parity(family(name), request(2, max_new_tokens=80, ignore_eos=False,
                                                 json_schema=PERSON), chunk_size=7)
    assert rep["verdict"] == "pass", rep["verdict_note"]
    assert rep["tokens_equal"] and rep["max_abs_logit_diff"] <= 1e-4
    assert len(rep["chunks"]["ranges"]) > 1
    assert rep["texts"]["harness"] == rep["texts"]["reference"]
    assert check_json(rep["texts"]["harness"], PERSON)["valid"]
    c = rep["constraint"]
    assert c["kind"] == "json_schema" and json.loads(c["source"]) == PERSON
    assert c["whitespace"] == {"flexible": False, "item_separator": ",", "key_separator": ":"}
    assert c["mask_changed_tokens"] == res.constraint["mask_changed_tokens"] > 0
    assert c["dead_matcher"] is None
    # what the reference applied is compared too: llguidance's processor on both sides
    procs = rep["sampling"]["reference"]["processors"]
    assert procs == [{"name": "LLGuidanceLogitsProcessor", "kind": "json_schema"}]
    assert rep["sampling"]["equal"]
    if name == TINY_VLMS[0]:  # the written report shows the constraint
        from harness.parity.vlm import write_report

        js, md = write_report(rep, tmp_path)
        assert json.loads(js.read_text())["constraint"]["kind"] == "json_schema"
        assert "## Constraint (json_schema, llguidance)" in md.read_text()


def test_sampled_parity_with_a_constraint():
    ctx, res, rep = parity(family("tiny-qwen2-vl"), request(
        1, max_new_tokens=80, ignore_eos=False, json_schema=PERSON, temperature=0.8, top_k=20,
        seed=3), chunk_size=5)
    assert rep["verdict"] == "pass", rep["verdict_note"]
    assert rep["tokens_equal"] and rep["sampling"]["mode"] == "sampled"
    names = [p["name"] for p in rep["sampling"]["harness"]["processors"]]
    assert names == ["LLGuidanceLogitsProcessor", "TemperatureLogitsWarper", "TopKLogitsWarper"]
    assert check_json(rep["texts"]["harness"], PERSON)["valid"]


def test_negative_control_a_reference_without_the_constraint_fails():
    """The same harness run against an unconstrained reference: the comparison must fail."""
    from harness.parity.vlm import compare, reference_generate

    name = "tiny-llava"
    fam = family(name)
    ctx, res = run(name, request(1, max_new_tokens=60, ignore_eos=False, json_schema=PERSON))
    ref = reference_generate(fam, request(1, max_new_tokens=60), len(res.tokens))
    cmp = compare(res.tokens, res.logits, ref)
    assert not cmp["tokens_equal"] and cmp["near_tie"] and not cmp["near_tie"]["within_top_k"]


@pytest.mark.parametrize("key", sorted(SCHEMAS))
def test_schema_features_parse_and_validate(key):
    name = "tiny-pixtral"
    ctx, res = run(name, request(1, max_new_tokens=200, ignore_eos=False,
                                 json_schema=SCHEMAS[key]))
    text = _text(name, res)
    assert res.final_status is GenerationStatus.END_OF_SEQUENCE, text
    checked = check_json(text, SCHEMAS[key])
    assert checked["valid"], (text, checked)
    assert ctx._matcher.is_accepting() and not re.search(r"[\s]", text.replace(" ", "_")) or \
        key == "nested"  # the only schema whose strings may hold whitespace


def test_lark_grammar_and_regex_through_the_loop():
    name = "tiny-gemma3"
    for kw, pattern in (({"grammar": LARK}, r"yes|no|maybe [1-9][0-9]?"), ({"regex": REGEX},
                                                                            REGEX)):
        ctx, res = run(name, request(0, max_new_tokens=20, ignore_eos=False, **kw), chunk_size=4)
        assert re.fullmatch(pattern, _text(name, res)), (kw, _text(name, res))
        assert res.final_status is GenerationStatus.END_OF_SEQUENCE


def test_a_dead_matcher_goes_unconstrained_without_crash(caplog):
    """A matcher killed by a token it never allowed: the loop samples unconstrained from there
    (no NaN, no error), reports where once, and reaches the length limit."""
    name = "tiny-llava"
    from harness.pipelines.vlm import VLMPipeline
    from tests.vlm_fixtures import tokenizer

    for temperature in (0.0, 0.9):
        ctx = tokenizer(name).new_context(request(0, max_new_tokens=6, ignore_eos=True,
                                                  regex="ab", temperature=temperature, seed=1))
        ctx._matcher.consume_token(family(name).tokenizer.convert_tokens_to_ids("z"))
        with caplog.at_level("WARNING", logger="harness.structured"):
            res = VLMPipeline(family(name)).generate(ctx, keep_logits=True)
        assert res.final_status is GenerationStatus.MAXIMUM_LENGTH and len(res.tokens) == 6
        assert res.constraint["dead_matcher"]["position"] == 0
        assert res.constraint["masked_steps"] == 0
        assert all(np.isfinite(lg.numpy()).all() for lg in res.logits)
    assert len([r for r in caplog.records if "died" in r.getMessage()]) == 2  # once per run


def test_stop_strings_and_the_length_limit_cut_the_output():
    name = "tiny-qwen2-vl"
    # a stop string inside the constrained text ends the request early: incomplete, no error
    ctx, res = run(name, request(0, max_new_tokens=30, ignore_eos=False, regex=r"ab-[0-9]{3}",
                                 stop=["-"]))
    assert res.stop_string == "-" and _text(name, res) == "ab-"
    assert res.final_status is GenerationStatus.END_OF_SEQUENCE
    assert not ctx._matcher.is_accepting() and not ctx._matcher.is_error()
    # the length limit cuts a JSON object: MAXIMUM_LENGTH, not JSON (reported, not raised)
    ctx, res = run(name, request(0, max_new_tokens=5, ignore_eos=False, json_schema=PERSON))
    assert res.final_status is GenerationStatus.MAXIMUM_LENGTH and len(res.tokens) == 5
    checked = check_json(_text(name, res), PERSON)
    assert checked["parsed"] is None and not checked["valid"]
    assert _text(name, res).startswith('{"')
    # ignoring EOS, a complete grammar still ends the request (only EOS could follow)
    ctx, res = run(name, request(0, max_new_tokens=30, ignore_eos=True, regex="ab"))
    assert _text(name, res) == "ab" and res.final_status is GenerationStatus.END_OF_SEQUENCE


# -- the command ----------------------------------------------------------------------------------
def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "harness.generate", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_json_schema(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(PERSON))
    picture = tmp_path / "p.png"
    Image.fromarray((np.random.RandomState(0).rand(40, 52, 3) * 255).astype(np.uint8)).save(
        picture)
    out = tmp_path / "run"
    proc = _cli("--model", "tiny-llava", "--prompt", "Who is it? Answer in JSON.", "--image",
                str(picture), "--json-schema", str(schema), "--max-new-tokens", "80",
                "--chunk-size", "7", "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    c = result["constraint"]
    assert c["kind"] == "json_schema" and c["complete"] and c["valid"]
    assert c["parsed"] == json.loads(result["text"]) and result["text"] in proc.stdout
    assert result["request"]["constraint"] == "json_schema"
    assert c["mask_changed_tokens"] > 0 and c["dead_matcher"] is None
    assert "constraint json_schema: output complete; JSON valid against the schema" in proc.stderr


def test_cli_refuses_a_bad_constraint_before_loading(tmp_path):
    out = tmp_path / "run"
    # --device cuda is refused only after the constraint check: the constraint error wins
    proc = _cli("--model", "tiny-llava", "--prompt", "x", "--device", "cuda", "--json-schema",
                '{"type": "string", "minLength": 5, "maxLength": 2}', "--output-dir", str(out))
    assert proc.returncode == 2 and not out.exists()
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --json-schema cannot be enforced") and \
        "minLength (5) is greater than maxLength (2)" in lines[-1]
    grammar = tmp_path / "g.lark"
    grammar.write_text("start: missing_rule\n")
    proc = _cli("--model", "tiny-llava", "--prompt", "x", "--grammar", str(grammar),
                "--output-dir", str(out))
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --grammar cannot be enforced")
