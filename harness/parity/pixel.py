"""Image parity: the harness loop against diffusers' own pipeline on the same modules and inputs.

The reference is the family's diffusers pipeline (FluxPipeline / FluxImg2ImgPipeline for FLUX.1;
each family's ``ReferenceRunner`` subclass says which and with what arguments) built over the very
modules the harness loaded. With torch noise it gets a CPU generator seeded
like the request, so it draws its own noise (and, for img2img, the VAE posterior sample first):
equal initial latents are then part of what is checked. With numpy noise it gets our initial
latents through ``latents=``. Per-step latents come from ``callback_on_step_end``.

When the harness ran its first-block cache, the reference gets diffusers' own
``FirstBlockCacheConfig`` hook at the same threshold (named cond/uncond contexts as the pipeline
sets them, or set here in call order when it sets none), and ``first_block_cache_section`` adds
the cost of the cache against an uncached harness run of the same context.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .html import LOSSY_FORMATS, image_report_html
from .report import (atomic_write_bytes, atomic_write_json, atomic_write_text, captured_logs,
                     environment,
                     fmt_num, markdown_table, max_abs_diff, mean_abs_diff, psnr_db)

__all__ = ["CLOSE_TOLERANCE", "ReferenceResult", "ReferenceRunner", "StepRecorder", "compare",
           "parity_report", "write_parity", "request_options", "run_uncached",
           "first_block_cache_section", "with_fbc_hook"]

#: Final-latent max |Δ| up to which a non-bitwise run is called "close".
CLOSE_TOLERANCE = 1e-4


@dataclass
class ReferenceResult:
    """What the diffusers pipeline produced, in the harness's array conventions."""

    pipeline: str
    inputs: str                     # "generator" (it drew its own noise) or "latents"
    images: np.ndarray              # (N, H, W, 3) uint8, numpy_to_pil's rounding
    decoded: np.ndarray             # (N, H, W, 3) float32 in [0, 1]
    final_latents: np.ndarray
    step_latents: list[np.ndarray] = field(default_factory=list)
    step_timesteps: list[float] = field(default_factory=list)
    #: Seconds per denoising step (step 0 from the transformer's first call).
    step_s: list[float] = field(default_factory=list)
    total_s: float = 0.0
    #: {"threshold", "applied", "contexts" ("pipeline" / "runner"), "reason"} when asked for.
    first_block_cache: dict | None = None
    #: What the pipeline was called with (JSON-friendly; images as "<PIL WxH>").
    given: dict = field(default_factory=dict)
    #: The settings the pipeline resolved itself (its defaults applied), for compare_inputs.
    settings: dict = field(default_factory=dict)
    #: Set when the harness accepted what this pipeline refuses: what it was given instead.
    extension: str | None = None
    #: What each text encoder was fed, per call in order: ``{"text_encoder": [{"input_ids": ...,
    #: "pixel_values": ...}, ...]}`` (recorded by forward pre-hooks during the run).
    encoder_inputs: dict = field(default_factory=dict)
    #: What diffusers / transformers logged (warning and above) while the reference ran.
    log: list[str] = field(default_factory=list)


def _record_encoder_inputs(components: dict):
    """``(records, handles)``: forward pre-hooks on the text encoders that record the
    ``input_ids`` (and ``pixel_values``) of every call; remove the handles afterwards."""
    records: dict[str, list[dict]] = {}
    handles = []
    for name, module in components.items():
        if not name.startswith("text_encoder") or not hasattr(module,
                                                              "register_forward_pre_hook"):
            continue

        def hook(_module, args, kwargs, name=name):
            ids = kwargs.get("input_ids", args[0] if args else None)
            entry = {"input_ids": None if ids is None else ids.detach().cpu().numpy().copy()}
            pixels = kwargs.get("pixel_values")
            if pixels is not None:
                entry["pixel_values"] = pixels.detach().float().cpu().numpy().copy()
            records.setdefault(name, []).append(entry)

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    return records, handles


