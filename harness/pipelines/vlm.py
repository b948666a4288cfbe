"""The VLM loop: chunk planner, encoder cache, chunked prefill and decode over an HF model.

The context drives everything: ``tokens.chunk(n)`` / ``update()`` move the window, the status
says when to stop. The family adapter (``harness.pipelines.vlm_family.VLMFamily``) answers every
model-specific question, so there is no family branch here.
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from harness.context import GenerationStatus, TextAndVisionContext
from harness.errors import RequestError
from harness.workstation import execution_device

__all__ = ["plan_chunk_length", "EncoderCache", "VLMResult", "VLMPipeline", "sample_token",
           "warp", "warper_steps", "sampling_settings", "resolve_sampling",
           "HF_SAMPLING_DEFAULTS", "SAMPLING_OPTIONS", "DEFAULT_SEED"]


def plan_chunk_length(ctx: TextAndVisionContext, chunk_size: int | None,
                      bidirectional: bool) -> int:
    """Length of the next prefill chunk: ``chunk_size`` capped by what is left; for models with
    bidirectional image attention the end snaps down to an image start (or, if that leaves
    nothing, to the end of the image the chunk starts with)."""
    active = ctx.tokens.active_length
    if chunk_size is None or chunk_size >= active:
        return active
    start = ctx.tokens.processed_length
    end = start + chunk_size
    if bidirectional:
        aligned = ctx.compute_image_aligned_idx(end)
        if aligned > start:
            end = aligned
        elif aligned != end:  # the chunk starts at this image: take all of it
            images = ctx.images
            i = bisect.bisect_right([im.start_idx for im in images], aligned) - 1
            end = images[i].end_idx
    return min(end - start, active)


class EncoderCache:
    """Encoder rows per image of one request: the vision tower runs once per image."""

    def __init__(self, family) -> None:
        self.family = family
        self.rows: dict[int, Any] = {}
        self.calls = 0

    def get(self, index: int, image) -> Any:
        rows = self.rows.get(index)
        if rows is None:
            rows = self.family.encode(image)
            self.calls += 1
            if rows.shape[0] != image.num_embeddings:
                raise RequestError(
                    f"image {index}: the vision encoder returned {rows.shape[0]} rows but the "
                    f"prompt has {image.num_embeddings} placeholders for it")
            self.rows[index] = rows
        return rows


@dataclass
class VLMResult:
    """What one request produced, with the numbers the CLI and parity report need."""

    tokens: list[int]
    final_status: GenerationStatus
    logits: list[Any] = field(default_factory=list)
    chunks: list[tuple[int, int]] = field(default_factory=list)
    chunks_inside_image: int = 0
    encoder_calls: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stop_string: str | None = None
    #: Structured output's mask statistics (``ConstrainedDecoder.report()``); None without one.
    constraint: dict | None = None


#: transformers' values for sampling options that neither the user nor the folder's
#: generation_config.json sets (``GenerationConfig._get_default_generation_params``, 5.24).
HF_SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p")
#: The seed of a sampled request that gives none.
DEFAULT_SEED = 0


def resolve_sampling(folder, given: dict) -> dict:
    """Sampling options as ``generate()`` resolves them: the user's value, else the folder's
    generation_config.json, else transformers' default; ``sources`` says which, per option."""
    import json
    from pathlib import Path

    path = Path(folder) / "generation_config.json" if folder is not None else None
    saved = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    out: dict = {"sources": {}}
    for name in SAMPLING_OPTIONS:
        if given.get(name) is not None:
            out[name], out["sources"][name] = given[name], "user"
        elif saved.get(name) is not None:
            out[name], out["sources"][name] = saved[name], "generation_config.json"
        else:
            out[name], out["sources"][name] = HF_SAMPLING_DEFAULTS[name], "transformers default"
    return out


def warper_steps(params) -> list[dict]:
    """The logits warpers a sampled draw applies, in order, described as transformers' classes
    (name and fields) so the parity report can compare them with what ``generate()`` built."""
    if params.temperature == 0:
        return []
    steps = []
    if params.temperature != 1.0:
        steps.append({"name": "TemperatureLogitsWarper", "temperature": float(params.temperature)})
    if params.top_k != 0:
        steps.append({"name": "TopKLogitsWarper", "top_k": max(int(params.top_k), 1),
                      "min_tokens_to_keep": 1})
    if params.top_p < 1.0:
        steps.append({"name": "TopPLogitsWarper", "top_p": float(params.top_p),
                      "min_tokens_to_keep": 1})
    return steps


