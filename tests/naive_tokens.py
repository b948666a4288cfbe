"""Plain pure-Python reference of the token core: TokenBuffer, EOS rules, the text-context update
path and the image-range queries. Obviously correct and slow (lists and linear scans); the
differential tests and benchmarks compare the compiled code with it."""
from __future__ import annotations

FUTURE = -999
ACTIVE, EOS, MAXLEN = "active", "end_of_sequence", "maximum_length"


class NaiveTokenBuffer:
    def __init__(self, tokens):
        self.a = [int(t) for t in tokens]
        assert self.a, "empty"
        self.prompt_len = len(self.a)
        self.start, self.end, self.offset = 0, len(self.a), 0
        self.comp_start = self.comp_end = len(self.a)
        self.chunked = False

    # derived
    @property
    def processed_length(self):
        return self.start

    @property
    def active_length(self):
        return (self.end - self.start) - self.offset

    @property
    def current_position(self):
        return self.processed_length + self.active_length

    @property
    def generated_length(self):
        return len(self.a) - self.prompt_len

    @property
    def all(self):
        return list(self.a)

    @property
    def prompt(self):
        return self.a[:self.prompt_len]

    @property
    def generated(self):
        return self.a[self.prompt_len:]

    @property
    def active(self):
        return self.a[self.start + self.offset:self.end]

    def __len__(self):
        return len(self.a)

    # operations: each checks everything first, then mutates
    def chunk(self, n):
        if not 1 <= n < self.active_length:
            raise ValueError("chunk")
        self.end += n - self.active_length
        self.chunked = True

    def advance_chunk(self):
        if not self.chunked:
            raise ValueError("advance_chunk")
        self.offset = 0
        self.start = self.end
        self.end = len(self.a)
        self.chunked = False

    def advance_with_token(self, t):
        if self.chunked:
            raise ValueError("advance_with_token")
        self.a.append(t)
        self.start = self.end
        self.end += 1
        self.comp_end += 1
        self.offset = 0

    def rewind_processing(self, n):
        if n < 0 or self.start - n < 0 or self.start - n + self.offset < 0:
            raise ValueError("rewind")
        self.start -= n

    def skip_processing(self, n):
        if n < 0 or self.active_length - n < 1:
            raise ValueError("skip")
        self.start += n

    def apply_processing_offset(self, v):
        if not 0 <= self.start + v <= self.end:
            raise ValueError("offset")
        self.offset = v

    def overwrite_last_token(self, t):
        self.a[-1] = t

    def overwrite_token_at_offset_from_end(self, k, t):
        if not 1 <= k <= len(self.a):
            raise ValueError("overwrite")
        self.a[len(self.a) - k] = t

    def consume_recently_generated_tokens(self, exclude=0):
        outstanding = self.comp_end - self.comp_start
        if outstanding <= 0:
            raise ValueError("No tokens have been generated yet.")
        if not 0 <= exclude <= outstanding:
            raise ValueError("exclude")
        out = self.a[self.comp_start:self.comp_end - exclude]
        self.comp_start = self.comp_end - exclude
        return out

    def reset_as_new_prompt(self, drop_trailing=0):
        if not 0 <= drop_trailing <= self.generated_length:
            raise ValueError("drop")
        if drop_trailing:
            del self.a[-drop_trailing:]
        n = len(self.a)
        self.start, self.end, self.offset = 0, n, 0
        self.comp_start = self.comp_end = n
        self.prompt_len = n
        self.chunked = False


def naive_ends_with_eos(generated, eos_ids, eos_sequences):
    if not generated:
        return False
    if generated[-1] in eos_ids:
        return True
    return any(len(s) <= len(generated) and generated[-len(s):] == list(s) for s in eos_sequences)


class NaiveVisionContext:
    """TextAndVisionContext's update path and image queries with linear scans over the images."""

    def __init__(self, tokens, max_length, images=(), eos_ids=(), eos_sequences=()):
        self.tokens = NaiveTokenBuffer(tokens)
        self.max_length = max_length
        self.images = [tuple(im) for im in images]  # (start, end)
        self.eos_ids = set(eos_ids)
        self.eos_sequences = [list(s) for s in eos_sequences]
        self.status = ACTIVE
        self.is_initial_prompt = True
        self.validate_state()

    # image queries
    @property
    def image_idx(self):
        for i, (s, e) in enumerate(self.images):
            if self.tokens.processed_length < e:
                return i
        return len(self.images)

    @property
    def next_images(self):
        return self.images[self.image_idx:]

    @property
    def needs_vision_encoding(self):
        return self.image_idx < len(self.images)

    @property
    def next_images_in_window(self):
        lo, hi = self.tokens.processed_length, self.tokens.current_position
        return [(s, e) for (s, e) in self.next_images if s < hi and e > lo]

    def compute_image_aligned_idx(self, idx):
        for s, e in self.images:
            if s <= idx < e:
                return s
        return idx

    def bisected(self):
        cp = self.tokens.current_position
        return (not self.tokens.chunked) and any(s < cp < e for s, e in self.images)

    def validate_state(self):
        if self.bisected():
            raise ValueError("bisect")

    def _pending(self):
        tb = self.tokens
        return tb.generated_length > 0 and tb.a[-1] == FUTURE

    def _refresh_status(self):
        # Only the last max(len(sequence)) generated tokens can end in EOS.
        keep = max([1] + [len(s) for s in self.eos_sequences])
        tail = self.tokens.a[max(self.tokens.prompt_len, len(self.tokens.a) - keep):]
        if naive_ends_with_eos(tail, self.eos_ids, self.eos_sequences):
            self.status = EOS
        elif self.tokens.current_position >= self.max_length:
            self.status = MAXLEN

    # the update path
    def update(self, t):
        if self.tokens.chunked:
            self.tokens.advance_chunk()
            self.validate_state()
            return
        if self._pending():
            raise ValueError("pending placeholder")
        self.tokens.advance_with_token(t)
        self._refresh_status()
        self.is_initial_prompt = False
        self.validate_state()

    def update_with_future_token(self):
        if self.tokens.chunked:
            self.tokens.advance_chunk()
            self.validate_state()
            return
        if self._pending():
            raise ValueError("second placeholder")
        self.tokens.advance_with_token(FUTURE)
        self._refresh_status()
        self.is_initial_prompt = False
        self.validate_state()

    def realize_future_token(self, t):
        if self.tokens.generated_length <= 0 or self.tokens.a[-1] != FUTURE:
            raise ValueError("realize")
        self.tokens.a[-1] = t
        self._refresh_status()

    def to_generation_output(self):
        tb = self.tokens
        exclude = 1 if self._pending() and tb.comp_end > tb.comp_start else 0
        if tb.comp_end - tb.comp_start - exclude <= 0:
            return []
        return tb.consume_recently_generated_tokens(exclude)

    def reset(self):
        self.tokens.reset_as_new_prompt(1 if self._pending() else 0)
        self.is_initial_prompt = True
        self.validate_state()
