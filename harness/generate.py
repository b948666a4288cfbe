"""``python -m harness.generate``: one request through the harness, images or text, plus a report.

Bad input exits with code 2 and one ``error: ...`` line, leaving no output file behind. Heavy
modules (torch, diffusers, transformers) are imported only on the run path, never for ``--help``.
"""
from __future__ import annotations

import argparse
import json
import os
import textwrap
import secrets
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from harness.errors import RequestError

__all__ = ["main", "build_parser", "run_parsed"]

_IMAGE_DTYPES = ("float32", "bfloat16")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one ``error: ...`` line (exit code 2), no usage dump."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _tolerance(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


#: Request fields as the command line spells them: errors name the flag the user typed.
_FLAGS = {"num_inference_steps": "--steps", "num_images_per_prompt": "--num-images",
          "guidance_scale": "--guidance-scale", "true_cfg_scale": "--true-cfg-scale",
          "guidance_scale_2": "--guidance-scale-2",
          "negative_prompt": "--negative-prompt", "cfg_truncation": "--cfg-truncation",
          "cfg_normalization": "--cfg-normalization", "residual_threshold": "--residual-threshold",
          "output_format": "--format", "noise convention": "--noise", "input_image": "--image",
          "input_images": "--image", "strength": "--strength", "height": "--height",
          "width": "--width", "seed": "--seed", "prompt": "--prompt",
          "num_frames": "--num-frames", "frame_rate": "--fps",
          "json_schema": "--json-schema", "grammar": "--grammar", "regex": "--regex"}


def _as_typed(message: str) -> str:
    """An error that starts with a request field's name, with the flag's name instead."""
    import re

    for field, flag in _FLAGS.items():
        if re.match(rf"{re.escape(field)}\b", message):
            return flag + message[len(field):]
    return message


#: Parity verdicts that pass (exit 0); "close" passes only within an explicit --tolerance.
PASSING_VERDICTS = ("bitwise", "bitwise (extension)", "pass")
TOLERATED_VERDICTS = ("close", "close (extension)")


def _model_names() -> list[str]:
    """Built-in model names (cheap: the registry's family packages import no torch)."""
    from models.registry import replica_names, tiny_names

    return tiny_names() + replica_names()


def _list_models() -> None:
    from models.registry import FAMILY_MODULES, family_module

    print("built-in models (built offline on first use; any local folder or offline Hugging "
          "Face cache id of these families works too):")
    for name in FAMILY_MODULES:
        fam = family_module(name)
        names = list(fam.TINY_NAMES) + list(getattr(fam, "REPLICA_NAMES", ()))
        print(f"  {fam.FAMILY:<11} {fam.MODALITY:<5}  {', '.join(names)}")


