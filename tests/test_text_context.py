"""TextContext behaviours pinned by contexts.md §3 (prompt [0,1,2,3] unless said)."""
import copy
import pickle

import numpy as np
import pytest

from harness.context import (
    FUTURE_TOKEN,
    EOSTracker,
    GenerationStatus,
    LogProbabilities,
    SamplingParams,
    TextContext,
    TokenBuffer,
)


def ctx(prompt=(0, 1, 2, 3), max_length=100, eos=(), seqs=(), **kw):
    return TextContext(
        max_length=max_length, tokens=TokenBuffer(np.array(prompt, dtype=np.int64)),
        eos_tracker=EOSTracker(eos_token_ids=set(eos), eos_sequences=[list(s) for s in seqs]),
        **kw)


def test_eos_update():
    c = ctx(eos={4})
    assert c.is_initial_prompt and c.status == GenerationStatus.ACTIVE
    c.update(4)
    assert len(c.tokens) == 5
    assert c.status == GenerationStatus.END_OF_SEQUENCE and c.is_done
    assert not c.is_initial_prompt
    assert c.to_generation_output().tokens == [4]  # the EOS token is returned


def test_max_length():
    c = ctx(max_length=6)
    c.update(7)
    assert c.status == GenerationStatus.ACTIVE
    c.update(8)
    assert c.status == GenerationStatus.MAXIMUM_LENGTH


def test_lengths_grow():
    c = ctx()
    assert (len(c.tokens), c.tokens.active_length) == (4, 4)
    c.update(9)
    assert (len(c.tokens), c.tokens.active_length) == (5, 1)
    for t in (10, 11, 12):
        c.update(t)
    assert (len(c.tokens), c.tokens.active_length) == (8, 1)


def test_chunked_update_drops_token():
    c = ctx()
    c.tokens.chunk(2)
    c.update(98, log_probabilities=LogProbabilities([0.0], [{98: 0.0}], [98]))
    assert c.tokens.all.tolist() == [0, 1, 2, 3]
    assert c.tokens.generated_length == 0 and c.tokens.active_length == 2
    assert c._log_probabilities_data == {} and c.is_initial_prompt
    for t in (99, 100, 101, 102):
        c.update(t)
    assert c.tokens.all.tolist() == [0, 1, 2, 3, 99, 100, 101, 102]
    c.tokens.rewind_processing(2)
    assert c.tokens.active.tolist() == [100, 101, 102]


def test_skip_processing():
    c = ctx()
    with pytest.raises(ValueError):
        c.tokens.skip_processing(999)
    c.tokens.skip_processing(2)
    assert c.tokens.active.tolist() == [2, 3] and len(c.tokens) == 4
    with pytest.raises(ValueError):
        c.tokens.skip_processing(2)


def test_appends_go_on_after_max_length():
    c = ctx(max_length=10)
    for i in range(128):
        c.update(i + 10)
    assert c.status == GenerationStatus.MAXIMUM_LENGTH and len(c.tokens) == 132


def test_update_then_reset():
    c = ctx()
    c.update(4)
    assert c.tokens.active.tolist() == [4]
    c.reset()
    assert c.tokens.active.tolist() == [0, 1, 2, 3, 4] and c.is_initial_prompt
    c.update(5)
    assert c.tokens.active.tolist() == [5]


def test_eos_sequences():
    c = ctx(prompt=[0], seqs=[[1, 2]])
    c.update(1)
    assert not c.is_done
    c.update(2)
    assert c.is_done and c.tokens.generated.tolist() == [1, 2]
    c = ctx(prompt=[0], seqs=[[2], [3, 1]])
    c.update(1)
    c.update(3)
    assert not c.is_done


def test_eos_ids():
    c = ctx(eos={5, 4, 2})
    c.update(1)
    c.update(2)
    assert c.is_done
    c = ctx(eos={5, 4, 2})
    c.update(3)
    c.update(6)
    assert not c.is_done


def test_min_token_mask():
    c = ctx(eos={4}, sampling_params=SamplingParams(min_new_tokens=3))
    m = c.get_min_token_logit_mask(1)
    assert len(m) == 1 and m[0].tolist() == [[0, 4]] and m[0].dtype == np.int32
    c.update(1)
    assert c.get_min_token_logit_mask(1)[0].tolist() == [[0, 4]]
    c.update(2)
    m = c.get_min_token_logit_mask(3)
    assert [x.tolist() for x in m] == [[[0, 4]], [], []]
    assert m[1].shape == (0, 2)
    c2 = ctx(eos={4, 5}, sampling_params=SamplingParams(min_new_tokens=2))
    assert [x.tolist() for x in c2.get_min_token_logit_mask(3)] == [
        [[0, 4], [0, 5]], [[0, 4], [0, 5]], []]


