"""Pixtral (Pixtral vision tower + Mistral, as Mistral3 or LLaVA): the family contract the
registry and the CLI read.

- ``adapter.py``  ``Pixtral``, the rules the VLM loop asks (rows of ``[IMG]`` with breaks, which
                  positions get encoder rows, encoder call, generate() inputs); which folders are
                  Pixtral (Mistral3, or LLaVA with a Pixtral tower); ``load`` of a folder offline
- ``reference.py`` transformers' PixtralProcessor on the PIL image processor (the reference)
- ``tiny.py``     ``tiny-pixtral``, built offline on first use
- ``replicas.py`` ``replica-mistral-small-3.1`` (Mistral-Small-3.1-24B-Instruct-2503, Mistral3)
                  and ``replica-pixtral-12b`` (mistral-community/pixtral-12b, LLaVA + Pixtral
                  tower): the real repositories' files, random weights
"""
from .adapter import CHAT, FAMILY, MODALITY, Pixtral, hf_classes, load, matches
from .replicas import REPLICA_NAMES, replica_path
from .tiny import RECIPE, TINY_NAMES, tiny_path

__all__ = ["FAMILY", "MODALITY", "TINY_NAMES", "tiny_path", "matches", "load", "Pixtral",
           "RECIPE", "CHAT", "hf_classes", "REPLICA_NAMES", "replica_path"]
