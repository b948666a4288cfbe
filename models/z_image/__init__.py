"""Z-Image (Turbo, and its img2img): the family contract the registry and the CLI read.

- ``rules.py``      folder → numbers: layout, torch-exact schedule, reversed time, chat prompt
- ``context.py``    request → context: prompt tokens, schedule, noise, img2img input image
- ``loop.py``       ``ZImageDenoiser``, the denoise loop over the loaded modules
- ``loading.py``    the folder's modules, loaded offline
- ``reference.py``  diffusers' ZImagePipeline / ZImageImg2ImgPipeline as the parity reference
- ``tiny.py``       ``tiny-z-image``, built offline on first use
"""
from .context import TOKENIZER_FAULTS, build_context
from .loading import load_components
from .loop import LOOP_FAULTS, ZImageDenoiser
from .reference import ZImageReferenceRunner, reference_pipeline
from .rules import FAMILY, MODALITY, PIPELINE_CLASSES, ZImageRules, matches, rules
from .tiny import TINY_REQUEST_DEFAULTS, TINY_NAMES, TINY_RECIPE, Z_IMAGE_TURBO_SCHEDULER, build_tiny, tiny_path

#: The family contract: the loop and the parity runner the CLI drives.
Denoiser = ZImageDenoiser
ReferenceRunner = ZImageReferenceRunner

__all__ = [
    "FAMILY", "MODALITY", "TINY_NAMES", "TINY_REQUEST_DEFAULTS", "PIPELINE_CLASSES", "tiny_path", "matches", "rules",
    "Denoiser", "ReferenceRunner", "load_components", "reference_pipeline", "build_tiny",
    "ZImageRules", "ZImageDenoiser", "ZImageReferenceRunner", "LOOP_FAULTS", "TOKENIZER_FAULTS",
    "TINY_RECIPE", "Z_IMAGE_TURBO_SCHEDULER", "build_context",
]
