"""Re-run the family-kernel tests (layouts, N-d ids, torch compat) with NUMBA_DISABLE_JIT=1, so the kernel bodies run as Python."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_family_kernels_without_jit():
    env = dict(os.environ)
    env["NUMBA_DISABLE_JIT"] = "1"
    env["FAST_TEST_MAX_EXAMPLES"] = "5"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow",
        "tests/test_fast_layouts.py", "tests/test_fast_ids_nd.py", "tests/test_fast_torch_compat.py",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, f"NUMBA_DISABLE_JIT=1 run failed (rc={proc.returncode}):\n{tail}"
    assert " passed" in proc.stdout and "failed" not in proc.stdout, tail
