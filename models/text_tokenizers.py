"""Tokenizers trained locally with ``tokenizers`` for the tiny models (CLIP BPE, T5 Unigram).

Nothing is downloaded: each tokenizer is trained on a small built-in corpus, deterministically
(single-threaded training, scores rounded), and saved with ``save_pretrained`` so that it loads
back through the same transformers / ``tokenizers`` path as a real checkpoint's tokenizer.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

__all__ = ["CORPUS", "bytes_to_unicode", "greedy_merges", "train_clip_tokenizer",
           "train_t5_tokenizer", "saved_vocab_size", "load_fast_tokenizer"]

# Prompt-like English with digits and punctuation; enough for a few hundred merges / pieces.
CORPUS = (
    "a photo of a cat sitting on a red chair in a sunny kitchen",
    "an astronaut riding a horse on the moon, highly detailed, 4k",
    "a watercolor painting of a lighthouse by the sea at dawn",
    "portrait of an old man with a grey beard, studio lighting, 85mm",
    "a small wooden cabin in a snowy forest under the northern lights",
    "a bowl of fresh fruit: apples, oranges, bananas and grapes",
    "cyberpunk city street at night with neon signs and rain",
    "a cute robot reading a book in a quiet library",
    "macro shot of a dew drop on a green leaf, shallow depth of field",
    "a red sports car driving along a coastal road at sunset",
    "an oil painting of sunflowers in a blue vase on a table",
    "a dragon flying over mountains, epic fantasy art, dramatic clouds",
    "a minimalist logo of a fox, flat vector, white background",
    "the quick brown fox jumps over the lazy dog",
    "a bustling market in morocco with colorful spices and lanterns",
    "underwater scene with coral reef, tropical fish and sunbeams",
    "a steaming cup of coffee next to a laptop on a wooden desk",
    "black and white photograph of a train station in 1920",
    "a field of tulips in the netherlands with a windmill",
    "a teddy bear wearing a tiny hat, soft light, children's book illustration",
    "blurry, low quality, bad anatomy, watermark, text, jpeg artifacts",
    "ugly, deformed, extra fingers, cropped, worst quality, noisy",
    "It's a beautiful day! Isn't it? We'll see; they're here, you've won, I'm fine, he'd go.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 16 32 64 128 256 512 1024 2048",
    "Symbols & punctuation - (parentheses) [brackets] {braces} \"quotes\" 'single' "
    "#tag @user 50% $5",
    "hello world, a quiet evening, the golden hour, a misty morning in the valley",
    "isometric 3d render of a cozy bedroom with plants and a cat",
    "a glass of water on a marble table, photorealistic, octane render",
    "anime girl with long blue hair standing in a field of flowers",
    "a vintage typewriter with a sheet of paper, warm tones",
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte → printable character map (printable ranges first, then the rest)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _single_threaded() -> None:
    # The Unigram trainer parallelises with rayon; one thread keeps its EM sums in a fixed order.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("RAYON_NUM_THREADS", "1")


_CLIP_SPLIT = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
               r"""[^\s\p{L}\p{N}]+""")


def greedy_merges(segments: dict[str, list[str]], counts: Counter, max_merges: int,
                  min_count: int = 2) -> list[tuple[str, str]]:
    """Greedy BPE: merge the most frequent adjacent pair of ``segments`` (word → symbols, each
    word weighted by ``counts``) until ``max_merges`` or no pair occurs ``min_count`` times. Ties
    break by the pair itself (the ``tokenizers`` trainer breaks them in hash-map order, which
    changes between processes). ``segments`` is updated in place."""
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter = Counter()
        for w, syms in segments.items():
            for a, b in zip(syms, syms[1:]):
                pairs[a, b] += counts[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < min_count:
            break
        merges.append(best)
        joined = best[0] + best[1]
        for w, syms in segments.items():
            i, out = 0, []
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            segments[w] = out
    return merges


def _learn_merges(words: Counter, max_merges: int, min_count: int = 2) -> list[tuple[str, str]]:
    """CLIP's merges: words end in ``</w>`` (greedy_merges over the word counts)."""
    segs = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    return greedy_merges(segs, words, max_merges, min_count)


def train_clip_tokenizer(out_dir: str | os.PathLike, *, vocab_size: int = 1000,
                         model_max_length: int = 77) -> int:
    """Learn a CLIP byte-level BPE (``</w>`` suffix), save it as ``CLIPTokenizer``; return its size.

    Words come from CLIP's own normaliser and split regex run through ``tokenizers``; the merges
    are learned by ``_learn_merges`` so that the same corpus always gives the same bytes.

    The vocab follows CLIP's layout: 256 byte symbols, the same with ``</w>``, one entry per merge,
    then ``<|startoftext|>`` and ``<|endoftext|>`` (the highest ids, as in the real tokenizer).
    """
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import CLIPTokenizer

    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    words = Counter(piece for text in CORPUS
                    for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    merges = _learn_merges(words, vocab_size - 2 * 256 - 2)

    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for piece in symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]:
        vocab.setdefault(piece, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    clip = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    clip.save_pretrained(str(out_dir))
    return len(clip)


def train_t5_tokenizer(out_dir: str | os.PathLike, *, vocab_size: int = 400,
                       model_max_length: int = 512) -> int:
    """Train a T5 Unigram (``<pad>``=0, ``</s>``=1, ``<unk>``=2), save it as ``T5TokenizerFast``."""
    _single_threaded()
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
    ])
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
        show_progress=False, shrinking_factor=0.75, n_sub_iterations=2,
        initial_alphabet=[chr(c) for c in range(33, 127)])
    tok.train_from_iterator(list(CORPUS), trainer)
    pieces = json.loads(tok.to_str())["model"]["vocab"]
    # The trainer lists tied pieces in hash-map order and nudges the scores of the rarest ones by
    # 1e-4 steps in that order: round to 0.01 and sort, so every build writes the same bytes.
    specials, rest = pieces[:3], pieces[3:]
    ranked = sorted(((round(float(sc), 2), p) for p, sc in rest), key=lambda x: (-x[0], x[1]))
    vocab = [(p, 0.0) for p, _ in specials] + [(p, sc) for sc, p in ranked]
    t5 = T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
    t5.save_pretrained(str(out_dir))
    return len(t5)


def saved_vocab_size(folder: str | os.PathLike) -> int:
    """Size of a saved fast tokenizer, special tokens included (``vocab_size = len(tok)``)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json")).get_vocab_size(
        with_added_tokens=True)


def load_fast_tokenizer(folder: str | os.PathLike):
    """A ``tokenizers.Tokenizer`` for a saved tokenizer folder, padding and truncation off.

    Reads tokenizer.json directly when present (fast, no transformers import); folders with only
    the slow files (e.g. FLUX.1's CLIP ``vocab.json`` + ``merges.txt``) go through transformers,
    which builds the same backend tokenizer its pipelines use.
    """
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    else:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(folder, local_files_only=True).backend_tokenizer
        except (OSError, ValueError, AttributeError) as exc:
            raise ValueError(f"cannot load a fast tokenizer from {folder}: {exc}") from None
    tok.no_padding()
    tok.no_truncation()
    return tok
