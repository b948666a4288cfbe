"""VLM parity from the user's request: the harness against ``model.generate()`` and
``model.generate(prefill_chunk_size=k)`` whose inputs the folder's own processor builds from the
raw request (prompt text or chat messages, the images as loaded from their files, the user's
options) — never from the harness's ids or pixels.

The report compares inputs before outputs: prompt ids (equal? first differing position, both
lengths), per-image pixel values (shape, max |Δ|) and both sides' resolved sampling settings
(do_sample, seed, the logits processors in order). Any input difference is its own verdict,
``input mismatch``, naming the first difference. Outputs are then judged against a bound that
holds on real models: ``max(LOGIT_TOLERANCE, FLOOR_FACTOR × floor)``, where the floor is the
reference's own max |Δlogit| between ``generate()`` and ``generate(prefill_chunk_size=k)`` on the
same inputs, measured in the same run (a chunked prefill reorders the same sums; at real widths
that alone moves logits by ~1e-4). Where a near-tie flips a greedy token, the run passes only as
vLLM's ``check_logprobs_close`` allows: at the first divergent position each side's token is in
the other side's top ``TOP_K``; logits are compared up to and at that position. A sampled run
(``generate(do_sample=True)`` after ``torch.manual_seed(seed)``) must draw the same tokens.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.workstation import execution_device

__all__ = ["ReferenceRun", "raw_messages", "reference_inputs", "reference_generate", "compare",
           "compare_inputs", "reference_floor", "parity_report", "write_report",
           "fixed_split_cuts", "run_parity", "compare_sampling", "reference_settings",
           "describe_processor", "per_token", "prompt_text", "token_detail", "LOGIT_TOLERANCE",
           "FLOOR_FACTOR", "TOP_K", "PIXEL_TOLERANCE"]

#: Max |Δlogit| always accepted in fp32.
LOGIT_TOLERANCE = 1e-4
#: The bound is at least this many times the reference's own chunked-prefill floor.
FLOOR_FACTOR = 4.0
#: At a flipped greedy token, each side's token must be in the other's top-k (vLLM's rule).
TOP_K = 5
#: Pixel values must agree exactly (same PIL image processor code on the same image).
PIXEL_TOLERANCE = 0.0


@dataclass
class ReferenceRun:
    tokens: list[int]
    logits: list[Any]
    seconds: float
    prefill_chunk_size: int | None
    #: The sampling settings generate() resolved and the logits processors it built
    #: (``reference_settings``); None where not recorded.
    settings: dict | None = None


# -- the reference's inputs: the raw request through the folder's processor ---------------------
def _load_pil(source):
    """An image as the user gave it: a file opened with PIL, a PIL image, or an array."""
    from PIL import Image

    from harness.errors import RequestError

    if isinstance(source, (str, os.PathLike)):
        try:
            with Image.open(os.fspath(source)) as im:
                im.load()
                return im.copy()
        except OSError as exc:
            raise RequestError(f"cannot read image {os.fspath(source)!r}: {exc}") from None
    if isinstance(source, Image.Image):
        return source
    return Image.fromarray(np.asarray(source))


def raw_messages(request) -> list[dict]:
    """The request's chat messages with each image part carrying its image as loaded
    (``{"type": "image", "image": PIL}``): what a user hands ``processor.apply_chat_template``."""
    from harness.tokenizers.text_vision import request_messages

    messages, sources = request_messages(request)
    images = iter([_load_pil(s) for s in sources])
    out = []
    for msg in messages:
        parts = [{"type": "image", "image": next(images)} if p["type"] == "image" else dict(p)
                 for p in msg["content"]]
        out.append({"role": msg["role"], "content": parts})
    return out


def reference_inputs(family, request) -> dict:
    """``generate()`` kwargs built by the folder's own processor and chat template from the raw
    request (``family.processor_inputs``)."""
    return family.processor_inputs(raw_messages(request), dict(request.image_options or {}))


def _on_model(model, inputs: dict) -> dict:
    import torch

    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            v = v.to(execution_device(model))
            if v.is_floating_point():
                v = v.to(model.dtype)
        out[k] = v
    return out


@contextlib.contextmanager
def _recording_processors(model):
    """Record the generation config and the logits-processor list ``generate()`` builds inside
    this block (what the reference really applied, read from its own call)."""
    seen: dict = {}
    build = model._get_logits_processor

    def record(*args, **kwargs):
        processors = build(*args, **kwargs)
        seen["generation_config"] = kwargs.get("generation_config", args[0] if args else None)
        seen["processors"] = list(processors)
        return processors

    model._get_logits_processor = record
    try:
        yield seen
    finally:
        del model._get_logits_processor


def describe_processor(processor) -> dict:
    """A transformers logits processor as ``{"name": class, field: value, ...}`` (scalar fields;
    ``filter_value`` left out), the form ``harness.pipelines.vlm.warper_steps`` writes."""
    import torch

    out: dict = {"name": type(processor).__name__}
    for key, value in vars(processor).items():
        if key == "filter_value" or key.startswith("_"):
            continue
        if value is None or isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif isinstance(value, torch.Tensor) and value.numel() <= 16:
            out[key] = value.tolist()
        else:
            out[key] = type(value).__name__
    return out


def reference_settings(seen: dict, seed: int | None) -> dict:
    """The reference's resolved sampling settings from what ``_recording_processors`` saw (the
    options and seed are None for a greedy run, as in ``sampling_settings``)."""
    gc = seen.get("generation_config")
    sampled = bool(gc is not None and gc.do_sample)
    return {"do_sample": sampled,
            "temperature": gc.temperature if sampled else None,
            "top_k": gc.top_k if sampled else None,
            "top_p": gc.top_p if sampled else None,
            "seed": seed if sampled else None,
            "processors": [describe_processor(p) for p in seen.get("processors", [])]}


def reference_generate(family, inputs, max_new_tokens: int,
                       prefill_chunk_size: int | None = None, *,
                       sampling: dict | None = None,
                       logits_processor: Any = None) -> ReferenceRun:
    """``model.generate()`` that emits exactly ``max_new_tokens`` (EOS disabled) on ``inputs``:
    the processor's output, or a ``TextGenerationRequest`` to build it from.

    Greedy unless ``sampling`` is given: the options the user set (any of temperature, top_k,
    top_p) and ``seed``. Then, after ``torch.manual_seed(seed)`` (inside ``fork_rng``: the
    process's RNG is left as it was), ``generate(do_sample=True, **options)`` resolves the rest
    from the folder's generation_config as it does for any user. ``settings`` records what it
    resolved and the logits processors it built. ``logits_processor``: a structured request's
    constraint (``harness.structured.reference``), which ``generate()`` applies before its
    warpers."""
    import torch

    from harness.pipelines.vlm import DEFAULT_SEED, SAMPLING_OPTIONS

    if not isinstance(inputs, dict):
        inputs = reference_inputs(family, inputs)
    model = family.model
    seed = None
    if sampling is None:
        gc = copy.deepcopy(model.generation_config)
        gc.eos_token_id = None
        gc.do_sample = False
        gc.max_new_tokens = max_new_tokens
        gc.min_new_tokens = None
        gc.output_logits = True
        gc.return_dict_in_generate = True
        gc.prefill_chunk_size = prefill_chunk_size
        for attr in ("temperature", "top_k", "top_p"):
            setattr(gc, attr, None)
        options: dict = {"generation_config": gc}
    else:
        seed = sampling.get("seed")
        seed = DEFAULT_SEED if seed is None else int(seed)
        options = {k: sampling[k] for k in SAMPLING_OPTIONS if sampling.get(k) is not None}
        options.update(do_sample=True, max_new_tokens=max_new_tokens, min_new_tokens=None,
                       eos_token_id=None, output_logits=True, return_dict_in_generate=True,
                       prefill_chunk_size=prefill_chunk_size)
    if logits_processor is not None:
        from transformers import LogitsProcessorList

        options["logits_processor"] = LogitsProcessorList([logits_processor])
    kwargs = _on_model(model, inputs)
    devices = ([model.device.index or 0] if model.device.type == "cuda" else [])
    t0 = time.perf_counter()
    with torch.inference_mode(), _recording_processors(model) as seen, \
            torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(**kwargs, **options)
    seconds = time.perf_counter() - t0
    tokens = out.sequences[0, kwargs["input_ids"].shape[1]:].tolist()
    return ReferenceRun(tokens, [lg[0] for lg in out.logits], seconds, prefill_chunk_size,
                        reference_settings(seen, seed))


def fixed_split_cuts(ctx, chunk_size: int) -> int:
    """How many of transformers' fixed ``prefill_chunk_size`` chunks end inside an image."""
    total = ctx.tokens.prompt_length
    return sum(ctx.compute_image_aligned_idx(end) != end for end in range(chunk_size, total,
                                                                          chunk_size))


# -- inputs before outputs ------------------------------------------------------------------------
def _summary(ids: np.ndarray, pixels: list[np.ndarray], image_token_id: int) -> dict:
    return {"prompt_length": int(len(ids)),
            "image_placeholders": int(np.count_nonzero(ids == image_token_id)),
            "images": [{"shape": list(p.shape)} for p in pixels]}


def compare_inputs(family, ctx, inputs: dict, pixel_tolerance: float = PIXEL_TOLERANCE) -> dict:
    """Prompt ids and per-image pixel values of the harness context against the processor's."""
    ours_ids = np.asarray(ctx.tokens.prompt, dtype=np.int64)
    ref_ids = np.asarray(inputs["input_ids"])[0].astype(np.int64)
    n = min(len(ours_ids), len(ref_ids))
    diff = np.flatnonzero(ours_ids[:n] != ref_ids[:n])
    first = int(diff[0]) if diff.size else (None if len(ours_ids) == len(ref_ids) else n)
    ids = {"equal": first is None, "first_difference": first,
           "harness_length": int(len(ours_ids)), "processor_length": int(len(ref_ids))}
    if first is not None:
        ids["harness_ids_at"] = ours_ids[first:first + 8].tolist()
        ids["processor_ids_at"] = ref_ids[first:first + 8].tolist()
    ours_px = [np.asarray(im.pixel_values, dtype=np.float32) for im in ctx.images]
    ref_px = family.reference_pixels(inputs)
    images = []
    for i in range(max(len(ours_px), len(ref_px))):
        a = ours_px[i] if i < len(ours_px) else None
        b = ref_px[i] if i < len(ref_px) else None
        entry = {"index": i, "harness_shape": None if a is None else list(a.shape),
                 "processor_shape": None if b is None else list(b.shape)}
        same_shape = a is not None and b is not None and a.shape == b.shape
        entry["max_abs_diff"] = float(np.abs(a - b).max()) if same_shape and a.size else \
            (0.0 if same_shape else None)
        entry["equal"] = bool(same_shape and entry["max_abs_diff"] <= pixel_tolerance)
        images.append(entry)
    first_difference = None
    if not ids["equal"]:
        first_difference = (f"prompt ids differ at position {first} (harness "
                            f"{ids['harness_length']} ids, processor {ids['processor_length']})")
    else:
        bad = next((e for e in images if not e["equal"]), None)
        if bad is not None:
            if bad["harness_shape"] != bad["processor_shape"]:
                first_difference = (f"image {bad['index']} pixel values: shape "
                                    f"{bad['harness_shape']} vs {bad['processor_shape']}")
            else:
                first_difference = (f"image {bad['index']} pixel values differ by max |Δ| "
                                    f"{bad['max_abs_diff']:.3g}")
    image_id = family.image_token_id
    return {"equal": first_difference is None, "first_difference": first_difference,
            "prompt_ids": ids, "pixel_values": images, "pixel_tolerance": pixel_tolerance,
            "harness": _summary(ours_ids, ours_px, image_id),
            "processor": {**_summary(ref_ids, ref_px, image_id), "keys": sorted(inputs)}}


def _processor_text(step: dict) -> str:
    fields = ", ".join(f"{k}={v!r}" for k, v in step.items() if k != "name")
    return f"{step['name']}({fields})"


def compare_sampling(harness: dict, reference: dict) -> dict:
    """The harness's resolved sampling settings (``harness.pipelines.vlm.sampling_settings``)
    against the reference's (``reference_settings``): do_sample, then the seed, then the logits
    processors in order; ``first_difference`` names the first that differs."""
    diff = None
    if harness["do_sample"] != reference["do_sample"]:
        diff = f"do_sample: harness {harness['do_sample']}, generate() {reference['do_sample']}"
    elif harness["do_sample"] and harness["seed"] != reference["seed"]:
        diff = f"seed: harness {harness['seed']}, generate() {reference['seed']}"
    else:
        ours, theirs = harness["processors"], reference["processors"]
        for i in range(max(len(ours), len(theirs))):
            a = ours[i] if i < len(ours) else None
            b = theirs[i] if i < len(theirs) else None
            if a == b:
                continue
            if a is None:
                diff = (f"generate() applies {_processor_text(b)} (logits processor {i}, from "
                        f"the folder's generation_config), which the harness does not")
            elif b is None:
                diff = f"the harness applies {_processor_text(a)}, which generate() does not"
            else:
                diff = (f"logits processor {i}: harness {_processor_text(a)}, generate() "
                        f"{_processor_text(b)}")
            break
    return {"mode": "sampled" if harness["do_sample"] else "greedy", "equal": diff is None,
            "first_difference": diff, "harness": harness, "reference": reference}


# -- per-token detail for the HTML report ----------------------------------------------------------
def prompt_text(decode, ids, vision_token_ids) -> str:
    """The prompt decoded with special tokens visible, each run of image placeholder tokens
    collapsed to ``<image>×576`` (a run of several kinds: ``[IMG]×48+[IMG_BREAK]×5``)."""
    ids = [int(i) for i in ids]
    vision = {int(v) for v in vision_token_ids}
    parts, i = [], 0
    while i < len(ids):
        in_image = ids[i] in vision
        j = i
        while j < len(ids) and (ids[j] in vision) == in_image:
            j += 1
        if in_image:
            counts: dict[int, int] = {}
            for t in ids[i:j]:
                counts[t] = counts.get(t, 0) + 1
            parts.append("+".join(f"{decode([t])}×{n}" for t, n in counts.items()))
        else:
            parts.append(decode(ids[i:j]))
        i = j
    return "".join(parts)


def _top(row, decode, k: int) -> list:
    import torch

    values, ids = torch.topk(row.float(), min(k, row.numel()))
    return [[int(t), decode([int(t)]), float(v)] for v, t in zip(values.tolist(), ids.tolist())]


def per_token(decode, ours_tokens: list[int], ours_logits: list[Any], ref: ReferenceRun,
              top: int = TOP_K) -> list[dict]:
    """One entry per generated position (0 = the first generated token) up to the compared
    length: all positions while the tokens agree, up to and including the first divergent one:
    both sides' token, its text and raw logit, max |Δlogit| and each side's top ``top``."""
    n = min(len(ours_tokens), len(ref.tokens))
    first = next((i for i in range(n) if ours_tokens[i] != ref.tokens[i]), None)
    rows = []
    for i in range(n if first is None else first + 1):
        h = ours_logits[i] if i < len(ours_logits) else None
        r = ref.logits[i] if i < len(ref.logits) else None
        side = {}
        for name, tok, row in (("harness", ours_tokens[i], h), ("reference", ref.tokens[i], r)):
            side[name] = {"token": int(tok), "text": decode([int(tok)]),
                          "logit": None if row is None else float(row[tok])}
        rows.append({"position": i, **side,
                     "max_abs_logit_diff": None if h is None or r is None else
                     float((h.float() - r.float()).abs().max()),
                     "harness_top": [] if h is None else _top(h, decode, top),
                     "reference_top": [] if r is None else _top(r, decode, top)})
    return rows


def token_detail(family, ctx, ours, ref: ReferenceRun) -> dict:
    """The report fields the HTML view reads: ``per_token``, ``prompt_text``, ``texts``,
    ``image_ranges`` (each image's placeholder span ``[start, end)`` in the prompt)."""
    decode = family.tokenizer.decode
    return {
        "per_token": per_token(decode, ours.tokens, ours.logits, ref),
        "prompt_text": prompt_text(decode, ctx.tokens.prompt, ctx.vision_token_ids),
        "texts": {"harness": decode(ours.tokens, skip_special_tokens=True),
                  "reference": decode(ref.tokens, skip_special_tokens=True)},
        "image_ranges": [[int(im.start_idx), int(im.end_idx)] for im in ctx.images],
    }


# -- outputs --------------------------------------------------------------------------------------
def _rank(logits, token: int) -> int:
    """0-based rank of ``token`` in ``logits`` (ties counted in its favour)."""
    row = logits.float()
    return int((row > row[token]).sum())


def compare(ours_tokens: list[int], ours_logits: list[Any], ref: ReferenceRun,
            top_k: int = TOP_K) -> dict:
    """Token equality, first divergent token, max |Δlogit| up to (and at) the divergence, and at
    the divergence vLLM's near-tie check (each side's token in the other side's top-k)."""
    n = min(len(ours_tokens), len(ref.tokens))
    first = next((i for i in range(n) if ours_tokens[i] != ref.tokens[i]), None)
    if first is None and len(ours_tokens) != len(ref.tokens):
        first = n
    last = n if first is None else min(first + 1, n)
    steps = min(last, len(ours_logits), len(ref.logits))
    diffs = [float((ours_logits[i].float() - ref.logits[i].float()).abs().max())
             for i in range(steps)]
    near_tie = None
    if first is not None and first < n and first < len(ours_logits) and first < len(ref.logits):
        ours_tok, ref_tok = ours_tokens[first], ref.tokens[first]
        r_in_ref = _rank(ref.logits[first], ours_tok)
        r_in_ours = _rank(ours_logits[first], ref_tok)
        near_tie = {"position": first, "harness_token": ours_tok, "reference_token": ref_tok,
                    "harness_token_rank_in_reference": r_in_ref,
                    "reference_token_rank_in_harness": r_in_ours,
                    "within_top_k": r_in_ref < top_k and r_in_ours < top_k, "top_k": top_k}
    return {"tokens_equal": first is None, "first_divergent_token": first,
            "max_abs_logit_diff": max(diffs) if diffs else None,
            "per_step_max_abs_logit_diff": diffs, "near_tie": near_tie, "tokens": ref.tokens,
            "seconds": ref.seconds, "prefill_chunk_size": ref.prefill_chunk_size}


def reference_floor(whole: ReferenceRun, chunked: ReferenceRun) -> float | None:
    """The reference's own max |Δlogit| between ``generate()`` and
    ``generate(prefill_chunk_size=k)`` on the same inputs (up to and at their first divergent
    token)."""
    cmp = compare(chunked.tokens, chunked.logits, whole)
    return cmp["max_abs_logit_diff"]


def parity_report(*, family_name: str, request: dict, ours, ours_logits: list[Any],
                  refs: dict[str, ReferenceRun], num_images: int, chunk_size: int | None,
                  inputs: dict | None = None, excluded: dict[str, str] | None = None,
                  floor: float | None = None, floor_note: str | None = None,
                  tolerance: float = LOGIT_TOLERANCE, floor_factor: float = FLOOR_FACTOR,
                  top_k: int = TOP_K, sampling: dict | None = None) -> dict:
    """The parity.json payload: verdict first, then inputs, then the detail per reference.

    ``inputs`` is ``compare_inputs``'s result and ``sampling`` ``compare_sampling``'s (a
    difference in either decides the verdict: ``input mismatch``, named in ``verdict_note``;
    ``output_verdict`` keeps the outputs' own verdict). A sampled run must reproduce the
    reference's draws exactly: the near-tie allowance is for greedy argmax flips only;
    ``floor`` the reference's own chunked-prefill floor (``reference_floor``), which sets the
    bound ``max(tolerance, floor_factor × floor)``; ``excluded`` names references known to be
    wrong on these inputs (with the reason): reported, not judged."""
    import torch
    import transformers

    excluded = excluded or {}
    bound = max(tolerance, floor_factor * floor) if floor is not None else tolerance
    per_ref = {name: compare(ours.tokens, ours_logits, run, top_k) for name, run in refs.items()}
    for name, why in excluded.items():
        per_ref[name]["excluded_from_verdict"] = why
    judged = [r for name, r in per_ref.items() if name not in excluded]
    diffs = [r["max_abs_logit_diff"] for r in judged if r["max_abs_logit_diff"] is not None]
    firsts = [r["first_divergent_token"] for r in judged
              if r["first_divergent_token"] is not None]
    tokens_equal = all(r["tokens_equal"] for r in judged)
    sampled = sampling is not None and sampling["mode"] == "sampled"
    tokens_ok = all(r["tokens_equal"] or (not sampled and r["near_tie"] is not None
                                          and r["near_tie"]["within_top_k"]) for r in judged)
    max_diff = max(diffs) if diffs else None
    outputs_ok = tokens_ok and max_diff is not None and max_diff <= bound
    output_verdict = "pass" if outputs_ok else "fail"
    if max_diff is None:
        note = "no logits to compare"
    elif max_diff > bound:
        note = f"max |Δlogit| {max_diff:.3g} exceeds the bound {bound:.3g}"
    elif not tokens_ok and sampled:
        note = (f"sampled tokens diverge at position {min(firsts)} (a seeded draw must "
                f"reproduce generate()'s exactly)")
    elif not tokens_ok:
        note = (f"greedy tokens diverge at position {min(firsts)} and a token is outside the "
                f"other side's top-{top_k}")
    elif not tokens_equal:
        note = (f"a near-tie flips the greedy token at position {min(firsts)}; each side's token "
                f"is in the other's top-{top_k}")
    else:
        note = None
    verdict = output_verdict
    if inputs is not None and not inputs["equal"]:
        verdict, note = "input mismatch", inputs["first_difference"]
    elif sampling is not None and not sampling["equal"]:
        verdict, note = "input mismatch", f"sampling settings: {sampling['first_difference']}"
    report = {
        "family": family_name,
        "verdict": verdict,
        "verdict_note": note,
        "output_verdict": output_verdict,
        "tolerance": {"bound": bound, "fixed": tolerance, "floor": floor,
                      "floor_factor": floor_factor, "top_k": top_k,
                      "measured": max_diff, **({"floor_note": floor_note} if floor_note else {})},
        "tokens_equal": tokens_equal,
        "max_abs_logit_diff": max_diff,
        "first_divergent_token": min(firsts) if firsts else None,
        "input_comparison": inputs,
        "sampling": sampling,
        "reference": per_ref,
        "request": request,
        "harness": {"tokens": ours.tokens, "final_status": str(ours.final_status.value)},
        "chunks": {"count": len(ours.chunks), "inside_image": ours.chunks_inside_image,
                   "chunk_size": chunk_size, "ranges": [list(c) for c in ours.chunks]},
        "encoder_calls": {"harness": ours.encoder_calls, "images": num_images},
        "timings": {"harness_s": ours.prefill_s + ours.decode_s,
                    "harness_prefill_s": ours.prefill_s, "harness_decode_s": ours.decode_s,
                    **{f"{name}_s": run.seconds for name, run in refs.items()}},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version(),
                     "torch_threads": torch.get_num_threads()},
    }
    return report


