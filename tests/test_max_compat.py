"""MAX compatibility: MAX's error messages word for word, and value equality of the contexts.

The messages are MAX's (``max.pipelines.context``: ``tokens.py``, ``context.py``,
``eos_tracking.py``, ``outputs.py``). Where the project adds detail it follows MAX's text, so
``match=re.escape(MAX_TEXT)`` holds for every message; ``exact`` marks those that are MAX's text
and nothing else.
"""
import copy
import dataclasses
import pickle
import re

import numpy as np
import pytest

from harness.context import (
    FUTURE_TOKEN,
    EOSTracker,
    GenerationStatus,
    ImageMetadata,
    LogProbabilities,
    PixelContext,
    SamplingParams,
    TextAndVisionContext,
    TextContext,
    TextGenerationOutput,
    TokenBuffer,
)

DOC_TOKENS = [51, 52, 53, 54, 97, 98, 98, 98, 98, 99, 55, 56, 57, 58, 97, 98, 98, 98, 98, 99,
              59, 60, 61, 62]


def tb(values):
    return TokenBuffer(np.asarray(values, dtype=np.int64))


def img(s, e, shape=(3, 4, 4), **kw):
    return ImageMetadata(start_idx=s, end_idx=e, pixel_values=np.zeros(shape, np.float32), **kw)


def tctx(prompt=(0, 1, 2, 3), **kw):
    kw.setdefault("max_length", 100)
    return TextContext(tokens=tb(prompt), **kw)


def vctx(tokens=DOC_TOKENS, images=((5, 9), (15, 19)), vision=(98,), buf=None, **kw):
    kw.setdefault("max_length", 100)
    return TextAndVisionContext(
        tokens=buf if buf is not None else tb(tokens), vision_token_ids=list(vision),
        images=[img(s, e) for s, e in images], **kw)


def pctx(**kw):
    return PixelContext(tokens=tb(np.arange(4)), **kw)


# ------------------------------------------------------------------------------------------------
# Messages
# ------------------------------------------------------------------------------------------------
def _chunked(n=8, size=3):
    buf = tb(np.arange(n))
    buf.chunk(size)
    return buf


def _offset_buffer():
    buf = tb(np.arange(5))
    buf.skip_processing(2)  # processing range (2, 5)
    return buf


def _bisected_buffer():
    buf = tb(DOC_TOKENS)
    buf.apply_processing_offset(len(DOC_TOKENS) - 17)  # current_position 17, inside (15, 19)
    return buf


def _pending_placeholder():
    c = tctx()
    c.update_with_future_token()
    return c


def _realized():
    c = tctx()
    c.update_with_future_token()
    c.realize_future_token(5)
    return c


def _generated(token, **kw):
    c = tctx(request_id="r1", **kw)
    c.update(token)
    return c


_LP = LogProbabilities([-1.0], [{1: -1.0}], [1])


def _out(lps=None):
    return TextGenerationOutput(request_id="r", tokens=[1], final_status=GenerationStatus.ACTIVE,
                                log_probabilities=lps)


