"""FLUX.1 (dev, schnell, and their img2img): the family contract the registry and the CLI read.

- ``rules.py``      folder → numbers: layout, ids, schedule, CFG rule; which folders are FLUX.1
- ``loop.py``       ``FluxDenoiser``, the denoise loop over the loaded modules
- ``loading.py``    the folder's modules, loaded offline
- ``reference.py``  diffusers' FluxPipeline / FluxImg2ImgPipeline as the parity reference
- ``tiny.py``       ``tiny-flux1``, built offline on first use
"""
from .loading import load_components
from .loop import LOOP_FAULTS, FluxDenoiser
from .reference import Flux1ReferenceRunner, reference_pipeline
from .rules import (FAMILY, MODALITY, PIPELINE_CLASSES, Flux1Rules, TextEncoderSpec,
                    matches, rules)
from .tiny import TINY_REQUEST_DEFAULTS, FLUX1_DEV_SCHEDULER, TINY_NAMES, TINY_RECIPE, build_tiny, tiny_path

#: The family contract: the loop and the parity runner the CLI drives.
Denoiser = FluxDenoiser
ReferenceRunner = Flux1ReferenceRunner

__all__ = [
    "FAMILY", "MODALITY", "TINY_NAMES", "TINY_REQUEST_DEFAULTS", "PIPELINE_CLASSES", "tiny_path", "matches", "rules",
    "Denoiser", "ReferenceRunner", "load_components", "reference_pipeline", "build_tiny",
    "Flux1Rules", "TextEncoderSpec", "FluxDenoiser", "Flux1ReferenceRunner", "LOOP_FAULTS",
    "TINY_RECIPE", "FLUX1_DEV_SCHEDULER",
]
