"""What a second process pays before the _fast kernels run: import time and first-call time, per kernel.

Usage:  PYTHONPATH=. python bench/first_call_cost.py [--variant NAME ...] [--runs 2] [--overlap-ms 400]

For each variant the script first warms the caches (one throw-away process; for ``shipped`` it also waits
for the background AOT build to land), then spawns ``--runs`` fresh processes that each time, separately,
``import numpy`` (reported, not counted), the imports the kernels need, and the first and second call of
every kernel with FLUX.1 1024² shapes. Variants (all call the real kernel bodies of ``_fast``):

  shipped     what ships: ``from _fast import ...`` with the ahead-of-time extension that ``_fast._aot``
              builds in the background at first use (cache: ``--fast-cache``, by default a folder in the
              temp dir, passed as HARNESS_FAST_CACHE); the measured processes never import numba.
  baseline    the numba JIT path (``HARNESS_FAST_AOT=0``): lazy ``@njit(cache=True)`` dispatchers.
  eager       JIT path with the same Python functions re-wrapped as ``@njit(<explicit signature>, cache=True)``:
              numba loads the cached machine code when the decorator runs, i.e. inside the import.
  background  baseline, plus a daemon thread started right after the import that makes one tiny call
              per kernel, while the main thread does ``--overlap-ms`` of GIL-free "other start-up work"
              (a sleep standing in for loading weights / tokenizers; ``--overlap-import torch`` makes it a
              GIL-holding import instead) before its first calls.
  aot         the prototype of ``shipped``: the float32 kernel bodies compiled with ``numba.pycc`` into a
              temp dir and called through a bare shim without the wrappers' validation.

Each run prints ``backend`` (``aot`` or ``jit``: how ``_fast._aot`` resolved the kernels) and a digest of
all outputs, which must be the same for every variant. Note that with PYTHONDONTWRITEBYTECODE set (as in
some sandboxes) every process also compiles the ``_fast`` sources; ``--env PYTHONDONTWRITEBYTECODE=``
measures with bytecode caching as on a normal install.

Times are wall-clock milliseconds (``time.perf_counter``); the machine's other load shows up in them,
so compare medians of several runs.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ["pack_latents", "unpack_latents", "latent_image_ids", "flow_match_sigmas", "calculate_shift",
           "empirical_mu", "trim_for_strength", "euler_step"]

# the jitted functions behind the public kernels, with the exact argument types the wrappers pass
SIGNATURES = {
    ("latents", "_pack1"): "uint64[:,:,::1](uint64[:,:,:,::1], uint64[:,:,::1])",
    ("latents", "_unpack1"): "uint64[:,:,:,::1](uint64[:,:,::1], uint64[:,:,:,::1])",
    ("ids", "_fill_ids"): "float32[:,::1](float32[:,::1], int64, int64)",
    ("schedules", "_schedule"): (
        "none(int64, float32[::1], boolean, boolean, float64, float64, float64, boolean, float64, boolean, float64,"
        " float32[::1], float32[::1])"
    ),
    ("schedules", "_euler"): "float32[::1](float32[::1], float32[::1], float64, float64, float32[::1])",
}

# ---------------------------------------------------------------------------------------------------
# code run in the measured processes (kept as text: each process must start cold)

COMMON = """
import json, sys, time
T = time.perf_counter
t0 = T(); import numpy as np; t_numpy = T() - t0
"""

CALLS = """
import hashlib
rng = np.random.default_rng(0)
x = rng.standard_normal((1, 16, 128, 128)).astype(np.float32)
tok = rng.standard_normal((1, 4096, 64)).astype(np.float32)
first, second, digest = {}, {}, hashlib.sha256()
def timed(name, f, *a, **k):
    for d in (first, second):
        s = T(); r = f(*a, **k); d[name] = (T() - s) * 1e3
    for part in (r if isinstance(r, tuple) else (r,)):
        digest.update(np.asarray(part).tobytes())
timed("pack_latents", pack_latents, x)
timed("unpack_latents", unpack_latents, tok, 128, 128)
timed("latent_image_ids", latent_image_ids, 64, 64)
timed("flow_match_sigmas", flow_match_sigmas, 28, shift=3.0, use_dynamic_shifting=True, mu=1.15)
timed("calculate_shift", calculate_shift, 4096)
timed("empirical_mu", empirical_mu, 4096, 28)
ts, sg = flow_match_sigmas(28)
timed("trim_for_strength", trim_for_strength, ts, sg, 28, 0.6)
timed("euler_step", euler_step, tok, tok, 1.0, 0.9)
_aot = sys.modules.get("_fast._aot")
print(json.dumps(dict(numpy=t_numpy * 1e3, imports=t_imp * 1e3, first=first, second=second,
                      numba_imported="numba" in sys.modules, outputs_sha256=digest.hexdigest()[:16],
                      backend=_aot.status()["mode"] if _aot else None, **extra)))
