"""Pixtral (Mistral3: Pixtral vision tower + Mistral): the family contract the registry and the
CLI read.

- ``adapter.py``  ``Pixtral``, the rules the VLM loop asks (rows of ``[IMG]`` with breaks, which
                  positions get encoder rows, encoder call, generate() inputs); which folders are
                  Mistral3; ``load`` of a folder offline
- ``tiny.py``     ``tiny-pixtral``, built offline on first use
"""
from .adapter import CHAT, FAMILY, MODALITY, Pixtral, hf_classes, load, matches
from .tiny import RECIPE, TINY_NAMES, tiny_path

__all__ = ["FAMILY", "MODALITY", "TINY_NAMES", "tiny_path", "matches", "load", "Pixtral",
           "RECIPE", "CHAT", "hf_classes"]
