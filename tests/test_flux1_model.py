"""models/flux1.py: the registry contract, the tiny recipe's geometry and determinism, loading."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import models.flux1 as flux1
from models.registry import resolve
from tests.flux_fixtures import request, resolved


def tiny_folder() -> Path:
    return resolved().path


def test_registry_contract():
    assert flux1.FAMILY == "flux1" and flux1.MODALITY == "image"
    assert flux1.TINY_NAMES == ("tiny-flux1",)
    r = resolve("tiny-flux1")
    assert r.family is flux1 and r.modality == "image" and r.name == "tiny-flux1"
    assert (r.path / ".complete").exists() and flux1.matches(r.path)


def _copy_with_index(dst: Path, **index) -> Path:
    shutil.copytree(tiny_folder(), dst)
    data = json.loads((dst / "model_index.json").read_text())
    data.update(index)
    (dst / "model_index.json").write_text(json.dumps(data))
    return dst


def test_matches_only_flux1_pipelines(tmp_path):
    assert flux1.matches(_copy_with_index(tmp_path / "i2i", _class_name="FluxImg2ImgPipeline"))
    assert not flux1.matches(_copy_with_index(tmp_path / "sd",
                                              _class_name="StableDiffusionPipeline"))
    assert not flux1.matches(_copy_with_index(tmp_path / "f2", _class_name="Flux2Pipeline"))
    (tmp_path / "empty").mkdir()
    assert not flux1.matches(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text("{not json")
    assert not flux1.matches(tmp_path / "broken")


def test_resolve_local_folder_and_offline_hf_cache_id(tmp_path, monkeypatch):
    folder = _copy_with_index(tmp_path / "my-flux")
    r = resolve(str(folder))
    assert r.family is flux1 and r.path == folder
    # An offline HF cache entry: models--org--name/snapshots/<rev>/ plus refs/main.
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hub"
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = cache / "models--someorg--tiny-flux" / "snapshots" / rev
    shutil.copytree(folder, snap)
    (cache / "models--someorg--tiny-flux" / "refs").mkdir()
    (cache / "models--someorg--tiny-flux" / "refs" / "main").write_text(rev)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    r = resolve("someorg/tiny-flux")
    assert r.family is flux1 and r.path == snap
    with pytest.raises(ValueError, match="neither a tiny model"):
        resolve("someorg/not-there")


def test_tiny_geometry_is_real():
    rules = flux1.rules(tiny_folder())
    assert rules.vae_scale_factor == 8 and rules.size_multiple == 16
    assert rules.latent_channels == 16
    assert (rules.scaling_factor, rules.shift_factor) == (0.3611, 0.1159)
    assert rules.guidance_embeds
    t = rules.transformer_config
    assert (t["in_channels"], t["num_layers"], t["num_single_layers"]) == (64, 1, 1)
    assert (t["num_attention_heads"], t["attention_head_dim"]) == (2, 16)
    assert sum(t["axes_dims_rope"]) == t["attention_head_dim"]
    vae = rules.vae_config
    assert len(vae["block_out_channels"]) == 4 and vae["latent_channels"] == 16
    for key, value in flux1.FLUX1_DEV_SCHEDULER.items():
        assert rules.scheduler_config[key] == value, key
    assert rules.max_text_length == 512
    assert [e.max_length for e in rules.text_encoders] == [77, 512]


def test_mu_comes_from_the_scheduler_config():
    rules = flux1.rules(tiny_folder())
    assert rules.mu(1024, 1024) == pytest.approx(1.15)
    assert rules.mu(512, 512) == pytest.approx(0.63)
    assert rules.mu(2048, 2048) == pytest.approx(3.23)  # not clamped


def test_static_shift_folder(tmp_path):
    """A schnell-like config (no dynamic shifting) follows the scheduler bit for bit."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    folder = _copy_with_index(tmp_path / "schnell")
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(use_dynamic_shifting=False, shift=1.0)
    cfg_path.write_text(json.dumps(cfg))
    rules = flux1.rules(folder)
    # FluxPipeline defaults to 28 steps for schnell too (its model card passes 4 explicitly).
    assert rules.mu(256, 256) is None and rules.default_steps == 28
    ts, sig, _ = rules.schedule(4, 256, 256)
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.25, 4))
    assert np.array_equal(ts, sched.timesteps.numpy()) and np.array_equal(sig, sched.sigmas.numpy())


