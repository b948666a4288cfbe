"""Builder of the ahead-of-time kernel extension (see ``_fast._aot`` for the design).

Kept out of ``_fast._aot`` so that processes that only load the extension never compile this code.
Run as ``python -m _fast._aot build [ROOT] [--key KEY] [--background]``.
"""
import os
import sys
import threading

from _fast import _aot
from _fast._aot import (
    BUILD_LOG,
    BUILDING,
    FAILED,
    KERNEL_MODULES,
    LOAD_FAILED,
    MODULE_NAME,
    STALE_BUILD_S,
    _SEAL_MAGIC,
    _SUFFIX,
    _debug,
    _import_kernel_modules,
    _jit_module,
    _load,
    cache_root,
    current_key,
    extension_path,
)

__all__ = ["build", "main"]


def _write_atomic(path, text):
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# on the JIT path of a process that did not find a usable extension


def _on_load_failure(root, key, kdir, path, st, exc):
    """Drop a file that does not load and rebuild once; a rebuilt file that fails too marks the key FAILED."""
    _debug("cached AOT kernels %s failed to load, using numba JIT: %r", path, exc)
    _aot._status.update(mode="jit", reason=f"load failed: {exc!r}")
    marker = os.path.join(kdir, LOAD_FAILED)
    try:
        marker_mtime = os.stat(marker).st_mtime_ns
    except OSError:
        marker_mtime = None
    if marker_mtime is not None:
        if st.st_mtime_ns >= marker_mtime:  # the file landed after an earlier failure: the rebuild fails too
            _write_atomic(os.path.join(kdir, FAILED), f"extension fails to load after a rebuild: {exc!r}\n")
        return  # else another process saw the same bad file first and has started the rebuild
    _write_atomic(marker, f"{exc!r}\n")
    try:
        now = os.stat(path)
        if (now.st_ino, now.st_dev, now.st_mtime_ns) == (st.st_ino, st.st_dev, st.st_mtime_ns):
            os.unlink(path)
    except OSError:
        pass
    _start_build(root, key, kdir)


def _claim_build(kdir):
    """True if no other build was started here in the last STALE_BUILD_S seconds (a throttle, not a lock)."""
    import time

    stamp = os.path.join(kdir, BUILDING)
    try:
        fd = os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        try:
            if time.time() - os.stat(stamp).st_mtime < STALE_BUILD_S:
                return False
        except OSError:
            pass
        _write_atomic(stamp, f"{os.getpid()}\n")
        return True
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    return True


def _start_build(root, key, kdir):
    """Launch the detached builder unless one is running; returns whether one was started."""
    exe = os.path.basename(sys.executable or "").lower()
    if not exe.startswith(("python", "pypy")):  # embedded interpreters (uwsgi, ...): no builder to start
        _debug("sys.executable %r is not a Python interpreter: not building AOT kernels", sys.executable)
        return False
    os.makedirs(kdir, exist_ok=True)
    if not _claim_build(kdir):
        return False
    import subprocess

    parent = os.path.dirname(_aot._HERE)  # the folder holding this _fast package
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (parent, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "_fast._aot", "build", root, "--key", key, "--background"]
    with open(os.path.join(kdir, BUILD_LOG), "ab") as log:
        proc = subprocess.Popen(cmd, cwd=parent, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    _aot._builders.append(proc)
    _debug("started AOT kernel build (pid %d) into %s", proc.pid, kdir)
    return True


def _seal(path):
    """Append the seal (size + sha256 of the file): loaders ignore trailing bytes, readers check them."""
    import hashlib

    with open(path, "rb") as f:
        data = f.read()
    with open(path, "ab") as f:
        f.write(_SEAL_MAGIC + len(data).to_bytes(8, "little") + hashlib.sha256(data).digest())
        f.flush()
        os.fsync(f.fileno())


def build(root=None, expected_key=None):
    """Compile, verify and install the extension for the current key under ``root``; returns its path.

    Synchronous; imports numba. On failure writes the key's ``FAILED`` marker and re-raises.
    """
    import shutil
    import tempfile
    import traceback

    root = cache_root() if root is None else os.path.abspath(root)
    _import_kernel_modules()
    key = current_key()
    kdir = os.path.join(root, key)
    if expected_key is not None and expected_key != key:
        bad = os.path.join(root, expected_key)
        os.makedirs(bad, exist_ok=True)
        _write_atomic(os.path.join(bad, FAILED),
                      f"builder computed key {key}, expected {expected_key}: its environment differs\n")
        _remove(os.path.join(bad, BUILDING))
        raise RuntimeError(f"key mismatch: builder {key}, launcher {expected_key}")
    os.makedirs(kdir, exist_ok=True)
    final = os.path.join(kdir, MODULE_NAME + _SUFFIX)
    tmpdir = tempfile.mkdtemp(prefix=".build-", dir=kdir)
    try:
        CC = _import_pycc()
        jitted = {module: _jit_module(module) for module in KERNEL_MODULES}
        cc = CC(MODULE_NAME, source_module=__name__)
        cc.output_dir = tmpdir
        cc.output_file = MODULE_NAME + _SUFFIX
        for entry, (module, name, signature) in sorted(_aot._EXPORTS.items()):
            cc.export(entry, signature)(_aot._REGISTRY[module][name][0])
        cc.compile()
        built = os.path.join(tmpdir, cc.output_file)
        _seal(built)
        ext = _load(built)  # the exact bytes that are installed below
        _verify(ext, jitted)
        os.replace(built, final)
        _remove(os.path.join(kdir, LOAD_FAILED))
        return final
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt):
            _write_atomic(os.path.join(kdir, FAILED), traceback.format_exc() + f"{type(exc).__name__}: {exc}\n")
        raise
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        _remove(os.path.join(kdir, BUILDING))


