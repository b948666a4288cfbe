# cython: language_level=3
"""Compiled token core: TokenBuffer, EOS matching, the text-context update path and image-range queries.

The Python layer (``harness.context``) validates what users pass in; this module trusts its own
state. Every public method that takes user values still checks them, because a TokenBuffer is
itself public API. Index convention: half-open ranges ``[start, end)`` over absolute token indices.
"""
cimport cython
cimport numpy as cnp
from libc.stdint cimport int64_t
from libc.string cimport memcmp, memcpy

import numpy as np

cnp.import_array()

FUTURE_TOKEN = -999
cdef int64_t _FUTURE = -999

# Status codes shared with harness.context.status.GenerationStatus (same order).
STATUS_ACTIVE = 0
STATUS_END_OF_SEQUENCE = 1
STATUS_MAXIMUM_LENGTH = 2
STATUS_CANCELLED = 3
cdef enum:
    _ACTIVE = 0
    _EOS = 1
    _MAXLEN = 2

_PREVIEW = 16


cdef inline object _as_index(object key, str what):
    try:
        import operator
        return operator.index(key)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(key).__name__}") from None


@cython.final
cdef class TokenBuffer:
    """An int64 token array with processing, completion and chunking state (MAX's TokenBuffer).

    ``[ processed | active | pending ]``: processed = ``[0, start)``, active =
    ``[start + offset, end)``, pending ``[end, len)`` is non-empty only while chunked.
    """

    def __cinit__(self, array):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"TokenBuffer needs a numpy ndarray, got {type(array).__name__}")
        cdef cnp.ndarray arr = <cnp.ndarray>array
        if arr.ndim != 1:
            raise ValueError(f"array must be one-dimensional: got shape {array.shape}")
        if arr.dtype != np.int64:
            raise ValueError(f"array must be int64: got dtype {arr.dtype}")
        if arr.shape[0] == 0:
            raise ValueError(f"array must be non-empty: got length {arr.shape[0]}")
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.array(arr, dtype=np.int64, copy=True, order="C")
        self._set_array(arr)
        self._len = arr.shape[0]
        self._prompt_len = self._len
        self._start = 0
        self._end = self._len
        self._offset = 0
        self._comp_start = self._len
        self._comp_end = self._len
        self._chunked = False

    cdef void _set_array(self, cnp.ndarray arr):
        self._array = arr
        self._data = <int64_t*> cnp.PyArray_DATA(arr)
        self._cap = arr.shape[0]

    cdef void _grow(self):
        cdef Py_ssize_t new_cap = self._cap * 2 if self._cap > 0 else 16
        cdef cnp.ndarray new = np.empty(new_cap, dtype=np.int64)
        memcpy(cnp.PyArray_DATA(new), self._data, self._len * sizeof(int64_t))
        self._set_array(new)

    # -- derived quantities ----------------------------------------------------------------
    @property
    def processed_length(self):
        """Tokens already run through the model: ``[0, proc.start)``."""
        return self._start

    @property
    def active_length(self):
        """Tokens the next forward pass runs: ``(end - start) - offset``."""
        return (self._end - self._start) - self._offset

    @property
    def current_position(self):
        """``processed_length + active_length`` (== ``end - offset``)."""
        return self._end - self._offset

    @property
    def prompt_length(self):
        return self._prompt_len

    @property
    def current_length(self):
        """Valid tokens (the capacity may be larger)."""
        return self._len

    @property
    def generated_length(self):
        return self._len - self._prompt_len

    @property
    def actively_chunked(self):
        return self._chunked

    @property
    def processing_offset(self):
        return self._offset

    @property
    def capacity(self):
        return self._cap

    @property
    def completion_range(self):
        """``(start, end)`` of the generated tokens not yet handed to the user."""
        return (self._comp_start, self._comp_end)

    # -- views (numpy views, valid until the next reallocation) ---------------------------
    @property
    def all(self):
        return self._array[:self._len]

    @property
    def prompt(self):
        return self._array[:self._prompt_len]

    @property
    def generated(self):
        return self._array[self._prompt_len:self._len]

    @property
    def active(self):
        return self._array[self._start + self._offset:self._end]

    def __len__(self):
        return self._len

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self._array[:self._len][key]
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            i = int(key)
            if i < 0:
                i += self._len
            if i < 0 or i >= self._len:
                raise IndexError(f"Index {i} is out of bounds for array of length {self._len}")
            return int(self._data[i])
        raise TypeError(f"Index must be an integer or slice, got {type(key)}")

    # -- operations -------------------------------------------------------------------------
    cpdef void chunk(self, Py_ssize_t n):
        """Restrict the active window to its first ``n`` tokens (``1 <= n < active_length``)."""
        cdef Py_ssize_t active = (self._end - self._start) - self._offset
        if n < 1 or n >= active:
            raise ValueError(
                f"chunk size must be between 1 and the current number of active tokens: got {n} "
                f"(need 1 <= n < active_length={active})")
        self._end += n - active
        self._chunked = True

    cpdef void advance_chunk(self):
        """Make the rest of the prompt active after a chunk was processed."""
        if not self._chunked:
            raise ValueError("Cannot advance chunk if not actively chunked.")
        self._offset = 0
        self._start = self._end
        self._end = self._len
        self._chunked = False

    cdef void _append(self, int64_t token):
        if self._len >= self._cap:
            self._grow()
        self._data[self._len] = token
        self._len += 1

    cpdef void advance_with_token(self, int64_t token):
        """Append a generated token and slide the active window to exactly that token."""
        if self._chunked:
            raise ValueError("Cannot add a token while actively chunked.")
        self._append(token)
        self._start = self._end
        self._end += 1
        self._comp_end += 1
        self._offset = 0

    cpdef void rewind_processing(self, Py_ssize_t n):
        """Mark the last ``n`` processed tokens as unprocessed again."""
        if n < 0:
            raise ValueError(f"n must be non-negative: got {n}")
        if self._start - n < 0:
            raise ValueError(
                f"start ({self._start}) + amount ({-n}) must be >= 0: cannot rewind {n} tokens, "
                f"only {self._start} have been processed")
        if self._start - n + self._offset < 0:
            # A negative processing offset must still leave the active view inside the array.
            raise ValueError(
                f"cannot rewind {n} tokens with processing offset {self._offset}: the active "
                f"view would start at {self._start - n + self._offset} < 0")
        self._start -= n

    cpdef void skip_processing(self, Py_ssize_t n):
        """Mark ``n`` active tokens as processed (prefix-cache hit); one must stay active."""
        cdef Py_ssize_t active = (self._end - self._start) - self._offset
        if n < 0:
            raise ValueError(f"n must be non-negative: got {n}")
        if active - n < 1:
            raise ValueError(
                f"Cannot skip {n} tokens: would leave {active - n} active tokens. "
                f"Must have at least 1 active token (current active_length={active})")
        self._start += n

    cpdef void apply_processing_offset(self, Py_ssize_t value):
        """Set (not add) the processing offset; ``0 <= start + value <= end``."""
        if self._start + value < 0:
            raise ValueError(
                f"processing range start ({self._start}) + processing offset ({value}) must be "
                f">= 0")
        if self._start + value > self._end:
            raise ValueError(
                f"processing range start ({self._start}) + processing offset ({value}) must be "
                f"<= processing range end ({self._end})")
        self._offset = value

    cpdef void overwrite_last_token(self, int64_t token):
        self._data[self._len - 1] = token

    cpdef void overwrite_token_at_offset_from_end(self, Py_ssize_t k, int64_t token):
        """Overwrite ``all[-k]`` (``1 <= k <= len``)."""
        if k < 1 or k > self._len:
            raise ValueError(f"offset from end must satisfy 1 <= k <= {self._len}, got {k}")
        self._data[self._len - k] = token

    def consume_recently_generated_tokens(self, Py_ssize_t exclude=0):
        """Return a view of the generated tokens not yet handed out (minus ``exclude`` trailing)."""
        cdef Py_ssize_t outstanding = self._comp_end - self._comp_start
        if outstanding <= 0:
            raise ValueError("No tokens have been generated yet.")
        if exclude < 0 or exclude > outstanding:
            raise ValueError(
                f"cannot exclude {exclude} tokens: {outstanding} are outstanding "
                f"(allowed 0 <= exclude <= {outstanding})")
        cdef Py_ssize_t s = self._comp_start
        cdef Py_ssize_t e = self._comp_end - exclude
        self._comp_start = e
        return self._array[s:e]

    cpdef void reset_as_new_prompt(self, Py_ssize_t drop_trailing=0):
        """Drop ``drop_trailing`` generated tokens, then make every token part of the prompt."""
        cdef Py_ssize_t generated = self._len - self._prompt_len
        if drop_trailing < 0:
            raise ValueError(f"drop_trailing must be non-negative: got {drop_trailing}")
        if drop_trailing > generated:
            if drop_trailing == 1:
                raise ValueError(
                    "Cannot delete the last generated token if there are no generated tokens.")
            raise ValueError(
                f"Cannot delete the last {drop_trailing} generated tokens: only {generated} "
                f"were generated")
        self._len -= drop_trailing
        self._start = 0
        self._end = self._len
        self._offset = 0
        self._comp_start = self._len
        self._comp_end = self._len
        self._prompt_len = self._len
        self._chunked = False

    def __repr__(self):
        cdef Py_ssize_t n = self._len
        if n <= _PREVIEW:
            preview = str([int(self._data[i]) for i in range(n)])
        else:
            head = ", ".join(str(int(self._data[i])) for i in range(_PREVIEW // 2))
            tail = ", ".join(str(int(self._data[i])) for i in range(n - _PREVIEW // 2, n))
            preview = f"[{head}, ..., {tail}]"
        return (f"TokenBuffer(chunked={bool(self._chunked)}, active={self.active_length}, "
                f"prompt={self._prompt_len}, generated={self._len - self._prompt_len}, "
                f"total={n}, tokens={preview})")

    def __eq__(self, other):
        """Equal by value: the valid tokens and every range/flag (the spare capacity is ignored).

        Buffers are mutable, so they are unhashable (like MAX's dataclass TokenBuffer)."""
        if not isinstance(other, TokenBuffer):
            return NotImplemented
        cdef TokenBuffer o = <TokenBuffer> other
        if self is o:
            return True
        if (self._len != o._len or self._prompt_len != o._prompt_len
                or self._start != o._start or self._end != o._end
                or self._offset != o._offset or self._comp_start != o._comp_start
                or self._comp_end != o._comp_end or self._chunked != o._chunked):
            return False
        return memcmp(self._data, o._data, self._len * sizeof(int64_t)) == 0

    __hash__ = None

    def _state(self):
        return (np.array(self._array[:self._len], copy=True), self._prompt_len, self._start,
                self._end, self._offset, self._comp_start, self._comp_end, bool(self._chunked))

    def __reduce__(self):
        return (_rebuild_token_buffer, self._state())


def _rebuild_token_buffer(array, prompt_len, start, end, offset, comp_start, comp_end, chunked):
    cdef TokenBuffer tb = TokenBuffer(array)
    tb._prompt_len = prompt_len
    tb._start = start
    tb._end = end
    tb._offset = offset
    tb._comp_start = comp_start
    tb._comp_end = comp_end
    tb._chunked = chunked
    return tb


# ---------------------------------------------------------------------------------------------
# EOS matching
# ---------------------------------------------------------------------------------------------
cdef object _int_list(object values, str what):
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{what} must contain integers, got {v!r}")
        out.append(int(v))
    return out


@cython.final
cdef class EOSTracker:
    """End-of-sequence rules: token ids, token sequences and stop strings.

    The rules are compiled at construction and on assignment; the getters return immutable
    copies so that the compiled form can never go stale.
    """

    def __init__(self, *, eos_token_ids=None, eos_sequences=None, eos_stop_strings=None):
        self.eos_token_ids = eos_token_ids if eos_token_ids is not None else ()
        self.eos_sequences = eos_sequences if eos_sequences is not None else ()
        self.eos_stop_strings = eos_stop_strings if eos_stop_strings is not None else ()

    @property
    def eos_token_ids(self):
        return frozenset(int(x) for x in self._ids_arr)

    @eos_token_ids.setter
    def eos_token_ids(self, values):
        ids = sorted(set(_int_list(values, "eos_token_ids")))
        self._ids_arr = np.asarray(ids, dtype=np.int64)
        self._ids = <int64_t*> cnp.PyArray_DATA(self._ids_arr)
        self._n_ids = len(ids)

    @property
    def eos_sequences(self):
        return tuple(tuple(int(x) for x in s) for s in self._seqs)

    @eos_sequences.setter
    def eos_sequences(self, values):
        seqs = []
        for s in values:
            if isinstance(s, (int, np.integer)):
                raise TypeError(f"eos_sequences must be a list of token lists, got element {s!r}")
            seq = _int_list(s, "each EOS sequence")
            if len(seq) == 0:
                raise ValueError("EOS sequences must not be empty")
            seqs.append(np.asarray(seq, dtype=np.int64))
        self._seqs = seqs

    @property
    def eos_stop_strings(self):
        return tuple(self._stops)

    @eos_stop_strings.setter
    def eos_stop_strings(self, values):
        if isinstance(values, str):
            raise TypeError("eos_stop_strings must be a list of strings, not a single string")
        stops = []
        for s in values:
            if not isinstance(s, str) or len(s) == 0:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
            stops.append(s)
        self._stops = tuple(stops)
        self._max_stop = max((len(s) for s in stops), default=0)
        self._tail = ""

    cdef bint _is_id(self, int64_t token) noexcept nogil:
        cdef Py_ssize_t i
        for i in range(self._n_ids):
            if self._ids[i] == token:
                return True
        return False

    cdef bint _ends_with_eos(self, const int64_t* data, Py_ssize_t start, Py_ssize_t end):
        """True when ``data[start:end]`` ends with an EOS id or one of the EOS sequences."""
        cdef Py_ssize_t n = end - start, m, j
        cdef cnp.ndarray seq
        cdef const int64_t* sp
        if n <= 0:
            return False
        if self._is_id(data[end - 1]):
            return True
        for seq in self._seqs:
            m = seq.shape[0]
            if m > n:
                continue
            sp = <const int64_t*> cnp.PyArray_DATA(seq)
            for j in range(m):
                if data[end - m + j] != sp[j]:
                    break
            else:
                return True
        return False

    def is_eos_from_tokens(self, generated):
        """True when the last generated token is an EOS id or the tokens end with a sequence."""
        arr = np.ascontiguousarray(np.asarray(generated, dtype=np.int64).reshape(-1))
        if arr.shape[0] == 0:
            raise ValueError("generated_tokens must be non-empty")
        cdef const int64_t[::1] view = arr
        return bool(self._ends_with_eos(&view[0], 0, view.shape[0]))

    def first_eos_offset(self, prior, new):
        """Index into ``new`` of the first token at which EOS completes (sequences may start in
        ``prior``), or None when the step holds no EOS."""
        p = np.asarray(prior, dtype=np.int64).reshape(-1)
        q = np.asarray(new, dtype=np.int64).reshape(-1)
        if q.shape[0] == 0:
            return None
        arr = np.ascontiguousarray(np.concatenate([p, q]))
        cdef const int64_t[::1] view = arr
        cdef Py_ssize_t base = p.shape[0], i
        for i in range(q.shape[0]):
            if self._ends_with_eos(&view[0], 0, base + i + 1):
                return i
        return None

    def is_eos_from_string(self, str piece):
        """Feed newly decoded text; return the earliest stop string found, else None.

        Only a bounded tail of earlier text is kept (longest stop string - 1 characters), so a
        stop string straddling two pieces is still found.
        """
        if not self._stops:
            return None
        old = len(self._tail)
        text = self._tail + piece
        best_pos = -1
        best = None
        for s in self._stops:
            # Only matches that end inside the new piece: one found earlier is not found again.
            pos = text.find(s, max(0, old - len(s) + 1))
            if pos >= 0 and (best_pos < 0 or pos < best_pos):
                best_pos = pos
                best = s
        keep = self._max_stop - 1
        self._tail = text[-keep:] if keep > 0 else ""
        return best

    def __repr__(self):
        return (f"EOSTracker(eos_token_ids={set(self.eos_token_ids)}, "
                f"eos_sequences={[list(s) for s in self.eos_sequences]}, "
                f"eos_stop_strings={list(self._stops)})")

    def __eq__(self, other):
        """Equal by value: the same EOS ids (a set), sequences and stop strings (in order), and
        the same stop-string tail, which decides what ``is_eos_from_string`` reports next.

        Trackers are mutable (assignable rules, the tail), so they are unhashable (like MAX's
        pydantic EOSTracker)."""
        if not isinstance(other, EOSTracker):
            return NotImplemented
        cdef EOSTracker o = <EOSTracker> other
        cdef Py_ssize_t i
        if self is o:
            return True
        if self._n_ids != o._n_ids:
            return False
        for i in range(self._n_ids):  # both sorted
            if self._ids[i] != o._ids[i]:
                return False
        return (self.eos_sequences == o.eos_sequences
                and self._stops == o._stops
                and self._tail == o._tail)

    __hash__ = None

    def __reduce__(self):
        return (_rebuild_eos_tracker, (sorted(self.eos_token_ids),
                                       [list(s) for s in self.eos_sequences],
                                       list(self._stops), self._tail))


def _rebuild_eos_tracker(ids, seqs, stops, tail):
    cdef EOSTracker t = EOSTracker(eos_token_ids=ids, eos_sequences=seqs, eos_stop_strings=stops)
    t._tail = tail
    return t


# ---------------------------------------------------------------------------------------------
# Image-range queries (ranges sorted, non-overlapping, half-open)
# ---------------------------------------------------------------------------------------------
cdef inline Py_ssize_t _bisect_right(const int64_t* a, Py_ssize_t n, int64_t x) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if x < a[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


cdef inline Py_ssize_t _containing(const int64_t* starts, const int64_t* ends, Py_ssize_t n,
                                   int64_t idx) noexcept nogil:
    """Index of the image with ``start <= idx < end``, or -1."""
    cdef Py_ssize_t i = _bisect_right(starts, n, idx) - 1
    if i >= 0 and idx < ends[i]:
        return i
    return -1


# ---------------------------------------------------------------------------------------------
# The text-context core: the whole update() path in compiled code
# ---------------------------------------------------------------------------------------------
cdef class ContextCore:
    """State the per-token update needs, held in C fields. ``harness.context.TextContext``
    subclasses this and adds the Python-level fields and methods."""

    def __cinit__(self, *args, **kwargs):
        self._status = _ACTIVE
        self._initial = True
        self._lp_data = {}
        self._matcher_obj = None
        self._n_images = 0
        self._image_list = []
        self._starts_arr = np.empty(0, dtype=np.int64)
        self._ends_arr = np.empty(0, dtype=np.int64)
        self._starts = <int64_t*> cnp.PyArray_DATA(self._starts_arr)
        self._ends = <int64_t*> cnp.PyArray_DATA(self._ends_arr)

    # -- plain fields exposed to Python ----------------------------------------------------
    @property
    def tokens(self):
        return self._tokens

    @tokens.setter
    def tokens(self, value):
        if not isinstance(value, TokenBuffer):
            raise TypeError(f"tokens must be a TokenBuffer, got {type(value).__name__}")
        self._tokens = value

    @property
    def max_length(self):
        return self._max_length

    @max_length.setter
    def max_length(self, value):
        self._max_length = value

    @property
    def eos_tracker(self):
        return self._eos

    @eos_tracker.setter
    def eos_tracker(self, value):
        if not isinstance(value, EOSTracker):
            raise TypeError(f"eos_tracker must be an EOSTracker, got {type(value).__name__}")
        self._eos = value

    @property
    def _status_code(self):
        return self._status

    @_status_code.setter
    def _status_code(self, int value):
        if value < 0 or value > 3:
            raise ValueError(f"status code must be in [0, 3], got {value}")
        self._status = value

    @property
    def _is_initial_prompt(self):
        return self._initial

    @_is_initial_prompt.setter
    def _is_initial_prompt(self, value):
        self._initial = bool(value)

    @property
    def _log_probabilities_data(self):
        return self._lp_data

    @_log_probabilities_data.setter
    def _log_probabilities_data(self, value):
        if not isinstance(value, dict):
            raise TypeError(f"_log_probabilities_data must be a dict, got {type(value).__name__}")
        self._lp_data = value

    @property
    def _matcher(self):
        return self._matcher_obj

    @_matcher.setter
    def _matcher(self, value):
        self._matcher_obj = value

    # -- images --------------------------------------------------------------------------------
    def _set_image_ranges(self, list images, starts, ends):
        """Install sorted, validated image ranges (the Python layer checks them first)."""
        self._starts_arr = np.ascontiguousarray(starts, dtype=np.int64)
        self._ends_arr = np.ascontiguousarray(ends, dtype=np.int64)
        self._starts = <int64_t*> cnp.PyArray_DATA(self._starts_arr)
        self._ends = <int64_t*> cnp.PyArray_DATA(self._ends_arr)
        self._n_images = self._starts_arr.shape[0]
        self._image_list = images

    @property
    def _image_starts(self):
        return self._starts_arr

    @property
    def _image_ends(self):
        return self._ends_arr

    @property
    def image_idx(self):
        """Index of the next image not fully processed (``len(images)`` when none)."""
        if self._n_images == 0:
            return 0
        return _bisect_right(self._ends, self._n_images, self._tokens._start)

    @property
    def needs_vision_encoding(self):
        return self._n_images > 0 and _bisect_right(
            self._ends, self._n_images, self._tokens._start) < self._n_images

    @property
    def next_images(self):
        if self._n_images == 0:
            return []
        return self._image_list[_bisect_right(self._ends, self._n_images, self._tokens._start):]

    @property
    def next_images_in_window(self):
        """Next images overlapping ``[processed_length, current_position)``."""
        if self._n_images == 0:
            return []
        cdef TokenBuffer tb = self._tokens
        cdef Py_ssize_t first = _bisect_right(self._ends, self._n_images, tb._start)
        cdef Py_ssize_t stop = first
        cdef Py_ssize_t cp = tb._end - tb._offset
        while stop < self._n_images and self._starts[stop] < cp:
            stop += 1
        return self._image_list[first:stop]

    cpdef Py_ssize_t compute_image_aligned_idx(self, Py_ssize_t idx):
        """An index strictly inside an image (``start <= idx < end``) snaps to its start."""
        cdef Py_ssize_t i
        if self._n_images == 0:
            return idx
        i = _containing(self._starts, self._ends, self._n_images, idx)
        return self._starts[i] if i >= 0 else idx

    cpdef void _validate_state(self):
        """Outside chunked prefill the current position may not bisect an image."""
        cdef TokenBuffer tb = self._tokens
        cdef Py_ssize_t cp, i
        if self._n_images == 0 or tb._chunked:
            return
        cp = tb._end - tb._offset
        i = _containing(self._starts, self._ends, self._n_images, cp)
        if i >= 0 and self._starts[i] < cp:
            raise ValueError(
                f"It is invalid for the current_position ({cp}) to bisect an image "
                f"({self._image_list[i]!r}).")

    # -- the hot path ----------------------------------------------------------------------
    cdef bint _pending_placeholder(self):
        cdef TokenBuffer tb = self._tokens
        return tb._len > tb._prompt_len and tb._data[tb._len - 1] == _FUTURE

    cdef void _refresh_status(self):
        cdef TokenBuffer tb = self._tokens
        if self._eos._ends_with_eos(tb._data, tb._prompt_len, tb._len):
            self._status = _EOS
        elif tb._end - tb._offset >= self._max_length:
            self._status = _MAXLEN

    cdef bint _advance_chunk_if_chunked(self) except -1:
        """During chunked prefill an update only moves to the next chunk (True when it did)."""
        cdef TokenBuffer tb = self._tokens
        if not tb._chunked:
            return False
        tb.advance_chunk()
        if self._n_images:
            self._validate_state()
        return True

    cdef void _append(self, int64_t token):
        """Append a generated token (or placeholder), then refresh status and vision state."""
        self._tokens.advance_with_token(token)
        self._refresh_status()
        self._initial = False
        if self._n_images:
            self._validate_state()

    def update(self, int64_t new_token, log_probabilities=None):
        """Record one sampled token (or finish a prefill chunk) and refresh the status.

        While chunked the token is dropped and the next chunk becomes active.
        """
        if self._advance_chunk_if_chunked():
            return
        cdef TokenBuffer tb = self._tokens
        if tb._len > tb._prompt_len and tb._data[tb._len - 1] == _FUTURE:
            raise ValueError(
                f"Cannot append a token after a future token. Token {new_token} was not appended: "
                f"realize the pending placeholder ({_FUTURE}) with realize_future_token() first.")
        if log_probabilities is not None:
            self._lp_data[tb._len] = log_probabilities
        self._append(new_token)
        if self._matcher_obj is not None and new_token != _FUTURE:
            self._matcher_obj.consume_token(new_token)

    def update_with_future_token(self):
        """Append the FUTURE_TOKEN placeholder (overlap scheduling); while chunked only advance."""
        if self._advance_chunk_if_chunked():
            return
        if self._pending_placeholder():
            raise ValueError(
                f"Cannot have multiple future tokens. A placeholder ({_FUTURE}) is already "
                f"pending: realize it with realize_future_token() first.")
        self._append(_FUTURE)

    def realize_future_token(self, int64_t new_token, log_probabilities=None):
        """Overwrite the pending placeholder with the real token and re-check EOS."""
        cdef TokenBuffer tb = self._tokens
        if tb._len <= tb._prompt_len:
            raise ValueError(
                "Cannot realize a future token when there are no generated tokens.")
        if tb._data[tb._len - 1] != _FUTURE:
            raise ValueError(
                f"Attempted to realize a non-future token. Found token: {tb._data[tb._len - 1]}")
        tb._data[tb._len - 1] = new_token
        if log_probabilities is not None:
            self._lp_data[tb._len - 1] = log_probabilities
        self._refresh_status()
        if self._matcher_obj is not None:
            self._matcher_obj.consume_token(new_token)

    @property
    def _has_pending_placeholder(self):
        return self._pending_placeholder()
