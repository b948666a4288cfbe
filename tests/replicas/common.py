"""What the replica builders share: bf16 sharded saving, tokenizers with special tokens at their
real ids, the files a real tokenizer folder ships, and the cached build.

A replica is a real checkpoint's folder with its configs verbatim except depth (and widths where
memory demands), built offline from seeded random weights. Weights are saved in bfloat16, as the
real repos ship them (the harness and the reference both load them as float32 for parity), and
the big components in several ``*-0000k-of-0000n.safetensors`` shards with their
``*.safetensors.index.json``, as the real repos do.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

from models.cache import ensure_built
from models.diffusers_common import sha256, versions

__all__ = ["write_json", "save_sharded", "shard_files", "byte_bpe_tokenizer",
           "write_vocab_merges", "added_tokens_decoder", "build_replica", "strip_private",
           "QWEN_ADDED", "QWEN_ADDITIONAL_SPECIAL", "qwen3_chat_template", "qwen_tokenizer"]

HERE = Path(__file__).resolve().parent


def write_json(path: Path, obj, *, indent: int = 2) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def strip_private(cfg: dict) -> dict:
    """A config without the ``_``-prefixed bookkeeping keys (what a class constructor takes)."""
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def save_sharded(model, out: Path, shards: int) -> list[str]:
    """Save ``model`` in bfloat16 with ``save_pretrained``, cut into about ``shards`` files (1: a
    single file, as the small components of the real repos ship). Returns the weight files."""
    import torch

    model = model.to(torch.bfloat16)
    kw = {"safe_serialization": True, "max_shard_size": _shard_size(model.state_dict(), shards)}
    model.save_pretrained(out, **kw)
    return shard_files(out)


def _shard_size(state_dict: dict, shards: int) -> int:
    """The smallest ``max_shard_size`` (bytes) that cuts ``state_dict`` into ``shards`` files
    by huggingface_hub's greedy split (the one both libraries use), found by bisection."""
    from huggingface_hub import split_torch_state_dict_into_shards

    total = sum(t.numel() * t.element_size() for t in state_dict.values())
    if shards <= 1:
        return 2 * total + 1024

    def count(size: int) -> int:
        return len(split_torch_state_dict_into_shards(state_dict, max_shard_size=size)
                   .filename_to_tensors)

    lo, hi = max(1, total // (shards + 1)), total
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) > shards:
            lo = mid + 1
        else:
            hi = mid
    return lo


def shard_files(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).glob("*.safetensors"))


def added_tokens_decoder(ids: dict[str, int], special: Iterable[str] | None = None) -> dict:
    """tokenizer_config.json's ``added_tokens_decoder`` for tokens at given ids."""
    special = set(ids if special is None else special)
    return {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": t in special}
            for t, i in sorted(ids.items(), key=lambda kv: kv[1])}


def byte_bpe_tokenizer(*, texts: Iterable[str], max_merges: int, specials: dict[str, int],
                       non_special: Iterable[str] = ()):
    """(vocab, merges) of a Qwen2-style byte-level BPE learned locally, with every token of
    ``specials`` at its given (real) id: the vocabulary has a gap up to them, as the model's
    ``vocab_size`` and the configs' token ids are the real ones."""
    from models.chat_tokenizers import learn_byte_merges
    from models.text_tokenizers import CORPUS, bytes_to_unicode

    merges = learn_byte_merges(list(CORPUS) + list(texts), max_merges, specials=list(specials))
    vocab: dict[str, int] = {}
    for piece in list(bytes_to_unicode().values()) + ["".join(m) for m in merges]:
        vocab.setdefault(piece, len(vocab))
    assert not specials or len(vocab) <= min(specials.values()), \
        "the learned vocab runs into the special ids"
    vocab.update(specials)
    return vocab, merges


