"""Which family serves a model: tiny names, local folders and offline HF cache ids.

Each family is a package ``models/<family>/`` whose ``__init__`` exports the family contract:

- every family: ``FAMILY`` (str), ``MODALITY`` ("image" or "text"), ``TINY_NAMES`` (names it
  builds offline), ``tiny_path(name, cache_dir=None) -> Path`` (builds on first use) and
  ``matches(folder) -> bool`` (does a local model folder belong to this family);
- image families: ``rules(folder)`` (configs → numbers, what ``PixelGenerationTokenizer`` asks),
  ``Denoiser`` (a ``harness.pipelines.denoise.DenoiserBase`` subclass) and ``ReferenceRunner``
  (a ``harness.parity.pixel.ReferenceRunner`` subclass);
- text (VLM) families: ``load(folder, device, dtype)`` → a
  ``harness.pipelines.vlm_family.VLMFamily`` adapter; optionally ``REPLICA_NAMES`` and
  ``replica_path(name, cache_dir=None)``: replicas of real checkpoints (their configs, processor
  settings, chat templates and token ids, random weights, cut to 1–2 layers), built offline.

Adding a family: write its package, then add its name to ``FAMILY_MODULES`` below. The importing
of a family is cheap (no torch); heavy modules load when a model runs.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

__all__ = ["FAMILY_MODULES", "ResolvedModel", "resolve", "tiny_names", "replica_names",
           "tiny_request_defaults",
           "family_module"]

# Families in lookup order; a module that is not there yet is skipped.
FAMILY_MODULES = ("flux1", "flux2", "qwen_image", "z_image", "llava", "qwen2_vl", "pixtral",
                  "gemma3", "qwen2_5_vl", "llava_onevision", "qwen3_vl", "wan", "idefics3",
                  "internvl")

DEFAULT_MODEL = "tiny-flux1"


@dataclass(frozen=True)
class ResolvedModel:
    family: ModuleType
    path: Path
    name: str

    @property
    def modality(self) -> str:
        return self.family.MODALITY


def _available() -> list[ModuleType]:
    mods = []
    for name in FAMILY_MODULES:
        try:
            mods.append(importlib.import_module(f"models.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"models.{name}":
                raise
    return mods


def family_module(family: str) -> ModuleType:
    for mod in _available():
        if mod.FAMILY == family:
            return mod
    raise ValueError(f"unknown model family {family!r}; known: "
                     f"{', '.join(m.FAMILY for m in _available())}")


def tiny_names() -> list[str]:
    return [n for mod in _available() for n in mod.TINY_NAMES]


def tiny_request_defaults(resolved: ResolvedModel) -> dict:
    """The request options (named as the CLI flags) a tiny model fills in when left out; {} for
    real folders, which keep their pipeline's defaults."""
    if resolved.name not in resolved.family.TINY_NAMES:
        return {}
    return dict(getattr(resolved.family, "TINY_REQUEST_DEFAULTS", {}))


def replica_names() -> list[str]:
    return [n for mod in _available() for n in getattr(mod, "REPLICA_NAMES", ())]


def _hf_cache_snapshot(model_id: str) -> Path | None:
    """Folder of an offline HF cache entry (``org/name``), without any network access."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return None
    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:
        return None


def resolve(model: str | None, cache_dir: str | os.PathLike | None = None) -> ResolvedModel:
    """Map ``--model`` (tiny name, local folder, or offline HF cache id) to a family and folder."""
    model = model or DEFAULT_MODEL
    families = _available()
    for mod in families:
        if model in mod.TINY_NAMES:
            return ResolvedModel(mod, Path(mod.tiny_path(model, cache_dir)), model)
        if model in getattr(mod, "REPLICA_NAMES", ()):
            return ResolvedModel(mod, Path(mod.replica_path(model, cache_dir)), model)
    folder = Path(model).expanduser()
    if not folder.is_dir():
        if "/" in model and not model.startswith((".", "/")):
            snap = _hf_cache_snapshot(model)
            if snap is not None:
                folder = snap
        if not folder.is_dir():
            raise ValueError(
                f"model {model!r} is neither a tiny model ({', '.join(tiny_names())}), a replica "
                f"({', '.join(replica_names())}), a local "
                f"folder, nor an entry of the offline Hugging Face cache")
    for mod in families:
        if mod.matches(folder):
            return ResolvedModel(mod, folder, model)
    raise ValueError(
        f"no supported model family recognises the folder {str(folder)!r} (supported: "
        f"{', '.join(m.FAMILY for m in families)}); expected a diffusers model_index.json or a "
        f"transformers config.json of a supported architecture")
