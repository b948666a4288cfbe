"""Qwen2.5-VL (window-attention vision tower + M-RoPE text model): the family contract the
registry and the CLI read.

- ``adapter.py``  ``Qwen25VL``, the rules the VLM loop asks (Qwen2-VL's placeholders and
                  positions, Qwen2.5-VL's model and processor); which folders are Qwen2.5-VL;
                  ``load`` of a folder offline
- ``tiny.py``     ``tiny-qwen2.5-vl``, built offline on first use
- ``replicas.py`` ``replica-qwen2.5-vl-3b-instruct``: Qwen/Qwen2.5-VL-3B-Instruct's files, random
                  weights
"""
from .adapter import CHAT, FAMILY, MODALITY, Qwen25VL, hf_classes, load, matches
from .replicas import REPLICA_NAMES, replica_path
from .tiny import RECIPE, TINY_NAMES, tiny_path

__all__ = ["FAMILY", "MODALITY", "TINY_NAMES", "tiny_path", "matches", "load", "Qwen25VL",
           "RECIPE", "CHAT", "hf_classes", "REPLICA_NAMES", "replica_path"]
