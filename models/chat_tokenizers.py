"""Qwen-style chat tokenizers built locally: byte-level BPE, Qwen special tokens, a chat template.

The merges are learned deterministically (ties broken by the pair) from ``text_tokenizers.CORPUS``
plus any texts a family adds (e.g. its prompt templates, so that they tokenize into whole words as
with the real vocabulary). The result is saved through transformers' own ``Qwen2Tokenizer`` class,
so tokenizer.json carries exactly Qwen2's normaliser (NFC) and split regex, and it loads back
identically through ``tokenizers.Tokenizer.from_file`` and ``AutoTokenizer.from_pretrained``.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterable

__all__ = ["QWEN_SPECIALS", "QWEN_PRETOKENIZE_REGEX", "QWEN_CHAT_TEMPLATE", "learn_byte_merges",
           "build_qwen_tokenizer"]

#: Qwen2.5 / Qwen3 special tokens a tiny model needs (text, chat, vision placeholders, thinking).
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<think>", "</think>")

#: Qwen2's pre-tokenizer split regex (transformers' ``tokenization_qwen2.PRETOKENIZE_REGEX``).
QWEN_PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
                          r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

#: A small Qwen3-like template: system/user/assistant turns, ``add_generation_prompt``, and
#: ``enable_thinking=False`` writing the empty think block as Qwen3's template does.
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{ '<think>\n\n</think>\n\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
)


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def learn_byte_merges(texts: Iterable[str], max_merges: int, *, specials: Iterable[str] = (),
                      min_count: int = 2) -> list[tuple[str, str]]:
    """Greedy byte-level BPE merges over Qwen2's pre-tokenised words, ties broken by the pair.

    Special tokens are cut out of the texts first (they never take part in merges).
    """
    import re

    from tokenizers import normalizers

    from .text_tokenizers import greedy_merges

    norm = normalizers.NFC()
    pre = _pre_tokenizer()
    specials = sorted(specials, key=len, reverse=True)
    cut = re.compile("|".join(re.escape(s) for s in specials)) if specials else None
    words: Counter = Counter()
    for text in texts:
        for part in (cut.split(text) if cut else [text]):
            if part:
                words.update(p for p, _ in pre.pre_tokenize_str(norm.normalize_str(part)))
    return greedy_merges({w: list(w) for w in words}, words, max_merges, min_count)


def build_qwen_tokenizer(out_dir: str | os.PathLike, *, extra_texts: Iterable[str] = (),
                         max_merges: int = 800, specials: Iterable[str] = QWEN_SPECIALS,
                         chat_template: str | None = QWEN_CHAT_TEMPLATE,
                         model_max_length: int = 32768) -> int:
    """Learn merges, save a ``Qwen2Tokenizer`` into ``out_dir``; returns ``len(tokenizer)``.

    Vocab layout: the 256 byte symbols, one entry per merge, then the special tokens (the highest
    ids, as in the real Qwen vocabulary). ``<|endoftext|>`` is the pad/unk/eos token, like Qwen2.5's
    base tokenizer (chat models stop on ``<|im_end|>`` through their generation config).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    from .text_tokenizers import CORPUS, bytes_to_unicode

    specials = list(specials)
    merges = learn_byte_merges(list(CORPUS) + list(extra_texts), max_merges, specials=specials)
    vocab: dict[str, int] = {}
    for piece in list(bytes_to_unicode().values()) + ["".join(m) for m in merges]:
        vocab.setdefault(piece, len(vocab))
    for s in specials:
        vocab[s] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length,
                         errors="replace")
    tok.add_tokens([AddedToken(s, special=True, normalized=False) for s in specials],
                   special_tokens=True)
    if chat_template is not None:
        tok.chat_template = chat_template
    tok.save_pretrained(str(Path(out_dir)))
    return len(tok)
