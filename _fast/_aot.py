"""Ahead-of-time compiled FLUX.1 kernels, built at first use and cached per machine.

Why
    The kernels in ``_fast.latents``, ``_fast.ids`` and ``_fast.schedules`` are ``@njit(cache=True)``
    functions. Numba's on-disk cache saves the compiled machine code, but a new process still pays
    numba's own per-process initialisation on the first dispatch (importing numba and llvmlite,
    setting up the LLVM target, the type system and the cache index): about 150-300 ms, most of it
    outside the kernels. Here the SAME Python functions are compiled once with ``numba.pycc`` into a
    plain CPython extension module; a process that finds it imports that extension (a few ms) and never
    imports numba. Nothing is compiled at install time (``setup.py`` only builds the Cython core).

How
    Each kernel module marks its jitted functions with :func:`kernel` (numba options as for ``njit``;
    ``exports`` maps an extension entry name to the exact numba signature the module's validating
    wrapper passes). The marked functions stay plain Python functions until a backend is needed.
    Wrappers call ``backend(entry)(...)``; on the first call in a process the resolver decides once:

    * the cached extension for the current key exists: load it with ``ExtensionFileLoader`` and use
      its functions (numba is not imported);
    * otherwise: the JIT path, exactly as before: import numba, replace the module's marked functions
      by ``njit(**options)`` dispatchers (so jitted callees resolve as before) and use those; and
      start ``python -m _fast._aot build <cache root> --key <key> --background`` as a detached
      process (new session, ``nice`` 10, output appended to ``build.log`` in the key folder). Later
      processes use the extension once it has landed; the current process stays on JIT.

    The builder (``_fast._aot_build``; processes that only load never import it) compiles every
    export with ``numba.pycc.CC`` (generic CPU for the architecture, so the file is portable between
    machines sharing the cache), appends a seal (size and sha256 of the shared object; the dynamic
    loader ignores trailing bytes), loads the sealed file, checks every entry bit for bit against the
    JIT dispatchers on small inputs (divisions by zero, NaN payloads, all schedule options), and only
    then ``os.replace``-s it into place: readers never see a partial file. Readers check the seal
    (about 1 ms) before handing a file to the dynamic loader, since ``dlopen`` of a truncated shared
    object can kill the process with SIGBUS. There are no locks: concurrent builders each work in
    their own temporary folder and the last rename wins (the files are equivalent). A ``building``
    stamp (ignored after 10 minutes) only keeps processes started during a build from launching more.

Where
    ``$HARNESS_FAST_CACHE``, else ``$XDG_CACHE_HOME/harness/fast``, else ``~/.cache/harness/fast``;
    one sub-folder per key: a hash of the kernel sources (``latents.py``, ``ids.py``,
    ``schedules.py``, this file and ``_aot_build.py``), the numba, llvmlite and numpy versions (read
    without importing numba), the extension ABI suffix (Python version and ABI flags) and the
    platform/machine. Old keys are never deleted automatically; removing the folder is always safe.

Switches
    ``HARNESS_FAST_AOT=0`` (or false/no/off): JIT only, no extension is loaded and no build starts.
    ``NUMBA_DISABLE_JIT=1``: pure-Python kernel bodies, as numba defines it (no AOT, no build).
    Other numba debugging switches (e.g. ``NUMBA_BOUNDSCHECK``) only affect the JIT path: combine
    them with ``HARNESS_FAST_AOT=0``.

Fallback
    If ``numba.pycc`` is missing (it is pending deprecation in numba), the compile fails (e.g. no C
    compiler) or the verification fails, the builder writes a ``FAILED`` marker with the reason and
    every process with that key stays on JIT without retrying (logged once per process at DEBUG
    level on the ``_fast._aot`` logger). An extension file that fails to load (corrupt, truncated,
    incompatible) is ignored: the process uses JIT, removes the file and starts one rebuild; if the
    rebuilt file fails to load too, the key is marked ``FAILED``. Any error in this machinery
    (unwritable cache folder, no ``sys.executable``, ...) means JIT, never a failed kernel call.

Trust
    pycc entry points check only that an argument is an ndarray of the right item size; they trust
    rank, dtype and C-contiguity. Only the validating wrappers in the kernel modules call them, with
    exactly the exported signatures.
"""
import os
import sys
import threading
from importlib import machinery, util

__all__ = ["backend", "kernel", "build", "cache_root", "cache_key", "current_key", "extension_path", "status"]

MODULE_NAME = "_harness_fast_aot"
KERNEL_MODULES = ("_fast.latents", "_fast.ids", "_fast.schedules")
FAILED = "FAILED"
LOAD_FAILED = "load-failed"
BUILDING = "building"
BUILD_LOG = "build.log"
STALE_BUILD_S = 600.0
_SUFFIX = machinery.EXTENSION_SUFFIXES[0]
_HERE = os.path.dirname(os.path.abspath(__file__))

