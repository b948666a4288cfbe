"""``python -m harness.generate`` for text-modality (VLM) models: validate, run, report.

``run(args, resolved, output_dir)`` prints the generated text, writes parity.json/parity.md when
asked, and returns the dict the CLI writes as result.json.
"""
from __future__ import annotations

import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from harness.errors import RequestError

__all__ = ["run", "validate_args", "DEFAULT_MAX_NEW_TOKENS"]

DEFAULT_MAX_NEW_TOKENS = 16
_DTYPES = ("float32", "bfloat16", "float16")
# Image-only flags whose CLI default is None: setting one for a VLM is a mistake.
_IMAGE_ONLY = ("negative_prompt", "height", "width", "steps", "guidance_scale", "strength",
               "cfg_truncation", "cfg_normalization", "residual_threshold", "format",
               "true_cfg_scale", "guidance_scale_2", "num_frames", "fps")


def _opt(args, name: str, default: Any = None) -> Any:
    value = getattr(args, name, default)
    return default if value is None else value


def _check_readable_image(path: str) -> None:
    """Fail fast (before loading any model) on a file Pillow cannot identify."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise RequestError(f"cannot read image {path!r}: {exc}") from None


def _constraint(args):
    """``--json-schema`` / ``--grammar FILE`` / ``--regex``: parsed and compiled by llguidance
    without a model, so an invalid or unsatisfiable one is refused before any weights load."""
    names = ("json_schema", "grammar", "regex")
    given = {k: getattr(args, k, None) for k in names}
    if all(v is None for v in given.values()):
        return None
    grammar = given["grammar"]
    if grammar is not None:
        if not os.path.isfile(grammar):
            raise RequestError(f"--grammar {grammar!r}: no such file (it takes a file holding a "
                               f"Lark grammar)")
        try:
            with open(grammar, encoding="utf-8") as fh:
                given["grammar"] = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise RequestError(f"--grammar {grammar!r}: cannot read it: {exc}") from None
    from harness.structured import check_constraint, parse_constraint

    constraint = parse_constraint(**given)
    check_constraint(constraint)
    return constraint


def validate_args(args) -> dict:
    """Check the text-generation flags; return the normalised options (RequestError if bad)."""
    prompt = getattr(args, "prompt", None)
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("--prompt must be a non-empty string")
    images = list(getattr(args, "image", None) or [])
    for path in images:
        if not os.path.isfile(path):
            raise RequestError(f"--image {path!r}: no such file")
        _check_readable_image(path)
    max_new = _opt(args, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
        raise RequestError(f"--max-new-tokens must be an integer >= 1, got {max_new!r}")
    chunk = getattr(args, "chunk_size", None)
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
        raise RequestError(f"--chunk-size must be an integer >= 1, got {chunk!r}")
    temperature = float(_opt(args, "temperature", 0.0))
    if math.isnan(temperature) or temperature < 0:
        raise RequestError(f"--temperature must be >= 0, got {temperature}")
    # top-k / top-p stay None when not given: a sampled run then takes them from the folder's
    # generation_config.json (else transformers' defaults), as generate() does.
    top_k = getattr(args, "top_k", None)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or top_k < 0):
        raise RequestError(f"--top-k must be an integer >= 0 (0 = off), got {top_k!r}")
    top_p = getattr(args, "top_p", None)
    if top_p is not None:
        top_p = float(top_p)
        if not 0.0 < top_p <= 1.0:
            raise RequestError(f"--top-p must be in (0, 1], got {top_p}")
    seed = getattr(args, "seed", None)
    if seed is not None and (not isinstance(seed, int) or seed < 0):
        raise RequestError(f"--seed must be an integer >= 0, got {seed!r}")
    greedy = temperature == 0
    if not greedy and seed is None:
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    for flag in _IMAGE_ONLY:
        if getattr(args, flag, None) is not None:
            raise RequestError(f"--{flag.replace('_', '-')} is an image-generation flag; this is "
                               f"a text (VLM) model")
    dtype = _opt(args, "dtype", "float32")
    if dtype not in _DTYPES:
        raise RequestError(f"--dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    device = str(_opt(args, "device", "cpu"))
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise RequestError(f"--device must be cpu or cuda, got {device!r}")
    constraint = _constraint(args)
    return {"prompt": prompt, "images": images, "max_new_tokens": max_new, "chunk_size": chunk,
            "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed,
            "greedy": greedy, "dtype": dtype, "device": device,
            "parity": bool(getattr(args, "parity", False)),
            "tolerance": getattr(args, "tolerance", None),
            "quiet": bool(getattr(args, "quiet", False)), "constraint": constraint}


def _versions() -> dict:
    import numpy
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": numpy.__version__,
            "torch_threads": torch.get_num_threads()}


def _parity(family, tokenizer, request, opts: dict, ours, output_dir: Path) -> dict:
    """The user's own run (greedy or sampled) vs generate() and generate(prefill_chunk_size=k),
    both fed by the folder's own processor from the raw request; inputs and resolved sampling
    settings compared first; write the report."""
    import torch

    from harness.parity.vlm import run_parity, write_report

    given = None if opts["greedy"] else {k: opts[k] for k in ("temperature", "top_k", "top_p")}
    report = run_parity(family, tokenizer, request, ours, opts["chunk_size"],
                        request_dict={**_request_dict(opts), "greedy": opts["greedy"]},
                        num_images=len(opts["images"]), tolerance=opts["tolerance"],
                        user_sampling=given)
    report.update(device=opts["device"], dtype=opts["dtype"],
                  torch_threads=torch.get_num_threads())
    unused = [flag for flag, key in (("--top-k", "top_k"), ("--top-p", "top_p"))
              if opts["greedy"] and opts[key] is not None]
    if unused:
        ignored = (f"{' and '.join(unused)} {'has' if len(unused) == 1 else 'have'} no effect "
                   f"at temperature 0: the run and the comparison are greedy")
        report["sampling_note"] = "; ".join(filter(None, [report["sampling_note"], ignored]))
    write_report(report, output_dir)
    return report


def _resolve_sampling(opts: dict, folder) -> dict:
    """The request's temperature / top-k / top-p: a sampled run resolves unset options from the
    folder's generation_config.json as generate() does; checked before any weights load."""
    from harness.context import SamplingParams
    from harness.pipelines.vlm import resolve_sampling

    if opts["greedy"]:
        return {"temperature": 0.0, "top_k": opts["top_k"] or 0,
                "top_p": 1.0 if opts["top_p"] is None else opts["top_p"], "sources": None}
    try:  # a malformed file or value there is named before any weights load
        out = resolve_sampling(folder, {k: opts[k] for k in ("temperature", "top_k", "top_p")})
        SamplingParams(temperature=out["temperature"], top_k=out["top_k"], top_p=out["top_p"])
    except ValueError as exc:
        raise RequestError(f"{Path(folder) / 'generation_config.json'}: {exc}") from None
    return out