def test_unsupported_scheduler_option_is_refused(tmp_path):
    folder = _copy_with_index(tmp_path / "beta")
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["stochastic_sampling"] = True
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="stochastic_sampling"):
        flux1.rules(folder)


def test_tokenizers_cover_every_byte_and_size_the_encoders():
    from tokenizers import Tokenizer

    from models.text_tokenizers import bytes_to_unicode

    folder = tiny_folder()
    clip = Tokenizer.from_file(str(folder / "tokenizer" / "tokenizer.json"))
    vocab = clip.get_vocab()
    for sym in bytes_to_unicode().values():
        assert sym in vocab and sym + "</w>" in vocab
    te = json.loads((folder / "text_encoder" / "config.json").read_text())
    te2 = json.loads((folder / "text_encoder_2" / "config.json").read_text())
    assert te["vocab_size"] == clip.get_vocab_size(with_added_tokens=True)
    assert te["eos_token_id"] == vocab["<|endoftext|>"] == max(vocab.values())
    t5 = Tokenizer.from_file(str(folder / "tokenizer_2" / "tokenizer.json"))
    assert te2["vocab_size"] == t5.get_vocab_size(with_added_tokens=True)
    assert [t5.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]


def test_tiny_build_is_deterministic(tmp_path):
    """A second build writes the same bytes as the cached one, file for file."""
    flux1.build_tiny(tmp_path / "again")
    cached = tiny_folder()
    ours = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*")
                  if p.is_file())
    assert ours and ours == sorted(p.relative_to(cached) for p in cached.rglob("*") if p.is_file()
                                   and p.name not in ("recipe.json", ".complete"))
    for rel in ours:
        assert (tmp_path / "again" / rel).read_bytes() == (cached / rel).read_bytes(), rel


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def broken(out: Path):
        (out / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(flux1.tiny, "build_tiny", broken)
    with pytest.raises(KeyboardInterrupt):
        flux1.tiny_path("tiny-flux1", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_loads_through_diffusers_from_pretrained():
    """The tiny folder is a regular FLUX.1 folder for diffusers itself."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(tiny_folder(), local_files_only=True)
    assert pipe.vae_scale_factor == 8 and pipe.tokenizer_max_length == 77
    assert type(pipe.transformer).__name__ == "FluxTransformer2DModel"
    comps = flux1.load_components(tiny_folder())
    assert set(comps) == {"text_encoder", "text_encoder_2", "transformer", "vae"}
    assert all(not p.requires_grad for m in comps.values() for p in m.parameters())


def test_prompt_moves_the_text_embeddings():
    """Re-drawn text encoder weights: different prompts give clearly different embeddings."""
    from tests.flux_fixtures import denoiser, tokenizer

    d = denoiser()
    a = tokenizer().new_context(request(prompt="a red car"))
    b = tokenizer().new_context(request(prompt="an old lighthouse by the sea"))
    ea, pa = d.encode_prompt(a.tokens.all, a.tokens_2.all, 1)
    eb, pb = d.encode_prompt(b.tokens.all, b.tokens_2.all, 1)
    assert float((pa - pb).abs().max()) > 0.1 and float((ea - eb).abs().max()) > 0.1


def test_slow_tokenizer_files_are_accepted(tmp_path):
    """Real FLUX.1 folders ship CLIP as vocab.json + merges.txt only: same tokens either way."""
    from harness.tokenizers import PixelGenerationTokenizer

    folder = _copy_with_index(tmp_path / "slow")
    tok_dir = folder / "tokenizer"
    fast = json.loads((tok_dir / "tokenizer.json").read_text())["model"]
    (tok_dir / "vocab.json").write_text(json.dumps(fast["vocab"]))
    (tok_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in fast["merges"]))
    (tok_dir / "tokenizer.json").unlink()
    slow = PixelGenerationTokenizer(resolve(str(folder)))
    ref = PixelGenerationTokenizer(resolved())
    for prompt in ("A photo of a CAT, 4K!!", "unicode: 你好, émoji 🐱", "it's a test; ok?"):
        a, b = slow.new_context(request(prompt=prompt)), ref.new_context(request(prompt=prompt))
        assert np.array_equal(a.tokens.all, b.tokens.all) and np.array_equal(a.mask, b.mask)