def write_vocab_merges(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]],
                       *, header: str = "#version: 0.2") -> None:
    """vocab.json and merges.txt, the slow-tokenizer files the real repos ship beside (or instead
    of) tokenizer.json."""
    write_json(Path(folder) / "vocab.json", vocab, indent=None)
    lines = [header] + [f"{a} {b}" for a, b in merges]
    (Path(folder) / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_replica(name: str, recipe: dict, build: Callable[[Path], None], module_file: str,
                  cache_dir: str | os.PathLike | None = None) -> Path:
    """The replica's folder, built once into the model cache (keyed by the recipe, the builder
    modules' source and the library versions)."""
    import models.chat_tokenizers as chat
    import models.text_tokenizers as text

    files = (Path(module_file), HERE / "common.py", Path(chat.__file__), Path(text.__file__))
    sources = {p.name: sha256(p.read_bytes()) for p in files}
    key = {"replica": name, "recipe": recipe, "versions": versions(), "sources": sources}
    return ensure_built(f"replica-{name}", key, build, cache_dir)


# --------------------------------------------------------------------------------------------------
# Qwen tokenizers (Qwen2.5-VL for Qwen-Image, Qwen3 for FLUX.2 Klein and Z-Image)

#: The added tokens of the Qwen2.5 / Qwen3 vocabularies at their real ids (True: special), as in
#: Qwen/Qwen3-4B's tokenizer_config.json added_tokens_decoder (a public copy:
#: akougkas/warpio-cli warpio-docs/ai-docs/model_cards/qwen3:4b.md); Qwen2.5-VL stops at 151664.
QWEN_ADDED = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
)
QWEN_FIRST_ADDED_ID = 151643
QWEN_ADDITIONAL_SPECIAL = ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                           "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
                           "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                           "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


def qwen3_chat_template() -> str:
    """Qwen3's chat template (Qwen/Qwen3-0.6B's tokenizer_config.json as quoted in
    huggingface/huggingface.js packages/jinja/test, the Qwen3 family's template with
    ``enable_thinking``)."""
    return (HERE / "qwen3_chat_template.jinja").read_text(encoding="utf-8").rstrip("\n")


def qwen_tokenizer(out: Path, *, added: int, config: dict, texts: Iterable[str] = (),
                   max_merges: int = 800, slow_files: bool = True,
                   tokenizer_json: bool = True) -> dict[str, int]:
    """A Qwen2 byte-level BPE learned locally with the first ``added`` of ``QWEN_ADDED`` at their
    real ids; writes tokenizer.json (optional), vocab.json + merges.txt (optional) and the given
    real ``tokenizer_config.json`` (its added_tokens_decoder filled in). Returns the added ids."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    table = QWEN_ADDED[:added]
    ids = {t: QWEN_FIRST_ADDED_ID + i for i, (t, _) in enumerate(table)}
    vocab, merges = byte_bpe_tokenizer(texts=texts, max_merges=max_merges, specials=ids)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, errors="replace")
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in table])
    out = Path(out)
    tok.save_pretrained(str(out))
    if not tokenizer_json:
        (out / "tokenizer.json").unlink()
    if slow_files:
        plain = {k: v for k, v in vocab.items() if k not in ids}
        if not tokenizer_json:
            # Without tokenizer.json, transformers numbers the added tokens after vocab.json's
            # entries (the real vocab.json holds ids 0..151642): fill the gap with unreachable
            # pieces, so that the added tokens keep their real ids on that path too.
            plain.update({f"<|replica_unused_{i}|>": i
                          for i in range(len(plain), QWEN_FIRST_ADDED_ID)})
        write_vocab_merges(out, plain, merges, header="#version: 0.2")
    cfg = dict(config)
    cfg["added_tokens_decoder"] = added_tokens_decoder(ids, [t for t, s in table if s])
    write_json(out / "tokenizer_config.json", dict(sorted(cfg.items())))
    return ids


def write_configs(out: Path, cfg: dict) -> None:
    """Put the real repository's config files back after save_pretrained rewrote them (and drop
    the generation configs the real diffusers repos do not ship)."""
    for part in ("transformer", "vae", "text_encoder"):
        write_json(out / part / "config.json", cfg[part])
    write_json(out / "scheduler" / "scheduler_config.json", cfg["scheduler"])
    write_json(out / "model_index.json", cfg["model_index"])
    for p in out.rglob("generation_config.json"):
        p.unlink()