def _request_dict(opts: dict) -> dict:
    keys = ("prompt", "images", "max_new_tokens", "chunk_size", "temperature", "top_k", "top_p",
            "seed")
    constraint = opts.get("constraint")
    return {**{k: opts[k] for k in keys},
            "constraint": None if constraint is None else constraint.kind}


def _constraint_fields(constraint) -> dict:
    """The request fields of a checked constraint (``TextGenerationRequest``)."""
    if constraint is None:
        return {}
    if constraint.kind == "json_schema":
        return {"json_schema": constraint.schema}
    return {constraint.kind: constraint.source}


def _say_constraint(say, section: dict) -> None:
    """One console line on the constraint: what it gave, and a dead matcher once."""
    dead = section.get("dead_matcher")
    if dead is not None:
        say(f"note: the {section['kind']} matcher died at generated token {dead['position']} "
            f"({dead['reason'][:160]}); the rest of the output is unconstrained")
    state = "complete" if section["complete"] else "incomplete (cut by a stop or the length limit)"
    extra = ""
    if section["kind"] == "json_schema":
        extra = ("; JSON valid against the schema" if section["valid"] else
                 f"; not valid: {section['validation_error']}")
    say(f"constraint {section['kind']}: output {state}{extra}; the mask ruled out the "
        f"top-scoring token at {section['mask_changed_tokens']} of {section['masked_steps']} "
        f"steps")


