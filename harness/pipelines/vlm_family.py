"""The VLM family adapter: the interface the VLM loop, its tokenizer and its parity runner ask.

A family package (``models/<family>/``) subclasses ``VLMFamily`` and fills the hooks (image
preprocessing and placeholder expansion, the encoder rows its config promises, one encoder call
per image, positions, per-chunk extras, and the reference: the inputs the folder's own Hugging Face
processor builds from the raw request); the loop never branches on a family's name.

Prompt rendering follows the processor: the chat messages go through the folder's own chat
template (or, for folders without one, a template derived from the family's ``ChatFormat``); each
image marker the template writes (``image_marker``) is replaced by the family's expansion text
(what the processor's ``replace_image_token`` writes) and the whole text is tokenized once, with
the tokenizer's special tokens unless the rendered text already starts with BOS (the rule of
``ProcessorMixin.apply_chat_template``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ImagePiece", "PreparedImage", "ChatFormat", "VLMFamily", "RowCount"]


@dataclass
class ImagePiece:
    """One encoder input (an image, or one pan-and-scan crop of it) and its placeholder range.

    ``placeholder_ids`` are the ids of the range as they appear in the prompt (what
    ImageMetadata's ``[start_idx, end_idx)`` covers); ``embedding_positions`` are offsets inside it
    that receive encoder rows (None = all); ``grid_thw`` is the three numbers a family's encoder
    call needs beside the pixels (Qwen2-VL: the merged patch grid; LLaVA-OneVision / NeXT: the
    images in the prompt and the original height and width).
    """

    pixel_values: np.ndarray
    placeholder_ids: list[int]
    embedding_positions: np.ndarray | None = None
    grid_thw: tuple[int, int, int] | None = None
    #: Family-specific facts the row check reads (e.g. Qwen2-VL's unmerged grid).
    meta: dict = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        """Placeholders that receive an encoder row."""
        if self.embedding_positions is None:
            return len(self.placeholder_ids)
        return int(len(self.embedding_positions))


@dataclass
class PreparedImage:
    """One user image after preprocessing: the text that replaces its marker in the rendered
    prompt (the processor's expansion) and its encoder inputs in prompt order."""

    text: str
    pieces: list[ImagePiece]


@dataclass(frozen=True)
class RowCount:
    """Encoder rows the model's config promises for one piece, and where that number comes
    from (for the one-line refusal when it differs from the placeholders)."""

    rows: int
    why: str


@dataclass(frozen=True)
class ChatFormat:
    """The chat layout of folders without a chat template (the tiny models):
    ``bos? user_prefix CONTENT user_suffix ... assistant_prefix``; each image part is written as
    the family's template image text followed by ``image_separator``."""

    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    add_bos: bool = True
    image_separator: str = ""

    def template(self, image_text: str) -> str:
        """This layout as a Jinja chat template (rendered like any folder's own template)."""
        q = json.dumps  # a JSON string is a valid Jinja string literal
        return (
            ("{{ bos_token }}" if self.add_bos else "")
            + "{% for message in messages %}"
            + "{% if message['role'] == 'assistant' %}{{ " + q(self.assistant_prefix) + " }}"
            + "{% else %}{{ " + q(self.user_prefix) + " }}{% endif %}"
            + "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
            + "{% for part in message['content'] %}"
            + "{% if part['type'] == 'image' %}{{ " + q(image_text + self.image_separator) + " }}"
            + "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
            + "{% if message['role'] == 'assistant' %}{{ eos_token }}"
            + "{% else %}{{ " + q(self.user_suffix) + " }}{% endif %}"
            + "{% endfor %}"
            + "{% if add_generation_prompt %}{{ " + q(self.assistant_prefix) + " }}{% endif %}")


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
    #: The folder's processor settings (processor_config.json), as the processor reads them.
    processor_config: dict = field(default_factory=dict)
    #: The folder's own chat template (None: the ChatFormat fallback).
    chat_template: str | None = None
    #: Built on first use by ``reference_processor()``.
    _reference: Any = field(default=None, repr=False, compare=False)

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

    # -- prompt rendering -------------------------------------------------------------------------
    @property
    def image_marker(self) -> str:
        """The string a chat template writes for an image and the processor replaces."""
        raise NotImplementedError

    @property
    def template_image_text(self) -> str:
        """What the ChatFormat fallback template writes per image (the marker by default)."""
        return self.image_marker

    @property
    def prompt_template(self) -> str:
        """The folder's chat template, or the ChatFormat fallback as a template."""
        return self.chat_template or self.chat.template(self.template_image_text)

    def render_prompt(self, messages: list[dict]) -> str:
        """Chat messages (content parts ``{"type": "text"|"image", ...}``) → the prompt text with
        one ``image_marker`` per image, through the chat template and its generation prompt."""
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.prompt_template, tokenize=False,
            add_generation_prompt=True)

    def tokenize_prompt(self, text: str) -> list[int]:
        """The expanded prompt text → ids, as the processor tokenizes it: the tokenizer's special
        tokens are added unless the text already starts with BOS."""
        bos = self.tokenizer.bos_token
        special = not (bos is not None and text.startswith(bos))
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    # -- images ---------------------------------------------------------------------------------
    def check_image_options(self, options: dict) -> dict:
        """User image-processor options (e.g. ``do_pan_and_scan``): only the ones the folder's
        image processor takes; ValueError names the others."""
        valid = getattr(getattr(self.image_processor, "valid_kwargs", None), "__annotations__",
                        {})
        bad = sorted(k for k in options if k not in valid or k in ("return_tensors",))
        if bad:
            raise ValueError(f"image option(s) {', '.join(bad)} are not taken by the "
                             f"{type(self.image_processor).__name__} of this model")
        return dict(options)

    def prepare(self, image, options: dict | None = None) -> PreparedImage:
        """PIL image → its expansion text and encoder inputs (what the processor makes of it)."""
        raise NotImplementedError

    def encoder_rows(self, piece: ImagePiece) -> RowCount:
        """Encoder rows the model's config promises for this piece (no forward runs)."""
        raise NotImplementedError

    def encode(self, image) -> Any:
        """One vision-encoder call on one ``ImageMetadata``: a ``(rows, hidden)`` tensor."""
        raise NotImplementedError

    def place_rows(self, embeds, placed: list[tuple[Any, Any]]) -> dict:
        """Put one prefill chunk's encoder rows in: ``placed`` holds, per image with rows in the
        chunk, ``(offsets in the chunk, those rows of encode()'s output)``. By default the rows
        overwrite the placeholder embeddings in place and no model kwargs are added; a family
        whose language model also reads the rows elsewhere (Qwen3-VL's deepstack) returns them
        as model kwargs instead."""
        for offsets, rows in placed:
            embeds[0, offsets] = rows.to(embeds.dtype)
        return {}

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

    # -- the reference: the folder's own processor on the raw request ----------------------------
    def build_reference_processor(self):
        """The folder's Hugging Face processor (its class, settings, tokenizer, PIL image
        processor and chat template), built independently of this adapter's own state."""
        raise NotImplementedError

    def reference_processor(self):
        if self._reference is None:
            self._reference = self.build_reference_processor()
        return self._reference

    def processor_inputs(self, messages: list[dict], options: dict | None = None) -> dict:
        """``model.generate()`` kwargs built by the folder's processor from chat messages whose
        image parts carry the images as loaded (``{"type": "image", "image": PIL}``)."""
        proc = self.reference_processor()
        kwargs: dict = {}
        if not (proc.chat_template or getattr(proc.tokenizer, "chat_template", None)):
            kwargs["chat_template"] = self.chat.template(self.template_image_text)
        elif not proc.chat_template:
            kwargs["chat_template"] = proc.tokenizer.chat_template
        out = proc.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt", processor_kwargs=dict(options or {}), **kwargs)
        return dict(out)

    def reference_pixels(self, inputs: dict) -> list[np.ndarray]:
        """The processor's pixel values, one array per encoder input (as the harness keeps them)."""
        pv = inputs.get("pixel_values")
        return [] if pv is None else [np.asarray(p, dtype=np.float32) for p in pv]

    # -- the context's own ids and pixels as generate() kwargs -----------------------------------
    def context_inputs(self, ctx) -> dict:
        """Kwargs for ``model.generate()`` on the context's own ids and pixels (benchmarks and
        position checks; parity uses ``processor_inputs`` instead)."""
        import torch

        ids = torch.as_tensor(np.asarray(ctx.tokens.prompt), dtype=torch.long)[None]
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if ctx.images:
            out["pixel_values"] = torch.as_tensor(
                np.stack([im.pixel_values for im in ctx.images]))
        return out
