"""Qwen2-VL (merged-patch vision tower + M-RoPE text model): the family contract the registry and
the CLI read.

- ``adapter.py``  ``Qwen2VL``, the rules the VLM loop asks (placeholders between vision markers,
                  encoder call, M-RoPE positions, generate() inputs); which folders are Qwen2-VL;
                  ``load`` of a folder offline
- ``tiny.py``     ``tiny-qwen2-vl``, built offline on first use
- ``replicas.py`` ``replica-qwen2-vl-2b-instruct``, ``replica-qwen2-vl-7b-instruct``: the Qwen2-VL
                  Instruct repositories' files, random weights
"""
from .adapter import CHAT, FAMILY, MODALITY, Qwen2VL, hf_classes, load, matches
from .replicas import REPLICA_NAMES, replica_path
from .tiny import RECIPE, TINY_NAMES, tiny_path

__all__ = ["FAMILY", "MODALITY", "TINY_NAMES", "tiny_path", "matches", "load", "Qwen2VL",
           "RECIPE", "CHAT", "hf_classes", "REPLICA_NAMES", "replica_path"]
