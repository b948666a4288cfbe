"""The ahead-of-time FLUX.1 kernels (_fast._aot): numba-free fast path, bitwise equal to the JIT path.

The extension is built once per module, synchronously, into a temporary cache; measured processes are
fresh subprocesses pointed at it with HARNESS_FAST_CACHE (this process's own cache choice is left alone).
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _fast import _aot, _aot_build

ROOT = Path(__file__).resolve().parent.parent

# run in fresh processes: import, call every kernel on a spread of inputs, report digests of the bits
PROBE = r'''
import hashlib, json, math, sys, zlib
import numpy as np
import _fast.latents, _fast.ids, _fast.schedules
from _fast import _aot
numba_after_import = "numba" in sys.modules
from _fast import (pack_latents, unpack_latents, latent_image_ids, flow_match_sigmas, calculate_shift,
                   empirical_mu, trim_for_strength, euler_step)
small = "small" in sys.argv[1:]
cases = {}

def rec(name, *values):
    h = hashlib.sha256()
    for v in values:
        a = np.asarray(v)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    assert name not in cases, name
    cases[name] = h.hexdigest()

def rng(tag):  # inputs depend on the case only, not on which cases ran before ("small" runs a subset)
    return np.random.default_rng(zlib.crc32(tag.encode()))

def any_bits(shape, dt, tag):
    """Arbitrary bit patterns: NaN payloads, infinities, subnormals, -0.0."""
    if np.dtype(dt) == np.float32:
        return np.asarray(rng(tag).integers(0, 2**32, size=shape, dtype=np.uint32)).view(np.float32)
    return np.asarray(rng(tag).integers(0, 2**64, size=shape, dtype=np.uint64)).view(np.float64)

shapes = [(1, 16, 8, 6), (2, 3, 4, 2), (1, 1, 2, 2)] + ([] if small else [(1, 16, 128, 128)])
for dt in (np.float32, np.float64):
    for shape in shapes:
        x = any_bits(shape, dt, f"latents {np.dtype(dt)} {shape}")
        t = pack_latents(x)
        rec(f"pack {np.dtype(dt)} {shape}", t)
        rec(f"unpack {np.dtype(dt)} {shape}", unpack_latents(t, shape[2], shape[3]))
    x = any_bits((2, 4, 6, 8), dt, f"strided {np.dtype(dt)}")[:, :, ::-1, ::2]  # non-contiguous input
    rec(f"pack strided {np.dtype(dt)}", pack_latents(x))
    buf = np.zeros(x.size * x.itemsize + 8, np.uint8)[4:4 + x.size * x.itemsize].view(x.dtype).reshape(x.shape)
    buf[...] = x  # 4-byte aligned only: the words are copied
    rec(f"pack unaligned {np.dtype(dt)}", pack_latents(buf))
    out = np.empty((2, 6, 16), dt)
    pack_latents(x, out=out)
    rec(f"pack out {np.dtype(dt)}", out)

for h2, w2 in [(1, 1), (3, 5), (7, 2)] + ([] if small else [(64, 64), (128, 96)]):
    for dt in (np.float32, np.float64):
        rec(f"ids {h2}x{w2} {np.dtype(dt)}", latent_image_ids(h2, w2, dt))

mu = calculate_shift(4096)
configs = [
    dict(), dict(shift=3.0), dict(use_dynamic_shifting=True, mu=mu, shift=3.0),
    dict(use_dynamic_shifting=True, mu=0.7, time_shift_type="linear"),
    dict(use_dynamic_shifting=True, mu=calculate_shift(4096, 256, 8192, 0.5, 0.9), shift_terminal=0.02),
    dict(shift=3.0, invert_sigmas=True, num_train_timesteps=7), dict(shift=0.5, shift_terminal=0.25),
    dict(use_karras_sigmas=True, shift=3.0), dict(use_exponential_sigmas=True, use_dynamic_shifting=True, mu=mu),
]
for n in (1, 2, 4, 28) + (() if small else (50, 1000)):
    for i, cfg in enumerate(configs):
        rec(f"sigmas n={n} cfg={i}", *flow_match_sigmas(n, **cfg))
customs = [[1.0, 0.75, 0.5, 0.0], [0.9, 1e-8, 2.5, -0.5], [1.0], [0.3, 0.2, 0.1]]
for j, c in enumerate(customs):
    for i, cfg in enumerate(configs[:7]):
        rec(f"custom sigmas {j} cfg={i}", *flow_match_sigmas(None, sigmas=c, **cfg))
for seq in (256, 1024, 4096, 8192):
    cases[f"calculate_shift {seq}"] = calculate_shift(seq).hex()
    for steps in (4, 28, 50):
        cases[f"empirical_mu {seq} {steps}"] = empirical_mu(seq, steps).hex()
ts, sg = flow_match_sigmas(28, shift=3.0)
for strength in (0.0, 0.3, 0.6, 1.0):
    try:
        t2, s2, start = trim_for_strength(ts, sg, 28, strength)
        rec(f"trim {strength}", t2, s2, np.int64(start))
    except ValueError as exc:
        cases[f"trim {strength}"] = str(exc)

for shape in [(3,), (0,), (), (2, 5, 7)] + ([] if small else [(1, 4096, 64)]):
    s = any_bits(shape, np.float32, f"euler s {shape}")
    v = np.asarray(rng(f"euler v {shape}").standard_normal(shape)).astype(np.float32)
    for k, (a, b) in enumerate(zip(sg[:-1][:3], sg[1:][:3])):
        rec(f"euler {shape} {k}", euler_step(s, v, float(a), float(b)))
s = any_bits((6, 8), np.float32, "euler misc")
rec("euler strided", euler_step(s[:, ::2], s[:, 1::2], 1.0, 0.5))
raw = np.frombuffer(b"\0" + s.tobytes(), np.uint8)[1:].view(np.float32)  # unaligned, read-only
rec("euler unaligned", euler_step(raw, raw, 0.75, 0.25))
inplace = s.copy()
euler_step(inplace, s, 1.0, 0.0, out=inplace)
rec("euler in place", inplace)

print(json.dumps(dict(status=_aot.status(), numba_after_import=numba_after_import,
                      numba_after_calls="numba" in sys.modules, builder_imported="_fast._aot_build" in sys.modules,
                      pack1_type=type(_fast.latents._pack1).__name__, cases=cases)))
'''


def run_probe(env_extra, *args, timeout=300):
    env = dict(os.environ)
    for name in ("HARNESS_FAST_AOT", "NUMBA_DISABLE_JIT", "HARNESS_FAST_CACHE"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(cache root, extension path): the extension built synchronously into a fresh cache."""
    root = tmp_path_factory.mktemp("fast-aot-cache")
    path = _aot.build(str(root))
    assert Path(path).is_file()
    assert path == _aot.extension_path(str(root))
    return root, Path(path)


