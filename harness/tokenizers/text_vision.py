"""Request → TextAndVisionContext: prompt rendering, placeholder expansion, images, EOS, sampling.

The prompt goes through the folder's chat template (``family.render_prompt``); each image marker
the template writes is replaced by the family's expansion text, the whole text is tokenized once
(as the Hugging Face processor does), and each encoder input's placeholder range is found in the
ids. Encoder rows vs placeholders are checked per image from the model's config, before any
forward pass.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from _fast.tokens import EOSTracker, TokenBuffer
from harness.context import ImageMetadata, SamplingParams, TextAndVisionContext
from harness.errors import RequestError
from harness.images import MAX_IMAGE_SIDE, load_image

__all__ = ["TextGenerationRequest", "TextAndVisionTokenizer", "load_image", "request_messages"]


@dataclass(kw_only=True)
class TextGenerationRequest:
    """A VLM generation request: a prompt (text or chat messages), images and options.

    ``prompt`` is a string (one user turn; the images go first, in order) or a list of chat
    messages ``{"role": "system"|"user"|"assistant", "content": str | [{"type": "text", "text":
    ...} | {"type": "image", "image": <optional source>}]}``; image parts without a source take the
    next entry of ``images``. Images are paths, PIL images or uint8 arrays. ``image_options`` are
    image-processor options the user sets (e.g. ``{"do_pan_and_scan": True}`` for Gemma 3), given
    to the harness and to the reference processor alike. At most one output constraint:
    ``json_schema`` (a dict, JSON text or a file), ``grammar`` (Lark as llguidance takes it, or a
    file) or ``regex`` (``harness.structured``).
    """

    prompt: str | list[dict]
    images: list[Any] = field(default_factory=list)
    max_new_tokens: int | None = 16
    max_length: int | None = None
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    min_new_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    stop_sequences: list[list[int]] = field(default_factory=list)
    ignore_eos: bool = False
    request_id: str | None = None
    image_options: dict = field(default_factory=dict)
    json_schema: str | dict | None = None
    grammar: str | None = None
    regex: str | None = None


def _image_hash(pixels: np.ndarray) -> int:
    digest = hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def request_messages(request: TextGenerationRequest) -> tuple[list[dict], list[Any]]:
    """The request as chat messages in content-part form (image parts carry no payload) and the
    image sources in prompt order; RequestError for a malformed request.

    A string prompt is one user turn: its images first, then the text (the layout of the
    processors' own examples)."""
    pending = list(request.images)
    if isinstance(request.prompt, str):
        content = [{"type": "image"} for _ in pending] + [{"type": "text",
                                                          "text": request.prompt}]
        return [{"role": "user", "content": content}], pending
    if not isinstance(request.prompt, list):
        raise RequestError(f"prompt must be a string or a list of chat messages, got "
                           f"{type(request.prompt).__name__}")
    messages: list[dict] = []
    sources: list[Any] = []
    for i, msg in enumerate(request.prompt):
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant", "system"):
            raise RequestError(f"message {i} must be a dict with role user, assistant or "
                               f"system, got {msg!r:.80}")
        content = msg.get("content", "")
        parts: list[dict] = []
        for part in ([{"type": "text", "text": content}] if isinstance(content, str)
                     else content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            elif kind == "image":
                src = part.get("image", part.get("path", part.get("url")))
                if src is None:
                    if not pending:
                        raise RequestError(
                            "the messages have more image parts than images were given")
                    src = pending.pop(0)
                sources.append(src)
                parts.append({"type": "image"})
            else:
                raise RequestError(f"message {i}: content parts must have type 'text' "
                                   f"or 'image', got {part!r:.80}")
        messages.append({"role": msg["role"], "content": parts})
    if pending:
        raise RequestError(f"{len(pending)} image(s) given but the messages have no image "
                           f"part for them")
    return messages, sources


def _find(ids: np.ndarray, pattern: list[int], start: int) -> int:
    """First index >= start where ``pattern`` occurs in ``ids`` (-1 if none)."""
    n = len(pattern)
    first = pattern[0]
    for i in np.flatnonzero(ids[start:] == first) + start:
        if i + n <= len(ids) and ids[i] == first and (ids[i:i + n] == pattern).all():
            return int(i)
    return -1


class TextAndVisionTokenizer:
    """Turns ``TextGenerationRequest`` into a ``TextAndVisionContext`` for one loaded family (a
    ``harness.pipelines.vlm_family.VLMFamily`` adapter, as ``family.load(folder)`` returns it)."""

    def __init__(self, family, *, max_image_side: int | None = None) -> None:
        self.family = family
        self.max_image_side = max_image_side or MAX_IMAGE_SIDE

    # -- request → context ------------------------------------------------------------------------
    def render(self, request: TextGenerationRequest) -> tuple[str, list[Any]]:
        """The prompt text through the chat template (one image marker per image) and the image
        sources in order."""
        fam = self.family
        messages, sources = request_messages(request)
        try:
            text = fam.render_prompt(messages)
        except Exception as exc:  # a template's raise_exception, a malformed conversation
            raise RequestError(f"the chat template refused the messages: {exc}") from None
        marker = fam.image_marker
        found = text.count(marker)
        if found != len(sources):
            raise RequestError(
                f"the prompt holds {found} image placeholder tokens {marker!r} but {len(sources)} "
                f"image(s) were given (does the text contain a literal image token?)")
        return text, sources

    def encode_prompt(self, request: TextGenerationRequest) -> tuple[list[int], list[ImageMetadata]]:
        """Token ids with expanded placeholders and one ImageMetadata per encoder input."""
        fam = self.family
        try:
            options = fam.check_image_options(dict(request.image_options or {}))
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        text, sources = self.render(request)
        chunks = text.split(fam.image_marker)
        expanded = [chunks[0]]
        pieces = []
        for i, src in enumerate(sources):
            prep = fam.prepare(load_image(src, self.max_image_side), options)
            for j, piece in enumerate(prep.pieces):
                got = fam.encoder_rows(piece)
                if got.rows != piece.num_rows:
                    where = f"image {i}" + (f" (crop {j})" if len(prep.pieces) > 1 else "")
                    if got.rows < 0:
                        raise RequestError(f"{where}: {got.why}")
                    raise RequestError(
                        f"{where}: the model's vision tower gives {got.rows} encoder rows "
                        f"({got.why}) but the processor lays out {piece.num_rows} placeholders "
                        f"for it")
                pieces.append(piece)
            expanded += [prep.text, chunks[i + 1]]
        ids = fam.tokenize_prompt("".join(expanded))
        arr = np.asarray(ids, dtype=np.int64)
        images: list[ImageMetadata] = []
        cursor = 0
        for k, piece in enumerate(pieces):
            start = _find(arr, piece.placeholder_ids, cursor)
            if start < 0:
                raise RequestError(f"image input {k}: its {len(piece.placeholder_ids)} "
                                   f"placeholders were not found in the tokenized prompt")
            end = start + len(piece.placeholder_ids)
            images.append(ImageMetadata(
                start_idx=start, end_idx=end, pixel_values=piece.pixel_values,
                image_hash=_image_hash(piece.pixel_values), grid_thw=piece.grid_thw,
                embedding_positions=piece.embedding_positions))
            cursor = end
        self._check_placeholders(ids, images)
        return ids, images

    def _check_placeholders(self, ids: list[int], images: list[ImageMetadata]) -> None:
        """Every image-token placeholder must be backed by exactly one encoder row."""
        image_id = self.family.image_token_id
        n_placeholders = int(np.count_nonzero(np.asarray(ids) == image_id))
        n_rows = sum(im.num_embeddings for im in images)
        if n_placeholders != n_rows:
            raise RequestError(
                f"the prompt holds {n_placeholders} image placeholder tokens but the images "
                f"provide {n_rows} encoder rows (does the text contain a literal image token?)")

    def new_context(self, request: TextGenerationRequest) -> TextAndVisionContext:
        """Validate the request once and build its context (numbers only)."""
        fam = self.family
        try:
            params = SamplingParams(
                temperature=float(request.temperature), top_k=int(request.top_k),
                top_p=float(request.top_p), min_new_tokens=int(request.min_new_tokens),
                max_new_tokens=request.max_new_tokens, seed=request.seed)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        constraint = self._constraint(request)
        ids, images = self.encode_prompt(request)
        prompt_len = len(ids)
        limit = fam.max_context
        if prompt_len >= limit:
            raise RequestError(f"the prompt is {prompt_len} tokens long but the model's context "
                               f"holds {limit}; shorten the prompt or use fewer/smaller images")
        max_length = request.max_length
        if max_length is None:
            max_length = prompt_len + (request.max_new_tokens or limit)
            max_length = min(max_length, limit)
        if max_length > limit:
            raise RequestError(f"max_length {max_length} exceeds the model's context ({limit})")
        if max_length <= prompt_len:
            raise RequestError(f"max_length {max_length} leaves no room to generate after a "
                               f"{prompt_len}-token prompt")
        if request.ignore_eos:
            eos = EOSTracker()
        else:
            eos = EOSTracker(eos_token_ids=sorted(fam.eos_token_ids() | set(request.stop_token_ids)),
                             eos_sequences=[list(s) for s in request.stop_sequences],
                             eos_stop_strings=list(request.stop))
        matcher = None
        if constraint is not None:
            from harness.structured import new_matcher

            model_eos = sorted(fam.eos_token_ids())
            extra = [] if request.ignore_eos else sorted(set(eos.eos_token_ids) - set(model_eos))
            matcher = new_matcher(constraint, fam.tokenizer, fam.vocab_size, model_eos, extra)
        try:
            return TextAndVisionContext(
                max_length=max_length, tokens=TokenBuffer(np.asarray(ids, dtype=np.int64)),
                request_id=request.request_id, eos_tracker=eos, vocab_size=fam.vocab_size,
                sampling_params=params, ignore_eos=request.ignore_eos,
                model_name=str(fam.folder), vision_token_ids=fam.vision_token_ids, images=images,
                json_schema=(constraint.source if constraint and constraint.kind == "json_schema"
                             else None),
                grammar=constraint.lark if constraint else None, _matcher=matcher)
        except ValueError as exc:
            raise RequestError(str(exc)) from None

    @staticmethod
    def _constraint(request: TextGenerationRequest):
        """The request's output constraint, checked (llguidance compiles it) before the prompt
        is encoded; None without one."""
        if request.json_schema is None and request.grammar is None and request.regex is None:
            return None
        from harness.structured import check_constraint, parse_constraint

        constraint = parse_constraint(json_schema=request.json_schema, grammar=request.grammar,
                                      regex=request.regex)
        check_constraint(constraint)
        return constraint
