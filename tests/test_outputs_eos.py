"""Small types: GenerationStatus, outputs, image content and EOSTracker (contexts.md §1)."""
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from harness.context import (
    EOSTracker,
    GenerationOutput,
    GenerationStatus,
    ImageContent,
    LogProbabilities,
    TextGenerationOutput,
)


def test_status_values_and_is_done():
    assert [s.value for s in GenerationStatus] == [
        "active", "end_of_sequence", "maximum_length", "cancelled"]
    assert not GenerationStatus.ACTIVE.is_done
    assert all(s.is_done for s in GenerationStatus if s is not GenerationStatus.ACTIVE)
    assert GenerationStatus("active") is GenerationStatus.ACTIVE


def out(tokens, status=GenerationStatus.ACTIVE, lps=None, cached=None):
    return TextGenerationOutput(request_id="r", tokens=tokens, final_status=status,
                                log_probabilities=lps, num_cached_tokens=cached)


def test_merge():
    with pytest.raises(ValueError, match="Cannot combine empty list of chunks"):
        TextGenerationOutput.merge([])
    m = TextGenerationOutput.merge(
        [out([1], cached=5), out([2, 3], GenerationStatus.END_OF_SEQUENCE, cached=7)])
    assert m.tokens == [1, 2, 3] and m.final_status == GenerationStatus.END_OF_SEQUENCE
    assert m.num_cached_tokens == 5 and m.log_probabilities is None and m.is_done
    lp = LogProbabilities([-1.0], [{1: -1.0}], [1])
    m = TextGenerationOutput.merge([out([1], lps=[lp]), out([2], lps=[lp])])
    assert m.log_probabilities == [lp, lp]
    with pytest.raises(ValueError, match="mixed None and non-None log_probabilities"):
        TextGenerationOutput.merge([out([1], lps=[lp]), out([2])])


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 1), (4, 5, 3), (4, 5, 4)])
@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_image_content_encodes(shape, fmt):
    arr = np.random.default_rng(0).integers(0, 255, size=shape, dtype=np.uint8)
    content = ImageContent.from_array(arr, fmt)
    decoded = Image.open(io.BytesIO(content.data))
    assert decoded.format == fmt.upper() and decoded.size == (5, 4)
    if fmt == "png":
        back = np.asarray(decoded)
        assert np.array_equal(back.reshape(arr.shape), arr)


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((4, 5), np.float32), "must be uint8"),
    (np.zeros((4,), np.uint8), "HxW"),
    (np.zeros((4, 5, 2), np.uint8), "HxW"),
    (np.zeros((1, 4, 5, 3), np.uint8), "HxW"),
    ([[1, 2]], "numpy array"),
])
def test_image_content_rejects(bad, msg):
    with pytest.raises(ValueError, match=msg):
        ImageContent.from_array(bad, "png")


def test_image_content_rejects_format():
    with pytest.raises(ValueError, match="allowed: png, jpeg, webp"):
        ImageContent.from_array(np.zeros((2, 2), np.uint8), "gif")


def test_generation_output():
    g = GenerationOutput(request_id="r", final_status=GenerationStatus.END_OF_SEQUENCE)
    assert g.is_done and g.output == [] and g.usage is None


def test_eos_tracker_defaults_and_tokens():
    t = EOSTracker()
    assert t.eos_token_ids == set() and t.eos_sequences == () and t.eos_stop_strings == ()
    assert not t.is_eos_from_tokens([1, 2])
    with pytest.raises(ValueError, match="generated_tokens must be non-empty"):
        t.is_eos_from_tokens([])
    t = EOSTracker(eos_token_ids={2, 9}, eos_sequences=[[4, 5, 6]])
    assert t.is_eos_from_tokens([1, 9]) and not t.is_eos_from_tokens([9, 1])
    assert t.is_eos_from_tokens(np.array([3, 4, 5, 6])) and not t.is_eos_from_tokens([5, 6])
    with pytest.raises(TypeError):
        EOSTracker({1})  # keyword-only
    with pytest.raises(ValueError, match="must not be empty"):
        EOSTracker(eos_sequences=[[]])
    with pytest.raises(TypeError, match="integers"):
        EOSTracker(eos_token_ids=["a"])


def test_first_eos_offset_straddles_steps():
    t = EOSTracker(eos_token_ids={9}, eos_sequences=[[4, 5, 6]])
    assert t.first_eos_offset([1, 4, 5], [6, 7, 9]) == 0  # sequence across the boundary
    assert t.first_eos_offset([1], [2, 9, 3, 9]) == 1
    assert t.first_eos_offset([4], [5, 6]) == 1
    assert t.first_eos_offset([1], [2, 3]) is None
    assert t.first_eos_offset([1], []) is None


def test_stop_strings_keep_a_bounded_tail():
    t = EOSTracker(eos_stop_strings=["STOP", "end"])
    assert t.is_eos_from_string("hello ST") is None
    assert t.is_eos_from_string("OP now") == "STOP"  # straddles two pieces
    t = EOSTracker(eos_stop_strings=["xyzw"])
    assert [t.is_eos_from_string(c) for c in "xyzw"] == [None, None, None, "xyzw"]  # 1 char/token
    t = EOSTracker(eos_stop_strings=["ab", "wxyz"])
    assert t.is_eos_from_string("zzab") == "ab"
    assert t.is_eos_from_string("c") is None  # a match is reported once, not again from the tail
    t = EOSTracker(eos_stop_strings=["ab", "xyz"])
    assert t.is_eos_from_string("..xyz..ab") == "xyz"  # earliest wins
    t = EOSTracker(eos_stop_strings=["abc"])
    for _ in range(1000):
        t.is_eos_from_string("zzzz")
    assert t._tail == "zz"  # only len("abc") - 1 characters are kept
    with pytest.raises(ValueError, match="non-empty strings"):
        EOSTracker(eos_stop_strings=[""])
    with pytest.raises(TypeError, match="not a single string"):
        EOSTracker(eos_stop_strings="stop")


def test_eos_tracker_getters_cannot_go_stale():
    t = EOSTracker(eos_token_ids=[1])
    with pytest.raises(AttributeError):
        t.eos_token_ids.add(5)
    t.eos_token_ids = {5}
    assert t.is_eos_from_tokens([5])


def test_eos_tracker_pickles():
    t = EOSTracker(eos_token_ids={3}, eos_sequences=[[1, 2]], eos_stop_strings=["x"])
    t2 = pickle.loads(pickle.dumps(t))
    assert t2.eos_token_ids == {3} and t2.eos_sequences == ((1, 2),)
    assert t2.eos_stop_strings == ("x",)