def test_chunked_prefill_after_reset():
    c = ctx(prompt=range(32), max_length=1000)
    c.tokens.chunk(8)
    while c.tokens.actively_chunked:
        c.update(1)
        rem = c.tokens.active_length
        if rem > 8:
            c.tokens.chunk(8)
    for _ in range(45):
        c.update(1)
    assert len(c.tokens) == 77
    c.reset()
    assert (c.tokens.active_length, c.tokens.prompt_length, c.tokens.generated_length) == (
        77, 77, 0)
    while True:
        remaining = c.tokens.active_length
        piece = min(remaining, 8)
        if piece < remaining:
            c.tokens.chunk(piece)
            c.update(1)
            assert c.tokens.current_position == 77 and c.tokens.generated_length == 0
        else:
            c.update(1)
            break
    assert c.tokens.current_position == 78 and c.tokens.processed_length == 77
    assert c.tokens.generated_length == 1 and c.status == GenerationStatus.ACTIVE


def test_future_tokens():
    c = ctx(prompt=range(5), eos={42})
    with pytest.raises(ValueError, match="Cannot realize a future token when there are no generated tokens."):
        c.realize_future_token(5)
    c.update_with_future_token()
    assert c.tokens.all[-1] == FUTURE_TOKEN == -999
    c.realize_future_token(5)
    assert c.tokens.all.tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="Attempted to realize a non-future token. Found token: 5"):
        c.realize_future_token(6)
    c.update_with_future_token()
    with pytest.raises(ValueError, match="Cannot have multiple future tokens."):
        c.update_with_future_token()
    with pytest.raises(ValueError, match="Cannot append a token after a future token."):
        c.update(7)
    assert c.last_realized_token == 5
    assert c.to_generation_output().tokens == [5]
    c.realize_future_token(42)
    assert c.status == GenerationStatus.END_OF_SEQUENCE
    assert c.to_generation_output().tokens == [42]


def test_future_token_during_chunked_prefill_writes_nothing():
    c = ctx(prompt=range(6))
    c.tokens.chunk(3)
    c.update_with_future_token()
    assert c.tokens.all.tolist() == list(range(6)) and not c.tokens.actively_chunked


def test_reset_removes_pending_placeholder():
    c = ctx()
    c.update(9)
    c.update_with_future_token()
    c.reset()
    assert c.tokens.all.tolist() == [0, 1, 2, 3, 9]
    assert c.tokens.prompt_length == 5


def test_vocab_size_checks():
    c = ctx(vocab_size=10)
    c.update(10)
    with pytest.raises(RuntimeError, match=r"token_id=10 .*valid range: \[0, 10\)"):
        c.to_generation_output()
    c = ctx(vocab_size=10)
    c.update(-1)
    with pytest.raises(RuntimeError, match="Generated negative token_id=-1"):
        c.to_generation_output()
    c = ctx()
    c.update(999)
    assert c.to_generation_output().tokens == [999]


def test_streaming_outputs_and_log_probs():
    c = ctx(max_length=100, cached_prefix_length=2)
    empty = c.to_generation_output()
    assert empty.tokens == [] and empty.log_probabilities is None
    assert empty.num_cached_tokens == 2 and empty.final_status == GenerationStatus.ACTIVE
    lp = LogProbabilities([-0.5], [{7: -0.5}], [7])
    c.update(7, log_probabilities=lp)
    c.update(8)
    out = c.to_generation_output()
    assert out.tokens == [7, 8] and out.log_probabilities == [lp]
    c.update(9)
    out = c.to_generation_output()
    assert out.tokens == [9] and out.log_probabilities is None
    assert c._log_probabilities_data == {}


def test_realize_stores_log_probs_under_its_index():
    c = ctx()
    c.update_with_future_token()
    lp = LogProbabilities([-1.0], [{3: -1.0}], [3])
    c.realize_future_token(3, lp)
    assert c._log_probabilities_data == {4: lp}
    assert c.to_generation_output().log_probabilities == [lp]


def test_status_never_resets_on_update():
    c = ctx(eos={4})
    c.update(4)
    c.update(5)  # the caller should stop; the context does not refuse
    assert c.status == GenerationStatus.END_OF_SEQUENCE or c.is_done