# (id, call, exception type, MAX's text, exact: the message is MAX's text and nothing more)
MESSAGES = [
    # TokenBuffer (max/pipelines/context/tokens.py)
    ("buffer-ndim", lambda: TokenBuffer(np.zeros((2, 2), np.int64)), ValueError,
     "array must be one-dimensional: got shape (2, 2)", True),
    ("buffer-dtype", lambda: TokenBuffer(np.zeros(3, np.int32)), ValueError,
     "array must be int64: got dtype int32", True),
    ("buffer-empty", lambda: TokenBuffer(np.zeros(0, np.int64)), ValueError,
     "array must be non-empty: got length 0", True),
    ("index-out-of-bounds", lambda: tb([5, 6, 7])[3], IndexError,
     "Index 3 is out of bounds for array of length 3", True),
    ("index-negative-out-of-bounds", lambda: tb([5, 6, 7])[-4], IndexError,
     "Index -1 is out of bounds for array of length 3", True),
    ("index-type", lambda: tb([5, 6, 7])["a"], TypeError,
     "Index must be an integer or slice, got <class 'str'>", True),
    ("chunk-too-large", lambda: tb(np.arange(4)).chunk(4), ValueError,
     "chunk size must be between 1 and the current number of active tokens: got 4", False),
    ("chunk-zero", lambda: tb(np.arange(4)).chunk(0), ValueError,
     "chunk size must be between 1 and the current number of active tokens: got 0", False),
    ("advance-chunk-not-chunked", lambda: tb(np.arange(4)).advance_chunk(), ValueError,
     "Cannot advance chunk if not actively chunked.", True),
    ("add-token-while-chunked", lambda: _chunked().advance_with_token(1), ValueError,
     "Cannot add a token while actively chunked.", True),
    ("rewind-negative", lambda: tb(np.arange(4)).rewind_processing(-1), ValueError,
     "n must be non-negative: got -1", True),
    ("rewind-before-start", lambda: tb(np.arange(4)).rewind_processing(1), ValueError,
     "start (0) + amount (-1) must be >= 0", False),
    ("skip-negative", lambda: tb(np.arange(4)).skip_processing(-2), ValueError,
     "n must be non-negative: got -2", True),
    ("skip-all", lambda: tb(np.arange(3)).skip_processing(3), ValueError,
     "Cannot skip 3 tokens: would leave 0 active tokens. Must have at least 1 active token "
     "(current active_length=3)", True),
    ("offset-below-zero", lambda: _offset_buffer().apply_processing_offset(-3), ValueError,
     "processing range start (2) + processing offset (-3) must be >= 0", True),
    ("offset-past-end", lambda: _offset_buffer().apply_processing_offset(4), ValueError,
     "processing range start (2) + processing offset (4) must be <= processing range end (5)",
     True),
    ("consume-nothing", lambda: tb([1]).consume_recently_generated_tokens(), ValueError,
     "No tokens have been generated yet.", True),
    ("delete-last-generated", lambda: tb([1, 2]).reset_as_new_prompt(1), ValueError,
     "Cannot delete the last generated token if there are no generated tokens.", True),
    # EOSTracker (eos_tracking.py)
    ("eos-empty", lambda: EOSTracker().is_eos_from_tokens(np.zeros(0, np.int64)), ValueError,
     "generated_tokens must be non-empty", True),
    # ImageMetadata (tokens.py)
    ("image-start", lambda: img(-1, 3), ValueError, "Images must have a valid start index", False),
    ("image-range", lambda: img(3, 3), ValueError,
     "Images must have a valid start and end index containing at least one <vision_token_id>",
     False),
    # TextAndVisionContext (context.py)
    ("images-sorted", lambda: vctx(images=((15, 19), (5, 9))), ValueError,
     "Images must be sorted", False),
    ("images-overlap", lambda: vctx(images=((5, 9), (8, 19))), ValueError,
     "Images must be non-overlapping", False),
    ("images-past-end", lambda: vctx(images=((20, 25),)), ValueError,
     "Images must be before the end of the token array", False),
    ("images-filled", lambda: vctx(vision=(123,)), ValueError,
     "Images must be filled with <vision_token_id> ([123])", False),
    ("bisect", lambda: vctx(buf=_bisected_buffer()), ValueError,
     "It is invalid for the current_position (17) to bisect an image "
     "(ImageMetadata(start_idx=15, end_idx=19, pixel_values=(3, 4, 4))).", True),
    # TextContext (context.py)
    ("min-tokens", lambda: tctx(max_length=8, sampling_params=SamplingParams(min_new_tokens=5)),
     ValueError,
     "min_tokens (5) + prompt_len (4) must be less than or equal to max_length (8)", True),
    ("endpoint-prefix", lambda: tctx(target_endpoint="http://x:1"), ValueError,
     "target_endpoint must be prefixed with 'tcp://' or 'ipc://': http://x:1", True),
    ("endpoint-port", lambda: tctx(target_endpoint="tcp://host"), ValueError,
     "target_endpoint must contain a port if using tcp: tcp://host", False),
    ("append-after-future", lambda: _pending_placeholder().update(7), ValueError,
     "Cannot append a token after a future token.", False),
    ("multiple-future", lambda: _pending_placeholder().update_with_future_token(), ValueError,
     "Cannot have multiple future tokens.", False),
    ("realize-nothing-generated", lambda: tctx().realize_future_token(5), ValueError,
     "Cannot realize a future token when there are no generated tokens.", True),
    ("realize-non-future", lambda: _realized().realize_future_token(6), ValueError,
     "Attempted to realize a non-future token. Found token: 5", True),
    ("negative-token", lambda: _generated(-1, vocab_size=10).to_generation_output(),
     RuntimeError, "Generated negative token_id=-1 for request r1", True),
    ("out-of-vocabulary", lambda: _generated(10, vocab_size=10).to_generation_output(),
     RuntimeError,
     "Generated out-of-vocabulary token_id=10 for request r1 (valid range: [0, 10))", True),
    # TextGenerationOutput (outputs.py)
    ("merge-empty", lambda: TextGenerationOutput.merge([]), ValueError,
     "Cannot combine empty list of chunks", True),
    ("merge-mixed-logprobs", lambda: TextGenerationOutput.merge([_out([_LP]), _out()]),
     ValueError,
     "Cannot combine TextGenerationOutput chunks with mixed None and non-None log_probabilities",
     False),
]