# filled by @kernel at import of the kernel modules
_REGISTRY = {}  # module name -> {function name: (python function, njit options)}
_EXPORTS = {}  # entry name -> (module name, function name, numba signature)

# per-process resolution
_lock = threading.RLock()
_backends = {}  # entry name -> callable
_jitted = {}  # module name -> {function name: dispatcher}
_decided = False
_ext = None
_status = {"mode": None, "reason": "not resolved yet"}
_builders = []  # Popen objects of builders started by this process (kept so they are not reported as leaked)


def kernel(exports=None, **njit_options):
    """Mark a kernel body: ``njit(**njit_options)`` on the JIT path, pycc entries ``exports`` {name: signature}.

    Returns the function unchanged (no numba import at module import time).
    """

    def mark(func):
        module = func.__module__
        _REGISTRY.setdefault(module, {})[func.__name__] = (func, dict(njit_options))
        for entry, signature in (exports or {}).items():
            _EXPORTS[entry] = (module, func.__name__, signature)
        return func

    return mark


def backend(entry):
    """The callable behind pycc entry ``entry``: the AOT function when available, else the njit dispatcher."""
    try:
        return _backends[entry]
    except KeyError:
        return _resolve(entry)


def status():
    """How this process resolved its kernels: {'mode': 'aot' | 'jit' | None, 'reason': str}."""
    return dict(_status)


def _resolve(entry):
    global _decided, _ext
    with _lock:
        func = _backends.get(entry)
        if func is not None:
            return func
        if entry not in _EXPORTS:
            raise KeyError(f"unknown _fast kernel entry {entry!r}")
        if not _decided:
            _ext = _load_or_schedule()
            _decided = True
        func = getattr(_ext, entry, None) if _ext is not None else None
        if func is None:
            module, name, _ = _EXPORTS[entry]
            func = _jit_module(module)[name]
        _backends[entry] = func
        return func


def _jit_module(module):
    """njit every marked function of ``module`` and rebind the module globals (jitted callees need them)."""
    with _lock:
        done = _jitted.get(module)
        if done is None:
            from numba import njit

            done = {name: njit(**options)(func) for name, (func, options) in _REGISTRY[module].items()}
            namespace = sys.modules[module].__dict__
            namespace.update(done)
            _jitted[module] = done
        return done


# --------------------------------------------------------------------------------------------------
# cache location and key


def _env_off(name):
    return os.environ.get(name, "").strip().lower() in ("0", "false", "no", "off")


def _numba_jit_disabled():
    value = os.environ.get("NUMBA_DISABLE_JIT")
    if value is None:
        return False
    try:
        return int(value) != 0  # numba reads it with int(); an unparsable value means the default, 0
    except ValueError:
        return False


def aot_enabled():
    """False when ``HARNESS_FAST_AOT=0`` or ``NUMBA_DISABLE_JIT`` is set: JIT path only, no build."""
    return not _env_off("HARNESS_FAST_AOT") and not _numba_jit_disabled()


def cache_root():
    root = os.environ.get("HARNESS_FAST_CACHE")
    if root:
        return os.path.abspath(os.path.expanduser(root))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(base), "harness", "fast")


def _package_version(name):
    """A package's version without importing it (versioneer ``_version.py``), else a hash of the file."""
    import re

    try:
        spec = util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return "absent"
    folder = os.path.dirname(spec.origin)
    for fname in ("_version.py", "version.py", "__init__.py"):
        try:
            with open(os.path.join(folder, fname), "rb") as f:
                text = f.read()
        except OSError:
            continue
        found = re.search(rb"""["']version["']\s*:\s*["']([^"']+)["']""", text) or re.search(
            rb"""^(?:__version__|version_version)\s*=\s*["']([^"']+)["']""", text, re.M
        )
        if found:
            return found.group(1).decode("ascii", "replace")
        import hashlib

        return f"{fname}:{hashlib.sha256(text).hexdigest()[:16]}"
    return "unknown"


def _kernel_sources(folder=_HERE):
    names = [m.rsplit(".", 1)[1] + ".py" for m in KERNEL_MODULES] + ["_aot.py", "_aot_build.py"]
    sources = {}
    for fname in names:
        with open(os.path.join(folder, fname), "rb") as f:
            sources[fname] = f.read()
    return sources


def _platform_tag():
    machine = os.uname().machine if hasattr(os, "uname") else os.environ.get("PROCESSOR_ARCHITECTURE", "")
    return f"{sys.platform}-{machine}-{sys.implementation.cache_tag}"


def key_inputs(folder=_HERE):
    """Everything the key hashes, as a dict (sources as bytes)."""
    import numpy

    return dict(
        sources=_kernel_sources(folder),
        numba_version=_package_version("numba"),
        llvmlite_version=_package_version("llvmlite"),
        numpy_version=numpy.__version__,
        abi_tag=_SUFFIX,
        platform=_platform_tag(),
    )


