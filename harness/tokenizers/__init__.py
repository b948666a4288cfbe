"""Request → context: ``PixelGenerationTokenizer`` (images) and ``TextAndVisionTokenizer`` (VLMs).

Imported lazily: each pulls in transformers / torch only when used.
"""
import importlib

_EXPORTS = {
    "PixelGenerationTokenizer": "harness.tokenizers.pixel",
    "PixelGenerationRequest": "harness.tokenizers.pixel",
    "TextAndVisionTokenizer": "harness.tokenizers.text_vision",
    "TextGenerationRequest": "harness.tokenizers.text_vision",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness.tokenizers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
