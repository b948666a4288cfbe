"""Shared test setup: offline hub, one tiny-model cache per machine (keyed by recipe hash)."""
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault(
    "HARNESS_MODEL_CACHE", str(Path(tempfile.gettempdir()) / "harness-test-models"))