@pytest.mark.parametrize("call, exc, text, exact", [m[1:] for m in MESSAGES],
                         ids=[m[0] for m in MESSAGES])
def test_max_message(call, exc, text, exact):
    with pytest.raises(exc, match=re.escape(text)) as info:
        call()
    assert str(info.value).startswith(text)  # MAX's text leads; any detail follows it
    if exact:
        assert str(info.value) == text


def test_vocab_check_names_the_first_offending_token_and_consumes_nothing():
    c = tctx(request_id="r1", vocab_size=10)
    for t in (3, 12, -4, 11):
        c.update(t)
    with pytest.raises(RuntimeError, match=re.escape(
            "Generated out-of-vocabulary token_id=12 for request r1 (valid range: [0, 10))")):
        c.to_generation_output()
    assert c.tokens.completion_range == (4, 8)  # nothing consumed


def test_failed_append_after_future_token_changes_nothing():
    c = _pending_placeholder()
    before = pickle.loads(pickle.dumps(c))
    with pytest.raises(ValueError, match=re.escape("Cannot append a token after a future token.")):
        c.update(7, log_probabilities=_LP)
    assert c == before and c.tokens.all[-1] == FUTURE_TOKEN


# ------------------------------------------------------------------------------------------------
# TokenBuffer and EOSTracker equality
# ------------------------------------------------------------------------------------------------
def test_token_buffer_equality_by_value():
    a, b = tb([1, 2, 3]), tb([1, 2, 3])
    assert a == b and not a != b and a is not b
    assert a != tb([1, 2, 4]) and a != tb([1, 2])
    assert a != [1, 2, 3] and a != "TokenBuffer"
    grown = tb([1, 2])
    grown.advance_with_token(3)
    grown.reset_as_new_prompt()
    assert grown.capacity != a.capacity and grown == a  # capacity is not part of the value
    for mutate in (lambda x: x.chunk(2), lambda x: x.skip_processing(1),
                   lambda x: x.apply_processing_offset(1), lambda x: x.advance_with_token(4)):
        c = tb([1, 2, 3])
        mutate(c)
        assert c != a
    d, e = tb([1, 2, 3]), tb([1, 2, 3])
    d.advance_with_token(4)
    e.advance_with_token(4)
    assert d == e
    d.consume_recently_generated_tokens()
    assert d != e  # the completion range differs
    e.consume_recently_generated_tokens()
    assert d == e
    with pytest.raises(TypeError, match="unhashable"):
        hash(a)


def test_token_buffer_pickle_equality():
    buf = tb(np.arange(6))
    buf.chunk(2)
    buf.apply_processing_offset(1)
    assert pickle.loads(pickle.dumps(buf)) == buf
    assert copy.deepcopy(buf) == buf


def eos(**kw):
    base = dict(eos_token_ids={1, 2}, eos_sequences=[[3, 4]], eos_stop_strings=["stop"])
    base.update(kw)
    return EOSTracker(**base)


def test_eos_tracker_equality_by_value():
    assert eos() == eos() and not eos() != eos()
    assert eos(eos_token_ids=[2, 1, 2]) == eos()  # ids are a set
    assert EOSTracker() == EOSTracker()
    assert eos(eos_token_ids={1}) != eos()
    assert eos(eos_sequences=[[4, 3]]) != eos()
    assert eos(eos_sequences=[[3, 4], [5]]) != eos()
    assert eos(eos_stop_strings=["halt"]) != eos()
    assert eos() != "EOSTracker()"
    fed = eos()
    fed.is_eos_from_string("sto")  # the tail decides what the next piece reports
    assert fed != eos()
    assert pickle.loads(pickle.dumps(fed)) == fed and copy.deepcopy(fed) == fed
    with pytest.raises(TypeError, match="unhashable"):
        hash(eos())


# ------------------------------------------------------------------------------------------------
# ImageMetadata equality
# ------------------------------------------------------------------------------------------------
def meta(**kw):
    base = dict(start_idx=2, end_idx=6, pixel_values=np.arange(12, dtype=np.float32).reshape(3, 4),
                image_hash=7, grid_thw=(1, 2, 2), embedding_positions=np.array([0, 1, 3]))
    base.update(kw)
    return ImageMetadata(**base)


