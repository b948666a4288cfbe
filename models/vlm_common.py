"""What the vision-language family packages share: offline loading of a folder into a
``VLMFamily`` adapter, one image through the vision encoder, tiny byte tokenizers, weight re-draw,
and the tiny-build boilerplate."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from harness.env import offline_env, torch_dtype
from harness.pipelines.vlm_family import VLMFamily
from harness.workstation import execution_device

__all__ = ["build_byte_tokenizer", "redraw_weights", "load_family", "image_features", "tiny_model",
           "save_all", "tiny_build", "config_matches", "read_json", "processor_config",
           "folder_chat_template", "hf_processor", "image_only_processor", "write_processor_config",
           "deep_update", "replica_tokenizer", "build_replica"]


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
    """``save_pretrained(folder)`` of model, tokenizer and processor, in that order (without
    transformers' "Writing model shards" bar: a tiny build is no long job)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
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


def read_json(path) -> dict:
    """A JSON object from ``path`` ({} when the file is missing or not a JSON object)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def config_matches(folder, model_types: tuple[str, ...],
                   vision_types: tuple[str, ...] | None = None) -> bool:
    """Does ``folder/config.json`` declare one of ``model_types`` (and, when given, a vision tower
    whose ``model_type`` is one of ``vision_types``)?"""
    cfg = read_json(Path(folder) / "config.json")
    if cfg.get("model_type") not in model_types:
        return False
    if vision_types is None:
        return True
    vision = cfg.get("vision_config") or {}
    return (vision.get("model_type") if isinstance(vision, dict) else None) in vision_types


def processor_config(folder) -> dict:
    """The processor's own settings from ``processor_config.json`` (patch size, placeholder
    counts, ...), as ``ProcessorMixin.from_pretrained`` reads them; {} when the folder has none."""
    cfg = read_json(Path(folder) / "processor_config.json")
    return {k: v for k, v in cfg.items() if k not in ("processor_class", "auto_map",
                                                       "chat_template")}


def folder_chat_template(folder, tokenizer=None) -> str | None:
    """The folder's chat template: ``chat_template.jinja``, else ``chat_template.json``, else the
    tokenizer's (tokenizer_config.json); None when the folder has none."""
    folder = Path(folder)
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tpl = read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(tpl, str) and tpl:
        return tpl
    tpl = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    return tpl if isinstance(tpl, str) and tpl else None