def _print_version() -> None:
    from importlib import metadata

    import harness

    libs = []
    for pkg in ("torch", "diffusers", "transformers", "numba", "numpy"):
        try:
            libs.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            libs.append(f"{pkg} (not installed)")
    print(f"harness {harness.__version__} ({', '.join(libs)})")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m harness.generate",
                description="Generate images (FLUX.1 and other diffusion families) or text (VLMs) "
                            "with the harness; optionally compare against the reference pipeline.",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="\n\n".join(textwrap.fill(t, 79, break_on_hyphens=False) for t in (
                    "exit codes: 0 done (with --parity: the verdict is bitwise / pass, or "
                    "close within --tolerance); 2 bad input (one error line, nothing "
                    "written); 3 with --parity: the verdict is anything else (input "
                    "mismatch, mismatch, close without --tolerance, fail). The last line on "
                    "stdout is a JSON summary of the run.",
                    "built-in models (--list-models shows their families): "
                    + ", ".join(_model_names()) + ".")))
    p.add_argument("--prompt", default=None, help="the prompt (required to generate)")
    p.add_argument("--model", default=None,
                   help="a built-in model name (default tiny-flux1; see --list-models), a local "
                        "diffusers/transformers folder, or an offline Hugging Face cache id")
    p.add_argument("--model-cache", default=None, metavar="DIR",
                   help="where built-in models are built (default $HARNESS_MODEL_CACHE, else "
                        "~/.cache/harness/models)")
    p.add_argument("--list-models", action="store_true",
                   help="list the built-in models and their families, then exit")
    p.add_argument("--version", action="store_true",
                   help="print the harness's and its libraries' versions, then exit")
    img = p.add_argument_group("image generation (omitted options take the model's pipeline "
                               "defaults, as diffusers does; tiny-* models fill in --height 256 "
                               "--width 256 --steps 8 as if typed)")
    img.add_argument("--negative-prompt", default=None, help="negative prompt (default: none)")
    img.add_argument("--height", type=int, default=None,
                     help="pixels (default: the pipeline's, 128 x VAE scale factor = 1024 for "
                          "FLUX.1 / FLUX.2 / Qwen-Image, 1024 for Z-Image; the input image's "
                          "size for edit / Z-Image img2img)")
    img.add_argument("--width", type=int, default=None, help="pixels (default: as --height)")
    img.add_argument("--steps", type=int, default=None,
                     help="denoising steps (default: the pipeline's: FLUX.1 28, FLUX.2 / "
                          "Qwen-Image / Z-Image 50)")
    img.add_argument("--guidance-scale", type=float, default=None,
                     help="(default: the pipeline's: FLUX.1 3.5, its img2img 7.0, FLUX.2 4.0, "
                          "Z-Image 5.0; unused by Qwen-Image)")
    img.add_argument("--guidance-scale-2", type=float, default=None,
                     help="Wan 2.2: guidance of the low-noise expert (default: the pipeline's, "
                          "--guidance-scale)")
    img.add_argument("--true-cfg-scale", type=float, default=None,
                     help="> 1 with --negative-prompt runs true classifier-free guidance "
                          "(default: the model's own, 1.0 for FLUX.1, 4.0 for Qwen-Image)")
    img.add_argument("--num-images", type=int, default=1, help="images per prompt (default 1)")
    img.add_argument("--strength", type=float, default=None,
                     help="img2img strength in (0, 1] (default 0.6)")
    img.add_argument("--cfg-truncation", type=float, default=None,
                     help="Z-Image: CFG only while (1000 - t)/1000 <= this (default 1.0)")
    img.add_argument("--cfg-normalization", type=float, default=None,
                     help="Z-Image: cap |pred| at factor x |pos| (0 = off, default)")
    img.add_argument("--residual-threshold", type=float, default=None,
                     help="first-block cache threshold (> 0; default: off)")
    img.add_argument("--format", default=None,
                     help="png (default), jpeg or webp; video models: mp4 (default), webp "
                          "(lossless, animated) or gif")
    img.add_argument("--num-frames", type=int, default=None,
                     help="video models: frames, 4k+1 (default: the pipeline's, 81 for Wan; "
                          "tiny-wan* fill in 9, with --height/--width 64)")
    img.add_argument("--fps", type=int, default=None,
                     help="video models: frame rate of the written video (default 16)")
    img.add_argument("--noise", default="torch",
                     help="torch (diffusers' noise, default) or numpy (MAX's)")
    img.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up call")
    txt = p.add_argument_group("text generation (VLMs)")
    txt.add_argument("--max-new-tokens", type=int, default=None, help="(default 16)")
    txt.add_argument("--chunk-size", type=int, default=None,
                     help="prefill chunk size (default: the whole prompt in one chunk)")
    txt.add_argument("--temperature", type=float, default=None,
                     help="(default 0: greedy; > 0 samples, with --seed)")
    txt.add_argument("--top-k", type=int, default=None,
                     help="when sampling (default: the folder's generation_config, else "
                          "transformers' 50; 0 = off)")
    txt.add_argument("--top-p", type=float, default=None,
                     help="when sampling (default: the folder's generation_config, else 1.0 = "
                          "off)")
    constraint = txt.add_mutually_exclusive_group()
    constraint.add_argument("--json-schema", default=None, metavar="FILE_OR_JSON",
                            help="structured output: JSON valid under this JSON Schema (a file or "
                                 "inline JSON; no whitespace between JSON tokens)")
    constraint.add_argument("--grammar", default=None, metavar="FILE",
                            help="structured output: text of this Lark grammar (llguidance's "
                                 "dialect)")
    constraint.add_argument("--regex", default=None, metavar="PATTERN",
                            help="structured output: text matching this regular expression")
    common = p.add_argument_group("common")
    common.add_argument("--image", action="append", default=None, metavar="PATH",
                        help="input image (img2img for image models; repeatable for VLMs)")
    common.add_argument("--seed", type=int, default=None,
                        help="random seed (default: one is picked and printed)")
    common.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    common.add_argument("--dtype", default="float32",
                        help="float32 (default) or bfloat16 (VLMs also float16)")
    common.add_argument("--output-dir", default=None, metavar="DIR",
                        help="where files go (default ./outputs/<timestamp>); must be new or "
                             "empty unless --overwrite")
    common.add_argument("--overwrite", action="store_true",
                        help="replace a previous run's files in --output-dir as a set (the old "
                             "set stays whole until the new one is complete)")
    common.add_argument("--parity", action="store_true",
                        help="also run the reference pipeline and write parity.json, parity.md "
                             "and report.html (a self-contained page); exit 3 when the verdict "
                             "is not bitwise / pass")
    common.add_argument("--tolerance", type=_tolerance, default=None, metavar="X",
                        help="with --parity: accept final latents within max |diff| X (verdict "
                             "'close') for image models; raise the fixed logit bound to X for "
                             "VLMs")
    common.add_argument("--quiet", action="store_true", help="no progress bar, one summary line")
    ws = p.add_argument_group("workstation GPU (the libraries' own mechanisms; see README)")
    ws.add_argument("--offload", default="none",
                    help="none (default), model (accelerate hooks in the pipeline's order, "
                         "enable_model_cpu_offload), group (diffusers' group offloading, one "
                         "block per group), sequential (accelerate, layer by layer)")
    ws.add_argument("--quantize", default=None,
                    help="quantize the denoiser (image) or language model (VLM) at load: "
                         "int8wo (torchao int8 weight-only), fp8wo (torchao float8 "
                         "weight-only, GPU), nf4 (bitsandbytes, GPU) (default: off)")
    ws.add_argument("--compile", action="store_true",
                    help="regional torch.compile of the transformer's repeated blocks; the "
                         "warm-up call compiles, reported apart as compile_s")
    return p


