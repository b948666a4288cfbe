"""Loaded models kept per process, so a sweep worker loads each model once across its cases.

Off by default: ``python -m harness.generate`` loads afresh on every run. A sweep worker calls
``enable()``; then ``denoiser()`` and ``vlm_family()`` hand back the modules loaded for the same
(loader, folder, device, dtype) instead of loading them again. The ``keep`` most recently used
models stay loaded (sweeps run their cases grouped by model, so 1 is enough); an older one is
dropped and its memory freed.
"""
from __future__ import annotations

import gc
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

__all__ = ["enable", "disable", "enabled", "stats", "denoiser", "vlm_family"]

_memo: OrderedDict | None = None
_keep = 1
_stats = {"loads": 0, "reuses": 0}


def enable(keep: int = 1) -> None:
    """Keep up to ``keep`` loaded models in this process from now on (clears earlier ones)."""
    global _memo, _keep
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    disable()
    _memo, _keep = OrderedDict(), keep


def disable() -> None:
    """Drop every kept model and load afresh again (the default)."""
    global _memo
    had = bool(_memo)
    _memo = None
    _stats.update(loads=0, reuses=0)
    if had:
        _free()


def enabled() -> bool:
    return _memo is not None


def stats() -> dict:
    """``{"loads": n, "reuses": m}`` since ``enable()``."""
    return dict(_stats)


def _free() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _get(key: tuple, load: Callable[[], Any]) -> tuple[Any, bool]:
    """``(value, loaded_now)``: the kept value for ``key``, else ``load()`` kept under it."""
    if key in _memo:
        _memo.move_to_end(key)
        _stats["reuses"] += 1
        return _memo[key], False
    while len(_memo) >= _keep:  # drop before loading: both need not fit at once
        _memo.popitem(last=False)
        _free()
    value = load()
    _memo[key] = value
    _stats["loads"] += 1
    return value, True


def _key(kind: str, loader: Any, folder, device: str, dtype: str) -> tuple:
    name = f"{getattr(loader, '__module__', '')}.{getattr(loader, '__qualname__', loader)}"
    return kind, name, str(Path(folder).resolve()), str(device), str(dtype)


def denoiser(cls, folder, rules, *, device: str, dtype: str, progress: bool, modes=None):
    """``cls.from_folder(folder, rules, ...)``; while enabled, a new denoiser over the modules
    kept for the same folder, device, dtype and workstation modes (its ``load_s`` is 0 when
    nothing was loaded)."""
    if _memo is None:
        return cls.from_folder(folder, rules, device=device, dtype=dtype, progress=progress,
                               modes=modes)
    key = _key("denoiser", cls, folder, device, dtype) + (repr(modes),)
    first, loaded_now = _get(key, lambda: cls.from_folder(
        folder, rules, device=device, dtype=dtype, progress=progress, modes=modes))
    out = cls(first.c, rules, device=device, dtype=dtype, progress=progress)
    out.load_s = first.load_s if loaded_now else 0.0
    out.modes, out.load_log, out.load_memory = first.modes, first.load_log, first.load_memory
    return out


def vlm_family(family_module, folder, *, device: str, dtype: str, modes=None):
    """``family_module.load(folder, device=, dtype=)`` under the workstation ``modes`` (loaded on
    the CPU when offloading, then ``harness.workstation.apply_vlm_modes``); while enabled, the
    adapter kept for the same folder, device, dtype and modes. The adapter's ``load_log`` holds
    what the libraries logged while quantizing / hooking."""
    def load():
        from harness.workstation import Modes, apply_vlm_modes

        m = modes or Modes()
        family = family_module.load(folder, device="cpu" if m.offload != "none" else device,
                                    dtype=dtype)
        family.load_log = apply_vlm_modes(family, m, device)
        return family

    if _memo is None:
        return load()
    value, _ = _get(_key("vlm", family_module.load, folder, device, dtype) + (repr(modes),), load)
    return value
