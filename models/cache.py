"""Where tiny models are built: a cache folder keyed by a hash of the recipe, written atomically."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["cache_root", "recipe_hash", "ensure_built"]

ENV_VAR = "HARNESS_MODEL_CACHE"


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """``override`` > ``$HARNESS_MODEL_CACHE`` > ``$XDG_CACHE_HOME/harness/models`` > ``~/.cache``."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "harness" / "models"


def recipe_hash(recipe: dict) -> str:
    """Stable short hash of a JSON-serialisable recipe (configs, seeds, versions that matter)."""
    blob = json.dumps(recipe, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def ensure_built(name: str, recipe: dict, build: Callable[[Path], None],
                 root: str | os.PathLike | None = None) -> Path:
    """Return the folder of tiny model ``name``, building it first if absent.

    ``build(tmp_dir)`` writes the model into a temporary folder beside the target, which is then
    renamed into place, so an interrupted build never leaves a half model behind. Concurrent
    builders race benignly: the first rename wins and the loser's folder is removed.
    """
    root_dir = cache_root(root)
    target = root_dir / f"{name}-{recipe_hash(recipe)}"
    if (target / ".complete").exists():
        return target
    root_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root_dir))
    try:
        build(tmp)
        (tmp / "recipe.json").write_text(json.dumps(recipe, sort_keys=True, indent=1, default=str))
        (tmp / ".complete").write_text("ok\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / ".complete").exists():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