"""

BASELINE = """
t0 = T()
from _fast import (pack_latents, unpack_latents, latent_image_ids, flow_match_sigmas, calculate_shift,
                   empirical_mu, trim_for_strength, euler_step)
t_imp = T() - t0
extra = {}
"""

EAGER = """
t0 = T()
import numba
import _fast.latents as latents, _fast.ids as ids, _fast.schedules as schedules
from _fast import _aot
SIGS = %(sigs)r
for (mod, name), sig in SIGS.items():
    full = "_fast." + mod
    lazy = _aot._jit_module(full)[name]  # lazy dispatchers for all (jitted callees resolve through them)
    eager = numba.njit(sig, cache=True)(lazy.py_func)  # loads the cache entry now
    setattr(sys.modules[full], name, eager)
    for entry, (m, n, _) in _aot._EXPORTS.items():
        if (m, n) == (full, name):
            _aot._backends[entry] = eager  # what the wrappers call
_aot._status.update(mode="jit", reason="eager signatures (bench)")
from _fast import (pack_latents, unpack_latents, latent_image_ids, flow_match_sigmas, calculate_shift,
                   empirical_mu, trim_for_strength, euler_step)
t_imp = T() - t0
extra = {}
"""

BACKGROUND = """
t0 = T()
from _fast import (pack_latents, unpack_latents, latent_image_ids, flow_match_sigmas, calculate_shift,
                   empirical_mu, trim_for_strength, euler_step)
import threading
def _warm():
    z = np.zeros((1, 1, 2, 2), np.float32)
    unpack_latents(pack_latents(z), 2, 2); latent_image_ids(1, 1); flow_match_sigmas(2)
    euler_step(np.zeros(2, np.float32), np.zeros(2, np.float32), 1.0, 0.5)
th = threading.Thread(target=_warm, daemon=True); th.start()
t_imp = T() - t0
s = T()
if %(overlap_import)r:
    __import__(%(overlap_import)r)  # GIL-holding start-up work instead of a sleep
else:
    time.sleep(%(overlap)f)
extra = dict(other_work=%(overlap_import)r or "sleep", other_work_ms=(T() - s) * 1e3,
             warm_thread_done_before_first_call=not th.is_alive())
"""

AOT = """
t0 = T()
sys.path.insert(0, %(aot_dir)r)
from _fast.schedules import calculate_shift, empirical_mu, trim_for_strength  # plain Python, no numba
from fast_aot_shim import pack_latents, unpack_latents, latent_image_ids, flow_match_sigmas, euler_step
t_imp = T() - t0
extra = {}
"""

# the validation layer of the baseline wrappers, pointed at the AOT entry points (no numba import)
AOT_SHIM = '''
"""Stand-in for _fast's wrappers, calling the pycc-compiled kernels (measurement only)."""
import math
import numpy as np
import fast_aot

