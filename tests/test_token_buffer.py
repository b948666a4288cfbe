"""Behaviour of the compiled TokenBuffer (contexts.md §2)."""
import pickle

import numpy as np
import pytest

from harness.context import TokenBuffer


def tb(values):
    return TokenBuffer(np.asarray(values, dtype=np.int64))


def test_construction_errors_in_order():
    with pytest.raises(ValueError, match="array must be one-dimensional"):
        TokenBuffer(np.zeros((2, 2), dtype=np.float32))  # rank is checked before dtype
    with pytest.raises(ValueError, match="array must be int64"):
        TokenBuffer(np.zeros(3, dtype=np.int32))
    with pytest.raises(ValueError, match="array must be non-empty"):
        TokenBuffer(np.zeros(0, dtype=np.int64))
    with pytest.raises(TypeError, match="numpy ndarray"):
        TokenBuffer([1, 2, 3])


def test_array_held_without_copy_readonly_copied_once():
    arr = np.arange(4, dtype=np.int64)
    buf = TokenBuffer(arr)
    assert np.shares_memory(buf.all, arr)
    ro = np.arange(4, dtype=np.int64)
    ro.flags.writeable = False
    buf2 = TokenBuffer(ro)
    assert not np.shares_memory(buf2.all, ro)
    buf2.advance_with_token(9)  # the copy is writable
    assert buf2.all.tolist() == [0, 1, 2, 3, 9]


def test_worked_example():
    buf = tb([10, 11, 12, 13])
    buf.advance_with_token(20)
    assert buf.all.tolist() == [10, 11, 12, 13, 20]
    assert (buf.processed_length, buf.active_length, buf.current_position) == (4, 1, 5)
    assert buf.generated.tolist() == [20]
    assert buf.consume_recently_generated_tokens().tolist() == [20]
    buf.rewind_processing(2)
    assert buf.active.tolist() == [12, 13, 20]
    with pytest.raises(ValueError, match="Must have at least 1 active token"):
        buf.skip_processing(3)


def test_chunking_example_and_strict_bound():
    buf = tb(np.arange(8))
    buf.chunk(4)
    assert buf.active.tolist() == [0, 1, 2, 3] and buf.actively_chunked
    buf.advance_chunk()
    assert buf.active.tolist() == [4, 5, 6, 7] and not buf.actively_chunked
    with pytest.raises(ValueError, match=r"between 1 and the current number of active tokens: got 4"):
        buf.chunk(4)
    with pytest.raises(ValueError, match="got 0"):
        buf.chunk(0)
    with pytest.raises(ValueError, match="Cannot advance chunk if not actively chunked."):
        buf.advance_chunk()


def test_advance_with_token_while_chunked_is_an_error():
    buf = tb(np.arange(8))
    buf.chunk(3)
    with pytest.raises(ValueError, match="Cannot add a token while actively chunked."):
        buf.advance_with_token(1)
    assert len(buf) == 8


def test_capacity_doubles_and_views_follow():
    buf = tb([1, 2])
    assert buf.capacity == 2
    buf.advance_with_token(3)
    assert buf.capacity == 4
    for t in range(4, 10):
        buf.advance_with_token(t)
    assert buf.capacity == 16
    assert buf.all.tolist() == list(range(1, 10))
    assert buf.prompt.tolist() == [1, 2]
    assert buf.generated.tolist() == list(range(3, 10))
    assert (buf.prompt_length, buf.current_length, buf.generated_length) == (2, 9, 7)


def test_views_are_views():
    buf = tb([1, 2, 3])
    v = buf.all
    v[0] = 7
    assert buf[0] == 7
    assert buf.active.base is not None


def test_indexing():
    buf = tb([5, 6, 7])
    assert (buf[0], buf[-1], buf[-3]) == (5, 7, 5)
    assert buf[1:].tolist() == [6, 7]
    assert buf[np.int64(1)] == 6
    with pytest.raises(IndexError):
        buf[3]
    with pytest.raises(IndexError):
        buf[-4]
    with pytest.raises(TypeError, match="Index must be an integer or slice"):
        buf["a"]
    with pytest.raises(TypeError):
        buf[1.0]