def run(args, resolved, output_dir: Path, shown_dir: Path | None = None) -> dict:
    """Serve one text-generation request with a VLM family; return the result.json payload."""
    opts = validate_args(args)
    from harness.env import offline_env

    offline_env()
    sampling = _resolve_sampling(opts, resolved.path)
    from harness.pipelines.vlm import VLMPipeline
    from harness.tokenizers.text_vision import TextAndVisionTokenizer, TextGenerationRequest

    say = (lambda *a: None) if opts["quiet"] else (lambda *a: print(*a, file=sys.stderr))
    t0 = time.perf_counter()
    if opts["device"].startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RequestError("--device cuda was asked for, but torch sees no CUDA device")
    from harness import loaded
    from harness.memory import MemoryMeter
    from harness.workstation import Modes, check_modes

    modes = Modes(offload=getattr(args, "offload", None) or "none",
                  quantize=getattr(args, "quantize", None),
                  compile=bool(getattr(args, "compile", False)))
    check_modes(modes, opts["device"], opts["dtype"], "text")
    meter = MemoryMeter(opts["device"])
    with meter.phase("load"):
        family = loaded.vlm_family(resolved.family, resolved.path, device=opts["device"],
                                   dtype=opts["dtype"], modes=modes)
    load_s = time.perf_counter() - t0
    tokenizer = TextAndVisionTokenizer(family)
    request = TextGenerationRequest(
        prompt=opts["prompt"], images=opts["images"], max_new_tokens=opts["max_new_tokens"],
        temperature=opts["temperature"], top_k=sampling["top_k"], top_p=sampling["top_p"],
        seed=opts["seed"], **_constraint_fields(opts["constraint"]))
    ctx = tokenizer.new_context(request)
    prompt_ids = ctx.tokens.prompt.tolist()
    if not opts["greedy"]:
        src = sampling["sources"]
        say(f"sampling: temperature {opts['temperature']:g}, top-k {sampling['top_k']} "
            f"({src['top_k']}), top-p {sampling['top_p']:g} ({src['top_p']}), "
            f"seed: {opts['seed']}")
    say(f"model {resolved.name} ({family.family}), prompt {len(prompt_ids)} tokens, "
        f"{len(ctx.images)} image(s), chunk size {opts['chunk_size'] or 'whole prompt'}")
    with meter.phase("generate"):
        result = VLMPipeline(family).generate(ctx, chunk_size=opts["chunk_size"],
                                              keep_logits=opts["parity"])
    text = family.tokenizer.decode(result.tokens, skip_special_tokens=True)
    print(text, flush=True)
    total = time.perf_counter() - t0
    n = len(result.tokens)
    payload = {
        "request": _request_dict(opts),
        "model": {"name": resolved.name, "family": family.family, "folder": str(resolved.path)},
        "prompt_token_ids": prompt_ids,
        "token_ids": result.tokens,
        "text": text,
        "final_status": result.final_status.value,
        "chunks": {"count": len(result.chunks), "inside_image": result.chunks_inside_image},
        "encoder_calls": result.encoder_calls,
        "timings": {"load": load_s, "prefill": result.prefill_s, "decode": result.decode_s,
                    "total": total, "per_token": result.decode_s / max(1, n - 1)},
        "resolved": {"prompt_tokens": len(prompt_ids), "images": len(ctx.images),
                     "max_new_tokens": opts["max_new_tokens"],
                     "chunk_size": opts["chunk_size"] or len(prompt_ids),
                     "temperature": opts["temperature"], "top_k": sampling["top_k"],
                     "top_p": sampling["top_p"], "seed": opts["seed"], "greedy": opts["greedy"],
                     "sampling_sources": sampling["sources"]},
        "device": opts["device"], "dtype": opts["dtype"],
        "modes": modes.as_dict(), "memory": meter.summary(),
        "load_log": list(getattr(family, "load_log", [])),
        "torch_threads": _versions()["torch_threads"],
        "versions": _versions(),
    }
    if opts["constraint"] is not None:
        from harness.structured import constraint_result

        section = constraint_result(opts["constraint"], text, ctx._matcher, result.constraint)
        payload["constraint"] = section
        _say_constraint(say, section)
    if opts["parity"]:
        report = _parity(family, tokenizer, request, opts, result, Path(output_dir))
        payload["parity"] = {k: report[k] for k in ("verdict", "verdict_note", "output_verdict",
                                                     "tokens_equal", "max_abs_logit_diff",
                                                     "first_divergent_token", "sampling_note")}
        if report["sampling_note"]:
            say(f"note: {report['sampling_note']}")
        detail = (f"first input difference: {report['verdict_note']}"
                  if report["verdict"] == "input mismatch" else
                  f"tokens equal {report['tokens_equal']}, max |Δlogit| "
                  f"{report['max_abs_logit_diff']:.3g} (bound {report['tolerance']['bound']:.3g})")
        say(f"parity: {report['verdict']} ({detail}); wrote {Path(shown_dir or output_dir) / 'parity.json'}")
    say(f"load {load_s:.2f}s  prefill {result.prefill_s:.3f}s  decode {result.decode_s:.3f}s  "
        f"({n} tokens)  total {total:.2f}s")
    say(meter.line())
    return payload
