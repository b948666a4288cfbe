"""What the vision-language family packages share: offline loading of a folder into a
``VLMFamily`` adapter, one image through the vision encoder, tiny byte tokenizers, weight re-draw,
and the tiny-build boilerplate."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from harness.env import offline_env, torch_dtype
from harness.pipelines.vlm_family import VLMFamily

__all__ = ["build_byte_tokenizer", "redraw_weights", "load_family", "image_features", "tiny_model",
           "save_all", "tiny_build", "config_matches"]


# -- tiny tokenizers ------------------------------------------------------------------------------
def build_byte_tokenizer(specials: list[str], *, bos: str, eos: str, pad: str,
                         named: dict[str, str] | None = None, chat_template: str | None = None):
    """Byte-level BPE with zero merges: the specials first, then the 256 byte symbols."""
    offline_env()
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials)}
    for sym in alphabet:
        vocab.setdefault(sym, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos,
                                  pad_token=pad, extra_special_tokens=dict(named or {}))
    if chat_template:
        tok.chat_template = chat_template
    return tok


def redraw_weights(model, std: float, seed: int) -> None:
    """Re-draw every matrix/conv weight from N(0, std) so that outputs depend on inputs."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * std)


def tiny_model(model_cls, cfg, recipe: dict, *, eos, pad):
    """``model_cls(cfg)`` seeded by ``recipe``, its weights re-drawn, generation eos/pad set."""
    import torch

    torch.manual_seed(recipe["seed"])
    model = model_cls(cfg)
    redraw_weights(model, recipe["std"], recipe["seed"])
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    return model


def save_all(folder: Path, *parts) -> None:
    """``save_pretrained(folder)`` of model, tokenizer and processor, in that order."""
    for part in parts:
        part.save_pretrained(folder)


def tiny_build(name: str, names: tuple[str, ...], recipe: dict, build: Callable[[Path], None],
               cache_dir=None) -> Path:
    """Build (once, atomically) tiny model ``name`` (one of ``names``) into the cache keyed by
    its recipe."""
    from .cache import ensure_built

    if name not in names:
        raise ValueError(f"unknown tiny model {name!r}; known: {', '.join(names)}")

    return ensure_built(name, recipe, build, cache_dir)


def config_matches(folder, model_types: tuple[str, ...]) -> bool:
    """Does ``folder/config.json`` declare one of ``model_types``?"""
    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") in model_types
    except (OSError, ValueError):
        return False


def load_family(cls, folder, classes: tuple, *, device: str = "cpu", dtype: str = "float32",
                **fields) -> VLMFamily:
    """``cls`` over the model, tokenizer and PIL image processor of a local folder, loaded offline;
    ``classes`` is ``(model class, image processor class)``, ``fields`` the adapter's own."""
    offline_env()
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    model_cls, processor_cls = classes
    hf_logging.disable_progress_bar()  # loading is sub-second for tiny models; keep stderr clean
    dt = torch_dtype(dtype, allowed=("float32", "bfloat16", "float16"))
    model = model_cls.from_pretrained(folder, local_files_only=True, dtype=dt)
    model.to(device).eval()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    proc = processor_cls.from_pretrained(folder, local_files_only=True)
    return cls(model=model, tokenizer=tok, image_processor=proc, folder=Path(folder), **fields)


def image_features(model, pixel_values, *, batched: bool = True, **kwargs):
    """One image through ``model.get_image_features``: its pixels (with a batch axis added when
    ``batched``) on the model's device and dtype, ``kwargs`` passed on; the pooled output (a
    tensor, or one tensor per image) flattened to ``(rows, hidden)``."""
    import torch

    pv = torch.as_tensor(pixel_values)
    pv = (pv[None] if batched else pv).to(model.device, model.dtype)
    out = model.get_image_features(pixel_values=pv, return_dict=True, **kwargs).pooler_output
    if isinstance(out, torch.Tensor):
        return out.reshape(-1, out.shape[-1])
    return torch.cat(list(out), dim=0)
