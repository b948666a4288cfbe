"""Gemma 3 (SigLIP vision tower + Gemma 3): the family contract the registry and the CLI read.

- ``adapter.py``  ``Gemma3``, the rules the VLM loop asks (soft tokens between image markers,
                  encoder call, token types per prefill chunk, generate() inputs); which folders
                  are Gemma 3; ``load`` of a folder offline
- ``tiny.py``     ``tiny-gemma3``, built offline on first use
- ``replicas.py`` ``replica-gemma-3-4b-it``: google/gemma-3-4b-it's files, random weights
"""
from .adapter import CHAT, FAMILY, MODALITY, Gemma3, hf_classes, load, matches
from .replicas import REPLICA_NAMES, replica_path
from .tiny import RECIPE, TINY_NAMES, tiny_path

__all__ = ["FAMILY", "MODALITY", "TINY_NAMES", "tiny_path", "matches", "load", "Gemma3", "RECIPE",
           "CHAT", "hf_classes", "REPLICA_NAMES", "replica_path"]
