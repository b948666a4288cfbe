"""Idefics3 and SmolVLM (image splitting with row/column tokens and a global image): the family
contract the registry and the CLI read.

- ``adapter.py``   ``Idefics3``, the rules the VLM loop asks (tiles, tags and placeholder range,
                   one encoder call per image over its tiles, generate() inputs); which folders
                   belong here (model_type idefics3 or smolvlm); ``load`` of a folder offline
- ``reference.py`` ``SmolVLMProcessor`` without its video side (no num2words, no torchvision)
- ``tiny.py``      ``tiny-idefics3`` and ``tiny-smolvlm``, built offline on first use
- ``replicas.py``  ``replica-smolvlm-256m-instruct`` (idefics3 layout) and
                   ``replica-smolvlm2-256m-video-instruct`` (smolvlm layout): the repositories'
                   files, random weights
"""
from .adapter import CHAT, FAMILY, MODALITY, Idefics3, hf_classes, load, matches
from .replicas import REPLICA_NAMES, replica_path
from .tiny import RECIPE, RECIPES, TINY_NAMES, tiny_path

__all__ = ["FAMILY", "MODALITY", "TINY_NAMES", "tiny_path", "matches", "load", "Idefics3",
           "RECIPE", "RECIPES", "CHAT", "hf_classes", "REPLICA_NAMES", "replica_path"]
