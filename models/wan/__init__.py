"""Wan (2.1 and 2.2) video: the family contract the registry and the CLI read.

- ``rules.py``      folder → numbers: geometry and the 4k+1 frame rule, UniPC / FlowMatchEuler
                    schedules, the two-expert boundary, prompt cleaning and UMT5 padding
- ``context.py``    request → VideoPixelContext: prompt tokens, schedule with UniPC's coefficient
                    table, 5-D noise, the image-to-video input image
- ``loop.py``       ``WanDenoiser``, the denoise loop over the loaded modules
- ``loading.py``    the folder's modules, loaded offline
- ``reference.py``  diffusers' WanPipeline / WanImageToVideoPipeline as the parity reference
- ``tiny.py``       ``tiny-wan``, ``tiny-wan-i2v``, ``tiny-wan22``, built offline on first use
"""
from .context import TOKENIZER_FAULTS, build_context
from .loading import load_components
from .loop import LOOP_FAULTS, WanDenoiser
from .reference import WanReferenceRunner, reference_pipeline
from .rules import (FAMILY, MODALITY, PIPELINE_CLASSES, VIDEO_FORMATS, WanRules,
                    flow_match_default_sigmas, matches, prompt_clean, rules)
from .tiny import TINY_NAMES, TINY_RECIPE, TINY_REQUEST_DEFAULTS, WAN21_SCHEDULER, build_tiny, tiny_path

#: The family contract: the loop and the parity runner the CLI drives.
Denoiser = WanDenoiser
ReferenceRunner = WanReferenceRunner

__all__ = [
    "FAMILY", "MODALITY", "TINY_NAMES", "TINY_REQUEST_DEFAULTS", "PIPELINE_CLASSES", "tiny_path",
    "matches", "rules", "Denoiser", "ReferenceRunner", "load_components", "reference_pipeline",
    "build_tiny", "WanRules", "WanDenoiser", "WanReferenceRunner", "LOOP_FAULTS",
    "TOKENIZER_FAULTS", "TINY_RECIPE", "WAN21_SCHEDULER", "VIDEO_FORMATS", "build_context",
    "flow_match_default_sigmas", "prompt_clean",
]
