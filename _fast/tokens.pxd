# Shared declarations of the compiled token core (see tokens.pyx).
cimport numpy as cnp
from libc.stdint cimport int64_t


cdef class TokenBuffer:
    cdef cnp.ndarray _array
    cdef int64_t* _data
    cdef Py_ssize_t _cap, _len, _prompt_len, _start, _end, _offset, _comp_start, _comp_end
    cdef bint _chunked

    cdef void _set_array(self, cnp.ndarray arr)
    cdef void _grow(self)
    cdef void _append(self, int64_t token)
    cpdef void chunk(self, Py_ssize_t n)
    cpdef void advance_chunk(self)
    cpdef void advance_with_token(self, int64_t token)
    cpdef void rewind_processing(self, Py_ssize_t n)
    cpdef void skip_processing(self, Py_ssize_t n)
    cpdef void apply_processing_offset(self, Py_ssize_t value)
    cpdef void overwrite_last_token(self, int64_t token)
    cpdef void overwrite_token_at_offset_from_end(self, Py_ssize_t k, int64_t token)
    cpdef void reset_as_new_prompt(self, Py_ssize_t drop_trailing=*)


cdef class EOSTracker:
    cdef cnp.ndarray _ids_arr
    cdef int64_t* _ids
    cdef Py_ssize_t _n_ids
    cdef list _seqs
    cdef tuple _stops
    cdef Py_ssize_t _max_stop
    cdef readonly str _tail

    cdef bint _is_id(self, int64_t token) noexcept nogil
    cdef bint _ends_with_eos(self, const int64_t* data, Py_ssize_t start, Py_ssize_t end)


cdef class ContextCore:
    cdef TokenBuffer _tokens
    cdef EOSTracker _eos
    cdef Py_ssize_t _max_length
    cdef int _status
    cdef bint _initial
    cdef dict _lp_data
    cdef object _matcher_obj
    cdef Py_ssize_t _n_images
    cdef list _image_list
    cdef cnp.ndarray _starts_arr, _ends_arr
    cdef int64_t* _starts
    cdef int64_t* _ends

    cpdef Py_ssize_t compute_image_aligned_idx(self, Py_ssize_t idx)
    cpdef void _validate_state(self)
    cdef bint _pending_placeholder(self)
    cdef void _refresh_status(self)
    cdef bint _advance_chunk_if_chunked(self) except -1
    cdef void _append(self, int64_t token)