def test_image_metadata_equal_by_value():
    a, b = meta(), meta()
    assert a.pixel_values is not b.pixel_values
    assert a == b and not a != b
    assert img(5, 9) == img(5, 9)
    nan = np.full((2, 2), np.nan, np.float32)
    assert meta(pixel_values=nan) == meta(pixel_values=nan.copy())
    assert pickle.loads(pickle.dumps(a)) == a and copy.deepcopy(a) == a
    with pytest.raises(TypeError, match="unhashable"):
        hash(a)


@pytest.mark.parametrize("change", [
    dict(start_idx=1),
    dict(end_idx=7),
    dict(pixel_values=np.arange(12, dtype=np.float32).reshape(3, 4) + 1),  # values
    dict(pixel_values=np.arange(12, dtype=np.float64).reshape(3, 4)),  # dtype
    dict(pixel_values=np.arange(12, dtype=np.float32).reshape(4, 3)),  # shape
    dict(pixel_values=np.arange(12, dtype=np.float32)),  # rank
    dict(image_hash=8),
    dict(image_hash=None),
    dict(grid_thw=(1, 2, 4)),
    dict(grid_thw=None),
    dict(embedding_positions=np.array([0, 1, 2])),
    dict(embedding_positions=None),
], ids=lambda d: next(iter(d)))
def test_image_metadata_unequal_when_one_field_differs(change):
    assert meta(**change) != meta()
    assert meta() != meta(**change)
    assert not meta(**change) == meta()


def test_image_metadata_field_list_is_covered():
    names = {f.name for f in dataclasses.fields(ImageMetadata)}
    assert names == {"start_idx", "end_idx", "pixel_values", "image_hash", "grid_thw",
                     "embedding_positions"}


# ------------------------------------------------------------------------------------------------
# Context equality and pickle round trips
# ------------------------------------------------------------------------------------------------
def _busy_text_context(cls=TextContext, **kw):
    kw.setdefault("request_id", "req")
    c = cls(max_length=100, eos_tracker=eos(), vocab_size=200, model_name="m",
            cached_prefix_length=2, sampling_params=SamplingParams(temperature=0.5, seed=3),
            **kw)
    c.update(7, log_probabilities=_LP)
    c.update(8)
    c.eos_tracker.is_eos_from_string("st")
    return c


def _text_kw():
    return dict(tokens=tb([0, 1, 2, 3]))


def _vision_kw():
    return dict(tokens=tb(DOC_TOKENS), vision_token_ids=[98],
                images=[img(5, 9), meta(start_idx=15, end_idx=19, embedding_positions=None)],
                extra_model_args={"grid": np.arange(3), "mask": np.ones((2, 2), bool)})


@pytest.mark.parametrize("copier", [lambda c: pickle.loads(pickle.dumps(c)), copy.deepcopy],
                         ids=["pickle", "deepcopy"])
@pytest.mark.parametrize("cls, kw", [(TextContext, _text_kw), (TextAndVisionContext, _vision_kw)],
                         ids=["text", "vision"])
def test_text_contexts_round_trip_equal(copier, cls, kw):
    c = _busy_text_context(cls, **kw())
    c.update_with_future_token()
    c2 = copier(c)
    assert c2 is not c and c2 == c and not c2 != c
    c2.realize_future_token(9)
    assert c2 != c


def test_text_context_equality_by_value():
    assert _busy_text_context(**_text_kw()) == _busy_text_context(**_text_kw())
    assert tctx(request_id="a") != tctx(request_id="b")
    assert tctx() != tctx()  # fresh request ids
    with pytest.raises(TypeError, match="unhashable"):
        hash(tctx())
    assert tctx(request_id="a") != TextAndVisionContext(
        max_length=100, tokens=tb([0, 1, 2, 3]), vision_token_ids=[98], request_id="a")


@pytest.mark.parametrize("field, value", [
    ("max_length", 99), ("eos_tracker", EOSTracker(eos_token_ids={1})), ("vocab_size", 300),
    ("log_probabilities", 2), ("log_probabilities_echo", True), ("ignore_eos", True),
    ("json_schema", "{}"), ("grammar", "g"), ("grammar_state", {"x": 1}),
    ("sampling_params", SamplingParams(temperature=0.7, seed=3)), ("model_name", "other"),
    ("status", GenerationStatus.CANCELLED), ("_is_initial_prompt", False), ("_draft_offset", 1),
    ("in_reasoning_phase", True), ("target_endpoint", "ipc:///tmp/x"),
    ("external_block_metadata", {"blocks": np.arange(2)}), ("dkv_hint_instance_name", "n"),
    ("cached_prefix_length", 5), ("_cache_metrics_emitted", True),
    ("_log_probabilities_data", {4: _LP}),
])
def test_text_context_unequal_when_one_field_differs(field, value):
    a = tctx(request_id="r")
    b = tctx(request_id="r", **{field: value})
    assert a != b and b != a
    assert tctx(request_id="r") == a