@pytest.fixture(scope="module")
def jit_reference():
    """Probe results on the JIT path (the reference the AOT path must reproduce bit for bit)."""
    return run_probe({"HARNESS_FAST_AOT": "0"})


def leftovers(kdir):
    return sorted(p.name for p in Path(kdir).iterdir()) if Path(kdir).exists() else []


def test_aot_path_never_imports_numba_and_matches_jit_bitwise(built, jit_reference):
    root, path = built
    aot = run_probe({"HARNESS_FAST_CACHE": str(root)})
    assert aot["status"]["mode"] == "aot", aot["status"]
    assert not aot["numba_after_import"] and not aot["numba_after_calls"] and not aot["builder_imported"]
    assert aot["pack1_type"] == "function"  # the marked bodies stay plain Python functions
    assert jit_reference["status"]["mode"] == "jit"
    assert jit_reference["numba_after_calls"] and jit_reference["pack1_type"] == "CPUDispatcher"
    assert not jit_reference["numba_after_import"]  # importing the kernel modules never imports numba
    assert aot["cases"].keys() == jit_reference["cases"].keys()
    differ = [k for k in aot["cases"] if aot["cases"][k] != jit_reference["cases"][k]]
    assert not differ, differ
    assert leftovers(path.parent) == [path.name]  # no build was started, nothing else written


