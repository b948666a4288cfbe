"""The llguidance tokenizer bridge of a model, built once per loaded tokenizer and cached.

``llguidance.hf.from_tokenizer`` reads the fast tokenizer's own JSON (byte-level BPE, byte
fallback, added and special tokens). The mask is sized by ``n_vocab`` = the model's logits (real
checkpoints pad them: Qwen2-VL 151936 rows for 151665 tokens) and the model's EOS ids end it.
That reader assumes ids without holes: with ids above the entry count (the replicas keep the real
special ids, 151643+ or 262144, over a few hundred BPE entries; Mistral's bytes start at 1000)
it refuses the EOS ids or reads those tokens as specials, whose masks then disagree with
``consume_token``. Such vocabularies are bridged through ``llguidance.TokenizerWrapper`` instead,
each id's bytes taken from its vocabulary piece; every id the tokenizer lacks is a special token
with no text, which no grammar allows.
"""
from __future__ import annotations

import itertools
import weakref
from typing import Any

from harness.errors import RequestError

__all__ = ["tokenizer_bridge", "bridge_by_id", "bridge_id", "bridge_builds"]

# hf tokenizer -> {(vocab_size, eos ids): bridge id}; entries go with their tokenizer.
_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
# bridge id -> LLTokenizer (process-wide: a matcher pickled in this process finds its bridge).
_BY_ID: dict[str, Any] = {}
_IDS: dict[int, str] = {}  # id(LLTokenizer) -> bridge id
_COUNTER = itertools.count()


def bridge_builds() -> int:
    """Bridges built in this process so far (tests check the once-per-model rule)."""
    return len(_BY_ID)


def bridge_by_id(key: str) -> Any:
    """A bridge built in this process, by the id ``bridge_id`` gave it (None if unknown)."""
    return _BY_ID.get(key)


def bridge_id(bridge: Any) -> str | None:
    return _IDS.get(id(bridge))


def tokenizer_bridge(hf_tokenizer: Any, vocab_size: int, eos_token_ids) -> Any:
    """The ``llguidance.LLTokenizer`` of ``hf_tokenizer`` for a model with ``vocab_size`` logits
    and these EOS ids; built on first use, then the same object."""
    eos = tuple(sorted({int(e) for e in eos_token_ids if 0 <= int(e) < vocab_size}))
    key = (int(vocab_size), eos)
    per_tok = _CACHE.get(hf_tokenizer)
    if per_tok is None:
        per_tok = _CACHE[hf_tokenizer] = {}
    bid = per_tok.get(key)
    if bid is None:
        bridge = _build(hf_tokenizer, int(vocab_size), list(eos))
        bid = f"bridge-{next(_COUNTER)}"
        _BY_ID[bid] = bridge
        _IDS[id(bridge)] = bid
        per_tok[key] = bid
    return _BY_ID[bid]


def _n_vocab(hf_tokenizer: Any, vocab_size: int) -> int:
    return max(vocab_size, len(hf_tokenizer))


def _is_dense(hf_tokenizer: Any) -> bool:
    """Ids run 0..n-1 without holes (what ``llguidance.hf`` assumes)."""
    ids = hf_tokenizer.get_vocab().values()
    return max(ids) + 1 == len(ids)


def _build(hf_tokenizer: Any, vocab_size: int, eos: list[int]) -> Any:
    import llguidance.hf
    from transformers import PreTrainedTokenizerFast

    if not isinstance(hf_tokenizer, PreTrainedTokenizerFast):
        raise RequestError(f"structured output needs a fast (tokenizers) tokenizer; this model's "
                           f"is a {type(hf_tokenizer).__name__}")
    n_vocab = _n_vocab(hf_tokenizer, vocab_size)
    fallback = hf_tokenizer.eos_token_id
    eos_arg = eos or ([int(fallback)] if fallback is not None else [])
    if not eos_arg:
        raise RequestError("structured output needs an EOS token to end the output, but neither "
                           "the model's generation_config nor its tokenizer names one")
    if not _is_dense(hf_tokenizer):
        return _wrapped(hf_tokenizer, n_vocab, eos_arg)
    try:
        return llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=n_vocab, eos_token=eos_arg)
    except ValueError as exc:
        raise RequestError(f"structured output: llguidance cannot read this model's "
                           f"tokenizer: {exc}") from None


def _byte_level_map() -> dict[str, int]:
    """GPT-2's printable character -> byte map, inverted (what ByteLevel decoders undo)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _piece_decoder(hf_tokenizer: Any):
    """piece (as the vocabulary spells it) -> the bytes it stands for, by the decoder type:
    ByteLevel (GPT-2 style), byte fallback with a ▁ space marker (SentencePiece style), or the
    tokenizer's own string conversion."""
    import json

    spec = json.loads(hf_tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    kinds = {d.get("type") for d in spec.get("decoders", [])} | {spec.get("type")}
    if "ByteLevel" in kinds:
        table = _byte_level_map()

        def byte_level(piece: str) -> bytes:
            if all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece)
            return piece.encode("utf-8")
        return byte_level
    if kinds & {"ByteFallback", "Metaspace", "Replace"}:
        def sentencepiece(piece: str) -> bytes:
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                return bytes([int(piece[3:5], 16)])
            return piece.replace("\u2581", " ").encode("utf-8")
        return sentencepiece
    return lambda piece: hf_tokenizer.convert_tokens_to_string([piece]).encode("utf-8")


class _TokenTable:
    """What ``llguidance.TokenizerWrapper`` reads: bytes per id, special ids, EOS/BOS, encode."""

    def __init__(self, hf_tokenizer: Any, tokens: list[bytes], special: list[int], eos: int):
        self._tok = hf_tokenizer
        self.tokens = tokens
        self.special_token_ids = special
        self.eos_token_id = eos
        self.bos_token_id = hf_tokenizer.bos_token_id

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return list(self._tok.encode(text, add_special_tokens=False))


def _wrapped(hf_tokenizer: Any, n_vocab: int, eos: list[int]) -> Any:
    """The bridge of a tokenizer whose ids have holes: each id's bytes from its vocabulary piece
    (``_piece_decoder``); special added tokens and ids the tokenizer lacks are specials (the
    holes with no text: no grammar allows them)."""
    from llguidance import LLTokenizer, TokenizerWrapper

    decode = _piece_decoder(hf_tokenizer)
    added = hf_tokenizer.added_tokens_decoder
    by_id = {i: piece for piece, i in hf_tokenizer.get_vocab().items()}
    tokens: list[bytes] = []
    special: list[int] = []
    for i in range(n_vocab):
        piece = by_id.get(i)
        if i in added and added[i].special:
            tokens.append(added[i].content.encode("utf-8"))
            special.append(i)
        elif piece is None:
            tokens.append(b"")
            special.append(i)
        elif i in added:  # a non-special added token: its text as written
            tokens.append(added[i].content.encode("utf-8"))
        else:
            tokens.append(decode(piece))
    table = _TokenTable(hf_tokenizer, tokens, special, eos[0])
    return LLTokenizer(TokenizerWrapper(table), n_vocab=n_vocab, eos_token=eos)
