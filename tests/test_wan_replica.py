"""The Wan2.1-T2V-1.3B replica (tests/replicas/wan.py): the real repository's layout and configs
(verbatim except the reduced depth and widths), recognised as Wan with the real schedule and
defaults, and the harness bit for bit with WanPipeline on it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.replicas import wan as replica


@pytest.fixture(scope="module")
def folder():
    return replica.replica_path("Wan2.1-T2V-1.3B")


def test_layout_and_configs_are_the_real_ones_but_reduced(folder):
    cfg = replica.configs()
    for part, real in (("transformer", replica.TRANSFORMER), ("vae", replica.VAE),
                       ("text_encoder", replica.UMT5_XXL)):
        saved = json.loads((folder / part / "config.json").read_text())
        assert saved == cfg[part]
        changed = {k for k in real if saved.get(k) != real[k]}
        assert changed == set(replica.REDUCE[part]), (part, changed)
    assert json.loads((folder / "model_index.json").read_text()) == replica.MODEL_INDEX
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert sched == replica.SCHEDULER and sched["flow_shift"] == 3.0
    assert len(list((folder / "transformer").glob("*.safetensors"))) == 2
    tok = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())
    assert tok["extra_ids"] == 300 and tok["pad_token"] == "<pad>"


def test_replica_runs_bitwise_with_wan_pipeline(folder):
    import torch

    from harness.parity.pixel import compare
    from harness.tokenizers import PixelGenerationRequest, PixelGenerationTokenizer
    from models import wan
    from models.registry import resolve

    torch.set_num_threads(1)
    resolved = resolve(str(folder))
    assert resolved.family is wan
    tok = PixelGenerationTokenizer(resolved)
    r = tok.rules
    assert (r.default_height, r.default_width, r.default_num_frames, r.unipc) == (480, 832, 81,
                                                                                  True)
    req = PixelGenerationRequest(prompt="a boat on a lake at dawn", negative_prompt="blurry",
                                 height=32, width=48, num_frames=5, num_inference_steps=3,
                                 seed=12)
    ctx = tok.new_context(req)
    den = wan.Denoiser.from_folder(resolved.path, r, progress=False)
    ours = den(ctx, record_steps=True)
    ref = wan.ReferenceRunner(resolved.path, den.c, r)(req, ctx)
    cmp = compare(ours, ref)
    assert cmp["verdict"] == "bitwise", cmp["final_latents_max_abs_diff"]
    assert np.array_equal(ours.images, ref.images) and ours.images.shape == (1, 5, 32, 48, 3)
