"""Request → TextAndVisionContext: prompt rendering, placeholder expansion, images, EOS, sampling."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from _fast.tokens import EOSTracker, TokenBuffer
from harness.context import ImageMetadata, SamplingParams, TextAndVisionContext
from harness.errors import RequestError
from harness.images import MAX_IMAGE_SIDE, load_image

__all__ = ["TextGenerationRequest", "TextAndVisionTokenizer", "load_image"]


@dataclass(kw_only=True)
class TextGenerationRequest:
    """A VLM generation request: a prompt (text or chat messages), images and options.

    ``prompt`` is a string (the images go first, in order) or a list of chat messages
    ``{"role": "user"|"assistant", "content": str | [{"type": "text", "text": ...} |
    {"type": "image", "image": <optional source>}]}``; image parts without a source take the
    next entry of ``images``. Images are paths, PIL images or uint8 arrays.
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


def _image_hash(pixels: np.ndarray) -> int:
    digest = hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class TextAndVisionTokenizer:
    """Turns ``TextGenerationRequest`` into a ``TextAndVisionContext`` for one loaded family (a
    ``harness.pipelines.vlm_family.VLMFamily`` adapter, as ``family.load(folder)`` returns it)."""

    def __init__(self, family, *, max_image_side: int | None = None) -> None:
        self.family = family
        self.max_image_side = max_image_side or MAX_IMAGE_SIDE

    # -- prompt rendering -------------------------------------------------------------------------
    def _segments(self, request: TextGenerationRequest) -> list[Any]:
        """Rendered prompt as text strings and image sources, in order."""
        chat = self.family.chat
        pending = list(request.images)
        if isinstance(request.prompt, str):
            user: list[Any] = []
            for src in pending:
                user += [_Image(src), chat.image_separator]
            pending = []
            messages = [("user", user + [request.prompt])]
        elif isinstance(request.prompt, list):
            messages = []
            for i, msg in enumerate(request.prompt):
                if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant",
                                                                       "system"):
                    raise RequestError(f"message {i} must be a dict with role user, assistant or "
                                       f"system, got {msg!r:.80}")
                content = msg.get("content", "")
                parts: list[Any] = []
                for part in ([{"type": "text", "text": content}] if isinstance(content, str)
                             else content):
                    kind = part.get("type") if isinstance(part, dict) else None
                    if kind == "text":
                        parts.append(str(part.get("text", "")))
                    elif kind == "image":
                        src = part.get("image", part.get("path", part.get("url")))
                        if src is None:
                            if not pending:
                                raise RequestError(
                                    "the messages have more image parts than images were given")
                            src = pending.pop(0)
                        parts.append(_Image(src))
                    else:
                        raise RequestError(f"message {i}: content parts must have type 'text' "
                                           f"or 'image', got {part!r:.80}")
                messages.append((msg["role"], parts))
            if pending:
                raise RequestError(f"{len(pending)} image(s) given but the messages have no image "
                                   f"part for them")
        else:
            raise RequestError(f"prompt must be a string or a list of chat messages, got "
                               f"{type(request.prompt).__name__}")
        out: list[Any] = []
        for role, parts in messages:
            if role == "assistant":
                out += [chat.assistant_prefix, *parts, self.family.tokenizer.eos_token or ""]
            else:
                out += [chat.user_prefix, *parts, chat.user_suffix]
        out.append(chat.assistant_prefix)
        return out

    # -- request → context ------------------------------------------------------------------------
    def encode_prompt(self, request: TextGenerationRequest) -> tuple[list[int], list[ImageMetadata]]:
        """Token ids with expanded placeholders and one ImageMetadata per image."""
        fam, tok = self.family, self.family.tokenizer
        ids: list[int] = [tok.bos_token_id] if fam.chat.add_bos and tok.bos_token_id is not None \
            else []
        images: list[ImageMetadata] = []
        text = ""
        for seg in self._segments(request):
            if isinstance(seg, str):
                text += seg
                continue
            if text:
                ids += tok.encode(text, add_special_tokens=False)
                text = ""
            prep = fam.preprocess(load_image(seg.source, self.max_image_side))
            base = len(ids)
            ids += prep.ids
            images.append(ImageMetadata(
                start_idx=base + prep.range_start, end_idx=base + prep.range_end,
                pixel_values=prep.pixel_values, image_hash=_image_hash(prep.pixel_values),
                grid_thw=prep.grid_thw, embedding_positions=prep.embedding_positions))
        if text:
            ids += tok.encode(text, add_special_tokens=False)
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
        try:
            return TextAndVisionContext(
                max_length=max_length, tokens=TokenBuffer(np.asarray(ids, dtype=np.int64)),
                request_id=request.request_id, eos_tracker=eos, vocab_size=fam.vocab_size,
                sampling_params=params, ignore_eos=request.ignore_eos,
                model_name=str(fam.folder), vision_token_ids=fam.vision_token_ids, images=images)
        except ValueError as exc:
            raise RequestError(str(exc)) from None


@dataclass
class _Image:
    source: Any