def run_parity(family, tokenizer, request, ours, chunk_size: int | None, *,
               request_dict: dict | None = None, num_images: int | None = None,
               tolerance: float | None = None, user_sampling: dict | None = None) -> dict:
    """The parity report of a finished harness run ``ours`` (with its logits) on ``request``:
    the reference inputs come from the folder's processor and the raw request, the floor from
    the reference's own chunked prefill.

    A sampled request (temperature > 0) is compared with ``generate(do_sample=True)`` seeded as
    the harness seeds its draws; the reference gets only ``user_sampling``, the options the user
    set (default: the request's temperature, top_k and top_p), and resolves the rest from the
    folder. The chunked reference samples too, with the same seed, so the floor is measured
    along the same draws. Both sides' resolved settings are compared before the outputs.

    A structured request's references run with llguidance's own logits processor on the same
    grammar and whitespace rule (a fresh matcher per ``generate()`` call); the logits compared
    are pre-mask on both sides; ``report["constraint"]`` says what was enforced and how often
    the mask changed the harness's choice."""
    from harness.pipelines.vlm import SAMPLING_OPTIONS, resolve_sampling, sampling_settings

    ctx = tokenizer.new_context(request)
    constraint = ctx._matcher.constraint if ctx._matcher is not None else None

    def mask():
        """A fresh reference constraint processor per generate() call (None without one)."""
        if constraint is None:
            return None
        from harness.structured.reference import reference_processor

        return reference_processor(constraint, family.tokenizer, family.vocab_size,
                                   sorted(family.eos_token_ids()))

    inputs = reference_inputs(family, request)
    n = max(1, len(ours.tokens))
    k = chunk_size or int(inputs["input_ids"].shape[1])
    harness_side = sampling_settings(ctx.sampling_params)
    sampling = None
    if harness_side["do_sample"]:
        given = (user_sampling if user_sampling is not None
                 else {name: getattr(request, name) for name in SAMPLING_OPTIONS})
        given = {name: given[name] for name in SAMPLING_OPTIONS if given.get(name) is not None}
        sampling = {**given, "seed": harness_side["seed"]}
        harness_side["sources"] = resolve_sampling(family.folder, given)["sources"]
    if constraint is not None:  # the harness masks before its warpers, as generate() does
        from harness.structured.reference import mask_step

        harness_side["processors"].insert(0, mask_step(constraint))
    refs = {"generate": reference_generate(family, inputs, n, sampling=sampling,
                                           logits_processor=mask())}
    cuts = fixed_split_cuts(ctx, k)
    skipped = None
    if family.bidirectional_images and cuts:
        # Known wrong here (and slow at small k): reported as skipped, not run.
        skipped = (f"transformers' prefill_chunk_size={k} ends {cuts} chunk(s) inside images of "
                   f"a model with bidirectional image attention, which changes the result; the "
                   f"harness planner aligns chunks to image edges instead")
        floor, note = None, "not measured: transformers' fixed split cuts images here"
    else:
        refs["generate_chunked"] = reference_generate(family, inputs, n, prefill_chunk_size=k,
                                                      sampling=sampling, logits_processor=mask())
        floor, note = reference_floor(refs["generate"], refs["generate_chunked"]), None
    settings = compare_sampling(harness_side, refs["generate"].settings)
    report = parity_report(
        family_name=family.family, request=request_dict or {}, ours=ours,
        ours_logits=ours.logits, refs=refs,
        num_images=len(ctx.images) if num_images is None else num_images, chunk_size=chunk_size,
        inputs=compare_inputs(family, ctx, inputs), floor=floor, floor_note=note,
        tolerance=LOGIT_TOLERANCE if tolerance is None else tolerance, sampling=settings)
    chunked = report["reference"].setdefault(
        "generate_chunked", {"prefill_chunk_size": k, "skipped": skipped})
    chunked["chunks_inside_image"] = cuts
    report["sampling_note"] = None if settings["equal"] else (
        f"generate() resolves other {settings['mode']} settings than the harness from this "
        f"folder and request, so its tokens are not expected to match: "
        f"{settings['first_difference']}")
    report.update(token_detail(family, ctx, ours, refs["generate"]))
    report["constraint"] = None
    if constraint is not None:
        from harness.structured.output import parity_section

        report["constraint"] = parity_section(constraint, ours.constraint)
    return report