def sampling_settings(params) -> dict:
    """What the harness's draw resolves to for the parity report: do_sample, the options, the
    seed and ``warper_steps`` (options and seed are None for a greedy run)."""
    sampled = params.temperature != 0
    seed = (params.seed if params.seed is not None else DEFAULT_SEED) if sampled else None
    return {"do_sample": sampled,
            "temperature": float(params.temperature) if sampled else None,
            "top_k": int(params.top_k) if sampled else None,
            "top_p": float(params.top_p) if sampled else None,
            "seed": seed, "processors": warper_steps(params)}


def warp(scores, params):
    """Temperature, then top-k, then top-p on ``[1, vocab]`` float32 scores: transformers 5.24's
    ``_get_logits_processor`` order and its warpers' exact tensor ops (ties at the k-th score are
    kept; top-p keeps at least one token), so a seeded draw matches ``generate()`` bit for bit."""
    import torch

    if params.temperature != 1.0:
        scores = scores / float(params.temperature)
    if params.top_k != 0:
        k = min(max(int(params.top_k), 1), scores.size(-1))
        scores = scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None],
                                    float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - float(params.top_p))
        drop[..., -1:] = 0
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return scores


def sample_token(logits, params, generator) -> int:
    """Greedy argmax at temperature 0; otherwise ``generate(do_sample=True)``'s draw: float32
    copy, ``warp``, softmax, ``torch.multinomial(probs, 1)`` from ``generator`` (top-k 1 draws
    too, from the tokens tied at the top, as transformers does)."""
    import torch

    if params.temperature == 0:
        return int(torch.argmax(logits))
    scores = logits.reshape(1, -1).to(dtype=torch.float32, copy=True)
    probs = torch.nn.functional.softmax(warp(scores, params), dim=-1)
    return int(torch.multinomial(probs, num_samples=1, generator=generator))


