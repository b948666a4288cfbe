"""First-block cache (pixel_pipelines.md §4): generic module on a toy transformer, the FLUX.1 loop
against its uncached run and against diffusers' own FirstBlockCache hook, and the CLI report.

Measured on tiny-flux1 (64², seed 0): rel between consecutive computed steps is ~0.29–0.49 at 8
steps, so thresholds below ~0.28 reuse nothing there; 0.5 reuses every other call (CRCRCRCR) and
costs ~7e-3 on the final latents (cond/uncond streams decide differently under true CFG).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.pipelines.fbcache import BlockIO, FirstBlockCache, resolve_threshold
from tests.flux_fixtures import NEGATIVE, denoiser, input_image, reference, request, tokenizer

REUSING = 0.5       # reuses some steps of the tiny model (measured, see the module notes)
NEVER = 1e-6        # reuses nothing: rel never falls below it
DT = "float32"


# ---------------------------------------------------------------------------------- a toy model
class _Block(torch.nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, hidden_states, encoder_hidden_states, temb):
        return encoder_hidden_states + self.scale * temb, hidden_states * (1 + self.scale) + temb


class _Toy(torch.nn.Module):
    """Two-stream blocks in a ModuleList, called by keyword like FLUX's."""

    def __init__(self, n: int = 3):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList(_Block(0.1 * (i + 1)) for i in range(n))

    def forward(self, x, e, t):
        for b in self.transformer_blocks:
            e, x = b(hidden_states=x, encoder_hidden_states=e, temb=t)
        return x, e


_TOY_IO = {"_Block": BlockIO(("encoder_hidden_states", "hidden_states"), "hidden_states")}


def _toy_inputs(t: float, batch: int = 1):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 4, 8, generator=g), torch.randn(batch, 2, 8, generator=g), \
        torch.full((batch, 1, 8), t)


def test_toy_semantics_first_call_rel_and_reuse():
    toy = _Toy()
    x, e, _ = _toy_inputs(0.0)
    plain = [toy(x, e, torch.full((1, 1, 8), t)) for t in (0.0, 0.001, 5.0)]
    with FirstBlockCache(toy, 0.05, io=_TOY_IO) as fbc:
        outs = [toy(x, e, torch.full((1, 1, 8), t)) for t in (0.0, 0.001, 5.0)]
    st = fbc.stats()
    assert st["streams"]["default"]["decisions"] == "CRC"
    assert st["streams"]["default"]["rel"][0] is None  # the first call always computes
    assert st["head_block"] == "transformer_blocks.0" and st["tail_block"] == "transformer_blocks.2"
    assert st["skipped_block_calls"] == 2 and st["computed"] == 2 and st["reused"] == 1
    # rel by hand: r = head_out − head_in of the hidden stream
    b0 = toy.transformer_blocks[0]
    r = [b0(x, e, torch.full((1, 1, 8), t))[1] - x for t in (0.0, 0.001)]
    want = ((r[1] - r[0]).abs().mean() / (r[0].abs().mean() + 1e-9)).item()
    assert st["streams"]["default"]["rel"][1] == want
    assert all(torch.equal(a, b) for a, b in zip(outs[0], plain[0]))
    assert all(torch.equal(a, b) for a, b in zip(outs[2], plain[2]))
    # the reused call: new head output + the stored (tail − head) residual, both streams
    h0 = b0(x, e, torch.full((1, 1, 8), 0.0))
    h1 = b0(x, e, torch.full((1, 1, 8), 0.001))
    assert torch.equal(outs[1][0], (plain[0][0] - h0[1]) + h1[1])
    assert torch.equal(outs[1][1], (plain[0][1] - h0[0]) + h1[0])
    assert not torch.equal(outs[1][0], plain[1][0])


def test_toy_streams_are_independent_and_shape_change_computes():
    toy = _Toy()
    with FirstBlockCache(toy, 0.05, io=_TOY_IO) as fbc:
        for t in (0.0, 0.001, 0.002):
            with fbc.stream("cond"):
                toy(*_toy_inputs(t))
            with fbc.stream("uncond"):
                toy(*_toy_inputs(3 * t * t + 7 * t))  # moves a lot: never reuses
        with fbc.stream("cond"):
            toy(*_toy_inputs(0.03, batch=2))  # a different batch: computes afresh
    s = fbc.stats()["streams"]
    assert s["cond"]["decisions"] == "CRRC" and s["cond"]["rel"][3] is None
    assert s["uncond"]["decisions"] == "CCC"


