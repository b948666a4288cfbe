"""First-block cache: the harness loop at thresholds 0.05 / 0.1 / 0.2 beside the uncached loop.

One group per model and request, so the table shows the speed-up per threshold (whole call:
steps + VAE decode; ``steps_s_median`` in extra_info times the denoise steps alone). Each row's
``extra_info`` records how many transformer calls were computed / reused, the measured rel values
(min / median / max per CFG stream) and the cost against the uncached run of the same context:
final-latent and uint8-image max |Δ| and PSNR. The tiny models have random weights, so their rel
values are large (128², 28 steps, measured: FLUX.1 ~0.14–0.6, Z-Image ~0.33–0.8): 0.05 and 0.1
reuse nothing there, so an extra "exercise" threshold above the measured median shows what reuse
costs and saves.

Run (1 torch thread):
    PYTHONPATH=. python -m pytest bench/bench_fbcache.py --benchmark-enable \
        --benchmark-group-by=group --benchmark-columns=min,median,rounds
"""
from __future__ import annotations

import functools
import importlib
from importlib import metadata

import numpy as np
import pytest
import torch

from harness.parity.report import max_abs_diff, psnr_db

#: case → (fixtures module, request options, "exercise" threshold that reuses on that model)
CASES = {
    "tiny-flux1 128x128 28 steps": ("tests.flux_fixtures", {}, 0.4),
    "tiny-flux1 128x128 28 steps true-cfg": (
        "tests.flux_fixtures", {"negative_prompt": "blurry, low quality", "true_cfg_scale": 4.0},
        0.4),
    "tiny-z-image 128x128 28 steps cfg": ("tests.z_image_fixtures", {"guidance_scale": 4.0}, 0.7),
}
THRESHOLDS = ("off", "0.05", "0.1", "0.2", "exercise")


def _fixtures(case: str):
    name = CASES[case][0]
    try:
        return importlib.import_module(name)
    except ImportError:  # a family not in this tree yet
        pytest.skip(f"{name} is not available")


def _context(case: str, threshold: float | None):
    fx = _fixtures(case)
    req = fx.request(height=128, width=128, num_inference_steps=28, seed=0,
                     residual_threshold=threshold, **CASES[case][1])
    return fx.denoiser("float32"), fx.tokenizer("float32").new_context(req)


@functools.lru_cache(maxsize=None)
def _uncached(case: str):
    den, ctx = _context(case, None)
    return den(ctx)


def _summary(cache: dict) -> dict:
    out = {k: cache[k] for k in ("computed", "reused", "skipped_block_calls")}
    for key, s in cache["streams"].items():
        rel = np.array([r for r in s["rel"] if r is not None])
        if rel.size:
            out[f"rel_{key}"] = [round(float(v), 4) for v in
                                 (rel.min(), np.median(rel), rel.max())]
        out[f"decisions_{key}"] = s["decisions"]
    return out


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("case", CASES)
def test_first_block_cache(benchmark, case, threshold):
    benchmark.group = f"fbcache {case}"
    thr = None if threshold == "off" else (
        CASES[case][2] if threshold == "exercise" else float(threshold))
    den, ctx = _context(case, thr)
    plain = _uncached(case)
    steps_s = []

    def run():
        res = den(ctx)
        steps_s.append(sum(res.timings["steps_s"]))
        return res

    if not benchmark.disabled:
        den(ctx)  # warm-up: first-call allocations, numba cache loads
    result = benchmark(run)
    benchmark.extra_info.update(
        threshold=thr, torch_threads=torch.get_num_threads(),
        steps_s_median=float(np.median(steps_s)),  # the denoise steps alone, without the decode
        final_latents_max_abs_diff=max_abs_diff(result.final_latents, plain.final_latents),
        image_max_abs_diff=max_abs_diff(result.images, plain.images),
        psnr_db=_psnr(result.images, plain.images),
        **({} if result.cache is None else _summary(result.cache)),
        **{p: metadata.version(p) for p in ("torch", "diffusers", "numpy")})
    assert (result.cache is None) == (thr is None)
    if thr is None:
        assert np.array_equal(result.images, plain.images)


def _psnr(a, b):
    v = psnr_db(a, b)
    return "inf" if v == float("inf") else v