def test_construction_errors():
    with pytest.raises(ValueError, match=r"min_tokens \(5\) \+ prompt_len \(4\) must be less "
                                         r"than or equal to max_length \(8\)"):
        ctx(max_length=8, sampling_params=SamplingParams(min_new_tokens=5))
    ctx(max_length=9, sampling_params=SamplingParams(min_new_tokens=5))
    with pytest.raises(ValueError, match="must be prefixed with 'tcp://' or 'ipc://'"):
        ctx(target_endpoint="http://x:1")
    with pytest.raises(ValueError, match="must contain a port if using tcp"):
        ctx(target_endpoint="tcp://host")
    ctx(target_endpoint="tcp://host:5555")
    ctx(target_endpoint="tcp://[::1]:5555")
    with pytest.raises(ValueError, match="must contain a port if using tcp"):
        ctx(target_endpoint="tcp://host:99999")
    ctx(target_endpoint="ipc:///tmp/sock")
    with pytest.raises(TypeError, match="TokenBuffer"):
        TextContext(max_length=5, tokens=np.arange(3))
    with pytest.raises(ValueError, match="max_length"):
        ctx(max_length=0)


def test_sampling_params():
    sp = SamplingParams()
    assert (sp.temperature, sp.top_k, sp.top_p, sp.min_new_tokens, sp.max_new_tokens,
            sp.seed) == (1.0, 0, 1.0, 0, None, None)
    assert not sp.is_greedy
    assert SamplingParams(temperature=0).is_greedy and SamplingParams(top_k=1).is_greedy
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        SamplingParams(temperature=-0.1)
    for p in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
            SamplingParams(top_p=p)
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams(top_k=-1)
    with pytest.raises(TypeError):
        SamplingParams(0.5)  # keyword-only
    np_params = SamplingParams(temperature=np.float32(0.5), top_k=np.int64(5), top_p=np.float64(0.9))
    assert np_params.top_k == 5 and not np_params.is_greedy


def test_defaults():
    c = ctx()
    assert c.vocab_size is None and c.log_probabilities == 0
    assert c.log_probabilities_echo is False and c.ignore_eos is False
    assert c.json_schema is None and c.grammar is None and c.model_name == ""
    assert c._matcher is None and c._draft_offset == 0 and c._spec_decoding_state is None
    assert c.in_reasoning_phase is False and c.target_endpoint is None
    assert c.external_block_metadata is None and c.dkv_hint_instance_name == ""
    assert c.cached_prefix_length is None and c._cache_metrics_emitted is False
    assert isinstance(c.request_id, str) and c.request_id != ctx().request_id
    assert c.min_tokens == 0


def test_spec_decoding_state_is_lazy_and_reset():
    c = ctx()
    s = c.spec_decoding_state
    assert c.spec_decoding_state is s
    c.reset()
    assert c.spec_decoding_state is not s


def test_compute_num_available_steps_and_offset():
    c = ctx(prompt=range(10))
    assert c.compute_num_available_steps(100) == 100
    c.update(1)
    assert c.compute_num_available_steps(100) == 100 - 10
    c.apply_processing_offset(0)
    assert c.tokens.processing_offset == 0


class _Matcher:
    def __init__(self):
        self.seen = []

    def consume_token(self, t):
        self.seen.append(t)


def test_matcher_consumes_real_tokens_only():
    m = _Matcher()
    c = ctx(_matcher=m)
    c.update(5)
    c.update_with_future_token()
    c.realize_future_token(6)
    assert m.seen == [5, 6]


@pytest.mark.parametrize("copier", [lambda c: pickle.loads(pickle.dumps(c)), copy.deepcopy])
def test_pickle_round_trip_every_field(copier):
    c = ctx(eos={4}, seqs=[[1, 2]], vocab_size=50, model_name="m", cached_prefix_length=3,
            sampling_params=SamplingParams(temperature=0.5, seed=3))
    c.update(7, log_probabilities=LogProbabilities([-1.0], [{7: -1.0}], [7]))
    c2 = copier(c)
    assert type(c2) is TextContext
    for name in ("request_id", "max_length", "vocab_size", "model_name", "cached_prefix_length",
                 "sampling_params", "status", "is_initial_prompt", "_log_probabilities_data"):
        assert getattr(c2, name) == getattr(c, name), name
    assert c2.tokens.all.tolist() == c.tokens.all.tolist()
    assert c2.tokens.completion_range == c.tokens.completion_range
    assert c2.eos_tracker.eos_token_ids == {4}
    assert c2.eos_tracker.eos_sequences == ((1, 2),)
    c2.update(4)
    assert c2.is_done and not c.is_done
    assert c.tokens.all.tolist() == [0, 1, 2, 3, 7]