def pack_latents(x):
    b, c, h, w = x.shape
    out = np.empty((b, (h // 2) * (w // 2), 4 * c), x.dtype)
    fast_aot.pack1(np.ascontiguousarray(x).view(np.uint64), out.view(np.uint64))
    return out

def unpack_latents(x, h, w):
    b, seq, f = x.shape
    out = np.empty((b, f // 4, h, w), x.dtype)
    fast_aot.unpack1(np.ascontiguousarray(x).view(np.uint64), out.view(np.uint64))
    return out

def latent_image_ids(h2, w2):
    return fast_aot.fill_ids(np.empty((h2 * w2, 3), np.float32), h2, w2)

_E = np.empty(0, np.float32)

def flow_match_sigmas(n, shift=1.0, use_dynamic_shifting=False, mu=None):
    ts = np.empty(n, np.float32); sg = np.empty(n + 1, np.float32)
    a = math.exp(mu) if use_dynamic_shifting else 0.0
    fast_aot.schedule(n, _E, False, bool(use_dynamic_shifting), a, float(shift), float(shift) - 1.0, False, 1.0,
                      False, 1000.0, ts, sg)
    return ts, sg

def euler_step(s, v, sigma, sigma_next):
    out = np.empty(s.shape, np.float32)
    fast_aot.euler(s.reshape(-1), v.reshape(-1), float(sigma), float(sigma_next), out.reshape(-1))
    return out
'''

AOT_BUILD = """
import sys, numba
from numba.pycc import CC
import _fast.latents, _fast.ids, _fast.schedules
from _fast import _aot
SIGS = %(sigs)r
cc = CC("fast_aot")
cc.output_dir = %(aot_dir)r
for (mod, name), sig in SIGS.items():
    cc.export(name.lstrip("_"), sig)(_aot._jit_module("_fast." + mod)[name].py_func)
cc.compile()
"""


def script(variant, overlap_ms, aot_dir, overlap_import=None):
    if variant in ("baseline", "shipped"):
        body = BASELINE
    elif variant == "eager":
        body = EAGER % {"sigs": SIGNATURES}
    elif variant == "background":
        body = BACKGROUND % {"overlap": overlap_ms / 1e3, "overlap_import": overlap_import}
    elif variant == "aot":
        body = AOT % {"aot_dir": aot_dir}
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    return COMMON + body + CALLS


def run(code, env=None):
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"measured process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare_aot(aot_dir, env):
    """Build the pycc extension once, plus a tiny numba-free copy of the pure-Python helpers."""
    sources = b"".join(Path(ROOT, "_fast", f"{m}.py").read_bytes() for m in ("latents", "ids", "schedules"))
    stamp = Path(aot_dir, "sources.sha256")
    digest = hashlib.sha256(sources + repr(SIGNATURES).encode()).hexdigest()
    if not list(Path(aot_dir).glob("fast_aot*.so")) or not stamp.exists() or stamp.read_text() != digest:
        for old in Path(aot_dir).glob("fast_aot*.so"):
            old.unlink()
        proc = subprocess.run([sys.executable, "-W", "ignore", "-c", AOT_BUILD % {"sigs": SIGNATURES, "aot_dir": aot_dir}],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"pycc build failed:\n{proc.stderr[-3000:]}")
        stamp.write_text(digest)
    Path(aot_dir, "fast_aot_shim.py").write_text(AOT_SHIM)
    stale = Path(aot_dir, "_fast")  # an older version of this script put a stub package here
    if stale.is_dir():
        shutil.rmtree(stale)


def prepare_shipped(cache, code, env, timeout=600.0):
    """Run one process on an empty/old cache (it starts the background build) and wait for the build to land."""
    sys.path.insert(0, str(ROOT))
    from _fast import _aot

    key = _aot.current_key()
    ext = Path(cache, key, _aot.MODULE_NAME + _aot.machinery.EXTENSION_SUFFIXES[0])
    failed = Path(cache, key, _aot.FAILED)
    t0 = time.perf_counter()
    r = run(code, env)
    print(f"== shipped: cache {cache}, key {key}; warm-up process backend: {r['backend']}")
    while not ext.exists():
        if failed.exists():
            raise SystemExit(f"AOT build failed ({failed}):\n{failed.read_text()[-3000:]}")
        if time.perf_counter() - t0 > timeout:
            raise SystemExit(f"AOT build did not land in {timeout:.0f} s; see {ext.parent / _aot.BUILD_LOG}")
        time.sleep(0.2)
    print(f"   AOT extension landed {time.perf_counter() - t0:.1f} s after the warm-up process started")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", choices=["shipped", "baseline", "eager", "background", "aot"])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--overlap-ms", type=float, default=400.0)
    ap.add_argument("--overlap-import", metavar="MODULE", default=None,
                    help="background variant: import MODULE (e.g. torch) as the other start-up work instead of sleeping")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for the measured processes (e.g. NUMBA_DISABLE_INTEL_SVML=1)")
    ap.add_argument("--fast-cache", default=str(Path(tempfile.gettempdir()) / "harness-first-call-shipped"),
                    help="shipped variant: the AOT cache folder (HARNESS_FAST_CACHE of the measured processes)")
    args = ap.parse_args()
    variants = args.variant or ["shipped", "baseline", "eager", "background", "aot"]
    env = dict(os.environ)
    env.pop("HARNESS_FAST_CACHE", None)
    env.pop("NUMBA_DISABLE_JIT", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(kv.split("=", 1) for kv in args.env)
    aot_dir = str(Path(tempfile.gettempdir()) / "harness-first-call-aot")
    Path(aot_dir).mkdir(exist_ok=True)
    for variant in variants:
        venv = dict(env, HARNESS_FAST_AOT="0")  # the numba JIT variants
        code = script(variant, args.overlap_ms, aot_dir, args.overlap_import)
        if variant == "aot":
            prepare_aot(aot_dir, env)
            venv["PYTHONPATH"] = os.pathsep.join([aot_dir, env["PYTHONPATH"]])
        if variant == "shipped":
            venv = dict(env, HARNESS_FAST_CACHE=args.fast_cache)
            venv.pop("HARNESS_FAST_AOT", None)
            prepare_shipped(args.fast_cache, code, venv)
        run(code, venv)  # cache warm-up (compiles and saves on a cold cache)
        print(f"== {variant}")
        for i in range(args.runs):
            r = run(code, venv)
            first_total = sum(r["first"].values())
            per = "  ".join(f"{k}={v:.2f}" for k, v in r["first"].items())
            print(f"  run {i + 1}: import numpy {r['numpy']:.1f} ms | imports {r['imports']:.1f} ms | "
                  f"first calls {first_total:.1f} ms | second calls {sum(r['second'].values()):.2f} ms | "
                  f"numba imported: {r['numba_imported']}" + "".join(f" | {k}: {v}" for k, v in r.items()
                                                                      if k not in ("numpy", "imports", "first", "second", "numba_imported")))
            print(f"         first call per kernel (ms): {per}")


if __name__ == "__main__":
    main()