def _remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _import_pycc():
    import warnings

    try:
        from numba.core.errors import NumbaPendingDeprecationWarning as category
    except ImportError:  # pragma: no cover - older/newer numba layouts
        category = Warning
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The 'pycc' module is pending deprecation", category=category)
        from numba.pycc import CC
    return CC


def _samples():
    """{entry: [argument tuples]} covering every code path of the exported kernels (small sizes)."""
    import math

    import numpy as np

    rng = np.random.default_rng(20240601)

    def words(*shape):
        return rng.integers(0, 2**64, size=shape, dtype=np.uint64)

    def f32(n, special=True):
        a = rng.integers(0, 2**32, size=n, dtype=np.uint32).view(np.float32) if special else rng.standard_normal(
            n).astype(np.float32)
        return np.ascontiguousarray(a)

    empty = np.empty(0, np.float32)
    customs = [np.array([1.0, 0.75, 0.5, 0.0], np.float32), np.array([0.9, 1e-8, 2.5, -0.5], np.float32)]
    configs = []  # (n, custom, use_custom, dynamic, a, shift, shift_m1, use_terminal, omt, invert, num_train)
    for n in (1, 2, 7, 28):
        configs.append((n, empty, False, True, math.exp(1.15), 3.0, 2.0, False, 1.0, False, 1000.0))
        configs.append((n, empty, False, False, 0.0, 3.0, 2.0, True, 1.0 - 0.02, True, 1000.0))
        configs.append((n, empty, False, True, 0.7, 1.0, 0.0, True, 1.0 - 0.25, False, 1.0))
    for c in customs:
        configs.append((4, c, True, True, math.exp(0.5), 1.0, 0.0, True, 0.98, False, 1000.0))
        configs.append((4, c, True, False, 0.0, 0.5, -0.5, False, 1.0, True, 7.0))
    samples = {
        "pack1": [(words(2, 3, 4, 5), np.zeros((2, 10, 6), np.uint64)),
                  (words(1, 1, 2, 1), np.zeros((1, 1, 2), np.uint64))],
        "pack2": [(words(2, 3, 4, 6), np.zeros((2, 6, 12), np.uint64))],
        "unpack1": [(words(2, 10, 6), np.zeros((2, 3, 4, 5), np.uint64))],
        "unpack2": [(words(2, 6, 12), np.zeros((2, 3, 4, 6), np.uint64))],
        "fill_ids_f32": [(np.full((12, 3), np.nan, np.float32), 3, 4)],
        "fill_ids_f64": [(np.full((12, 3), np.nan, np.float64), 4, 3)],
        "schedule": [c + (np.zeros(c[0], np.float32), np.zeros(c[0] + 1, np.float32)) for c in configs],
        "shifted": [c[:9] + (np.zeros(c[0], np.float32),) for c in configs],
        "finish_into": [(f32(n), n, inv, nt, np.zeros(n, np.float32), np.zeros(n + 1, np.float32))
                        for n in (1, 5) for inv in (False, True) for nt in (1000.0, 3.0)],
        "euler": [(f32(n), f32(n), s, s_next, np.zeros(n, np.float32))
                  for n in (0, 1, 33) for s, s_next in ((1.0, 0.9642), (0.1, 0.0), (0.3, 0.7))],
    }
    return samples


def _verify(ext, jitted):
    """Every entry of ``ext`` gives the JIT dispatcher's bits on ``_samples()``; raises AssertionError if not."""
    import numpy as np

    samples = _samples()
    missing = sorted(set(_aot._EXPORTS) - set(samples))
    if missing:
        raise AssertionError(f"no verification samples for {missing}")

    def copy(args):
        return tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args)

    def same(a, b):
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                    and a.shape == b.shape and a.tobytes() == b.tobytes())
        return a is None and b is None

    for entry, (module, name, _) in sorted(_aot._EXPORTS.items()):
        for i, args in enumerate(samples[entry]):
            a_args, j_args = copy(args), copy(args)
            a_ret = getattr(ext, entry)(*a_args)
            j_ret = jitted[module][name](*j_args)
            if not same(a_ret, j_ret) or not all(
                same(x, y) for x, y in zip(a_args, j_args) if isinstance(x, np.ndarray)
            ):
                raise AssertionError(f"AOT entry {entry!r} differs from the JIT dispatcher on sample {i}")


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m _fast._aot", description="Build the AOT kernel extension.")
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile into the cache (default: the configured cache root)")
    b.add_argument("root", nargs="?", default=None)
    b.add_argument("--key", default=None, help="the key the launcher computed (mismatch: mark it FAILED)")
    b.add_argument("--background", action="store_true", help="started at first use: lower the priority")
    sub.add_parser("where", help="print the extension path for the current key")
    args = ap.parse_args(argv)
    if args.command == "where":
        _import_kernel_modules()
        print(extension_path())
        return 0
    import time

    if args.background and hasattr(os, "nice"):
        try:
            os.nice(10)  # a background job: leave the CPU to the process that started it
        except OSError:
            pass
    t0 = time.time()
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] pid {os.getpid()}: building {MODULE_NAME}", flush=True)
    try:
        path = build(args.root, expected_key=args.key)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        print(f"build failed after {time.time() - t0:.1f} s: {type(exc).__name__}: {exc}", flush=True)
        return 1
    print(f"built {path} in {time.time() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