def test_rewind_and_skip_errors():
    buf = tb([0, 1, 2, 3])
    with pytest.raises(ValueError, match="n must be non-negative"):
        buf.rewind_processing(-1)
    with pytest.raises(ValueError, match="only 0 have been processed"):
        buf.rewind_processing(1)
    with pytest.raises(ValueError, match="n must be non-negative"):
        buf.skip_processing(-1)
    buf.skip_processing(3)
    assert buf.active.tolist() == [3]


def test_processing_offset_sets_and_lowers_position():
    buf = tb([0, 1, 2, 3, 4])
    buf.skip_processing(2)
    buf.apply_processing_offset(1)
    assert buf.active.tolist() == [3, 4]
    assert (buf.active_length, buf.current_position) == (2, 4)
    buf.apply_processing_offset(2)  # sets, does not add
    assert buf.active.tolist() == [4]
    with pytest.raises(ValueError, match="must be <= processing range end"):
        buf.apply_processing_offset(4)
    with pytest.raises(ValueError, match="must be >= 0"):
        buf.apply_processing_offset(-3)
    buf.apply_processing_offset(-2)
    assert buf.active.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="would start at -1"):
        buf.rewind_processing(1)


def test_overwrite():
    buf = tb([1, 2, 3])
    buf.overwrite_last_token(9)
    buf.overwrite_token_at_offset_from_end(3, 8)
    assert buf.all.tolist() == [8, 2, 9]
    for k in (0, 4):
        with pytest.raises(ValueError, match="1 <= k <= 3"):
            buf.overwrite_token_at_offset_from_end(k, 1)


def test_consume_recently_generated_tokens():
    buf = tb([1])
    with pytest.raises(ValueError, match="No tokens have been generated yet."):
        buf.consume_recently_generated_tokens()
    for t in (2, 3, 4):
        buf.advance_with_token(t)
    with pytest.raises(ValueError, match="cannot exclude 4 tokens: 3 are outstanding"):
        buf.consume_recently_generated_tokens(4)
    assert buf.consume_recently_generated_tokens(1).tolist() == [2, 3]
    assert buf.consume_recently_generated_tokens().tolist() == [4]
    with pytest.raises(ValueError, match="No tokens have been generated yet."):
        buf.consume_recently_generated_tokens()


def test_reset_as_new_prompt():
    buf = tb([1, 2])
    buf.advance_with_token(3)
    buf.advance_with_token(-999)
    with pytest.raises(ValueError, match="Cannot delete the last 3 generated tokens: only 2 were generated"):
        buf.reset_as_new_prompt(3)
    buf.reset_as_new_prompt(1)
    assert buf.all.tolist() == [1, 2, 3]
    assert (buf.prompt_length, buf.processed_length, buf.active_length) == (3, 0, 3)
    assert buf.completion_range == (3, 3) and not buf.actively_chunked


def test_repr_preview_is_bounded():
    buf = tb(np.arange(40))
    buf.chunk(5)
    r = repr(buf)
    assert "chunked=True" in r and "active=5" in r and "prompt=40" in r and "total=40" in r
    assert r.count(",") < 30 and "..." in r
    assert repr(tb([1, 2])).endswith("tokens=[1, 2])")


def test_pickle_round_trip_by_value():
    buf = tb(np.arange(6))
    buf.chunk(2)
    buf.apply_processing_offset(1)
    clone = pickle.loads(pickle.dumps(buf))
    assert clone.all.tolist() == buf.all.tolist()
    assert (clone.processed_length, clone.active_length, clone.actively_chunked,
            clone.processing_offset, clone.completion_range) == (
        buf.processed_length, buf.active_length, True, 1, buf.completion_range)
    clone.all[0] = 99
    assert buf[0] == 0