class VLMPipeline:
    """Chunked prefill + decode of one request at a time over a loaded ``VLMFamily``."""

    def __init__(self, family) -> None:
        import inspect

        self.family = family
        self.model = family.model
        self.embed = family.model.get_input_embeddings()
        # transformers >= 5.24 names the KV cache argument ``cache`` (``past_key_values`` still
        # works there, with a FutureWarning on every run): use whichever the model takes.
        params = inspect.signature(type(self.model).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _image_layout(self, ctx) -> list[np.ndarray]:
        """Absolute positions that receive encoder rows, per image (row k → positions[k])."""
        out = []
        for im in ctx.images:
            rel = (np.arange(im.num_tokens) if im.embedding_positions is None
                   else im.embedding_positions)
            out.append(rel.astype(np.int64) + im.start_idx)
        return out

    def _chunk_embeds(self, ctx, cache: EncoderCache, layout, start: int, end: int):
        import torch

        ids = torch.from_numpy(np.array(ctx.tokens.active, dtype=np.int64))[None]
        embeds = self.embed(ids.to(execution_device(self.model)))
        first = ctx.image_idx
        placed = []
        for j, im in enumerate(ctx.next_images_in_window):
            pos = layout[first + j]
            lo, hi = np.searchsorted(pos, start), np.searchsorted(pos, end)
            if hi > lo:
                placed.append((torch.from_numpy(pos[lo:hi] - start),
                               cache.get(first + j, im)[lo:hi]))
        return embeds, self.family.place_rows(embeds, placed)

    def prefill(self, ctx, kv, cache: EncoderCache, chunk_size: int | None,
                result: VLMResult):
        """Run every prefill chunk; return the logits after the last prompt token."""
        fam = self.family
        positions = fam.prompt_positions(ctx)
        layout = self._image_layout(ctx)
        # Encode every image still ahead before the first language-model call, so that a
        # rows-vs-placeholders mismatch fails before any forward of the LM (still once per image).
        for i, im in enumerate(ctx.next_images, start=ctx.image_idx):
            cache.get(i, im)
        while True:
            n = plan_chunk_length(ctx, chunk_size, fam.bidirectional_images)
            if n < ctx.tokens.active_length:
                ctx.tokens.chunk(n)
            start = ctx.tokens.processed_length
            end = start + n
            inside = ctx.compute_image_aligned_idx(end) != end
            embeds, rows_kwargs = self._chunk_embeds(ctx, cache, layout, start, end)
            out = self.model(inputs_embeds=embeds, position_ids=positions[..., start:end],
                             use_cache=True, logits_to_keep=1, **{self._cache_kw: kv},
                             **rows_kwargs, **fam.chunk_kwargs(ctx, start, end))
            result.chunks.append((start, end))
            result.chunks_inside_image += int(inside)
            if not ctx.tokens.actively_chunked:
                return out.logits[0, -1], fam.position_state(positions)
            ctx.update(0)  # chunked: the context advances the window and drops the token

    def generate(self, ctx: TextAndVisionContext, *, chunk_size: int | None = None,
                 keep_logits: bool = False,
                 on_output: Callable[[Any], None] | None = None,
                 generator=None) -> VLMResult:
        """Prefill in chunks, then decode until the context says done.

        A sampled request draws from ``generator`` (default: a fresh one on the model's device
        seeded with the request's seed, ``DEFAULT_SEED`` if none: the stream ``torch.manual_seed(seed)`` gives
        ``generate()``); nothing but the draws consumes it."""
        import torch

        if chunk_size is not None and chunk_size < 1:
            raise RequestError(f"chunk size must be >= 1, got {chunk_size}")
        params = ctx.sampling_params
        greedy = params.temperature == 0
        gen = generator
        if not greedy and gen is None:
            gen = torch.Generator(device=execution_device(self.model)).manual_seed(
                params.seed if params.seed is not None else DEFAULT_SEED)
        result = VLMResult(tokens=[], final_status=ctx.status)
        encoder = EncoderCache(self.family)
        tracker = ctx.eos_tracker
        check_strings = bool(tracker.eos_stop_strings)
        decode_text = self.family.tokenizer.decode
        model = self.model
        first = ctx.tokens.prompt_length
        matcher = ctx._matcher
        decoder = None
        if matcher is not None:  # structured output: the mask applies before every choice
            from harness.structured import ConstrainedDecoder

            decoder = ConstrainedDecoder(matcher)
        with torch.inference_mode():
            kv = self._new_cache()
            t0 = time.perf_counter()
            logits, pos_state = self.prefill(ctx, kv, encoder, chunk_size, result)
            result.prefill_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            # Everything a decode step needs is prepared once: the step reads one column.
            positions = self.family.decode_positions(first, max(ctx.max_length, first + 1),
                                                     pos_state).to(execution_device(model))
            step_ids = torch.empty((1, 1), dtype=torch.long,
                                   device=execution_device(model))
            tokens = result.tokens
            shown = ""
            while True:
                if keep_logits:
                    result.logits.append(logits.detach().clone())
                if decoder is not None:
                    logits = decoder.mask(logits, ctx.tokens.generated_length)
                token = int(logits.argmax()) if greedy else sample_token(logits, params, gen)
                ctx.update(token)
                if (decoder is not None and not ctx.is_done and decoder.dead is None
                        and not tracker.eos_token_ids and matcher.is_stopped()):
                    # The grammar is complete and only EOS could follow, but this request
                    # ignores EOS: it ends here instead of running unconstrained.
                    ctx.status = GenerationStatus.END_OF_SEQUENCE
                if check_strings and not ctx.is_done:
                    text = decode_text(ctx.tokens.generated.tolist())
                    hit = tracker.is_eos_from_string(text[len(shown):])
                    shown = text
                    if hit is not None:
                        result.stop_string = hit
                        ctx.status = GenerationStatus.END_OF_SEQUENCE
                out = ctx.to_generation_output()
                tokens += out.tokens
                if on_output is not None:
                    on_output(out)
                if ctx.is_done:
                    break
                step_ids.fill_(token)
                col = ctx.tokens.current_position - 1 - first
                logits = model(input_ids=step_ids, use_cache=True, **{self._cache_kw: kv},
                               position_ids=positions[..., col:col + 1],
                               logits_to_keep=1).logits[0, -1]
            result.decode_s = time.perf_counter() - t1
        result.final_status = ctx.status
        result.encoder_calls = encoder.calls
        if decoder is not None:
            result.constraint = decoder.report()
        return result
