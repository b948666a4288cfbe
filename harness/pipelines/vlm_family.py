"""The VLM family adapter: the interface the VLM loop, its tokenizer and its parity runner ask.

A family package (``models/<family>/``) subclasses ``VLMFamily`` and fills the hooks (image
preprocessing and placeholder ids, one encoder call per image, positions, per-chunk extras, the
inputs ``generate()`` takes); the loop never branches on a family's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PreparedImage", "ChatFormat", "VLMFamily"]


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