def write_processor_config(folder, processor_class: str, settings: dict) -> None:
    """Write ``processor_config.json`` as ``ProcessorMixin.save_pretrained`` lays it out (for
    processors that cannot be instantiated here, e.g. those that need torchvision)."""
    data = {**settings, "processor_class": processor_class}
    (Path(folder) / "processor_config.json").write_text(
        json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def image_only_processor(processor_cls):
    """``processor_cls`` without its video (or audio) sub-processor: transformers' processors
    that cannot be built without torchvision (Qwen2-VL's video processor needs it) still do
    their text and image work through the same code, just with image + tokenizer attributes."""

    class ImageOnly(processor_cls):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

    ImageOnly.__name__ = ImageOnly.__qualname__ = processor_cls.__name__
    return ImageOnly


def hf_processor(processor_cls, folder, image_processor_cls):
    """The folder's processor as ``processor_cls.from_pretrained`` builds it (processor_config.json
    settings and chat template through ``get_processor_dict``), with a freshly loaded tokenizer and
    the PIL image processor ``image_processor_cls`` (transformers' torchvision image processors
    are not installed here)."""
    offline_env()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    image_processor = image_processor_cls.from_pretrained(folder, local_files_only=True)
    settings, _ = processor_cls.get_processor_dict(str(folder), local_files_only=True)
    return processor_cls.from_args_and_dict([image_processor, tok], settings)


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
    return cls(model=model, tokenizer=tok, image_processor=proc, folder=Path(folder),
               processor_config=processor_config(folder),
               chat_template=folder_chat_template(folder, tok), **fields)


def image_features(model, pixel_values, *, batched: bool = True, **kwargs):
    """One image through ``model.get_image_features``: its pixels (with a batch axis added when
    ``batched``) on the model's device and dtype, ``kwargs`` passed on; the pooled output (a
    tensor, or one tensor per image) flattened to ``(rows, hidden)``."""
    import torch

    pv = torch.as_tensor(pixel_values)
    pv = (pv[None] if batched else pv).to(execution_device(model), model.dtype)
    out = model.get_image_features(pixel_values=pv, return_dict=True, **kwargs).pooler_output
    if isinstance(out, torch.Tensor):
        return out.reshape(-1, out.shape[-1])
    return torch.cat(list(out), dim=0)


# -- replicas of real checkpoints -----------------------------------------------------------------
# A replica is a real checkpoint's folder layout with random weights: its config.json (verbatim,
# then cut in depth and width by a documented ``shrink``), preprocessor_config.json,
# processor_config.json, chat template and generation_config.json as the real repository ships
# them; a byte-level BPE tokenizer that keeps the real special tokens at their real ids; sharded
# safetensors with model.safetensors.index.json.

def deep_update(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in, nested dicts key by key (a copy)."""
    out = json.loads(json.dumps(base))
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def replica_tokenizer(folder: Path, spec: dict) -> None:
    """A byte-level BPE tokenizer with the real special tokens at their real ids.

    ``spec``: ``specials`` {token: id}, ``bos``/``eos``/``pad``/``unk`` (token strings or None),
    ``add_bos`` (the real tokenizer prepends BOS), ``named`` (named special tokens the processors
    read: ``image_token``, ``boi_token``, ...), ``byte_start`` (first id of the byte symbols and
    merges; ids taken by specials are skipped), ``texts`` (what the merges are learned from, so
    that a template's default system prompt tokenizes into words, not bytes) and ``max_merges``."""
    offline_env()
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from .chat_tokenizers import QWEN_PRETOKENIZE_REGEX, learn_byte_merges
    from .text_tokenizers import CORPUS, bytes_to_unicode

    specials: dict[str, int] = dict(spec["specials"])
    taken = set(specials.values())
    merges = learn_byte_merges(list(CORPUS) + list(spec.get("texts", ())),
                               int(spec.get("max_merges", 400)), specials=list(specials))
    vocab = dict(specials)
    next_id = int(spec["byte_start"])
    for piece in list(bytes_to_unicode().values()) + ["".join(m) for m in merges]:
        if piece in vocab:
            continue
        while next_id in taken:
            next_id += 1
        vocab[piece] = next_id
        taken.add(next_id)
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=spec.get("unk")))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    core.decoder = decoders.ByteLevel()
    bos = spec.get("bos")
    if spec.get("add_bos"):
        core.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, specials[bos])])
    core.add_special_tokens([AddedToken(s, special=True, normalized=False)
                             for s in sorted(specials, key=specials.get)])
    kw = {k: spec.get(k) for k in ("bos", "eos", "pad", "unk") if spec.get(k)}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, extra_special_tokens=dict(spec.get("named") or {}),
        model_max_length=int(spec.get("model_max_length", 32768)),
        **{f"{k}_token": v for k, v in kw.items()})
    tok.save_pretrained(str(folder))


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def build_replica(folder: Path, spec: dict, model_cls) -> None:
    """Write a replica folder from ``spec`` (see the section notes): ``config`` (verbatim),
    ``shrink`` (depth/width cuts merged into it), ``generation_config``, ``preprocessor_config``,
    ``processor_config`` and ``chat_template`` (None: the real repository has none),
    ``tokenizer`` (``replica_tokenizer``'s spec), ``std``/``seed`` of the weight re-draw and
    ``shard`` (max_shard_size)."""
    offline_env()
    import torch
    from transformers import AutoConfig

    folder = Path(folder)
    cfg = deep_update(spec["config"], spec.get("shrink", {}))
    _write_json(folder / "config.json", cfg)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    torch.manual_seed(spec["seed"])
    model = model_cls(config)
    redraw_weights(model, spec["std"], spec["seed"])
    dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
    model.to(getattr(torch, dtype))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards": noise for a build of seconds
    model.save_pretrained(str(folder), max_shard_size=spec.get("shard", "8MB"))
    # save_pretrained rewrote the configs in transformers' current layout: put the real
    # repository's files (shrunk) back, so loading goes through the real layout.
    _write_json(folder / "config.json", cfg)
    _write_json(folder / "generation_config.json", spec["generation_config"])
    _write_json(folder / "preprocessor_config.json", spec["preprocessor_config"])
    if spec.get("processor_config") is not None:
        _write_json(folder / "processor_config.json", spec["processor_config"])
    if spec.get("chat_template") is not None:
        _write_json(folder / "chat_template.json", {"chat_template": spec["chat_template"]})
    replica_tokenizer(folder, spec["tokenizer"])
    if not (folder / "model.safetensors.index.json").is_file():
        raise RuntimeError(f"replica {folder.name}: expected sharded safetensors")


def named_replica_path(name: str, replicas: dict, model_class: Callable[[dict], type],
                       cache_dir=None) -> Path:
    """Folder of replica ``name`` (one of ``replicas``: name -> spec), built on first use with
    ``build_replica`` and ``model_class(spec)``, keyed by its spec."""
    spec = replicas.get(name)
    if spec is None:
        raise ValueError(f"unknown replica {name!r}; known: {', '.join(replicas)}")
    return tiny_build(name, tuple(replicas), {"replica": name, "version": 1, **spec},
                      lambda folder: build_replica(folder, spec, model_class(spec)), cache_dir)