def cache_key(sources, numba_version, abi_tag, platform, llvmlite_version="", numpy_version=""):
    """Hex key of (kernel sources {file name: bytes}, numba/llvmlite/numpy versions, ABI suffix, platform)."""
    import hashlib

    h = hashlib.sha256(b"harness-fast-aot-1\0")
    for name in sorted(sources):
        data = sources[name]
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    for part in (numba_version, llvmlite_version, numpy_version, abi_tag, platform):
        h.update(b"\0" + str(part).encode())
    return h.hexdigest()[:24]


def current_key(folder=_HERE):
    return cache_key(**key_inputs(folder))


def extension_path(root=None, key=None):
    root = cache_root() if root is None else root
    key = current_key() if key is None else key
    return os.path.join(root, key, MODULE_NAME + _SUFFIX)


# --------------------------------------------------------------------------------------------------
# loading, markers, background build


def _debug(msg, *args):
    import logging

    logging.getLogger(__name__).debug(msg, *args)


_SEAL_MAGIC = b"\0harness-fast-aot-seal\0"
_SEAL_LEN = len(_SEAL_MAGIC) + 8 + 32  # magic, payload size (little endian), sha256 of the payload


def _check_seal(path):
    """Raise ImportError unless ``path`` is a complete sealed file: a truncated shared object can crash
    the dynamic loader (SIGBUS), so nothing unchecked is ever handed to it."""
    import hashlib

    with open(path, "rb") as f:
        data = f.read()
    view = memoryview(data)
    trailer = view[len(data) - _SEAL_LEN:] if len(data) >= _SEAL_LEN else b""
    if bytes(trailer[: len(_SEAL_MAGIC)]) != _SEAL_MAGIC:
        raise ImportError(f"{path}: not a sealed AOT extension (truncated or foreign file)")
    size = int.from_bytes(trailer[len(_SEAL_MAGIC): len(_SEAL_MAGIC) + 8], "little")
    if size != len(data) - _SEAL_LEN or hashlib.sha256(view[:size]).digest() != bytes(trailer[-32:]):
        raise ImportError(f"{path}: AOT extension checksum mismatch")


def _load(path):
    _check_seal(path)
    loader = machinery.ExtensionFileLoader(MODULE_NAME, path)
    spec = util.spec_from_file_location(MODULE_NAME, path, loader=loader)
    module = util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _load_or_schedule():
    """The loaded extension module, or None (JIT) after starting a background build if one is due."""
    if not aot_enabled():
        _status.update(mode="jit", reason="disabled (HARNESS_FAST_AOT=0 or NUMBA_DISABLE_JIT)")
        return None
    try:
        root = cache_root()
        key = current_key()
        kdir = os.path.join(root, key)
        path = os.path.join(kdir, MODULE_NAME + _SUFFIX)
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None:
            try:
                module = _load(path)
            except Exception as exc:  # corrupt / truncated / incompatible file
                from _fast import _aot_build

                _aot_build._on_load_failure(root, key, kdir, path, st, exc)
                return None
            missing = [e for e in _EXPORTS if not hasattr(module, e)]
            if not missing:
                _status.update(mode="aot", reason=path)
                return module
            from _fast import _aot_build

            _aot_build._on_load_failure(root, key, kdir, path, st, ImportError(f"entries missing: {missing}"))
            return None
        failed = os.path.join(kdir, FAILED)
        if os.path.exists(failed):
            try:
                with open(failed) as f:
                    reason = f.read().strip().splitlines()[-1:] or ["?"]
            except OSError:
                reason = ["?"]
            _debug("AOT kernels unavailable for key %s (%s), using numba JIT: %s", key, failed, reason[0])
            _status.update(mode="jit", reason=f"build failed: {reason[0]}")
            return None
        from _fast import _aot_build

        started = _aot_build._start_build(root, key, kdir)
        _status.update(mode="jit", reason="build started" if started else "build in progress")
    except Exception as exc:  # the cache machinery never breaks a kernel call
        _debug("AOT cache unusable, using numba JIT: %r", exc)
        _status.update(mode="jit", reason=f"cache error: {exc!r}")
    return None


# --------------------------------------------------------------------------------------------------
# building (the code lives in _fast._aot_build, so that processes that only load never compile it)


def _import_kernel_modules():
    import importlib

    for module in KERNEL_MODULES:
        importlib.import_module(module)


def build(root=None, expected_key=None):
    """Compile, verify and install the extension for the current key under ``root``; returns its path.

    Synchronous; imports numba. On failure writes the key's ``FAILED`` marker and re-raises.
    """
    from _fast import _aot_build

    return _aot_build.build(root, expected_key)


if __name__ == "__main__":
    from _fast import _aot_build

    sys.exit(_aot_build.main())