def compare_encoder_inputs(ours: dict, theirs: dict) -> list[dict]:
    """Row per text-encoder call: prompt ids equal (first differing position), pixel values
    (max |Δ|). ``ours`` / ``theirs`` as ``harness_encoder_inputs`` / ``encoder_inputs``."""
    rows = []
    for name in sorted(set(ours) | set(theirs)):
        a_calls, b_calls = ours.get(name, []), theirs.get(name, [])
        for i in range(max(len(a_calls), len(b_calls))):
            a = a_calls[i] if i < len(a_calls) else None
            b = b_calls[i] if i < len(b_calls) else None
            label = f"{name} call {i} ({'prompt' if i == 0 else 'negative prompt'})"
            if a is None or b is None or a.get("input_ids") is None or b.get("input_ids") is None:
                rows.append({"setting": f"{label} ids", "harness": None if a is None else "ids",
                             "reference": None if b is None else "ids", "equal": a is b})
                continue
            x = np.asarray(a["input_ids"]).reshape(-1)
            y = np.asarray(b["input_ids"]).reshape(-1)
            n = min(len(x), len(y))
            diff = np.flatnonzero(x[:n] != y[:n])
            first = int(diff[0]) if len(diff) else (n if len(x) != len(y) else None)
            rows.append({"setting": f"{label} ids",
                         "harness": f"{len(x)} ids", "reference": f"{len(y)} ids",
                         "equal": first is None, "first_differing_position": first})
            if "pixel_values" in a or "pixel_values" in b:
                pa, pb = a.get("pixel_values"), b.get("pixel_values")
                same = (pa is not None and pb is not None and np.shape(pa) == np.shape(pb))
                rows.append({"setting": f"{label} pixel_values",
                             "harness": None if pa is None else list(np.shape(pa)),
                             "reference": None if pb is None else list(np.shape(pb)),
                             "equal": bool(same and np.array_equal(pa, pb)),
                             "max_abs_diff": max_abs_diff(pa, pb) if same else None})
    return rows


def _summary(kwargs: dict) -> dict:
    """Pipeline arguments as JSON-friendly values: an image becomes ``<PIL WxH>``."""
    def one(v):
        if hasattr(v, "size") and hasattr(v, "mode"):  # a PIL image
            return f"<PIL {v.size[0]}x{v.size[1]}>"
        if isinstance(v, (list, tuple)):
            return [one(x) for x in v]
        return v if isinstance(v, (str, int, float, bool, type(None))) else f"<{type(v).__name__}>"

    return {k: one(v) for k, v in kwargs.items()}


def request_options(request) -> dict:
    """All options of a request as JSON-friendly values (an image becomes its path or type)."""
    opts = dataclasses.asdict(request) if dataclasses.is_dataclass(request) else dict(request)
    def summary(src):
        return str(src) if isinstance(src, (str, Path)) else f"<{type(src).__name__}>"

    if opts.get("input_image") is not None:
        opts["input_image"] = summary(opts["input_image"])
    if opts.get("input_images"):
        opts["input_images"] = [summary(src) for src in opts["input_images"]]
    return opts


class StepRecorder:
    """``callback_on_step_end`` for the reference pipelines: a float32 copy of the latents and the
    timestep after every step, and the time each step took (from ``start``, which
    ``start_hook`` sets at the denoiser's first call, to the first callback, then callback to
    callback), as ``ReferenceResult`` fields."""

    def __init__(self) -> None:
        self.latents: list[np.ndarray] = []
        self.timesteps: list[float] = []
        self.ends: list[float] = []
        self.start: float | None = None

    def start_hook(self, _module, _args, _kwargs) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def __call__(self, _pipe, i, t, kw) -> dict:
        self.ends.append(time.perf_counter())
        self.latents.append(kw["latents"].float().cpu().numpy().copy())
        self.timesteps.append(float(t))
        return {}

    def step_seconds(self) -> list[float]:
        if self.start is None or not self.ends:
            return []
        marks = [self.start, *self.ends]
        return [b - a for a, b in zip(marks, marks[1:])]

    def result_fields(self) -> dict:
        final = self.latents[-1] if self.latents else np.zeros(0, np.float32)
        return {"final_latents": final, "step_latents": self.latents,
                "step_timesteps": self.timesteps, "step_s": self.step_seconds()}