def test_toy_restores_forward_even_on_error_and_keeps_other_hooks():
    toy = _Toy()
    b1 = toy.transformer_blocks[1]
    marker = b1.forward  # an instance forward some other hook installed
    b1.forward = marker
    with pytest.raises(RuntimeError, match="boom"):
        with FirstBlockCache(toy, 0.1, io=_TOY_IO):
            assert "forward" in toy.transformer_blocks[0].__dict__
            raise RuntimeError("boom")
    assert "forward" not in toy.transformer_blocks[0].__dict__
    assert "forward" not in toy.transformer_blocks[2].__dict__
    assert b1.__dict__["forward"] is marker
    off = FirstBlockCache(toy, None)
    with off:  # threshold None: a no-op
        assert "forward" not in toy.transformer_blocks[0].__dict__
    assert off.stats() is None


def test_bad_setups_are_refused():
    with pytest.raises(ValueError, match="> 0"):
        FirstBlockCache(_Toy(), 0.0)
    with pytest.raises(ValueError, match="at least 2 blocks"):
        with FirstBlockCache(_Toy(1), 0.1, io=_TOY_IO):
            pass
    with pytest.raises(ValueError, match="no BlockIO known for _Block"):
        with FirstBlockCache(_Toy(), 0.1):
            pass


def test_block_io_from_diffusers_registry():
    from diffusers.models.transformers.transformer_flux import (FluxSingleTransformerBlock,
                                                                FluxTransformerBlock)
    from diffusers.models.transformers.transformer_z_image import ZImageTransformerBlock

    from harness.pipelines.fbcache import _registry_io

    flux = BlockIO(("encoder_hidden_states", "hidden_states"), "hidden_states")
    assert _registry_io(FluxTransformerBlock) == flux == _registry_io(FluxSingleTransformerBlock)
    # diffusers registers "hidden_states" but Z-Image's block calls it x (first parameter)
    assert _registry_io(ZImageTransformerBlock) == BlockIO(("x",), "x", tuple_output=False)


def test_resolve_threshold():
    rules = tokenizer(DT).rules
    assert rules.default_residual_threshold == 0.05
    assert resolve_threshold(None, rules) is None
    assert resolve_threshold(None, rules, enabled=True) == 0.05
    assert resolve_threshold(0.2, rules) == 0.2


# ---------------------------------------------------------------------------------- FLUX.1 loop
def _run(req, *, hook_threshold=None, dtype=DT):
    from harness.parity.pixel import compare, run_uncached

    ctx = tokenizer(dtype).new_context(req)
    ours = denoiser(dtype)(ctx, record_steps=True)
    plain = run_uncached(denoiser(dtype), ctx)
    ref = None
    if hook_threshold is not None:
        ref = reference(dtype)(req, ctx, initial_latents=ours.initial_latents,
                               residual_threshold=hook_threshold)
    return ctx, ours, plain, ref, (compare(ours, ref) if ref is not None else None)


CFG = {"negative_prompt": NEGATIVE, "true_cfg_scale": 4.0}


@pytest.mark.parametrize("cfg", (False, True), ids=("guidance", "true_cfg"))
def test_flux_tiny_threshold_is_bitwise_uncached(cfg):
    req = request(num_inference_steps=6, residual_threshold=NEVER, **(CFG if cfg else {}))
    _, ours, plain, _, _ = _run(req)
    assert ours.cache["reused"] == 0 and ours.cache["computed"] == 6 * (2 if cfg else 1)
    assert set(ours.cache["streams"]) == ({"cond", "uncond"} if cfg else {"cond"})
    assert np.array_equal(ours.final_latents, plain.final_latents)
    assert np.array_equal(ours.images, plain.images)
    assert plain.cache is None


@pytest.mark.parametrize("case", ("guidance", "true_cfg", "img2img_true_cfg", "two_images",
                                  "bfloat16_true_cfg"))
