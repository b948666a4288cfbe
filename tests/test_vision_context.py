"""TextAndVisionContext / ImageMetadata behaviours pinned by contexts.md §4."""
import pickle

import numpy as np
import pytest

from harness.context import ImageMetadata, TextAndVisionContext, TokenBuffer

DOC_TOKENS = [51, 52, 53, 54, 97, 98, 98, 98, 98, 99, 55, 56, 57, 58, 97, 98, 98, 98, 98, 99,
              59, 60, 61, 62]


def img(s, e, shape=(3, 4, 4)):
    return ImageMetadata(start_idx=s, end_idx=e, pixel_values=np.zeros(shape, np.float32))


def vctx(tokens=DOC_TOKENS, images=((5, 9), (15, 19)), vision=(98,), buf=None, **kw):
    return TextAndVisionContext(
        max_length=kw.pop("max_length", 100),
        tokens=buf if buf is not None else TokenBuffer(np.array(tokens, dtype=np.int64)),
        vision_token_ids=list(vision), images=[img(s, e) for s, e in images], **kw)


def test_image_metadata_validation_and_repr():
    with pytest.raises(ValueError, match="Images must have a valid start index"):
        img(-1, 3)
    with pytest.raises(ValueError, match=r"valid start and end index.*end_idx \(3\) must be greater than start_idx \(3\)"):
        img(3, 3)
    assert repr(img(5, 9)) == "ImageMetadata(start_idx=5, end_idx=9, pixel_values=(3, 4, 4))"
    with pytest.raises(TypeError):
        ImageMetadata(5, 9, np.zeros(1))  # keyword-only
    with pytest.raises(ValueError, match="embedding_positions"):
        ImageMetadata(start_idx=0, end_idx=3, pixel_values=np.zeros(1),
                      embedding_positions=np.array([0, 3]))


def test_docstring_example_alignment():
    c = vctx()
    expected = {7: 5, 8: 5, 9: 9, 10: 10, 13: 13, 14: 14, 15: 15, 17: 15, 18: 15, 19: 19, 20: 20}
    for idx, want in expected.items():
        assert c.compute_image_aligned_idx(idx) == want, idx


def test_docstring_example_image_idx():
    c = vctx()
    assert c.image_idx == 0 and c.needs_vision_encoding and len(c.next_images) == 2
    c.tokens.skip_processing(9)
    assert c.image_idx == 1
    c.tokens.skip_processing(5)
    assert c.image_idx == 1
    c.tokens.skip_processing(5)
    assert c.image_idx == 2 and not c.needs_vision_encoding and c.next_images == []


def test_partly_processed_image_counts_as_next():
    c = vctx()
    c.tokens.skip_processing(7)
    assert c.image_idx == 0


def test_construction_errors():
    with pytest.raises(ValueError, match="Images must be non-overlapping"):
        vctx(images=((5, 9), (8, 19)))
    with pytest.raises(ValueError, match="Images must be sorted"):
        vctx(images=((15, 19), (5, 9)))
    with pytest.raises(ValueError, match="Images must be before the end of the token array"):
        vctx(images=((20, 25),))
    with pytest.raises(ValueError, match=r"Images must be filled with <vision_token_id> \(\[123\]\)"):
        vctx(vision=(123,))


def test_unsorted_is_reported_before_overlap():
    with pytest.raises(ValueError, match="sorted"):
        vctx(images=((15, 19), (5, 16)))


def test_touching_ranges_are_accepted():
    c = vctx(tokens=[51, 52, 53, 54, 98, 98, 98, 98, 59, 60], images=((4, 6), (6, 8)))
    assert len(c.next_images) == 2


def test_chunked_bisection_is_allowed_but_not_otherwise():
    buf = TokenBuffer(np.array(DOC_TOKENS, dtype=np.int64))
    buf.chunk(7)
    vctx(buf=buf)  # current_position 7 lies inside (5, 9): fine while chunked
    buf = TokenBuffer(np.array(DOC_TOKENS, dtype=np.int64))
    buf.apply_processing_offset(len(DOC_TOKENS) - 17)
    assert buf.current_position == 17
    with pytest.raises(ValueError, match=r"It is invalid for the current_position \(17\) to "
                                         r"bisect an image \(ImageMetadata\(start_idx=15"):
        vctx(buf=buf)


def test_update_and_reset_with_image_at_start():
    c = vctx(tokens=[0, 1, 2, 3, 4], images=((0, 1),), vision=(0,))
    c.update(5)
    assert c.tokens.processed_length == 5 and c.tokens.active_length == 1
    assert not c.needs_vision_encoding
    c.reset()
    assert c.tokens.processed_length == 0 and c.tokens.active_length == 6
    assert c.needs_vision_encoding and c.image_idx == 0


def test_window_images():
    tokens = [1] * 30
    for s, e in ((4, 8), (12, 16), (20, 24)):
        tokens[s:e] = [98] * (e - s)
    c = vctx(tokens=tokens, images=((4, 8), (12, 16), (20, 24)))
    c.tokens.chunk(16)
    assert [im.start_idx for im in c.next_images_in_window] == [4, 12]
    c2 = vctx(tokens=tokens, images=((4, 8), (12, 16), (20, 24)))
    c2.tokens.skip_processing(14)
    assert [im.start_idx for im in c2.next_images_in_window] == [12, 20]


def test_image_token_indices():
    c = vctx()
    idx = c.image_token_indices
    assert idx.dtype == np.int32
    assert idx.tolist() == [5, 6, 7, 8, 15, 16, 17, 18]
    assert vctx(images=()).image_token_indices.shape == (0,)


def test_chunked_prefill_through_images_validates_after_each_update():
    c = vctx()
    seen = []
    while True:
        remaining = c.tokens.active_length
        if remaining > 7:
            c.tokens.chunk(7)
        seen.append((c.tokens.processed_length, c.tokens.current_position, c.image_idx))
        done = remaining <= 7
        c.update(1)
        if done:
            break
    assert seen == [(0, 7, 0), (7, 14, 0), (14, 21, 1), (21, 24, 2)]
    assert c.tokens.generated.tolist() == [1]


def test_vision_token_ids_is_a_list():
    with pytest.raises(TypeError, match="list of token ids"):
        TextAndVisionContext(max_length=50, tokens=TokenBuffer(np.array(DOC_TOKENS)),
                             vision_token_ids=98)
    c = vctx(tokens=[1, 98, 7, 98, 2], images=((1, 4),), vision=(98, 7))  # Pixtral-style breaks
    assert c.vision_token_ids == [98, 7]


def test_pickle_round_trip():
    c = vctx(extra_model_args={"grid": np.arange(3)})
    c.tokens.skip_processing(9)
    c2 = pickle.loads(pickle.dumps(c))
    assert type(c2) is TextAndVisionContext
    assert [(i.start_idx, i.end_idx) for i in c2.images] == [(5, 9), (15, 19)]
    assert c2.image_idx == 1 and c2.vision_token_ids == [98]
    assert c2.extra_model_args["grid"].tolist() == [0, 1, 2]
    assert c2.images[0].pixel_values.shape == (3, 4, 4)
    assert c2.compute_image_aligned_idx(17) == 15