class ReferenceRunner:
    """Runs a family's diffusers pipeline for a request, over the very modules the harness loaded.

    A family subclass (``models/<family>/reference.py``) sets ``reference_pipeline`` (its
    ``(components, folder, **key) -> pipeline`` builder) and ``call_kwargs`` (the pipeline
    arguments of a request); it may set ``img2img_pipeline`` (a second pipeline for requests with
    an input image, built with ``img2img=True``) and change ``start_latents`` (what ``latents=``
    gets under numpy noise) and ``cache_hook`` (how diffusers' FirstBlockCache hook is applied).
    Pipelines are built once per key.
    """

    #: ``(components, folder, **key) -> DiffusionPipeline``, set by the family.
    reference_pipeline = None
    #: The family has a separate img2img pipeline, picked when the context has an input image.
    img2img_pipeline = False

    def __init__(self, folder, components: dict, rules):
        self.folder = Path(folder)
        self.components = components
        self.rules = rules
        self._pipes: dict[tuple, Any] = {}

    def pipeline(self, **key):
        """The family's reference pipeline for ``key`` (built on first use; a None value means
        the pipeline's default, as if left out)."""
        key = {k: v for k, v in key.items() if v is not None}
        cache_key = tuple(sorted(key.items()))
        if cache_key not in self._pipes:
            self._pipes[cache_key] = type(self).reference_pipeline(self.components, self.folder,
                                                                    **key)
        return self._pipes[cache_key]

    # ---------------------------------------------------------------------------------- hooks
    @staticmethod
    def is_img2img(ctx) -> bool:
        """Does ``ctx`` start from an input image (the pixel tokenizer's img2img layout)?"""
        return "image_nhwc" in ctx.extra_model_args

    def pipeline_key(self, ctx) -> dict:
        """Which pipeline ``ctx`` needs: ``{"img2img": ...}`` for families with two."""
        return {"img2img": self.is_img2img(ctx)} if self.img2img_pipeline else {}

    #: Request options whose resolved values the report compares with the harness's context
    #: (besides size, steps and schedule, which every family compares).
    SETTINGS: tuple[str, ...] = ()

    def call_kwargs(self, request, ctx) -> dict:
        """The pipeline's arguments: only what the user gave in ``request`` (``given``), never the
        harness's resolved values; noise and callbacks are added by ``__call__``."""
        raise NotImplementedError

    @staticmethod
    def given(request, *names: str) -> dict:
        """The options among ``names`` the user set in ``request`` (None: left to the pipeline)."""
        return {n: getattr(request, n) for n in names if getattr(request, n) is not None}

    def prepare(self, request, ctx) -> tuple[dict, str | None]:
        """``(call_kwargs, extension)``: the pipeline's arguments, and why the reference cannot
        take the user's request as it is, if it cannot (then the arguments carry the harness's
        input instead and the report says so). A family that must look at the input to tell
        overrides this, so the input is loaded once."""
        return self.call_kwargs(request, ctx), None

    def start_latents(self, ctx, initial_latents: np.ndarray | None) -> np.ndarray:
        """What ``latents=`` gets with numpy noise: the context's packed noise, or for img2img
        the harness's mixed start (given ``latents=``, the img2img pipelines skip the VAE encode
        and ``scale_noise``)."""
        if not self.is_img2img(ctx):
            return ctx.latents
        if initial_latents is None:
            raise ValueError("numpy-noise img2img parity needs the harness's initial latents")
        return initial_latents

    def cache_hook(self, pipe, threshold: float, ctx):
        """``(info, callable)``: ``pipe`` under diffusers' FirstBlockCache hook at ``threshold``."""
        return with_fbc_hook(pipe, threshold, ctx.negative_tokens is not None)

    # ---------------------------------------------------------------------------------- run
    def __call__(self, request, ctx, *, initial_latents: np.ndarray | None = None,
                 residual_threshold: float | None = None, **key) -> ReferenceResult:
        """Run the reference for ``request`` (whose context is ``ctx``); see the module notes.
        ``residual_threshold``: run it under diffusers' first-block cache hook at that value;
        ``key`` overrides ``pipeline_key`` (e.g. FLUX.2's ``is_distilled``)."""
        with captured_logs() as log:
            result = self._run(request, ctx, initial_latents, residual_threshold, key)
        result.log = log
        return result

    def _run(self, request, ctx, initial_latents, residual_threshold, key) -> ReferenceResult:
        import torch

        pipe = self.pipeline(**(self.pipeline_key(ctx) | key))
        record = StepRecorder()
        kwargs, extension = self.prepare(request, ctx)
        given = _summary(kwargs)
        kwargs.update(output_type="np", callback_on_step_end=record,
                      callback_on_step_end_tensor_inputs=["latents"])
        if request.noise == "torch":
            kwargs["generator"] = torch.Generator("cpu").manual_seed(ctx.extra_model_args["seed"])
            inputs = "generator"
        else:
            start = self.start_latents(ctx, initial_latents)
            kwargs["latents"] = torch.from_numpy(np.array(start, dtype=np.float32))
            inputs = "latents"
        fbc, run = None, pipe
        if residual_threshold is not None:
            fbc, run = self.cache_hook(pipe, residual_threshold, ctx)
        encoder_inputs, handles = _record_encoder_inputs(self.components)
        denoiser = self.components.get("transformer")
        if denoiser is not None:
            handles.append(denoiser.register_forward_pre_hook(record.start_hook, with_kwargs=True))
        t0 = time.perf_counter()
        try:
            out = run(**kwargs)
        finally:
            for handle in handles:
                handle.remove()
        total = time.perf_counter() - t0
        # Video pipelines return frames (B, F, H, W, 3) instead of images.
        decoded = np.asarray(out.frames if hasattr(out, "frames") else out.images,
                             dtype=np.float32)
        images = (decoded * 255).round().astype(np.uint8)  # VaeImageProcessor.numpy_to_pil
        return ReferenceResult(
            pipeline=type(pipe).__name__, inputs=inputs, images=images, decoded=decoded,
            **record.result_fields(), total_s=total, first_block_cache=fbc, given=given,
            settings=self._settings(pipe, kwargs, images, record),
            extension=extension, encoder_inputs=encoder_inputs)

    def harness_encoder_inputs(self, ctx) -> dict:
        """What the harness feeds each text encoder, in the order the pipeline calls them:
        the prompt, then the negative prompt when it runs CFG; ``tokens_2`` go to
        ``text_encoder_2``; the VL encoder's image input (``pixel_values``) with the prompt."""
        def calls(pos, neg):
            return [pos.all] + ([neg.all] if neg is not None else [])

        out = {"text_encoder": [{"input_ids": ids} for ids in
                                calls(ctx.tokens, ctx.negative_tokens)]}
        if ctx.tokens_2 is not None:
            out["text_encoder_2"] = [{"input_ids": ids} for ids in
                                     calls(ctx.tokens_2, ctx.negative_tokens_2)]
        pixels = ctx.extra_model_args.get("pixel_values")
        if pixels is not None:
            for call in out["text_encoder"]:
                call["pixel_values"] = pixels
        return out

    def _settings(self, pipe, kwargs: dict, images: np.ndarray, record: StepRecorder) -> dict:
        """What the pipeline resolved: its call signature's defaults applied to the arguments it
        got, the size of what it returned and the timesteps it ran."""
        import inspect

        bound = inspect.signature(pipe.__call__).bind_partial(**kwargs)
        bound.apply_defaults()
        args = bound.arguments
        out = {"height": int(images.shape[-3]), "width": int(images.shape[-2]),
               "num_inference_steps": args.get("num_inference_steps"),
               "num_images_per_prompt": args.get("num_images_per_prompt"),
               "timesteps": [float(t) for t in record.timesteps]}
        for name in self.SETTINGS:
            if name in args:
                out[name] = args[name]
        return out


