"""Differential, stateful: random operation sequences through the compiled context and the naive
reference, comparing every observable after every step. Invalid calls must raise in both and
change nothing."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from harness.context import (
    FUTURE_TOKEN,
    EOSTracker,
    ImageMetadata,
    TextAndVisionContext,
    TokenBuffer,
)
from naive_tokens import NaiveVisionContext

VISION = 98


@st.composite
def prompts_with_images(draw):
    """A prompt of text runs and image runs (vision token 98), plus the image ranges."""
    tokens, images = [], []
    for _ in range(draw(st.integers(0, 5))):
        tokens += draw(st.lists(st.integers(0, 60), min_size=0, max_size=6))
        n = draw(st.integers(1, 6))
        images.append((len(tokens), len(tokens) + n))
        tokens += [VISION] * n
    tokens += draw(st.lists(st.integers(0, 60), min_size=0 if images else 1, max_size=6))
    return tokens, images


small = st.integers(-3, 40)
token = st.integers(0, 12)


class ContextMachine(RuleBasedStateMachine):
    @initialize(prompt=prompts_with_images(), extra=st.integers(0, 30),
                eos_ids=st.sets(st.integers(0, 12), max_size=3),
                eos_seqs=st.lists(st.lists(st.integers(0, 12), min_size=1, max_size=3),
                                  max_size=2))
    def setup(self, prompt, extra, eos_ids, eos_seqs):
        tokens, images = prompt
        self.real = TextAndVisionContext(
            max_length=len(tokens) + extra,
            tokens=TokenBuffer(np.array(tokens, dtype=np.int64)),
            eos_tracker=EOSTracker(eos_token_ids=eos_ids, eos_sequences=eos_seqs),
            vision_token_ids=[VISION],
            images=[ImageMetadata(start_idx=s, end_idx=e, pixel_values=np.zeros((1,)))
                    for s, e in images])
        self.ref = NaiveVisionContext(tokens, len(tokens) + extra, images, eos_ids, eos_seqs)

    def both(self, real_call, ref_call):
        """Run an operation on both sides: both succeed with equal results, or both raise."""
        try:
            expected = ref_call()
        except ValueError:
            with pytest.raises((ValueError, OverflowError)):
                real_call()
            return
        got = real_call()
        if expected is not None:
            assert list(np.asarray(got).tolist()) == list(expected)

    @rule(n=small)
    def chunk(self, n):
        self.both(lambda: self.real.tokens.chunk(n), lambda: self.ref.tokens.chunk(n))

    @rule()
    def advance_chunk(self):
        self.both(self.real.tokens.advance_chunk, self.ref.tokens.advance_chunk)

    @rule(t=token)
    def update(self, t):
        self.both(lambda: self.real.update(t), lambda: self.ref.update(t))

    @rule()
    def update_with_future_token(self):
        self.both(self.real.update_with_future_token, self.ref.update_with_future_token)

    @rule(t=token)
    def realize_future_token(self, t):
        self.both(lambda: self.real.realize_future_token(t),
                  lambda: self.ref.realize_future_token(t))

    @rule(n=small)
    def rewind(self, n):
        self.both(lambda: self.real.tokens.rewind_processing(n),
                  lambda: self.ref.tokens.rewind_processing(n))

    @rule(n=small)
    def skip(self, n):
        self.both(lambda: self.real.tokens.skip_processing(n),
                  lambda: self.ref.tokens.skip_processing(n))

    @rule(v=st.integers(-10, 40))
    def offset(self, v):
        self.both(lambda: self.real.tokens.apply_processing_offset(v),
                  lambda: self.ref.tokens.apply_processing_offset(v))

    @rule(k=st.integers(-1, 40), t=token)
    def overwrite_from_end(self, k, t):
        self.both(lambda: self.real.tokens.overwrite_token_at_offset_from_end(k, t),
                  lambda: self.ref.tokens.overwrite_token_at_offset_from_end(k, t))

    @rule(exclude=st.integers(-1, 3))
    def consume(self, exclude):
        self.both(lambda: self.real.tokens.consume_recently_generated_tokens(exclude),
                  lambda: self.ref.tokens.consume_recently_generated_tokens(exclude))

    @rule()
    def to_generation_output(self):
        self.both(lambda: self.real.to_generation_output().tokens,
                  self.ref.to_generation_output)

    @rule()
    def reset(self):
        self.both(self.real.reset, self.ref.reset)

    @invariant()
    def observables_match(self):
        if not hasattr(self, "real"):
            return
        r, n = self.real, self.ref
        tb, nb = r.tokens, n.tokens
        assert tb.all.tolist() == nb.all
        assert tb.prompt.tolist() == nb.prompt
        assert tb.generated.tolist() == nb.generated
        assert tb.active.tolist() == nb.active
        assert len(tb) == len(nb)
        assert (tb.processed_length, tb.active_length, tb.current_position,
                tb.generated_length, tb.prompt_length, bool(tb.actively_chunked)) == (
            nb.processed_length, nb.active_length, nb.current_position,
            nb.generated_length, nb.prompt_len, nb.chunked)
        assert tb.completion_range == (nb.comp_start, nb.comp_end)
        assert r.status.value == n.status
        assert r.is_initial_prompt == n.is_initial_prompt
        assert r.image_idx == n.image_idx
        assert r.needs_vision_encoding == n.needs_vision_encoding
        assert [(im.start_idx, im.end_idx) for im in r.next_images] == n.next_images
        assert [(im.start_idx, im.end_idx) for im in r.next_images_in_window] == \
            n.next_images_in_window
        for idx in range(-1, len(nb) + 2):
            assert r.compute_image_aligned_idx(idx) == n.compute_image_aligned_idx(idx)
        bisected = n.bisected()
        if bisected:
            with pytest.raises(ValueError, match="bisect an image"):
                r._validate_state()
        else:
            r._validate_state()
        pending = nb.generated_length > 0 and nb.a[-1] == FUTURE_TOKEN
        if len(nb) >= 2 or not pending:
            assert r.last_realized_token == (nb.a[-2] if pending else nb.a[-1])


ContextMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("HARNESS_STATEFUL_EXAMPLES", "400")), stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestContextMachine = ContextMachine.TestCase
