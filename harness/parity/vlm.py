"""VLM parity: the harness loop against ``model.generate()`` and
``model.generate(prefill_chunk_size=k)`` on the same inputs; numbers, not eyeballing."""
from __future__ import annotations

import copy
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ReferenceRun", "reference_generate", "compare", "parity_report", "write_report",
           "fixed_split_cuts", "LOGIT_TOLERANCE"]

#: Max |Δlogit| accepted in fp32.
LOGIT_TOLERANCE = 1e-4


@dataclass
class ReferenceRun:
    tokens: list[int]
    logits: list[Any]
    seconds: float
    prefill_chunk_size: int | None


def reference_generate(family, ctx, max_new_tokens: int,
                       prefill_chunk_size: int | None = None) -> ReferenceRun:
    """Greedy ``model.generate()`` that emits exactly ``max_new_tokens`` (EOS disabled)."""
    import torch

    gc = copy.deepcopy(family.model.generation_config)
    gc.eos_token_id = None
    gc.do_sample = False
    gc.max_new_tokens = max_new_tokens
    gc.min_new_tokens = None
    gc.output_logits = True
    gc.return_dict_in_generate = True
    gc.prefill_chunk_size = prefill_chunk_size
    for attr in ("temperature", "top_k", "top_p"):
        setattr(gc, attr, None)
    inputs = family.reference_inputs(ctx)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = family.model.generate(**inputs, generation_config=gc)
    seconds = time.perf_counter() - t0
    tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    return ReferenceRun(tokens, [lg[0] for lg in out.logits], seconds, prefill_chunk_size)


def fixed_split_cuts(ctx, chunk_size: int) -> int:
    """How many of transformers' fixed ``prefill_chunk_size`` chunks end inside an image."""
    total = ctx.tokens.prompt_length
    return sum(ctx.compute_image_aligned_idx(end) != end for end in range(chunk_size, total,
                                                                          chunk_size))


def compare(ours_tokens: list[int], ours_logits: list[Any], ref: ReferenceRun) -> dict:
    """Token equality, first divergent token and max |Δlogit| up to (and at) the divergence."""
    n = min(len(ours_tokens), len(ref.tokens))
    first = next((i for i in range(n) if ours_tokens[i] != ref.tokens[i]), None)
    if first is None and len(ours_tokens) != len(ref.tokens):
        first = n
    last = n if first is None else min(first + 1, n)
    steps = min(last, len(ours_logits), len(ref.logits))
    diffs = [float((ours_logits[i].float() - ref.logits[i].float()).abs().max())
             for i in range(steps)]
    return {"tokens_equal": first is None, "first_divergent_token": first,
            "max_abs_logit_diff": max(diffs) if diffs else None,
            "per_step_max_abs_logit_diff": diffs, "tokens": ref.tokens,
            "seconds": ref.seconds, "prefill_chunk_size": ref.prefill_chunk_size}


def parity_report(*, family_name: str, request: dict, ours, ours_logits: list[Any],
                  refs: dict[str, ReferenceRun], num_images: int, chunk_size: int | None,
                  excluded: dict[str, str] | None = None,
                  tolerance: float = LOGIT_TOLERANCE) -> dict:
    """The parity.json payload: verdict first, then the detail per reference.

    ``excluded`` names references known to be wrong on these inputs (with the reason); they are
    reported but do not decide the verdict."""
    import torch
    import transformers

    excluded = excluded or {}
    per_ref = {name: compare(ours.tokens, ours_logits, run) for name, run in refs.items()}
    for name, why in excluded.items():
        per_ref[name]["excluded_from_verdict"] = why
    judged = [r for name, r in per_ref.items() if name not in excluded]
    diffs = [r["max_abs_logit_diff"] for r in judged if r["max_abs_logit_diff"] is not None]
    firsts = [r["first_divergent_token"] for r in judged
              if r["first_divergent_token"] is not None]
    tokens_equal = all(r["tokens_equal"] for r in judged)
    max_diff = max(diffs) if diffs else None
    ok = tokens_equal and max_diff is not None and max_diff <= tolerance
    return {
        "family": family_name,
        "verdict": "pass" if ok else "fail",
        "tolerance": tolerance,
        "tokens_equal": tokens_equal,
        "max_abs_logit_diff": max_diff,
        "first_divergent_token": min(firsts) if firsts else None,
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


def _markdown(report: dict) -> str:
    lines = [f"# VLM parity: {report['family']} — **{report['verdict']}**", "",
             f"- tokens equal: {report['tokens_equal']}",
             f"- max |Δlogit|: {report['max_abs_logit_diff']} (tolerance {report['tolerance']})",
             f"- first divergent token: {report['first_divergent_token']}",
             f"- chunks: {report['chunks']['count']} (ending inside an image: "
             f"{report['chunks']['inside_image']}), chunk size {report['chunks']['chunk_size']}",
             f"- encoder calls: {report['encoder_calls']['harness']} for "
             f"{report['encoder_calls']['images']} image(s)", "",
             "| reference | prefill_chunk_size | tokens equal | max abs logit diff | "
             "first divergent | seconds |", "|---|---|---|---|---|---|"]
    for name, r in report["reference"].items():
        lines.append(f"| {name} | {r['prefill_chunk_size']} | {r['tokens_equal']} | "
                     f"{r['max_abs_logit_diff']} | {r['first_divergent_token']} | "
                     f"{r['seconds']:.4f} |")
    for name, r in report["reference"].items():
        if r.get("excluded_from_verdict"):
            lines.append(f"\n{name} is reported but not judged: {r['excluded_from_verdict']}")
    lines += ["", f"harness: {report['timings']['harness_s']:.4f} s "
              f"(prefill {report['timings']['harness_prefill_s']:.4f} s)", ""]
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_report(report: dict, output_dir: Path) -> tuple[Path, Path]:
    """Write parity.json and parity.md atomically (temp file + rename)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    js, md = output_dir / "parity.json", output_dir / "parity.md"
    _atomic_write(js, json.dumps(report, indent=1, default=str) + "\n")
    _atomic_write(md, _markdown(report))
    return js, md
