"""Shared pieces of the vision-language families: offline loading, tiny tokenizers, weight
re-draw, and ``VLMFamily`` — the interface the harness loop asks (no family names in harness/)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["offline_env", "build_byte_tokenizer", "redraw_weights", "PreparedImage", "ChatFormat",
           "VLMFamily", "load_family", "tiny_model", "save_all", "tiny_build", "config_matches",
           "MAX_IMAGE_SIDE"]

#: Largest image side the harness accepts before any family-specific resizing.
MAX_IMAGE_SIDE = 8192


def offline_env() -> None:
    """Force offline hub access; must run before transformers / huggingface_hub are imported."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


# -- tiny tokenizers ------------------------------------------------------------------------------
def build_byte_tokenizer(specials: list[str], *, bos: str, eos: str, pad: str,
                         named: dict[str, str] | None = None, chat_template: str | None = None):
    """Byte-level BPE with zero merges: the specials first, then the 256 byte symbols."""
    offline_env()
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials)}
    for sym in alphabet:
        vocab.setdefault(sym, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos,
                                  pad_token=pad, extra_special_tokens=dict(named or {}))
    if chat_template:
        tok.chat_template = chat_template
    return tok


def redraw_weights(model, std: float, seed: int) -> None:
    """Re-draw every matrix/conv weight from N(0, std) so that outputs depend on inputs."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * std)


def tiny_model(model_cls, cfg, recipe: dict, *, eos, pad):
    """``model_cls(cfg)`` seeded by ``recipe``, its weights re-drawn, generation eos/pad set."""
    import torch

    torch.manual_seed(recipe["seed"])
    model = model_cls(cfg)
    redraw_weights(model, recipe["std"], recipe["seed"])
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    return model


def save_all(folder: Path, *parts) -> None:
    """``save_pretrained(folder)`` of model, tokenizer and processor, in that order."""
    for part in parts:
        part.save_pretrained(folder)


def tiny_build(name: str, names: tuple[str, ...], recipe: dict, build: Callable[[Path], None],
               cache_dir=None) -> Path:
    """Build (once, atomically) tiny model ``name`` (one of ``names``) into the cache keyed by
    its recipe."""
    from models.cache import ensure_built

    if name not in names:
        raise ValueError(f"unknown tiny model {name!r}; known: {', '.join(names)}")

    return ensure_built(name, recipe, build, cache_dir)


def config_matches(folder, model_types: tuple[str, ...]) -> bool:
    """Does ``folder/config.json`` declare one of ``model_types``?"""
    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") in model_types
    except (OSError, ValueError):
        return False


# -- the family interface -------------------------------------------------------------------------
@dataclass
class PreparedImage:
    """One preprocessed image: its pixels and the ids it expands to in the prompt.

    ``ids[range_start:range_end]`` is the placeholder range (what ImageMetadata records);
    ``embedding_positions`` are offsets inside it that receive encoder rows (None = all).
    """

    pixel_values: np.ndarray
    ids: list[int]
    range_start: int
    range_end: int
    embedding_positions: np.ndarray | None = None
    grid_thw: tuple[int, int, int] | None = None

    @property
    def num_rows(self) -> int:
        n = self.range_end - self.range_start
        return n if self.embedding_positions is None else int(len(self.embedding_positions))


@dataclass(frozen=True)
class ChatFormat:
    """How a single-turn chat is laid out: ``bos? user_prefix CONTENT user_suffix assistant``."""

    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    add_bos: bool = True
    image_separator: str = ""  # text placed after each image in a plain prompt


@dataclass
class VLMFamily:
    """A loaded VLM plus the rules the harness loop asks about. Subclasses fill the hooks."""

    model: Any
    tokenizer: Any
    image_processor: Any
    folder: Path
    family: str = ""
    chat: ChatFormat = field(default_factory=lambda: ChatFormat("", "", ""))
    #: Image tokens attend to each other both ways: prefill chunks must not end inside an image.
    bidirectional_images: bool = False

    # -- ids ------------------------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def text_config(self):
        return self.model.config.get_text_config()

    @property
    def image_token_id(self) -> int:
        cfg = self.config
        return int(getattr(cfg, "image_token_id", None) if getattr(cfg, "image_token_id", None)
                   is not None else cfg.image_token_index)

    @property
    def vision_token_ids(self) -> list[int]:
        return [self.image_token_id]

    @property
    def vocab_size(self) -> int:
        return int(self.text_config.vocab_size)

    @property
    def max_context(self) -> int:
        return int(getattr(self.text_config, "max_position_embeddings", 1 << 30))

    def token_id(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise ValueError(f"{self.family}: tokenizer has no token {token!r}")
        return int(tid)

    def eos_token_ids(self) -> set[int]:
        """EOS ids from the generation config (falling back to the tokenizer)."""
        gc = getattr(self.model, "generation_config", None)
        eos = getattr(gc, "eos_token_id", None) if gc is not None else None
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return set()
        return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}

    # -- images ---------------------------------------------------------------------------------
    def preprocess(self, image) -> PreparedImage:
        """PIL image → pixels and the expanded placeholder ids."""
        raise NotImplementedError

    def encode(self, image) -> Any:
        """One vision-encoder call on one ``ImageMetadata``: a ``(rows, hidden)`` tensor."""
        raise NotImplementedError

    # -- positions and per-chunk extras -----------------------------------------------------------
    def prompt_positions(self, ctx) -> Any:
        """Position ids of the whole prompt (sliced per chunk): ``(1, P)`` by default."""
        import torch

        return torch.arange(ctx.tokens.prompt_length, dtype=torch.long)[None]

    def decode_positions(self, start: int, stop: int, state: Any) -> Any:
        """Position ids of the decode tokens at absolute indices ``[start, stop)`` (one table
        per request; the loop slices one column per step): ``(1, stop - start)`` by default."""
        import torch

        return torch.arange(start, stop, dtype=torch.long)[None]

    def position_state(self, prompt_positions) -> Any:
        """Whatever decode_positions needs from the prompt positions (M-RoPE: the delta)."""
        return None

    def chunk_kwargs(self, ctx, start: int, end: int) -> dict:
        """Extra model kwargs for the prefill chunk ``[start, end)``."""
        return {}

    # -- reference (HF generate) inputs ---------------------------------------------------------
    def prompt_inputs(self, ctx) -> dict:
        """``input_ids`` and ``attention_mask`` of the prompt, batch of one."""
        import torch

        ids = torch.as_tensor(np.asarray(ctx.tokens.prompt), dtype=torch.long)[None]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def reference_inputs(self, ctx) -> dict:
        """Kwargs for ``model.generate()`` on the same prompt and images."""
        import torch

        out = self.prompt_inputs(ctx)
        if ctx.images:
            out["pixel_values"] = torch.as_tensor(
                np.stack([im.pixel_values for im in ctx.images]))
        return out


def load_family(cls, folder, *, model_cls, processor_cls, device: str = "cpu",
                dtype: str = "float32", **fields) -> VLMFamily:
    """Load model, tokenizer and PIL image processor from a local folder, offline."""
    offline_env()
    import torch
    from transformers import AutoTokenizer

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading is sub-second for tiny models; keep stderr clean
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}[dtype]
    model = model_cls.from_pretrained(folder, local_files_only=True, dtype=torch_dtype)
    model.to(device).eval()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    proc = processor_cls.from_pretrained(folder, local_files_only=True)
    return cls(model=model, tokenizer=tok, image_processor=proc, folder=Path(folder), **fields)