def with_fbc_hook(pipe, threshold: float, true_cfg: bool):
    """(info, callable): ``pipe`` run under diffusers' FirstBlockCache hook, removed afterwards.

    The hook keys its state by ``transformer.cache_context(name)``; FluxPipeline sets "cond" /
    "uncond" itself, FluxImg2ImgPipeline sets none (the hook would raise), so there each
    transformer call is named here in call order: cond, then uncond under true CFG.
    """
    import inspect

    info = {"threshold": float(threshold), "applied": False, "contexts": None, "reason": None}
    transformer = pipe.transformer
    try:
        from diffusers.hooks import FirstBlockCacheConfig

        transformer.enable_cache(FirstBlockCacheConfig(threshold=float(threshold)))
    except Exception as exc:  # an unregistered block class, a model without enable_cache, ...
        info["reason"] = f"diffusers cannot cache {type(transformer).__name__}: {exc}"
        return info, pipe
    transformer.disable_cache()
    own = "cache_context" in inspect.getsource(type(pipe).__call__)
    info.update(applied=True, contexts="pipeline" if own else "runner")

    def run(**kwargs):
        transformer.enable_cache(FirstBlockCacheConfig(threshold=float(threshold)))
        names, calls = ("cond", "uncond") if true_cfg else ("cond",), [0]
        plain = transformer.forward

        def named(*args, **kw):
            name = names[calls[0] % len(names)]
            calls[0] += 1
            with transformer.cache_context(name):
                return plain(*args, **kw)

        had = "forward" in transformer.__dict__
        if not own:
            transformer.forward = named
        try:
            return pipe(**kwargs)
        finally:
            if not own:
                if had:
                    transformer.forward = plain
                else:
                    del transformer.forward
            transformer.disable_cache()

    return info, run


def run_uncached(denoiser, ctx, *, record_steps: bool = True):
    """The harness loop on ``ctx`` with the first-block cache off (no threshold, switch off)."""
    import dataclasses as dc

    saved = getattr(denoiser, "first_block_cache", False)
    denoiser.first_block_cache = False
    try:
        return denoiser(dc.replace(ctx, residual_threshold=None), record_steps=record_steps)
    finally:
        denoiser.first_block_cache = saved


def _steps_s(result) -> float | None:
    steps = result.timings.get("steps_s") if result.timings else None
    return float(sum(steps)) if steps else None


def first_block_cache_section(ours, uncached, ref: ReferenceResult) -> dict:
    """parity.json ``first_block_cache``: what the cache skipped, its cost against the uncached
    harness run, and the comparison against diffusers' own hook at the same threshold."""
    stats = dict(ours.cache)
    psnr = psnr_db(ours.images, uncached.images)
    t_cached, t_plain = _steps_s(ours), _steps_s(uncached)
    stats["vs_uncached_harness"] = {
        "final_latents_max_abs_diff": max_abs_diff(ours.final_latents, uncached.final_latents),
        "final_latents_mean_abs_diff": mean_abs_diff(ours.final_latents, uncached.final_latents),
        "image_max_abs_diff": max_abs_diff(ours.images, uncached.images),
        "images_bitwise": bool(ours.images.shape == uncached.images.shape
                               and np.array_equal(ours.images, uncached.images)),
        "psnr_db": None if psnr is None or psnr == float("inf") else psnr,
        "steps_s_cached": t_cached, "steps_s_uncached": t_plain,
        "speedup": t_plain / t_cached if t_cached and t_plain else None,
    }
    hook = dict(getattr(ref, "first_block_cache", None) or {
        "applied": False, "reason": "the family's reference runner has no first-block cache"})
    if hook.get("applied"):
        psnr = psnr_db(ours.images, ref.images)
        hook.update(
            bitwise=bool(np.array_equal(ours.final_latents, ref.final_latents)
                         and np.array_equal(ours.images, ref.images)),
            final_latents_max_abs_diff=max_abs_diff(ours.final_latents, ref.final_latents),
            image_max_abs_diff=max_abs_diff(ours.images, ref.images),
            psnr_db=None if psnr is None or psnr == float("inf") else psnr)
    stats["vs_diffusers_hook"] = hook
    return stats


