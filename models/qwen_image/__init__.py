"""Qwen-Image, Qwen-Image-Edit and Qwen-Image-Edit-2509 (Plus): the family contract the registry
and the CLI read.

- ``rules.py``      folder → numbers: pipeline spec (template, drop index, resize areas), layout,
                    schedule with shift_terminal, centred ids
- ``context.py``    request → context: templated prompt, conditioning images, noise, ids
- ``loop.py``       ``QwenImageDenoiser``, the denoise loop over the loaded modules
- ``loading.py``    the folder's modules, loaded offline
- ``reference.py``  diffusers' QwenImage(Edit[Plus])Pipeline as the parity reference
- ``tiny.py``       ``tiny-qwen-image``, ``-edit`` and ``-edit-plus``, built offline on first use
"""
from .context import TOKENIZER_FAULTS, build_context
from .loading import load_components
from .loop import LOOP_FAULTS, QwenImageDenoiser
from .reference import QwenImageReferenceRunner, qwen2vl_processor, reference_pipeline
from .rules import (FAMILY, MODALITY, PIPELINE_CLASSES, SPECS, PipelineSpec,
                    QwenImageRules, calculate_dimensions, matches, rules, shapes_from_ids)
from .tiny import (TINY_REQUEST_DEFAULTS, QWEN_IMAGE_SPECIALS, TINY_NAMES, TINY_RECIPE, build_tiny, templates_corpus,
                   tiny_path)

#: The family contract: the loop and the parity runner the CLI drives.
Denoiser = QwenImageDenoiser
ReferenceRunner = QwenImageReferenceRunner

__all__ = [
    "FAMILY", "MODALITY", "TINY_NAMES", "TINY_REQUEST_DEFAULTS", "PIPELINE_CLASSES", "tiny_path", "matches", "rules",
    "Denoiser", "ReferenceRunner", "load_components", "reference_pipeline", "build_tiny",
    "QwenImageRules", "QwenImageDenoiser", "QwenImageReferenceRunner", "PipelineSpec", "SPECS",
    "LOOP_FAULTS", "TOKENIZER_FAULTS", "TINY_RECIPE", "QWEN_IMAGE_SPECIALS",
    "build_context", "calculate_dimensions", "shapes_from_ids", "qwen2vl_processor",
    "templates_corpus",
]
