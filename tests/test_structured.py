"""Structured output without a forward pass: constraint checks, the llguidance backend and its
tokenizer bridge on every tiny and replica tokenizer, seeded random walks through the masks
(every finished output parses and validates), the context's matcher step and the mask step's
dead-matcher handling."""
from __future__ import annotations

import copy
import functools
import json
import pickle
import re

import numpy as np
import pytest

from _fast.token_bitmask import allowed_tokens
from harness.errors import RequestError
from harness.structured import (ConstrainedDecoder, check_constraint, check_json, new_matcher,
                                parse_constraint)
from harness.structured.bridge import bridge_builds, tokenizer_bridge

from tests import vlm_fixtures as vf

# JSON Schemas with every feature the issue names; bounded so a random walk ends.
NAME = {"type": "string", "pattern": "^[a-z]{1,6}$"}
SCHEMAS = {
    "nested": {"type": "object", "properties": {
        "name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "address": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 5}, "zip": {"type": "string",
                                                               "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"], "additionalProperties": False}},
        "required": ["name", "age", "address"], "additionalProperties": False},
    "array_enum": {"type": "array", "minItems": 1, "maxItems": 4,
                   "items": {"enum": ["red", "green", "blue", 7, None]}},
    "anyof": {"anyOf": [{"type": "integer", "minimum": -5, "maximum": 5},
                        {"type": "object", "properties": {"ok": {"type": "boolean"}},
                         "required": ["ok"], "additionalProperties": False}]},
    "ref": {"$defs": {"point": {"type": "object", "properties": {
        "x": {"type": "integer", "minimum": 0, "maximum": 1},  # "number" digits are unbounded
        "y": {"type": "integer", "exclusiveMinimum": 0, "maximum": 10}},
        "required": ["x", "y"], "additionalProperties": False}},
        "type": "object", "properties": {
            "a": {"$ref": "#/$defs/point"}, "path": {"type": "array", "maxItems": 2,
                                                     "items": {"$ref": "#/$defs/point"}}},
        "required": ["a", "path"], "additionalProperties": False},
}


def vlm_names(kind: str) -> tuple[str, ...]:
    """Every registered VLM family's tiny (``TINY_NAMES``) or replica (``REPLICA_NAMES``) models:
    a family added later is covered without touching these tests."""
    from models.registry import FAMILY_MODULES, family_module

    mods = [family_module(f) for f in FAMILY_MODULES]
    return tuple(n for m in mods if m.MODALITY == "text" for n in getattr(m, kind, ()))


TINY_VLMS = vlm_names("TINY_NAMES")
REPLICA_VLMS = vlm_names("REPLICA_NAMES")
LARK = r"""
start: answer
answer: "yes" | "no" | "maybe " NUMBER
NUMBER: /[1-9][0-9]?/
"""
REGEX = r"[a-c]{2}-[0-9]{1,3}"


