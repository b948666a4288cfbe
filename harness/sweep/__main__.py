"""``python -m harness.sweep SPEC.toml --output-dir DIR`` (see ``harness.sweep.cli``)."""
import sys

from harness.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