# --------------------------------------------------------------------------------------------------
# output directory bookkeeping


class _Outputs:
    """The output folder, written as a set: a run writes into a staging folder beside it and moves
    in at the end, so an interrupt or an error leaves the previous set (or nothing) in place,
    never a mix. A non-empty folder is refused unless ``overwrite`` and it holds a previous run
    (its result.json); then the new set replaces the old one in one atomic exchange."""

    def __init__(self, path: Path, overwrite: bool = False):
        self.path = path
        self.overwrite = overwrite
        self.staging: Path | None = None

    def check(self) -> None:
        """Refuse, before any work, a folder this run may not write (RequestError)."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise RequestError(f"--output-dir {str(path)!r} exists and is not a folder")
        if not path.is_dir() or not os.listdir(path):
            return
        if not self.overwrite:
            raise RequestError(f"--output-dir {str(path)!r} is not empty; pass --overwrite to "
                               f"replace a previous run's files, or choose another folder")
        if not (path / "result.json").is_file():
            raise RequestError(f"--overwrite replaces a previous run's files, but "
                               f"{str(path)!r} holds no result.json; refusing to replace it")

    def open(self) -> Path:
        """The staging folder this run writes into (created on first use)."""
        if self.staging is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.staging-",
                                                 dir=self.path.parent))
        return self.staging

    def shown(self, path: Path) -> Path:
        """Where a staged file will be once the run is committed (for messages)."""
        return self.path / Path(path).name

    def commit(self) -> None:
        """Move the staged set in: a plain rename, or an atomic exchange with the old set."""
        staged = self.open()
        os.chmod(staged, 0o755)  # mkdtemp makes it private
        if not self.path.exists():
            os.rename(staged, self.path)
        else:
            _exchange(staged, self.path)  # staged now holds the previous run's files
            shutil.rmtree(staged, ignore_errors=True)
        self.staging = None

    def rollback(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None


def _exchange(a: Path, b: Path) -> None:
    """Swap two folders atomically (Linux renameat2 RENAME_EXCHANGE); elsewhere, two renames."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
    aside = b.with_name(f".{b.name}.previous-{os.getpid()}")
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


