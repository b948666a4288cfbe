"""One-command GPU check: ``python -m bench.gpu_check`` (on a machine with one CUDA GPU).

Within about 10 minutes it runs, on CUDA in bfloat16 with ``--parity``: every image family's tiny
model, a realistic-geometry FLUX.1 (the real FLUX.1-dev widths, 2 double + 4 single blocks, real
text-encoder widths at 2 layers, random weights), the tiny VLMs, the first-block cache, each offload
mode and each quantization mode; then appends one table to ``bench/RESULTS.md``: per-step time of
both sides (the harness's overhead against diffusers is their ratio), peak CUDA memory, load time
and the verdict. A case that fails is a row with its error, never a crash of the check. Never a
test dependency: CI has no GPU.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

IMAGE_TINY = ["tiny-flux1", "tiny-flux2-klein", "tiny-flux2-dev", "tiny-qwen-image",
              "tiny-z-image"]
VLM_TINY = ["tiny-llava", "tiny-qwen2-vl", "tiny-pixtral", "tiny-gemma3"]
#: (label, model, extra flags); "realistic" is replaced by the folder built below.
CASES = (
    [(m, m, []) for m in IMAGE_TINY]
    + [("realistic FLUX.1 1024² 8 steps", "realistic", ["--height", "1024", "--width", "1024",
                                                        "--steps", "8"]),
       ("realistic + first-block cache 0.1", "realistic",
        ["--height", "1024", "--width", "1024", "--steps", "8", "--residual-threshold", "0.1"]),
       ("realistic --offload model", "realistic", ["--steps", "4", "--offload", "model"]),
       ("realistic --offload group", "realistic", ["--steps", "4", "--offload", "group"]),
       ("realistic --offload sequential", "realistic", ["--steps", "2", "--offload",
                                                        "sequential"]),
       ("realistic --quantize int8wo", "realistic", ["--steps", "4", "--quantize", "int8wo"]),
       ("realistic --quantize fp8wo", "realistic", ["--steps", "4", "--quantize", "fp8wo"]),
       ("realistic --quantize nf4", "realistic", ["--steps", "4", "--quantize", "nf4"]),
       ("realistic --compile", "realistic", ["--steps", "8", "--compile"])]
    + [(m, m, ["--max-new-tokens", "32", "--chunk-size", "64"]) for m in VLM_TINY]
)


def build_realistic(cache: Path) -> Path:
    """The FLUX.1-dev replica with real widths and few blocks (random weights), built once."""
    sys.path.insert(0, str(REPO))
    from tests.replicas import flux1

    flux1.REDUCE = copy.deepcopy(flux1.REDUCE)
    flux1.REDUCE.update(transformer={"num_layers": 2, "num_single_layers": 4},
                        vae={}, text_encoder={"num_hidden_layers": 2},
                        text_encoder_2={"num_layers": 2, "num_decoder_layers": 2})
    return flux1.replica_path("replica-FLUX.1-dev", cache)


def run_case(model: str, flags: list[str], out: Path, image: Path, timeout: int,
             device: str = "cuda", dtype: str = "bfloat16") -> dict:
    vlm = model in VLM_TINY
    args = [sys.executable, "-m", "harness.generate", "--model", model, "--device", device,
            "--dtype", dtype, "--parity", "--seed", "0", "--quiet", "--output-dir",
            str(out), "--prompt", "Describe the image." if vlm else "a lighthouse at dusk",
            *(["--image", str(image)] if vlm else []), *flags]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 3):
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:160], "wall_s": wall}
    result = json.loads((out / "result.json").read_text())
    parity = json.loads((out / "parity.json").read_text())
    row = {"verdict": parity.get("verdict"), "wall_s": wall}
    if vlm:
        t = result["timings"]
        row.update(per_step_ms=1e3 * t["per_token"],
                   ref_per_step_ms=None, load_s=t["load"],
                   cuda_peak_mib=result["memory"].get("cuda_max_allocated_mib"))
    else:
        t = result["timings"]
        ref_steps = parity["timings_s"]["reference"].get("steps_s") or []
        # step 0 carries first-call costs on both sides: compare the steady steps
        ours, ref = t["steps_s"][1:] or t["steps_s"], ref_steps[1:] or ref_steps
        steps = t["steps_s"]
        inside = result.get("timings", {}).get("transformer_s")
        row["outside_ms"] = (1e3 * (sum(steps) - inside) / len(steps)
                             if inside is not None and steps else None)
        row.update(per_step_ms=1e3 * sum(ours) / max(1, len(ours)),
                   ref_per_step_ms=1e3 * sum(ref) / len(ref) if ref else None,
                   load_s=t["load_s"], compile_s=t.get("compile_s"),
                   cuda_peak_mib=result["memory"].get("cuda_max_allocated_mib"))
    return row


def fmt(x, spec=".1f") -> str:
    return "—" if x is None else format(x, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__)
    ap.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"))
    ap.add_argument("--case-timeout", type=int, default=240)
    ap.add_argument("--only", default=None, help="run the cases whose label contains this")
    ap.add_argument("--device", default="cuda",
                    help="cuda (default); cpu runs the same bookkeeping as a smoke test")
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device: this check runs on a GPU machine", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU (smoke test)"
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    os.environ.setdefault("HARNESS_MODEL_CACHE", str(work / "models"))
    from PIL import Image

    image = work / "in.png"
    Image.effect_mandelbrot((96, 80), (-2, -1.2, 1, 1.2), 60).convert("RGB").save(image)
    cases = [c for c in CASES if not args.only or args.only in c[0]]
    realistic = None
    if any(model == "realistic" for _, model, _ in cases):
        t0 = time.perf_counter()
        realistic = str(build_realistic(Path(os.environ["HARNESS_MODEL_CACHE"])))
        print(f"realistic FLUX.1 built in {time.perf_counter() - t0:.0f}s: {realistic}",
              flush=True)

    rows = []
    for i, (label, model, flags) in enumerate(cases):
        row = run_case(realistic if model == "realistic" else model, flags, work / f"c{i}",
                       image, args.case_timeout, args.device, args.dtype)
        rows.append((label, row))
        print(label, json.dumps(row), flush=True)

    lines = [f"\n## GPU check, {time.strftime('%Y-%m-%d')}: {gpu}, torch {torch.__version__}, "
             f"{args.dtype}\n",
             "`python -m bench.gpu_check`; per-step times exclude step 0 (first-call costs); "
             "overhead = harness / diffusers per step (VLMs: per decode token, no reference "
             "column).\n",
             "| case | verdict | harness ms/step | outside the transformer ms/step | "
             "diffusers ms/step | harness / diffusers | CUDA peak MiB | load s | compile s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, r in rows:
        if "error" in r:
            lines.append(f"| {label} | error: {r['error']} | | | | | | | |")
            continue
        ratio = (r["per_step_ms"] / r["ref_per_step_ms"]) if r.get("ref_per_step_ms") else None
        lines.append(f"| {label} | {r['verdict']} | {fmt(r['per_step_ms'], '.2f')} | "
                     f"{fmt(r.get('outside_ms'), '.2f')} | "
                     f"{fmt(r.get('ref_per_step_ms'), '.2f')} | {fmt(ratio, '.3f')} | "
                     f"{fmt(r.get('cuda_peak_mib'), '.0f')} | {fmt(r.get('load_s'), '.1f')} | "
                     f"{fmt(r.get('compile_s'), '.1f')} |")
    with open(args.results, "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"appended {len(rows)} rows to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