def test_flux_reuse_matches_diffusers_hook_bitwise(case):
    kw = {"guidance": {}, "true_cfg": CFG, "two_images": {**CFG, "num_images_per_prompt": 2},
          "img2img_true_cfg": {**CFG, "input_image": input_image(), "strength": 1.0},
          "bfloat16_true_cfg": {**CFG, "width": 96}}[case]
    dtype = "bfloat16" if case.startswith("bfloat16") else DT
    req = request(num_inference_steps=8, residual_threshold=REUSING, **kw)
    _, ours, plain, ref, cmp = _run(req, hook_threshold=REUSING, dtype=dtype)
    streams = ours.cache["streams"]
    assert all(s["decisions"][0] == "C" for s in streams.values())
    assert ours.cache["reused"] > 0
    assert ours.cache["computed"] + ours.cache["reused"] == 8 * len(streams)
    # a bounded, nonzero cost against the uncached run (measured ~7e-3 .. 3e-2)
    cost = float(np.abs(ours.final_latents - plain.final_latents).max())
    assert 0 < cost < 0.2
    assert ref.first_block_cache["applied"]
    assert ref.first_block_cache["contexts"] == ("runner" if "img2img" in case else "pipeline")
    assert cmp["verdict"] == "bitwise", cmp["final_latents_max_abs_diff"]
    if case != "guidance":  # per-stream state: cond and uncond decide on their own residuals
        assert streams["cond"]["rel"] != streams["uncond"]["rel"]
    # diffusers' hook was removed again (it leaves the plain bound forward as an instance attr)
    for b in denoiser(dtype).c["transformer"].modules():
        assert not getattr(getattr(b, "_diffusers_hook", None), "hooks", None)
        assert getattr(b.forward, "__func__", None) is type(b).forward


def test_flux_hook_at_another_threshold_is_reported_as_mismatch():
    """Negative control: the comparison notices a reference that cached differently."""
    req = request(num_inference_steps=8, residual_threshold=REUSING, **CFG)
    _, ours, _, _, cmp = _run(req, hook_threshold=0.3)
    assert cmp["verdict"] == "mismatch" and cmp["first_divergent_step"] is not None


def test_flux_switch_uses_family_default():
    d = denoiser(DT)
    ctx = tokenizer(DT).new_context(request(num_inference_steps=3))
    d.first_block_cache = True
    try:
        res = d(ctx)
    finally:
        d.first_block_cache = False
    assert res.cache["threshold"] == 0.05 and res.cache["streams"]["cond"]["decisions"][0] == "C"
    assert d(ctx).cache is None


# ---------------------------------------------------------------------------------- CLI
def test_cli_residual_threshold_records_stats(tmp_path):
    from tests.test_cli_image import run_cli

    out = tmp_path / "run"
    proc = run_cli("--prompt", "a red fox in the snow", "--height", "64", "--width", "64",
                   "--steps", "8", "--negative-prompt", "blurry", "--true-cfg-scale", "3",
                   "--residual-threshold", str(REUSING), "--output-dir", str(out), "--parity",
                   "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert "first-block cache: threshold 0.5" in proc.stdout
    result = json.loads((out / "result.json").read_text())
    fbc = result["first_block_cache"]
    assert fbc["threshold"] == REUSING and set(fbc["streams"]) == {"cond", "uncond"}
    assert fbc["computed"] + fbc["reused"] == 16 and fbc["reused"] > 0
    report = json.loads((out / "parity.json").read_text())
    assert report["verdict"] == "bitwise"  # against diffusers with its own hook
    section = report["first_block_cache"]
    assert section["vs_diffusers_hook"]["applied"] and section["vs_diffusers_hook"]["bitwise"]
    cost = section["vs_uncached_harness"]
    assert cost["final_latents_max_abs_diff"] > 0 and cost["psnr_db"] is not None
    assert section["streams"] == fbc["streams"]
    md = (out / "parity.md").read_text()
    assert "## First-block cache" in md and "**bitwise**" in md


# ---------------------------------------------------------------------------------- Z-Image loop
def test_z_image_loop_uses_the_same_cache():
    """The generic cache in a second family's loop (rel there ~0.33–0.8 on the tiny model)."""
    z = pytest.importorskip("tests.z_image_fixtures")
    from harness.parity.pixel import run_uncached

    out = {}
    for thr in (NEVER, 0.7):
        req = z.request(num_inference_steps=6, guidance_scale=4.0, residual_threshold=thr)
        ctx = z.tokenizer(DT).new_context(req)
        out[thr] = z.denoiser(DT)(ctx)
    plain = run_uncached(z.denoiser(DT), ctx)
    assert out[NEVER].cache["reused"] == 0
    assert np.array_equal(out[NEVER].final_latents, plain.final_latents)
    assert out[0.7].cache["head_block"] == "layers.0" and out[0.7].cache["reused"] > 0
    assert 0 < float(np.abs(out[0.7].final_latents - plain.final_latents).max()) < 1.0