def _markdown(report: dict) -> str:
    tol = report["tolerance"]
    lines = [f"# VLM parity: {report['family']} — **{report['verdict']}**", ""]
    if report.get("verdict_note"):
        lines += [report["verdict_note"], ""]
    if report.get("sampling_note"):
        lines += [f"Note: {report['sampling_note']}.", ""]
    inputs = report.get("input_comparison")
    if inputs is not None:
        ids = inputs["prompt_ids"]
        lines += ["## Inputs (harness vs the folder's processor)", "",
                  f"- prompt ids equal: {ids['equal']} (harness {ids['harness_length']}, "
                  f"processor {ids['processor_length']}; first difference "
                  f"{ids['first_difference']})"]
        for e in inputs["pixel_values"]:
            lines.append(f"- image {e['index']}: shape {e['harness_shape']} vs "
                         f"{e['processor_shape']}, max |Δ| {e['max_abs_diff']}")
        if inputs["first_difference"]:
            lines.append(f"- first difference: {inputs['first_difference']}")
        lines.append("")
    sampling = report.get("sampling")
    if sampling is not None:
        lines += [f"## Sampling ({sampling['mode']}): settings equal {sampling['equal']}", "",
                  "| | do_sample | temperature | top_k | top_p | seed | logits processors |",
                  "|---|---|---|---|---|---|---|"]
        for side in ("harness", "reference"):
            st = sampling[side]
            procs = ", ".join(_processor_text(p) for p in st["processors"]) or "none"
            lines.append(f"| {side} | {st['do_sample']} | {st['temperature']} | {st['top_k']} | "
                         f"{st['top_p']} | {st['seed']} | {procs} |")
        if sampling["harness"].get("sources"):
            lines.append("\nharness options from: " + ", ".join(
                f"{k} {v}" for k, v in sampling["harness"]["sources"].items()))
        lines.append("")
    constraint = report.get("constraint")
    if constraint:
        ws = constraint["whitespace"]
        ws = (f"flexible {ws['flexible']}, separators {ws['item_separator']!r} "
              f"{ws['key_separator']!r}" if isinstance(ws, dict) else ws)
        lines += [f"## Constraint ({constraint['kind']}, {constraint['backend']})", "",
                  f"- whitespace: {ws}",
                  f"- the mask changed the greedy choice at {constraint['mask_changed_tokens']} "
                  f"of {constraint['masked_steps']} steps",
                  f"- dead matcher: {constraint['dead_matcher']}", "", "```",
                  constraint["source"] + (" …" if constraint["truncated"] else ""), "```", ""]
    lines += [f"## Outputs — {report['output_verdict']}", "",
              f"- tokens equal: {report['tokens_equal']}",
              f"- max |Δlogit|: {report['max_abs_logit_diff']} (bound {tol['bound']}: "
              f"max({tol['fixed']}, {tol['floor_factor']} × floor {tol['floor']}))",
              f"- first divergent token: {report['first_divergent_token']}",
              f"- chunks: {report['chunks']['count']} (ending inside an image: "
              f"{report['chunks']['inside_image']}), chunk size {report['chunks']['chunk_size']}",
              f"- encoder calls: {report['encoder_calls']['harness']} for "
              f"{report['encoder_calls']['images']} image(s)", "",
              "| reference | prefill_chunk_size | tokens equal | max abs logit diff | "
              "first divergent | near tie | seconds |", "|---|---|---|---|---|---|---|"]
    for name, r in report["reference"].items():
        if r.get("skipped"):
            lines.append(f"| {name} | {r['prefill_chunk_size']} | not run | | | | |")
            continue
        tie = r.get("near_tie")
        tie_s = "" if tie is None else f"top-{tie['top_k']}: {tie['within_top_k']}"
        lines.append(f"| {name} | {r['prefill_chunk_size']} | {r['tokens_equal']} | "
                     f"{r['max_abs_logit_diff']} | {r['first_divergent_token']} | {tie_s} | "
                     f"{r['seconds']:.4f} |")
    for name, r in report["reference"].items():
        if r.get("excluded_from_verdict"):
            lines.append(f"\n{name} is reported but not judged: {r['excluded_from_verdict']}")
        if r.get("skipped"):
            lines.append(f"\n{name} was not run: {r['skipped']}")
    if report.get("texts"):
        lines += ["", f"harness text: {report['texts']['harness']!r}",
                  f"reference text: {report['texts']['reference']!r}"]
    lines += ["", f"harness: {report['timings']['harness_s']:.4f} s "
              f"(prefill {report['timings']['harness_prefill_s']:.4f} s)", ""]
    return "\n".join(lines)


def write_report(report: dict, output_dir: Path) -> tuple[Path, Path]:
    """Write parity.json, parity.md and the self-contained report.html atomically (temp file +
    rename); returns the first two."""
    from .html import vlm_report_html
    from .report import atomic_write_text

    output_dir = Path(output_dir)
    js, md = output_dir / "parity.json", output_dir / "parity.md"
    atomic_write_text(js, json.dumps(report, indent=1, default=str) + "\n")
    atomic_write_text(md, _markdown(report))
    atomic_write_text(output_dir / "report.html", vlm_report_html(report))
    return js, md
