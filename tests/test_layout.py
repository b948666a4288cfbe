"""The package layout the README describes: one package per model family under ``models/``, a
shared ``harness/`` that never imports a family, and a registry contract every family meets."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from models.registry import FAMILY_MODULES

ROOT = Path(__file__).resolve().parents[1]
#: The command-line entry asks the registry for a family; nothing else in harness/ may.
CLI_MODULES = {"harness/generate.py", "harness/vlm_run.py"}


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every import in a file, function-local ones included;
    a string handed to ``import_module`` / ``__import__`` counts as an import too."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the file's package
                parts = list(path.relative_to(ROOT).with_suffix("").parts)
                base = parts[:len(parts) - node.level]
                module = ".".join(base + ([module] if module else []))
            out.append((node.lineno, module, [a.name for a in node.names]))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__")):
            out.append((node.lineno, node.args[0].value, []))
    return out


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_harness_never_imports_a_family():
    bad = []
    for path in _files("harness"):
        rel = path.relative_to(ROOT).as_posix()
        if rel in CLI_MODULES:
            continue
        bad += [f"{rel}:{line} imports {mod}" for line, mod, _ in _imports(path)
                if mod == "models" or mod.startswith("models.")]
    assert not bad, "harness/ must not import models/:\n" + "\n".join(bad)


def test_cli_asks_only_the_registry():
    for rel in sorted(CLI_MODULES):
        mods = {mod for _, mod, _ in _imports(ROOT / rel) if mod.split(".")[0] == "models"}
        assert mods <= {"models.registry"}, (rel, mods)


def test_families_use_only_public_harness_names():
    bad = []
    for path in _files("models"):
        for line, mod, names in _imports(path):
            if mod.split(".")[0] != "harness":
                continue
            private = [n for n in names if n.startswith("_")]
            if private or any(part.startswith("_") for part in mod.split(".")):
                bad.append(f"{path.relative_to(ROOT)}:{line} from {mod} import {names}")
    assert not bad, "models/ may use only public harness names:\n" + "\n".join(bad)


def test_fast_imports_neither_torch_nor_models_nor_harness():
    for path in _files("_fast"):
        roots = {mod.split(".")[0] for _, mod, _ in _imports(path)}
        assert not roots & {"torch", "models", "harness", "diffusers", "transformers"}, path


def test_one_package_per_registered_family():
    on_disk = sorted(p.parent.name for p in (ROOT / "models").glob("*/__init__.py"))
    assert on_disk == sorted(FAMILY_MODULES)
    assert not [p.name for p in (ROOT / "models").glob("*.py")
                if p.stem in FAMILY_MODULES], "a family must be a package, not a module"


@pytest.mark.parametrize("name", FAMILY_MODULES)
def test_family_exports_the_contract(name):
    import importlib

    from harness.parity.pixel import ReferenceRunner
    from harness.pipelines.denoise import DenoiserBase

    fam = importlib.import_module(f"models.{name}")
    assert fam.FAMILY == name and fam.MODALITY in ("image", "text")
    assert fam.TINY_NAMES and all(n.startswith("tiny-") for n in fam.TINY_NAMES)
    assert callable(fam.tiny_path) and callable(fam.matches)
    if fam.MODALITY == "image":
        assert callable(fam.rules)
        assert issubclass(fam.Denoiser, DenoiserBase) and fam.Denoiser is not DenoiserBase
        assert fam.Denoiser.load_components is not DenoiserBase.load_components
        assert issubclass(fam.ReferenceRunner, ReferenceRunner)
        assert fam.ReferenceRunner.reference_pipeline is not None
    else:
        assert callable(fam.load)


def test_resolving_a_family_imports_no_heavy_module():
    """The registry imports every family to match a folder: that must stay cheap."""
    code = ("import sys\n"
            "from models.registry import FAMILY_MODULES, family_module, tiny_names\n"
            "mods = [family_module(f) for f in FAMILY_MODULES]\n"
            "assert len(mods) == len(FAMILY_MODULES) >= 8 and len(tiny_names()) >= 11\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'diffusers', 'transformers'))\n"
            "print(heavy[:5])\n"
            "sys.exit(1 if heavy else 0)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_tokenizer_wants_a_resolved_model():
    from harness.tokenizers import PixelGenerationTokenizer

    with pytest.raises(TypeError, match=r"models.resolve\('tiny-flux1'\)"):
        PixelGenerationTokenizer("tiny-flux1")