def _default_output_dir() -> Path:
    base = Path("outputs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


# --------------------------------------------------------------------------------------------------
# the image path


def _check_device(device: str) -> None:
    import torch

    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise RequestError(f"--device must be cpu or cuda, got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RequestError("--device cuda was asked for, but torch sees no CUDA device")


def _modes(args, modality: str):
    """The run's workstation modes (``--offload``, ``--quantize``, ``--compile``), refused here
    (exit 2) when this machine or model kind cannot run them, before any weight loads."""
    from harness.workstation import Modes, check_modes

    modes = Modes(offload=args.offload, quantize=args.quantize, compile=args.compile)
    check_modes(modes, args.device, args.dtype, modality)
    return modes


def _modes_text(modes) -> str:
    on = [f"--offload {modes.offload}"] if modes.offload != "none" else []
    on += [f"--quantize {modes.quantize}"] if modes.quantize else []
    on += ["--compile"] if modes.compile else []
    return " ".join(on) or "default settings"


def _with_tiny_defaults(args, resolved, rules=None) -> tuple[argparse.Namespace, dict]:
    """``(args, presets)``: a tiny model's request defaults (``TINY_REQUEST_DEFAULTS``) filled in
    where the user left a flag out, as if typed (so the reference gets them too); the size only
    for text-to-image, where no input image decides it. Real folders: args unchanged, {}."""
    from models.registry import tiny_request_defaults

    presets = {}
    # video pipelines (Wan I2V) keep their own default size whatever the input image is
    size_from_image = not getattr(rules, "video", False)
    for flag, value in tiny_request_defaults(resolved).items():
        if flag in ("height", "width") and args.image and size_from_image:
            continue
        if getattr(args, flag) is None:
            presets[flag] = value
    if not presets:
        return args, {}
    return argparse.Namespace(**(vars(args) | presets)), presets


def _image_request(args, rules, seed: int):
    from harness.tokenizers.pixel import PixelGenerationRequest

    images = args.image or []
    conditioning = getattr(rules, "image_role", "img2img") == "conditioning"
    if images and rules.max_input_images == 0:
        raise RequestError(f"this model takes no --image, got {len(images)}")
    if len(images) > rules.max_input_images:
        raise RequestError(f"this model takes at most {rules.max_input_images} --image "
                           f"({'conditioning' if conditioning else 'img2img'}), got {len(images)}")
    for name in ("max_new_tokens", "chunk_size", "temperature", "top_k", "top_p",
                 "json_schema", "grammar", "regex"):
        if getattr(args, name) is not None:
            raise RequestError(f"--{name.replace('_', '-')} is a text-generation flag; this is "
                               f"an image model")
    return PixelGenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, height=args.height,
        width=args.width, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
        true_cfg_scale=args.true_cfg_scale, seed=seed, num_images_per_prompt=args.num_images,
        input_image=images[0] if images and not conditioning else None,
        input_images=list(images) if images and conditioning else None,
        strength=args.strength, cfg_truncation=args.cfg_truncation,
        cfg_normalization=args.cfg_normalization,
        residual_threshold=args.residual_threshold,
        output_format=args.format or getattr(rules, "default_output_format", "png"),
        noise=args.noise, num_frames=args.num_frames, frame_rate=args.fps,
        guidance_scale_2=args.guidance_scale_2)


def _versions() -> dict:
    from harness.parity.report import environment

    return environment()


def _run_image(args, resolved, outputs: _Outputs, say) -> dict:
    from harness.tokenizers.pixel import PixelGenerationTokenizer

    if args.dtype not in _IMAGE_DTYPES:
        raise RequestError(f"--dtype must be one of {', '.join(_IMAGE_DTYPES)}, got {args.dtype!r}")
    t_start = time.perf_counter()
    try:
        tokenizer = PixelGenerationTokenizer(resolved, dtype=args.dtype)
    except ValueError as exc:  # an incomplete or unsupported model folder
        raise RequestError(f"cannot use model {resolved.name!r}: {exc}") from None
    rules = tokenizer.rules
    seed = args.seed if args.seed is not None else secrets.randbelow(2 ** 31)
    args, presets = _with_tiny_defaults(args, resolved, rules)
    request = _image_request(args, rules, seed)
    t0 = time.perf_counter()
    ctx = tokenizer.new_context(request)
    new_context_s = time.perf_counter() - t0
    _check_device(args.device)

    fam = resolved.family
    say(f"model {resolved.name} ({fam.FAMILY}) from {resolved.path}")
    say(f"seed {seed}" + ("" if args.seed is not None else " (picked; pass --seed to repeat)"))
    if presets:
        say("tiny model: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in presets.items())
            + " filled in from its recipe (as if given; the reference gets them too)")
    mu = ctx.extra_model_args.get("mu")
    say(f"schedule: {len(ctx.timesteps)} of {ctx.num_inference_steps} steps, "
        f"mu {'none (static shift)' if mu is None else f'{mu:.4f}'}, "
        f"sigma {float(ctx.sigmas[0]):.6g} -> {float(ctx.sigmas[-2]):.6g}")

    from harness import loaded

    modes = _modes(args, "image")
    try:
        denoiser = loaded.denoiser(fam.Denoiser, resolved.path, rules, device=args.device,
                                   dtype=args.dtype, progress=not args.quiet, modes=modes)
    except ValueError as exc:  # e.g. a transformer without repeated blocks to compile
        raise RequestError(f"cannot load {resolved.name!r} with {_modes_text(modes)}: "
                           f"{exc}") from None
    # --compile: the warm-up call is where the compile happens, so it always runs
    warmup_s = 0.0 if args.no_warmup and not modes.compile else denoiser.warm_up(ctx)
    result = denoiser(ctx, record_steps=args.parity)

    from harness.context import ImageContent
    from harness.parity.report import atomic_write_bytes

    out_dir = outputs.open()
    files = []
    video = getattr(rules, "video", False)
    if video:  # (B, F, H, W, 3) frames → video_<i>.<mp4|webp|gif>
        from harness.video import write_videos

        for path in write_videos(result.images, out_dir, ctx.output_format, ctx.frame_rate):
            files.append(path.name)
            say(f"wrote {outputs.shown(path)}")
    for i, im in enumerate([] if video else result.images):
        content = ImageContent.from_array(im, ctx.output_format)
        path = atomic_write_bytes(out_dir / f"image_{i}.{ctx.output_format}", content.data)
        files.append(path.name)
        say(f"wrote {outputs.shown(path)}")

    steps = result.timings["steps_s"]
    timings = {
        "load_s": denoiser.load_s, "warmup_s": warmup_s, "new_context_s": new_context_s,
        "prepare_s": result.timings["prepare_s"], "steps_s": steps,
        "per_step_s": sum(steps) / len(steps) if steps else 0.0,
        "decode_s": result.timings["decode_s"], "generate_s": result.timings["total_s"],
        "compile_s": warmup_s if modes.compile else None,
        "transformer_s": result.timings.get("transformer_s"),
    }
    payload: dict[str, Any] = {
        "request": _request_options(request),
        "resolved": {"height": ctx.height, "width": ctx.width,
                     "num_inference_steps": ctx.num_inference_steps,
                     "guidance_scale": ctx.guidance_scale,
                     "true_cfg": ctx.negative_tokens is not None,
                     "true_cfg_scale": ctx.true_cfg_scale,
                     "output_format": ctx.output_format, "img2img": ctx.input_image is not None,
                     **({"num_frames": ctx.num_frames, "frame_rate": ctx.frame_rate,
                         "guidance_scale_2": ctx.guidance_scale_2} if video else {})},
        "model": {"name": resolved.name, "family": fam.FAMILY, "folder": str(resolved.path)},
        "seed": seed,
        "schedule": {"mu": mu, "t_start": ctx.extra_model_args.get("t_start", 0),
                     "timesteps": ctx.timesteps.tolist(), "sigmas": ctx.sigmas.tolist()},
        "files": files,
        "device": args.device, "dtype": args.dtype,
        "tiny_request_defaults": presets,
        "modes": modes.as_dict(),
        "memory": {"load": denoiser.load_memory, **(result.memory or {})},
        "load_log": denoiser.load_log,
    }
    cache = getattr(result, "cache", None)
    if cache is not None:
        payload["first_block_cache"] = cache
        say(f"first-block cache: threshold {cache['threshold']:g}, {cache['computed']} calls "
            f"computed, {cache['reused']} reused ({cache['skipped_block_calls']} block calls "
            f"skipped)")
    if args.parity:
        payload["parity"] = _image_parity(args, resolved, rules, denoiser, request, ctx, result,
                                          timings, outputs, files, say, presets)
        ext = ctx.output_format if video else "png"
        files += [f"reference_{i}.{ext}" for i in range(len(result.images))]
        files += ["frames.npy", "reference_frames.npy"] if video else []
        files += ["parity.json", "parity.md", "report.html"]
    timings["total_s"] = time.perf_counter() - t_start
    payload["timings"] = timings
    import torch

    payload["torch_threads"] = torch.get_num_threads()
    payload["versions"] = _versions()
    say(f"timings: load {timings['load_s']:.2f}s, warm-up {warmup_s:.2f}s, new_context "
        f"{new_context_s * 1e3:.1f}ms, {len(steps)} steps x {timings['per_step_s'] * 1e3:.1f}ms, "
        f"decode {timings['decode_s'] * 1e3:.1f}ms, total {timings['total_s']:.2f}s"
        + (f" (compile in the warm-up: {warmup_s:.2f}s)" if modes.compile else ""))
    say(_memory_line(payload["memory"]))
    return payload


def _memory_line(memory: dict) -> str:
    """One console line: the peak of the run and of each phase, the load included."""
    from harness.memory import memory_line

    return memory_line({"load": memory.get("load") or {}, **(memory.get("phases") or {})})


def _request_options(request) -> dict:
    from harness.parity.pixel import request_options

    return request_options(request)


def _image_parity(args, resolved, rules, denoiser, request, ctx, result, timings, outputs, files,
                  say, presets: dict | None = None) -> dict:
    from harness.parity.pixel import (first_block_cache_section, parity_report, run_uncached,
                                      write_parity)

    runner = resolved.family.ReferenceRunner(resolved.path, denoiser.c, rules)
    cache = getattr(result, "cache", None)
    fbc = {}
    # With the harness's first-block cache on, the reference runs under diffusers' own hook.
    ref = runner(request, ctx, initial_latents=result.initial_latents,
                 residual_threshold=None if cache is None else cache["threshold"])
    if cache is not None:
        fbc["first_block_cache"] = first_block_cache_section(
            result, run_uncached(denoiser, ctx), ref)
    report = parity_report(
        tolerance=args.tolerance,
        family=resolved.family.FAMILY,
        model={"name": resolved.name, "folder": str(resolved.path)},
        request=_request_options(request), ctx=ctx, ours=result, ref=ref, device=args.device,
        output_format=ctx.output_format,
        harness_encoder_inputs=runner.harness_encoder_inputs(ctx),
        dtype=args.dtype, harness_timings={k: timings[k] for k in (
            "new_context_s", "prepare_s", "decode_s")} | {"total_s": result.timings["total_s"],
                                                          "steps_s": timings["steps_s"]},
        **fbc)
    report["tiny_request_defaults"] = presets or {}
    report["modes"] = denoiser.modes.as_dict()
    report["memory"] = {"load": denoiser.load_memory, **(result.memory or {})}
    for path in write_parity(outputs.open(), report, ref, files, result.images):
        say(f"wrote {outputs.shown(path)}")
    say(f"parity: {report['verdict']} (final latents max |diff| "
        f"{report['final_latents_max_abs_diff']}, first divergent step "
        f"{report['first_divergent_step']}) vs {report['reference']['pipeline']}"
        + (f"; {report['verdict_note']}" if report["verdict_note"] else ""))
    return {k: report[k] for k in ("verdict", "verdict_note", "final_latents_max_abs_diff",
                                   "image_max_abs_diff", "first_divergent_step")}


# --------------------------------------------------------------------------------------------------
# entry point


def _run(args, outputs: _Outputs, say) -> dict:
    from harness.parity.report import atomic_write_json
    from models.registry import resolve

    outputs.check()
    if args.tolerance is not None and not args.parity:
        raise RequestError("--tolerance applies to --parity only")
    try:
        resolved = resolve(args.model, args.model_cache)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    if resolved.modality == "text":
        from harness import vlm_run

        payload = vlm_run.run(args, resolved, outputs.open(), shown_dir=outputs.path)
        payload["files"] = sorted(p.name for p in outputs.open().iterdir())
    else:
        payload = _run_image(args, resolved, outputs, say)
    path = atomic_write_json(outputs.open() / "result.json", payload)
    say(f"wrote {outputs.shown(path)}")
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_models or args.version:
        if args.version:
            _print_version()
        if args.list_models:
            _list_models()
        return 0
    if args.prompt is None:
        parser.error("the following arguments are required: --prompt")
    if not args.output_dir:
        args.output_dir = str(_default_output_dir())
    code, payload = run_parsed(args)
    if code == 2:
        print(f"error: {payload['error']}", file=sys.stderr)
        return 2
    verdict = payload.get("parity", {}).get("verdict") if args.parity else None
    print(json.dumps({"status": "ok" if code == 0 else "parity failed", "exit_code": code,
                      "output_dir": str(Path(args.output_dir)), "model": payload["model"]["name"],
                      "family": payload["model"]["family"], "files": payload.get("files", []),
                      "seed": payload.get("seed", payload.get("request", {}).get("seed")),
                      "parity": verdict, "tolerance": args.tolerance}), flush=True)
    return code


def run_parsed(args) -> tuple[int, dict]:
    """One parsed request (``--output-dir`` set) as ``main`` runs it, without the error and
    summary lines (``--quiet`` silences the rest): ``(exit code, result.json payload)``, or
    ``(2, {"error": message})`` for bad input. ``python -m harness.sweep`` runs its cases here."""
    outputs = _Outputs(Path(args.output_dir), overwrite=args.overwrite)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    try:
        payload = _run(args, outputs, say)
        outputs.commit()
    except RequestError as exc:
        outputs.rollback()
        return 2, {"error": _as_typed(str(exc))}
    except BaseException:
        outputs.rollback()
        raise
    code = 0
    if args.parity:
        verdict = payload.get("parity", {}).get("verdict")
        accepted = PASSING_VERDICTS + (TOLERATED_VERDICTS if args.tolerance else ())
        code = 0 if verdict in accepted else 3
    return code, payload

if __name__ == "__main__":
    sys.exit(main())
