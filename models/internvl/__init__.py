"""InternVL (dynamic tiles, pixel shuffle; transformers' ``internvl`` layout): the family contract
the registry and the CLI read.

- ``adapter.py``  ``InternVL``, the rules the VLM loop asks (tiles, context-token count, one
                  encoder call per image over its tiles, generate() inputs); which folders are
                  InternVL; ``load`` of a folder offline
- ``tiny.py``     ``tiny-internvl``, built offline on first use
- ``replicas.py`` ``replica-internvl3-1b-hf``: OpenGVLab/InternVL3-1B-hf's files, random weights
"""
from .adapter import CHAT, FAMILY, MODALITY, InternVL, hf_classes, load, matches
from .replicas import REPLICA_NAMES, replica_path
from .tiny import RECIPE, TINY_NAMES, tiny_path

__all__ = ["FAMILY", "MODALITY", "TINY_NAMES", "tiny_path", "matches", "load", "InternVL",
           "RECIPE", "CHAT", "hf_classes", "REPLICA_NAMES", "replica_path"]