@functools.lru_cache(maxsize=None)
def tok_info(name: str):
    """(hf tokenizer, model vocab size, model EOS ids) of a tiny or replica folder, no weights."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from models.registry import resolve

    path = resolve(name).path
    tok = AutoTokenizer.from_pretrained(path)
    vocab = AutoConfig.from_pretrained(path).get_text_config().vocab_size
    eos = GenerationConfig.from_pretrained(path).eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [tok.eos_token_id])
    return tok, int(vocab), eos


def walk(matcher, vocab: int, eos: list[int], seed: int, limit: int = 400) -> list[int]:
    """Seeded random walk: at each step a uniformly drawn allowed token, EOS preferred once the
    output is complete (stops there)."""
    rs = np.random.RandomState(seed)
    mask = np.zeros((matcher.vocab_size + 31) // 32, np.int32)
    out = []
    for _ in range(limit):
        matcher.fill_bitmask(mask)
        allowed = np.flatnonzero(allowed_tokens(mask, vocab))
        assert allowed.size, f"dead mask after {out}"
        ends = [t for t in allowed if t in eos]
        if ends and (rs.rand() < 0.5 or len(ends) == len(allowed)):
            return out
        token = int(rs.choice([t for t in allowed if t not in eos]))
        assert matcher.consume_token(token), matcher.error
        out.append(token)
    raise AssertionError("random walk did not finish")


# -- constraint parsing and refusals (no model) --------------------------------------------------
def test_json_schema_from_dict_text_and_file(tmp_path):
    schema = SCHEMAS["nested"]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(schema))
    for given in (schema, json.dumps(schema), str(path)):
        c = parse_constraint(json_schema=given)
        assert c.kind == "json_schema" and c.schema == schema
    rep = c.report(limit=20)
    assert rep["truncated"] and len(rep["source"]) == 20 and rep["source_chars"] > 20
    assert rep["whitespace"] == {"flexible": False, "item_separator": ",", "key_separator": ":"}


@pytest.mark.parametrize("kw, pattern", [
    ({"json_schema": "{not json"}, r"^json_schema is neither a file nor valid JSON"),
    ({"json_schema": "[1, 2]"}, r"^json_schema must be a JSON object"),
    ({"json_schema": {"type": "strin"}}, r"^json_schema is not a valid JSON Schema at type"),
    ({"json_schema": {"properties": {"a": {"minimum": "x"}}}},
     r"^json_schema is not a valid JSON Schema at properties/a/minimum"),
    ({"json_schema": {}, "regex": "a"}, r"^json_schema and regex were both given"),
    ({"regex": ""}, r"^regex must be a non-empty pattern"),
    ({"grammar": "  "}, r"^grammar must be a non-empty string"),
])
def test_bad_constraints_are_refused_in_one_line(kw, pattern):
    with pytest.raises(RequestError, match=pattern) as info:
        parse_constraint(**kw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kw, pattern", [
    ({"json_schema": {"type": "integer", "minimum": 5, "maximum": 3}},
     r"minimum \(5\) is greater than maximum \(3\)"),
    ({"json_schema": {"allOf": [{"type": "string"}, {"type": "number"}]}}, "Unsatisfiable"),
    ({"json_schema": {"type": "object", "required": ["a"], "properties": {},
                      "additionalProperties": False}}, "required property 'a'"),
    ({"json_schema": {"not": {"type": "string"}}}, "Unimplemented keys"),
    ({"json_schema": {"type": "array", "items": {"$ref": "#/$defs/nope"}}}, "does not exist"),
    ({"grammar": "start: foo"}, 'unknown name: "foo"'),
    ({"regex": "[0-9"}, "unclosed character class"),
])
def test_unenforceable_constraints_are_refused(kw, pattern):
    constraint = parse_constraint(**kw)
    field = next(iter(kw))
    with pytest.raises(RequestError, match=pattern) as info:
        check_constraint(constraint)
    msg = str(info.value)
    assert msg.startswith(f"{field} cannot be enforced") and "\n" not in msg


def test_a_valid_lark_grammar_and_regex_compile():
    for kw in ({"grammar": LARK}, {"regex": REGEX}):
        check_constraint(parse_constraint(**kw))
    assert parse_constraint(regex="a/b").lark == r"start: /a\/b/"


# -- the tokenizer bridge on every tokenizer layout ---------------------------------------------
@pytest.mark.parametrize("name", TINY_VLMS + REPLICA_VLMS)
def test_bridge_walks_a_json_text_on_every_tokenizer(name):
    """Each token of a valid output is allowed in turn, EOS only once the object is complete;
    the bridge is built once per tokenizer; ids the tokenizer lacks are never allowed."""
    tok, vocab, eos = tok_info(name)
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "n": {"type": "integer"}},
              "required": ["name", "n"], "additionalProperties": False}
    c = parse_constraint(json_schema=schema)
    m = new_matcher(c, tok, vocab, eos)
    builds = bridge_builds()
    assert tokenizer_bridge(tok, vocab, eos) is tokenizer_bridge(tok, vocab, eos)
    new_matcher(c, tok, vocab, eos)
    assert bridge_builds() == builds
    assert m.vocab_size == vocab
    text = '{"name":"Zoé 42","n":-17}'
    ids = tok.encode(text, add_special_tokens=False)
    mask = np.zeros((vocab + 31) // 32, np.int32)
    present = np.zeros(vocab, bool)
    present[[i for i in tok.get_vocab().values() if i < vocab]] = True
    for i, t in enumerate(ids):
        m.fill_bitmask(mask)
        allowed = allowed_tokens(mask, vocab)
        assert allowed[t], (name, i, tok.decode([t]))
        assert not allowed[eos].any()
        assert not (allowed & ~present).any(), "an id the tokenizer lacks is allowed"
        assert m.consume_token(t)
    m.fill_bitmask(mask)
    allowed = allowed_tokens(mask, vocab)
    assert m.is_accepting() and set(np.flatnonzero(allowed)) == set(eos)
    assert json.loads(tok.decode(ids)) == {"name": "Zoé 42", "n": -17}


# -- random walks: every finished output parses and validates ------------------------------------
@pytest.mark.parametrize("key", sorted(SCHEMAS))
def test_random_walks_parse_and_validate(key):
    tok, vocab, eos = tok_info("tiny-llava")
    c = parse_constraint(json_schema=SCHEMAS[key])
    for seed in range(6):
        ids = walk(new_matcher(c, tok, vocab, eos), vocab, eos, seed)
        text = tok.decode(ids)
        checked = check_json(text, SCHEMAS[key])
        assert checked["valid"], (text, checked)
        # whitespace pinned: the text is its own compact dump (no space between JSON tokens)
        assert text == json.dumps(checked["parsed"], separators=(",", ":"),
                                  ensure_ascii=False), text


def test_random_walks_of_a_lark_grammar_and_a_regex():
    tok, vocab, eos = tok_info("tiny-qwen2-vl")
    for kw, check in (({"grammar": LARK}, re.compile(r"yes|no|maybe [1-9][0-9]?")),
                      ({"regex": REGEX}, re.compile(REGEX))):
        c = parse_constraint(**kw)
        for seed in range(5):
            text = tok.decode(walk(new_matcher(c, tok, vocab, eos), vocab, eos, seed))
            assert check.fullmatch(text), (kw, text)


def test_check_json_reports_parse_and_schema_errors():
    schema = SCHEMAS["nested"]
    bad = check_json('{"name":"ab"', schema)
    assert bad["parsed"] is None and not bad["valid"] and bad["parse_error"]
    wrong = check_json('{"name":"AB","age":3,"address":{"city":"x","zip":"12345"}}', schema)
    assert wrong["parsed"]["name"] == "AB" and not wrong["valid"]
    assert wrong["validation_error"].startswith("at name:")


# -- the context: update() advances the matcher, never on a chunked-prefill step -----------------
def _ctx(**kw):
    return vf.tokenizer("tiny-llava").new_context(vf.request(0, ignore_eos=False, **kw))


def test_new_context_sets_the_fields_and_the_matcher():
    ctx = _ctx(json_schema=SCHEMAS["anyof"])
    assert json.loads(ctx.json_schema) == SCHEMAS["anyof"] and ctx.grammar is None
    assert ctx._matcher.constraint.kind == "json_schema" and ctx._matcher.tokens == []
    ctx = _ctx(regex=REGEX)
    assert ctx.json_schema is None and ctx.grammar == f"start: /{REGEX}/"
    ctx = _ctx(grammar=LARK)
    assert ctx.grammar == LARK and ctx._matcher.constraint.kind == "grammar"
    assert _ctx()._matcher is None


def test_new_context_refuses_before_the_prompt_is_encoded(monkeypatch):
    tok = vf.tokenizer("tiny-llava")
    monkeypatch.setattr(tok, "encode_prompt", lambda *a: pytest.fail("encoded the prompt"))
    with pytest.raises(RequestError, match="^json_schema cannot be enforced"):
        tok.new_context(vf.request(0, json_schema={"type": "integer", "minimum": 2,
                                                   "maximum": 1}))
    with pytest.raises(RequestError, match="^grammar and regex were both given"):
        tok.new_context(vf.request(0, grammar=LARK, regex=REGEX))


def test_text_context_takes_one_constraint():
    from harness.context import TextContext, TokenBuffer

    with pytest.raises(ValueError, match="json_schema and grammar were both given"):
        TextContext(max_length=8, tokens=TokenBuffer(np.arange(3)), json_schema="{}",
                    grammar='start: "a"')


def test_update_advances_the_matcher_but_not_on_chunked_prefill():
    ctx = _ctx(regex=REGEX)
    tok = vf.family("tiny-llava").tokenizer
    a, b = tok.convert_tokens_to_ids(["a", "b"])
    n = ctx.tokens.active_length
    ctx.tokens.chunk(n // 2)
    ctx.update(b)  # a chunked-prefill step: the token is dropped, the matcher does not move
    assert ctx._matcher.tokens == [] and ctx.tokens.generated_length == 0
    ctx.update(a)  # the last chunk: its token is the first generated one
    assert ctx._matcher.tokens == [a] and not ctx._matcher.is_error()
    ctx.update_with_future_token()  # a placeholder is never consumed ...
    assert ctx._matcher.tokens == [a]
    ctx.realize_future_token(b)  # ... the realized token is
    assert ctx._matcher.tokens == [a, b] and not ctx._matcher.is_error()
    ctx.update(a)  # "aba" breaks [a-c]{2}-: the matcher enters its error state
    assert ctx._matcher.is_error() and ctx.tokens.generated.tolist() == [a, b, a]


def test_context_copies_and_pickles_with_its_matcher():
    ctx = _ctx(json_schema=SCHEMAS["array_enum"])
    tok = vf.family("tiny-llava").tokenizer
    ctx.update(tok.convert_tokens_to_ids("["))
    for twin in (copy.deepcopy(ctx), pickle.loads(pickle.dumps(ctx))):
        assert twin == ctx and twin._matcher is not ctx._matcher
        twin.update(tok.convert_tokens_to_ids("7"))
        assert twin._matcher.tokens != ctx._matcher.tokens and twin != ctx


def test_stop_token_ids_are_allowed_only_when_accepting():
    tok = vf.family("tiny-llava").tokenizer
    stop = tok.convert_tokens_to_ids("<pad>")
    ctx = _ctx(regex="ab", stop_token_ids=[stop])
    m, mask = ctx._matcher, np.zeros(9, np.int32)
    for t in tok.convert_tokens_to_ids(["a", "b"]):
        m.fill_bitmask(mask)
        assert not allowed_tokens(mask, 260)[stop]
        ctx.update(t)
    m.fill_bitmask(mask)
    assert allowed_tokens(mask, 260)[[2, stop]].all()  # </s> and the stop id
    ctx.update(stop)
    assert ctx.is_done and not m.is_error()


# -- the mask step ------------------------------------------------------------------------------
def test_mask_step_counts_changed_argmax_and_keeps_allowed_logits():
    import torch

    tok = vf.family("tiny-llava").tokenizer
    ctx = _ctx(regex="b+")
    dec = ConstrainedDecoder(ctx._matcher)
    b = tok.convert_tokens_to_ids("b")
    logits = torch.linspace(0, 1, 260)  # argmax 259: not allowed
    masked = dec.mask(logits.clone(), 0)
    assert int(masked.argmax()) == b and masked[b] == logits[b]
    assert torch.isinf(masked).sum() == 259 and dec.mask_changed_tokens == 1
    ctx.update(b)
    logits[b] = 5.0  # argmax allowed now: no change counted; bf16 logits come back float32
    masked = dec.mask(logits.to(torch.bfloat16), 1)
    assert masked.dtype == torch.float32 and int(masked.argmax()) == b
    assert dec.report() == {"mask_changed_tokens": 1, "masked_steps": 2, "dead_matcher": None}


def test_a_dead_matcher_goes_unconstrained_and_is_reported_once(caplog):
    import torch

    tok = vf.family("tiny-llava").tokenizer
    ctx = _ctx(regex="ab")
    dec = ConstrainedDecoder(ctx._matcher)
    ctx.update(tok.convert_tokens_to_ids("z"))  # a token the grammar never allowed
    logits = torch.randn(260)
    with caplog.at_level("WARNING", logger="harness.structured"):
        for pos in (1, 2, 3):
            out = dec.mask(logits, pos)
            assert out is logits and torch.isfinite(out).all()
    assert dec.dead["position"] == 1 and "doesn't satisfy the grammar" in dec.dead["reason"]
    assert len([r for r in caplog.records if "died" in r.getMessage()]) == 1


def test_a_mask_allowing_nothing_is_a_dead_matcher():
    import torch

    class Nothing:
        """A matcher whose grammar allows no token (e.g. only ids beyond the logits)."""
        vocab_size = 64
        error = ""

        def is_error(self):
            return False

        def fill_bitmask(self, out):
            out[:] = 0
            out[1] = 1 << 20  # token 52: past the model's 40 logits

    dec = ConstrainedDecoder(Nothing())
    logits = torch.randn(40)
    out = dec.mask(logits, 0)
    assert out is logits and torch.isfinite(out).all()
    assert dec.dead == {"position": 0, "reason": "the grammar allows no token of the vocabulary "
                                                 "here"}
