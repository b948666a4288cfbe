"""LLaVA (CLIP vision tower + Llama): the family contract the registry and the CLI read.

- ``adapter.py``  ``Llava``, the rules the VLM loop asks (placeholders, encoder call); which
                  folders are LLaVA; ``load`` of a folder offline
- ``tiny.py``     ``tiny-llava``, built offline on first use
- ``replicas.py`` ``replica-llava-1.5-7b``: llava-hf/llava-1.5-7b-hf's files, random weights
"""
from .adapter import CHAT, FAMILY, MODALITY, Llava, hf_classes, load, matches
from .replicas import REPLICA_NAMES, replica_path
from .tiny import RECIPE, TINY_NAMES, tiny_path

__all__ = ["FAMILY", "MODALITY", "TINY_NAMES", "tiny_path", "matches", "load", "Llava", "RECIPE",
           "CHAT", "hf_classes", "REPLICA_NAMES", "replica_path"]