def compare(ours, ref: ReferenceResult, tolerance: float = CLOSE_TOLERANCE) -> dict:
    """Per-step and final differences and the verdict: bitwise, close (≤ tolerance), mismatch."""
    steps = []
    for i in range(max(len(ours.step_latents), len(ref.step_latents))):
        a = ours.step_latents[i] if i < len(ours.step_latents) else None
        b = ref.step_latents[i] if i < len(ref.step_latents) else None
        both = a is not None and b is not None
        steps.append({
            "step": i,
            "timestep": ref.step_timesteps[i] if b is not None else None,
            "timestep_harness": float(ours.timesteps[i]) if i < len(ours.timesteps) else None,
            "latents_max_abs_diff": max_abs_diff(a, b) if both else None,
            "latents_mean_abs_diff": mean_abs_diff(a, b) if both else None,
            "bitwise": bool(both and a.shape == b.shape and np.array_equal(a, b)),
        })
    first = next((s["step"] for s in steps if not s["bitwise"]), None)
    lat_equal = (ours.final_latents.shape == ref.final_latents.shape
                 and np.array_equal(ours.final_latents, ref.final_latents))
    img_equal = ours.images.shape == ref.images.shape and np.array_equal(ours.images, ref.images)
    lat_diff = max_abs_diff(ours.final_latents, ref.final_latents)
    note = None
    if lat_equal and img_equal:
        verdict = "bitwise"
    elif lat_equal:
        # Identical latents must decode to identical images: the decode path itself differs.
        verdict = "mismatch"
        note = "final latents are identical but the images differ: the decode paths disagree"
    elif lat_diff is not None and lat_diff <= tolerance:
        verdict = "close"
        note = f"final latents within {tolerance:g} but not bitwise"
    else:
        verdict = "mismatch"
    psnr = psnr_db(ours.images, ref.images)
    return {
        "verdict": verdict,
        "verdict_note": note,
        "close_tolerance": tolerance,
        "final_latents_bitwise": lat_equal,
        "final_latents_max_abs_diff": lat_diff,
        "final_latents_mean_abs_diff": mean_abs_diff(ours.final_latents, ref.final_latents),
        "images_bitwise": img_equal,
        "image_max_abs_diff": max_abs_diff(ours.images, ref.images),
        "decoded_max_abs_diff": (max_abs_diff(ours.decoded, ref.decoded)
                                 if ours.decoded is not None else None),
        "psnr_db": None if psnr is None or psnr == float("inf") else psnr,
        "steps": steps,
        "first_divergent_step": first,
    }


def harness_settings(ctx) -> dict:
    """The settings the harness resolved for a request, named as the pipelines' arguments."""
    return {"height": ctx.height, "width": ctx.width,
            "num_inference_steps": ctx.num_inference_steps,
            "num_images_per_prompt": ctx.num_images_per_prompt,
            "timesteps": [float(t) for t in ctx.timesteps],
            "guidance_scale": ctx.guidance_scale, "true_cfg_scale": ctx.true_cfg_scale,
            "strength": ctx.strength, "cfg_truncation": ctx.cfg_truncation,
            "cfg_normalization": ctx.cfg_normalization,
            **({"num_frames": ctx.num_frames, "guidance_scale_2": ctx.guidance_scale_2}
               if hasattr(ctx, "num_frames") else {})}


def _same(a, b) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
                and np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32)))
    if a is None or b is None:
        return a is b
    return float(a) == float(b)  # True ≡ 1.0 (cfg_normalization), ints and floats alike


