"""Replicas of the real image checkpoints (tests/replicas/): each real repository's configs
verbatim but for depth (and widths where memory demands), its sharded safetensors with their
index, its tokenizer settings and special-token ids, its chat template; built offline from seeded
random weights. The harness must recognise each layout and reproduce the diffusers pipeline,
called with the user's raw request, bit for bit (CPU float32), with equal resolved inputs.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from tests import pixel_fixtures as px
from tests.replicas import flux1, flux2, qwen_image, z_image

#: replica name -> (builder module, family)
REPLICAS = {
    "FLUX.1-dev": (flux1, "flux1"),
    "FLUX.1-schnell": (flux1, "flux1"),
    "FLUX.2-klein-4B": (flux2, "flux2"),
    "FLUX.2-dev": (flux2, "flux2"),
    "Qwen-Image": (qwen_image, "qwen_image"),
    "Qwen-Image-Edit-2509": (qwen_image, "qwen_image"),
    "Z-Image-Turbo": (z_image, "z_image"),
}

#: Components the real repos ship in several shards (with a *.safetensors.index.json).
SHARDED = {
    "FLUX.1-dev": ("transformer", "text_encoder_2"),
    "FLUX.1-schnell": ("transformer", "text_encoder_2"),
    "FLUX.2-klein-4B": ("text_encoder",),
    "FLUX.2-dev": ("transformer", "text_encoder"),
    "Qwen-Image": ("transformer", "text_encoder"),
    "Qwen-Image-Edit-2509": ("transformer", "text_encoder"),
    "Z-Image-Turbo": ("transformer", "text_encoder"),
}


@functools.lru_cache(maxsize=None)
def folder(name: str) -> Path:
    return REPLICAS[name][0].replica_path(name)


@functools.lru_cache(maxsize=None)
def picture(tmp_dir: str, height: int = 80, width: int = 120, seed: int = 3) -> str:
    from PIL import Image

    path = Path(tmp_dir) / f"in-{height}x{width}-{seed}.png"
    Image.fromarray(px.input_image(height, width, seed)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return str(tmp_path_factory.mktemp("replica-inputs"))


def assert_bitwise(name: str, req):
    """Harness vs the folder's diffusers pipeline on ``req``: equal resolved inputs, bitwise
    latents at every step, bitwise final latents and image."""
    from harness.parity.pixel import compare_inputs, verdict_of

    ctx, ours, ref, cmp = px.parity(str(folder(name)), req)
    inputs = compare_inputs(ctx, ref)
    verdict, note = verdict_of(inputs, cmp)
    assert inputs["equal"], inputs["first_difference"]
    assert verdict == "bitwise", (verdict, note)
    assert cmp["images_bitwise"] and cmp["final_latents_bitwise"]
    return ctx


# --------------------------------------------------------------------------------------------------
# layout


@pytest.mark.parametrize("name", list(REPLICAS))
def test_replica_has_the_real_layout_and_resolves_to_its_family(name):
    from models.diffusers_common import read_json
    from models.registry import resolve

    root = folder(name)
    module, family = REPLICAS[name]
    assert resolve(str(root)).family.FAMILY == family
    cfg = module.configs(name)
    assert read_json(root / "model_index.json") == json.loads(json.dumps(cfg["model_index"]))
    for part in SHARDED[name]:
        shards = sorted((root / part).glob("*-of-*.safetensors"))
        index = next((root / part).glob("*.safetensors.index.json"))
        assert len(shards) >= 2, (part, shards)
        assert set(read_json(index)["weight_map"].values()) == {p.name for p in shards}
    for part in ("transformer", "vae"):
        assert read_json(root / part / "config.json") == json.loads(json.dumps(cfg[part]))
    # transformers writes what it was given plus its normalisations (e.g. rope_type/rope_theta
    # inside rope_scaling): every given value must be there unchanged.
    assert _contains(read_json(root / "text_encoder" / "config.json"),
                     json.loads(json.dumps(cfg["text_encoder"])))


def _contains(saved, given) -> bool:
    if isinstance(given, dict):
        return isinstance(saved, dict) and all(k in saved and _contains(saved[k], v)
                                               for k, v in given.items())
    return saved == given


@pytest.mark.parametrize("name", list(REPLICAS))
def test_every_saved_weight_is_loaded(name):
    """Parity cannot see a weight that from_pretrained failed to load (both sides would share the
    same randomly initialised module): every saved tensor must be in the loaded module, bit for
    bit (bf16 on disk, float32 in memory), and every module tensor must come from the shards.
    Matched by value: the libraries rename keys between the on-disk and in-memory layouts."""
    import hashlib

    import torch
    from safetensors.torch import load_file

    def fingerprint(t) -> tuple:
        t = t.detach().to("cpu", torch.float32).contiguous()
        return tuple(t.shape), hashlib.sha256(t.numpy().tobytes()).hexdigest()

    root = folder(name)
    for part, module in px.denoiser(str(root)).c.items():
        saved: dict = {}
        for f in sorted((root / part).glob("*.safetensors")):
            saved.update({fingerprint(v): k for k, v in load_file(str(f)).items()})
        loaded = {fingerprint(v): k for k, v in module.state_dict().items()}
        assert not set(saved) - set(loaded), (part, sorted(saved[x] for x in
                                                           set(saved) - set(loaded))[:5])
        assert not set(loaded) - set(saved), (part, sorted(loaded[x] for x in
                                                           set(loaded) - set(saved))[:5])


def test_replica_token_ids_are_the_real_ones():
    """The configs name real token ids; the tokenizers put those tokens there (vocab gaps), on the
    tokenizer.json path and on the slow-files-only path (Qwen-Image's tokenizer/, FLUX.1's CLIP)."""
    from transformers import AutoTokenizer

    qwen = AutoTokenizer.from_pretrained(folder("Qwen-Image") / "tokenizer")
    assert "tokenizer.json" not in {p.name for p in (folder("Qwen-Image") / "tokenizer").iterdir()}
    assert qwen.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                       "<|image_pad|>"]) == [151643, 151644, 151645, 151655]
    clip = AutoTokenizer.from_pretrained(folder("FLUX.1-dev") / "tokenizer")
    assert clip("a cat").input_ids[0] == 49406 and clip("a cat").input_ids[-1] == 49407
    klein = AutoTokenizer.from_pretrained(folder("FLUX.2-klein-4B") / "tokenizer")
    assert klein.convert_tokens_to_ids(["<think>", "</think>"]) == [151667, 151668]
    dev = AutoTokenizer.from_pretrained(folder("FLUX.2-dev") / "tokenizer")
    assert dev.convert_tokens_to_ids(["<s>", "[INST]", "[IMG]", "<pad>", "[SYSTEM_PROMPT]"]) == \
        [1, 3, 10, 11, 17]


# --------------------------------------------------------------------------------------------------
# parity from the raw request


def test_flux1_dev_cli_parity(tmp_path):
    """Through the command line, as a user would point it at a downloaded FLUX.1-dev."""
    from tests.test_cli_image import run_cli

    out = tmp_path / "run"
    proc = run_cli("--model", str(folder("FLUX.1-dev")), "--prompt", "a red fox in the snow",
                   "--height", "64", "--width", "64", "--steps", "2", "--seed", "0",
                   "--output-dir", str(out), "--parity")
    assert proc.returncode == 0, proc.stderr
    parity = json.loads((out / "parity.json").read_text())
    assert parity["verdict"] == "bitwise", parity["verdict_note"]
    assert parity["input_comparison"]["equal"]


def test_flux1_dev_img2img_parity(images):
    """FluxImg2ImgPipeline resizes the picture to the requested size (its default is 1024², not
    the picture's size)."""
    assert_bitwise("FLUX.1-dev", px.request(num_inference_steps=3, strength=0.7,
                                            input_image=picture(images)))


def test_flux1_schnell_parity():
    """Schnell as its model card runs it: no guidance (guidance_embeds false), static shift."""
    ctx = assert_bitwise("FLUX.1-schnell", px.request(num_inference_steps=2, guidance_scale=0.0))
    assert ctx.extra_model_args.get("mu") is None  # use_dynamic_shifting false


def test_flux2_klein_parity_with_a_reference_image(images):
    """Klein is step-distilled (model_index is_distilled): no CFG, Qwen3's real chat template."""
    ctx = assert_bitwise("FLUX.2-klein-4B", px.request(num_inference_steps=2, guidance_scale=4.0,
                                                       input_images=[picture(images)]))
    assert ctx.negative_tokens is None


def test_flux2_dev_parity_with_a_reference_image(images):
    assert_bitwise("FLUX.2-dev", px.request(num_inference_steps=2, guidance_scale=4.0,
                                            input_images=[picture(images)]))


def test_qwen_image_parity_with_true_cfg():
    assert_bitwise("Qwen-Image", px.request(num_inference_steps=2, negative_prompt=px.NEGATIVE))


def test_qwen_image_edit_2509_parity(images):
    """One picture to edit (the Plus pipeline encodes it at the 1024² VAE area: the slow part)."""
    assert_bitwise("Qwen-Image-Edit-2509", px.request(num_inference_steps=2,
                                                      input_images=[picture(images)]))


def test_z_image_turbo_img2img_parity(images):
    """Turbo with CFG on and the image's own size (ZImageImg2ImgPipeline)."""
    assert_bitwise("Z-Image-Turbo", px.request(num_inference_steps=3, guidance_scale=2.0,
                                               negative_prompt=px.NEGATIVE,
                                               input_image=picture(images), height=None,
                                               width=None))


def test_negative_control_a_harness_ignoring_is_distilled_is_caught():
    """The Klein replica's model_index says is_distilled: a harness that ignored the flag would
    run CFG at guidance 4 where Flux2KleinPipeline does not, and the parity check must say so."""
    import dataclasses

    from harness.parity.pixel import compare
    from harness.tokenizers import PixelGenerationTokenizer

    root = str(folder("FLUX.2-klein-4B"))
    req = px.request(num_inference_steps=2, guidance_scale=4.0)
    wrong = PixelGenerationTokenizer(px.resolved(root))
    wrong.rules = dataclasses.replace(wrong.rules, is_distilled=False)
    ctx = wrong.new_context(req)
    assert ctx.negative_tokens is not None
    ours = px.denoiser(root)(ctx, record_steps=True)
    ref = px.reference(root)(req, px.tokenizer(root).new_context(req),
                             initial_latents=ours.initial_latents)
    assert compare(ours, ref)["verdict"] == "mismatch"