def test_switches_never_use_aot(built, jit_reference, tmp_path):
    root, path = built
    off = run_probe({"HARNESS_FAST_CACHE": str(root), "HARNESS_FAST_AOT": "0"}, "small")
    assert off["status"]["mode"] == "jit" and "disabled" in off["status"]["reason"]
    assert off["numba_after_calls"] and off["pack1_type"] == "CPUDispatcher"
    nojit = run_probe({"HARNESS_FAST_CACHE": str(root), "NUMBA_DISABLE_JIT": "1"}, "small")
    assert nojit["status"]["mode"] == "jit" and "disabled" in nojit["status"]["reason"]
    assert nojit["pack1_type"] == "function"  # numba hands back the Python body
    for probe in (off, nojit):
        for name, digest in probe["cases"].items():
            assert digest == jit_reference["cases"][name], name
    # with a missing extension the switches do not start a build either
    empty = tmp_path / "empty-cache"
    for extra in ({"HARNESS_FAST_AOT": "0"}, {"NUMBA_DISABLE_JIT": "1"}):
        r = run_probe({"HARNESS_FAST_CACHE": str(empty), **extra}, "small")
        assert r["status"]["mode"] == "jit"
    assert not empty.exists()
    assert leftovers(path.parent) == [path.name]


def test_existing_kernel_tests_pass_on_aot(built):
    """The differential tests against diffusers, re-run in a process that uses the AOT extension."""
    root, path = built
    env = dict(os.environ, HARNESS_FAST_CACHE=str(root), FAST_TEST_MAX_EXAMPLES="5")
    env.pop("HARNESS_FAST_AOT", None)
    env.pop("NUMBA_DISABLE_JIT", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow",
           "tests/test_fast_latents.py", "tests/test_fast_schedules.py"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0 and " passed" in proc.stdout and "failed" not in proc.stdout, tail
    assert leftovers(path.parent) == [path.name]  # it loaded (a load failure would leave markers)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "sealed-garbage"])
def test_corrupt_extension_falls_back_to_jit(built, jit_reference, tmp_path, damage):
    root, path = built
    key = path.parent.name
    kdir = tmp_path / "cache" / key
    kdir.mkdir(parents=True)
    data = path.read_bytes()
    bad = {"truncated": data[: len(data) // 3], "garbage": b"\x7fELF" + os.urandom(4096), "empty": b"",
           "sealed-garbage": b"\x7fELF" + os.urandom(4096)}[damage]
    (kdir / path.name).write_bytes(bad)
    if damage == "sealed-garbage":  # passes the seal check: the dynamic loader itself must reject it
        _aot_build._seal(str(kdir / path.name))
    (kdir / _aot.BUILDING).write_text("test: pretend a build is running\n")  # no real rebuild in the background
    r = run_probe({"HARNESS_FAST_CACHE": str(tmp_path / "cache")}, "small")
    assert r["status"]["mode"] == "jit" and "load failed" in r["status"]["reason"], r["status"]
    for name, digest in r["cases"].items():
        assert digest == jit_reference["cases"][name], name
    # the bad file is gone, one rebuild is allowed (it was throttled by the running "build")
    assert leftovers(kdir) == sorted([_aot.BUILDING, _aot.LOAD_FAILED])


def test_rebuilt_extension_failing_again_marks_key_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_FAST_CACHE", str(tmp_path))
    monkeypatch.delenv("HARNESS_FAST_AOT", raising=False)
    monkeypatch.delenv("NUMBA_DISABLE_JIT", raising=False)
    started = []
    monkeypatch.setattr(_aot_build, "_start_build", lambda root, key, kdir: started.append(key) or True)
    monkeypatch.setattr(_aot, "_status", dict(_aot._status))
    path = Path(_aot.extension_path())
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an extension")
    assert _aot._load_or_schedule() is None
    assert started == [path.parent.name] and not path.exists()
    assert (path.parent / _aot.LOAD_FAILED).exists()
    time.sleep(0.01)
    path.write_bytes(b"still not an extension")  # "rebuilt" after the first failure
    assert _aot._load_or_schedule() is None
    assert (path.parent / _aot.FAILED).exists() and len(started) == 1
    # from now on: JIT, no more builds, and the reason is reported
    path.unlink()
    assert _aot._load_or_schedule() is None
    assert len(started) == 1 and _aot.status()["reason"].startswith("build failed")


def test_missing_extension_starts_one_detached_build(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_FAST_CACHE", str(tmp_path))
    monkeypatch.delenv("HARNESS_FAST_AOT", raising=False)
    monkeypatch.delenv("NUMBA_DISABLE_JIT", raising=False)
    monkeypatch.setattr(_aot, "_status", dict(_aot._status))
    monkeypatch.setattr(_aot, "_builders", [])
    launched = []

    class FakePopen:
        pid = 4242

        def __init__(self, cmd, **kw):
            launched.append((cmd, kw))

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    key = _aot.current_key()
    assert _aot._load_or_schedule() is None
    assert _aot.status() == {"mode": "jit", "reason": "build started"}
    (cmd, kw), = launched
    assert cmd == [sys.executable, "-m", "_fast._aot", "build", str(tmp_path), "--key", key, "--background"]
    assert kw["start_new_session"] and kw["stdin"] == subprocess.DEVNULL and kw["stderr"] == subprocess.STDOUT
    assert kw["env"]["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    assert (tmp_path / key / _aot.BUILD_LOG).exists()
    # a second process while the build runs: throttled; a stale stamp (dead builder) allows a new one
    assert _aot._load_or_schedule() is None and len(launched) == 1
    assert _aot.status()["reason"] == "build in progress"
    stamp = tmp_path / key / _aot.BUILDING
    old = time.time() - _aot.STALE_BUILD_S - 1
    os.utime(stamp, (old, old))
    assert _aot._load_or_schedule() is None and len(launched) == 2


def test_build_failure_writes_marker(tmp_path, monkeypatch):
    def no_pycc():
        raise ImportError("No module named 'numba.pycc'")

    monkeypatch.setattr(_aot_build, "_import_pycc", no_pycc)
    with pytest.raises(ImportError):
        _aot.build(str(tmp_path))
    kdir = tmp_path / _aot.current_key()
    assert "numba.pycc" in (kdir / _aot.FAILED).read_text()
    assert leftovers(kdir) == [_aot.FAILED]  # temp folder and stamp cleaned up


def test_key_mismatch_marks_launcher_key(tmp_path):
    with pytest.raises(RuntimeError, match="key mismatch"):
        _aot.build(str(tmp_path), expected_key="0" * 24)
    assert leftovers(tmp_path / ("0" * 24)) == [_aot.FAILED]
    assert not (tmp_path / _aot.current_key()).exists()


def test_verification_catches_a_wrong_entry(built):
    import types

    import numpy as np

    jitted = {m: _aot._jit_module(m) for m in _aot.KERNEL_MODULES}
    entries = {e: jitted[m][n] for e, (m, n, _) in _aot._EXPORTS.items()}
    _aot_build._verify(types.SimpleNamespace(**entries), jitted)  # the dispatchers agree with themselves

    def euler_fma(s, v, sigma, sigma_next, out):  # fused multiply-add: one rounding instead of two
        dt = np.float32(sigma_next) - np.float32(sigma)
        with np.errstate(all="ignore"):
            out[:] = (s.astype(np.float64) + np.float64(dt) * v.astype(np.float64)).astype(np.float32)
        return out

    with pytest.raises(AssertionError, match="euler"):
        _aot_build._verify(types.SimpleNamespace(**dict(entries, euler=euler_fma)), jitted)


def test_cache_key_changes_with_every_input(tmp_path):
    inputs = _aot.key_inputs()
    assert set(inputs["sources"]) == {"latents.py", "ids.py", "schedules.py", "_aot.py", "_aot_build.py"}
    base = _aot.cache_key(**inputs)
    assert base == _aot.cache_key(**inputs) == _aot.current_key()
    for fname, src in inputs["sources"].items():
        changed = dict(inputs, sources=dict(inputs["sources"], **{fname: src + b"\n# edited\n"}))
        assert _aot.cache_key(**changed) != base, fname
    for field in ("numba_version", "llvmlite_version", "numpy_version", "abi_tag", "platform"):
        assert _aot.cache_key(**dict(inputs, **{field: inputs[field] + "x"})) != base, field
    # a copy of the package with one kernel edited has another key (and the same key unedited)
    copy = tmp_path / "_fast"
    copy.mkdir()
    for fname in inputs["sources"]:
        shutil.copy(Path(_aot.__file__).parent / fname, copy / fname)
    assert _aot.current_key(str(copy)) == base
    text = (copy / "schedules.py").read_text().replace("np.float32(1.0)", "np.float32(1)", 1)
    (copy / "schedules.py").write_text(text)
    assert _aot.current_key(str(copy)) != base
    assert inputs["numba_version"] == __import__("numba").__version__


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_FAST_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert _aot.cache_root() == str(tmp_path / "a")
    monkeypatch.delenv("HARNESS_FAST_CACHE")
    assert _aot.cache_root() == str(tmp_path / "x" / "harness" / "fast")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _aot.cache_root() == str(tmp_path / "home" / ".cache" / "harness" / "fast")