def compare_inputs(ctx, ref: ReferenceResult, harness_encoder_inputs: dict | None = None) -> dict:
    """Each setting the reference pipeline resolved from the user's request, against what the
    harness resolved (size, steps, schedule, guidance, ...), then what each text encoder was fed
    (prompt ids, the VL encoder's pixel values): ``equal`` and the first difference. Compared
    before any output: a different input explains every later difference."""
    ours = harness_settings(ctx)
    rows = []
    for key, theirs in ref.settings.items():
        mine = ours.get(key)
        rows.append({"setting": key, "harness": mine, "reference": theirs,
                     "equal": _same(mine, theirs)})
    if harness_encoder_inputs is not None and ref.encoder_inputs:
        rows += compare_encoder_inputs(harness_encoder_inputs, ref.encoder_inputs)
    first = next((r for r in rows if not r["equal"]), None)
    note = None
    if first is not None:
        show = (lambda v: f"{len(v)} steps from {v[0]:g}" if isinstance(v, list) and v else v)
        where = first.get("first_differing_position")
        note = (f"{first['setting']}: harness {show(first['harness'])!r}, "
                f"{ref.pipeline} {show(first['reference'])!r}"
                + (f", first difference at position {where}" if where is not None else "")
                + (f", max |Δ| {first['max_abs_diff']:.3g}" if first.get("max_abs_diff")
                   is not None else ""))
    return {"equal": first is None, "first_difference": note, "settings": rows,
            "reference_given": ref.given, "extension": ref.extension}


def verdict_of(inputs: dict, outputs: dict) -> tuple[str, str | None]:
    """The report's verdict: an input difference first (``input mismatch``), then the outputs'
    verdict, marked ``(extension)`` where the harness went beyond what the reference accepts."""
    if not inputs["equal"]:
        return "input mismatch", inputs["first_difference"]
    verdict, note = outputs["verdict"], outputs["verdict_note"]
    if inputs["extension"]:
        verdict, note = f"{verdict} (extension)", "; ".join(
            n for n in (f"extension: {inputs['extension']}", note) if n)
    return verdict, note


def parity_report(*, family: str, model: dict, request: dict, ctx, ours, ref: ReferenceResult,
                  device: str, dtype: str, harness_timings: dict,
                  first_block_cache: dict | None = None,
                  harness_encoder_inputs: dict | None = None,
                  tolerance: float | None = None, output_format: str = "png") -> dict:
    """The parity.json document: the inputs both sides resolved from the request (compared
    first), then the outputs; ``first_block_cache`` is ``first_block_cache_section``'s dict when
    the harness ran the cache."""
    import torch

    cmp = compare(ours, ref, CLOSE_TOLERANCE if tolerance is None else tolerance)
    inputs = compare_inputs(ctx, ref, harness_encoder_inputs)
    verdict, note = verdict_of(inputs, cmp)
    doc = {
        "family": family,
        "model": model,
        "reference": {"pipeline": ref.pipeline, "diffusers_version": metadata.version("diffusers"),
                      "inputs": ref.inputs, "log": ref.log},
        "request": request,
        "device": device,
        "dtype": dtype,
        **cmp,
        "verdict": verdict,
        "verdict_note": note,
        "output_verdict": cmp["verdict"],
        "input_comparison": inputs,
        "output_format": output_format,
        "lossy_note": (f"the written {output_format} files are lossy: every comparison uses the "
                       f"uint8 arrays before encoding (report.html shows them as PNG)")
        if output_format.lower() in LOSSY_FORMATS else None,
        "psnr_note": "null psnr_db means identical images (infinite PSNR)"
                     if cmp["psnr_db"] is None and cmp["images_bitwise"] else None,
        "timings_s": {"harness": harness_timings,
                      "reference": {"total_s": ref.total_s, "steps_s": ref.step_s}},
        "torch_threads": torch.get_num_threads(),
        "environment": environment(),
    }
    if first_block_cache is not None:
        doc["first_block_cache"] = first_block_cache
    if np.ndim(ours.images) == 5:  # video: (B, F, H, W, 3) frames
        doc["frames"] = frame_comparison(ours.images, ref.images)
        doc["frame_rate"] = getattr(ctx, "frame_rate", None)
        # the animated WebP harness.video writes is lossless; MP4 and GIF are not
        doc["lossy_note"] = (f"the written {output_format} files are lossy: every comparison "
                             f"uses the uint8 frames before encoding (frames.npy and "
                             f"reference_frames.npy hold them)"
                             if output_format.lower() in ("mp4", "gif") else None)
    return doc


