"""FLUX.2 (Klein and dev layouts): the family contract the registry and the CLI read.

- ``rules.py``      folder → numbers: layout, geometry, schedule with the empirical mu, ids
- ``context.py``    request → context: chat-templated prompt, reference images, noise, ids
- ``loop.py``       ``Flux2Denoiser``, the denoise loop over the loaded modules
- ``loading.py``    the folder's modules, loaded offline
- ``reference.py``  diffusers' Flux2KleinPipeline / Flux2Pipeline as the parity reference
- ``tiny.py``       ``tiny-flux2-klein`` and ``tiny-flux2-dev``, built offline on first use
"""
from .context import TOKENIZER_FAULTS, reference_crop
from .loading import load_components
from .loop import LOOP_FAULTS, Flux2Denoiser
from .reference import Flux2ReferenceRunner, reference_pipeline
from .rules import (FAMILY, MODALITY, NO_FIRST_BLOCK_CACHE, PIPELINE_CLASSES, Flux2Rules,
                    matches, rules)
from .tiny import TINY_REQUEST_DEFAULTS, MISTRAL_CHAT_TEMPLATE, TINY_NAMES, TINY_RECIPES, build_tiny, tiny_path

#: The family contract: the loop and the parity runner the CLI drives.
Denoiser = Flux2Denoiser
ReferenceRunner = Flux2ReferenceRunner

__all__ = [
    "FAMILY", "MODALITY", "TINY_NAMES", "TINY_REQUEST_DEFAULTS", "PIPELINE_CLASSES", "tiny_path", "matches", "rules",
    "Denoiser", "ReferenceRunner", "load_components", "reference_pipeline", "build_tiny",
    "Flux2Rules", "Flux2Denoiser", "Flux2ReferenceRunner", "LOOP_FAULTS", "TOKENIZER_FAULTS",
    "NO_FIRST_BLOCK_CACHE", "TINY_RECIPES", "MISTRAL_CHAT_TEMPLATE", "reference_crop",
]