def test_text_context_unequal_when_tokens_differ():
    assert tctx(request_id="r") != tctx(request_id="r", prompt=(0, 1, 2, 4))
    a, b = tctx(request_id="r"), tctx(request_id="r")
    b.tokens.skip_processing(1)
    assert a != b


def test_vision_context_equality_by_value():
    a = vctx(request_id="r", extra_model_args={"g": np.arange(3)})
    assert a == vctx(request_id="r", extra_model_args={"g": np.arange(3)})
    assert a != vctx(request_id="r", extra_model_args={"g": np.arange(3) + 1})
    assert a != vctx(request_id="r", extra_model_args={"g": np.arange(3, dtype=np.int32)})
    assert a != vctx(request_id="r", extra_model_args={"g": np.arange(3)}, vision=(98, 99))
    assert a != vctx(request_id="r", extra_model_args={"g": np.arange(3)}, images=((5, 9),))
    other_pixels = vctx(request_id="r", extra_model_args={"g": np.arange(3)})
    other_pixels.images[1].pixel_values[0, 0, 0] = 1.0
    assert a != other_pixels
    with pytest.raises(TypeError, match="unhashable"):
        hash(a)


def _busy_pixel_context():
    return pctx(
        request_id="p", mask=np.array([True, False]), tokens_2=tb(np.arange(3)),
        negative_tokens=tb(np.arange(2)), negative_mask=np.array([True]),
        negative_tokens_2=tb([5]), explicit_negative_prompt=True,
        timesteps=np.array([1000.0, 500.0], np.float32), sigmas=np.array([1, .5, 0], np.float32),
        latents=np.ones((1, 4, 64), np.float32), latent_image_ids=np.zeros((4, 3), np.float32),
        text_ids=np.zeros((1, 2, 4), np.int64), negative_text_ids=np.ones((1, 2, 4), np.int64),
        height=64, width=128, num_inference_steps=2, guidance_scale=4.0, true_cfg_scale=2.0,
        strength=0.3, cfg_normalization=True, cfg_truncation=0.5, num_warmup_steps=1,
        num_images_per_prompt=2, input_image=np.zeros((8, 8, 3), np.uint8),
        input_images=[np.zeros((8, 8, 3), np.uint8), np.ones((4, 4, 3), np.uint8)],
        prompt_images=[np.zeros((2, 2, 3), np.uint8)],
        vae_condition_images=[np.ones((2, 2, 3), np.uint8)], output_format="webp",
        residual_threshold=0.1, status=GenerationStatus.ACTIVE,
        extra_model_args={"x": np.arange(2)})


@pytest.mark.parametrize("copier", [lambda c: pickle.loads(pickle.dumps(c)), copy.deepcopy],
                         ids=["pickle", "deepcopy"])
def test_pixel_context_round_trip_equal(copier):
    c = _busy_pixel_context()
    c2 = copier(c)
    assert c2 is not c and c2 == c and not c2 != c
    c2.latents[0, 0, 0] = 5
    assert c2 != c


def _differ(name, value):
    """A value of the same kind as ``value`` that differs from it."""
    if isinstance(value, TokenBuffer):
        return tb(value.all.tolist() + [99])
    if isinstance(value, np.ndarray):
        return value.astype(np.float64) if value.dtype != np.float64 else value + 1
    if isinstance(value, list):
        return value[:-1] + [value[-1] + 1]
    if isinstance(value, dict):
        return {**value, "y": 0}
    if isinstance(value, GenerationStatus):
        return GenerationStatus.CANCELLED
    if name == "output_format":
        return "png"
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return value + "x"


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(PixelContext)])
def test_pixel_context_unequal_when_one_field_differs(name):
    c = _busy_pixel_context()
    other = dataclasses.replace(c, **{name: _differ(name, getattr(c, name))})
    assert other != c and c != other
    assert dataclasses.replace(c) == c


def test_pixel_context_arrays_by_content_and_unhashable():
    a = pctx(request_id="p", latents=np.zeros((2, 2), np.float32))
    assert a == pctx(request_id="p", latents=np.zeros((2, 2), np.float32))
    assert a != pctx(request_id="p", latents=np.zeros((2, 2), np.float64))
    assert a != pctx(request_id="p", latents=np.zeros((4,), np.float32))
    assert a != pctx(request_id="p", latents=np.zeros((2, 2), np.float32), input_images=[])
    with pytest.raises(TypeError, match="unhashable"):
        hash(a)