def frame_comparison(ours: np.ndarray, ref: np.ndarray) -> dict:
    """Per-frame differences of two uint8 (B, F, H, W, 3) videos, compared before encoding:
    max / mean |Δ|, PSNR and bitwise per (video, frame), and the first frame that differs."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    rows = []
    if ours.shape == ref.shape:
        for b in range(ours.shape[0]):
            for f in range(ours.shape[1]):
                psnr = psnr_db(ours[b, f], ref[b, f])
                rows.append({"video": b, "frame": f,
                             "max_abs_diff": max_abs_diff(ours[b, f], ref[b, f]),
                             "mean_abs_diff": mean_abs_diff(ours[b, f], ref[b, f]),
                             "psnr_db": None if psnr is None or psnr == float("inf") else psnr,
                             "bitwise": bool(np.array_equal(ours[b, f], ref[b, f]))})
    first = next((r for r in rows if not r["bitwise"]), None)
    return {"shape": list(ours.shape), "reference_shape": list(ref.shape),
            "frames_bitwise": bool(rows) and first is None,
            "first_differing_frame": None if first is None else [first["video"], first["frame"]],
            "per_frame": rows}


def _write_video_parity(out_dir: Path, report: dict, ref: ReferenceResult,
                        ours_files: list[str], ours_frames: np.ndarray | None) -> list[Path]:
    """Video parity files: reference_i.<container>, both sides' uint8 frames losslessly as
    frames.npy / reference_frames.npy ((F, H, W, 3), or (B, F, H, W, 3) for several videos),
    parity.json, parity.md (with the per-frame table) and report.html."""
    import io

    from harness.video import write_video

    from .html import video_report_html

    fmt = report.get("output_format", "mp4")
    fps = report.get("frame_rate") or 16
    written, ref_files = [], []
    for i, frames in enumerate(ref.images):
        written.append(write_video(out_dir / f"reference_{i}.{fmt}", frames, fmt, fps))
        ref_files.append(written[-1].name)

    def npy(arr) -> bytes:
        arr = np.asarray(arr, dtype=np.uint8)
        buf = io.BytesIO()
        np.save(buf, arr[0] if arr.shape[0] == 1 else arr, allow_pickle=False)
        return buf.getvalue()

    if ours_frames is not None:
        written.append(atomic_write_bytes(out_dir / "frames.npy", npy(ours_frames)))
    written.append(atomic_write_bytes(out_dir / "reference_frames.npy", npy(ref.images)))
    written.append(atomic_write_json(out_dir / "parity.json", report))
    rows = (report.get("frames") or {}).get("per_frame") or []
    md = _markdown(report, ours_files, ref_files) + "\n".join([
        "## Frames (uint8, before encoding)", "",
        markdown_table(["video", "frame", "max abs diff", "mean abs diff", "PSNR (dB)", "bitwise"],
                       [[r["video"], r["frame"], r["max_abs_diff"], r["mean_abs_diff"],
                         "∞" if r["bitwise"] else r["psnr_db"], r["bitwise"]] for r in rows]),
        ""])
    written.append(atomic_write_text(out_dir / "parity.md", md))
    if ours_frames is not None:
        written.append(atomic_write_text(out_dir / "report.html", video_report_html(
            report, ours_frames, ref.images, files=ours_files)))
    return written


_VERDICT_TEXT = {
    "bitwise": "final latents and images are bit-for-bit identical",
    "close": "not bitwise, but the final latents are within max |Δ| ≤ {tol:g}",
    "mismatch": "the final latents differ by more than {tol:g} (or their shapes differ)",
    "input mismatch": "the two sides resolved the request differently (first difference: {note}); "
                      "the outputs are compared below all the same",
}


def _inputs_markdown(inputs: dict) -> list[str]:
    """Inputs before outputs: each resolved setting of both sides, then what the reference got."""
    def show(v):
        if isinstance(v, list):
            return f"{len(v)} steps: {', '.join(f'{t:g}' for t in v[:6])}" + (
                ", ..." if len(v) > 6 else "")
        return fmt_num(v)

    lines = ["## Inputs (resolved from the request by each side)", "",
             markdown_table(["setting", "harness", "reference", "equal"],
                            [[r["setting"], show(r["harness"]), show(r["reference"]),
                              "yes" if r["equal"] else "**no**"] for r in inputs["settings"]]),
             "", "The reference was called with: "
             + ", ".join(f"`{k}={v!r}`" for k, v in inputs["reference_given"].items()) + ".", ""]
    if inputs["extension"]:
        lines += [f"**Extension**: {inputs['extension']}.", ""]
    return lines


def _markdown(report: dict, ours_files: list[str], ref_files: list[str]) -> str:
    tol = report["close_tolerance"]
    base = report["verdict"].replace(" (extension)", "")
    lines = [
        f"# Image parity: {report['family']} — **{report['verdict']}**", "",
        _VERDICT_TEXT[base].format(tol=tol, note=report.get("verdict_note")) + ".", "",
        f"Reference: `{report['reference']['pipeline']}` (diffusers "
        f"{report['reference']['diffusers_version']}), inputs by "
        f"{report['reference']['inputs']}; device {report['device']}, dtype {report['dtype']}, "
        f"{report['torch_threads']} torch thread(s).", "",
        markdown_table(["metric", "value"], [
            ["final latents max abs diff", report["final_latents_max_abs_diff"]],
            ["final latents mean abs diff", report["final_latents_mean_abs_diff"]],
            ["image max abs diff (uint8)", report["image_max_abs_diff"]],
            ["decoded image max abs diff", report["decoded_max_abs_diff"]],
            ["PSNR (dB)", "∞ (identical)" if report["images_bitwise"] else report["psnr_db"]],
            ["first divergent step", report["first_divergent_step"]],
            ["harness total (s)", report["timings_s"]["harness"].get("total_s")],
            ["reference total (s)", report["timings_s"]["reference"]["total_s"]],
        ]), "", *_inputs_markdown(report["input_comparison"]), "## Images", "",
        *([f"Note: {report['lossy_note']}.", ""] if report.get("lossy_note") else []),
        "<table><tr><th>#</th><th>harness</th><th>diffusers</th></tr>",
    ]
    for i, (a, b) in enumerate(zip(ours_files, ref_files)):
        lines.append(f'<tr><td>{i}</td><td><img src="{a}" alt="harness {i}"></td>'
                     f'<td><img src="{b}" alt="diffusers {i}"></td></tr>')
    lines += ["</table>", "", "## Per-step latents", "",
              markdown_table(["step", "timestep", "max abs diff", "mean abs diff", "bitwise"],
                             [[s["step"], s["timestep"], s["latents_max_abs_diff"],
                               s["latents_mean_abs_diff"], s["bitwise"]] for s in report["steps"]]),
              ""]
    if report.get("first_block_cache"):
        lines += _fbc_markdown(report["first_block_cache"])
    lines += ["## Request", "",
              markdown_table(["option", "value"],
                             [[k, fmt_num(v)] for k, v in report["request"].items()]), ""]
    return "\n".join(lines)


def _fbc_markdown(fbc: dict) -> list[str]:
    """The first-block cache section: decisions per stream, cost, diffusers' hook."""
    plain, hook = fbc["vs_uncached_harness"], fbc["vs_diffusers_hook"]
    lines = [
        "## First-block cache", "",
        f"Threshold {fmt_num(fbc['threshold'])}; head `{fbc['head_block']}`, tail "
        f"`{fbc['tail_block']}` ({fbc['span_blocks']} blocks); {fbc['computed']} transformer "
        f"calls computed, {fbc['reused']} reused, {fbc['skipped_block_calls']} block calls "
        f"skipped. Decisions: C = computed, R = reused; rel = mean|r − r_prev| / mean|r_prev|.",
        "",
        markdown_table(["stream", "computed", "reused", "decisions", "rel per call"],
                       [[k, s["computed"], s["reused"], s["decisions"],
                         ", ".join("—" if r is None else f"{r:.3g}" for r in s["rel"])]
                        for k, s in fbc["streams"].items()]), "",
        "Cost against the uncached harness run of the same context:", "",
        markdown_table(["metric", "value"], [
            ["final latents max abs diff", plain["final_latents_max_abs_diff"]],
            ["final latents mean abs diff", plain["final_latents_mean_abs_diff"]],
            ["image max abs diff (uint8)", plain["image_max_abs_diff"]],
            ["PSNR (dB)", "∞ (identical)" if plain["images_bitwise"] else plain["psnr_db"]],
            ["denoise steps (s), cached / uncached",
             f"{fmt_num(plain['steps_s_cached'])} / {fmt_num(plain['steps_s_uncached'])}"],
            ["speed-up of the steps", plain["speedup"]],
        ]), "",
    ]
    if hook.get("applied"):
        lines += [f"Against diffusers' own FirstBlockCache hook at the same threshold (contexts "
                  f"named by the {hook['contexts']}): "
                  + ("**bitwise**." if hook["bitwise"] else
                     f"final latents max abs diff {fmt_num(hook['final_latents_max_abs_diff'])}, "
                     f"image max abs diff {fmt_num(hook['image_max_abs_diff'])}, PSNR "
                     f"{fmt_num(hook['psnr_db'])} dB."), "",
                  "The reference above ran with that hook.", ""]
    else:
        lines += [f"diffusers' FirstBlockCache hook was not applied ({hook.get('reason')}): the "
                  f"reference above ran uncached, so its difference includes the cache's cost.",
                  ""]
    return lines


def write_parity(out_dir: str | Path, report: dict, ref: ReferenceResult,
                 ours_files: list[str], ours_images: np.ndarray | None = None) -> list[Path]:
    """Write reference_i.png, parity.json, parity.md and (given the harness's uint8 images)
    the self-contained report.html into ``out_dir`` (each atomically); videos (5-D frames) as
    ``_write_video_parity`` writes them."""
    import io

    from PIL import Image

    out_dir = Path(out_dir)
    if np.ndim(ref.images) == 5:
        return _write_video_parity(out_dir, report, ref, ours_files, ours_images)
    written = []
    ref_files = []
    for i, im in enumerate(ref.images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        name = f"reference_{i}.png"
        written.append(atomic_write_bytes(out_dir / name, buf.getvalue()))
        ref_files.append(name)
    written.append(atomic_write_json(out_dir / "parity.json", report))
    written.append(atomic_write_text(out_dir / "parity.md",
                                     _markdown(report, ours_files, ref_files)))
    if ours_images is not None:
        written.append(atomic_write_text(out_dir / "report.html", image_report_html(
            report, ours_images, ref.images, files=ours_files,
            output_format=report.get("output_format", "png"))))
    return written
