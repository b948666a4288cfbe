"""Proof that ``python -m bench check`` catches a real regression: run the gate with one kernel
made 2x slower, without editing its source (the kernel is wrapped in this process only).

    python bench/inject_slowdown.py                 # _fast.pack_latents runs twice per call
    python bench/inject_slowdown.py --kernel latent_image_ids --factor 3

Exits with the gate's code: 1 when the slowed kernel's ratios fall short (the expected outcome).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernel", default="pack_latents", help="a function of _fast (pack_latents)")
    p.add_argument("--factor", type=int, default=2, help="calls per call (2: twice as slow)")
    p.add_argument("--only", nargs="*", default=None,
                   help="metrics to run (default: every metric)")
    args = p.parse_args()
    sys.path[:0] = [str(BENCH.parent), str(BENCH)]
    import _fast

    real = getattr(_fast, args.kernel)

    def slowed(*a, **kw):
        for _ in range(args.factor - 1):
            real(*a, **kw)
        return real(*a, **kw)

    setattr(_fast, args.kernel, slowed)
    print(f"_fast.{args.kernel} now runs {args.factor}x per call (this process only)")
    spec = importlib.util.spec_from_file_location("bench_cli", BENCH / "__main__.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli.main(["check", "--no-save"] + (["--only", *args.only] if args.only else []))


if __name__ == "__main__":
    sys.exit(main())
