"""Qwen3-VL (deepstack vision tower + interleaved M-RoPE text model): the family contract the
registry and the CLI read.

- ``adapter.py``  ``Qwen3VL``, the rules the VLM loop asks (Qwen2-VL's placeholders and
                  positions, deepstack rows in the encoder cache and per chunk); which folders
                  are Qwen3-VL; ``load`` of a folder offline
- ``tiny.py``     ``tiny-qwen3-vl``, built offline on first use
- ``replicas.py`` ``replica-qwen3-vl-4b-instruct``: Qwen/Qwen3-VL-4B-Instruct's files, random
                  weights
"""
from .adapter import CHAT, FAMILY, MODALITY, Qwen3VL, hf_classes, load, matches
from .replicas import REPLICA_NAMES, replica_path
from .tiny import RECIPE, TINY_NAMES, tiny_path

__all__ = ["FAMILY", "MODALITY", "TINY_NAMES", "tiny_path", "matches", "load", "Qwen3VL",
           "RECIPE", "CHAT", "hf_classes", "REPLICA_NAMES", "replica_path"]
