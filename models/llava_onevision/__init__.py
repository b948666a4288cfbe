"""LLaVA-OneVision and LLaVA-NeXT (any-resolution tiles, image newline rows): the family contract
the registry and the CLI read.

- ``adapter.py``  ``AnyRes``, the rules the VLM loop asks (tiles and placeholder count, one encoder
                  call per image over its tiles, generate() inputs); which folders belong here
                  (model_type llava_onevision or llava_next); ``load`` of a folder offline
- ``tiny.py``     ``tiny-llava-onevision`` and ``tiny-llava-next``, built offline on first use
- ``replicas.py`` ``replica-llava-onevision-qwen2-0.5b-ov`` and ``replica-llava-v1.6-mistral-7b``:
                  the llava-hf repositories' files, random weights
"""
from .adapter import CHAT, FAMILY, MODALITY, AnyRes, hf_classes, load, matches
from .replicas import REPLICA_NAMES, replica_path
from .tiny import RECIPE, RECIPES, TINY_NAMES, tiny_path

__all__ = ["FAMILY", "MODALITY", "TINY_NAMES", "tiny_path", "matches", "load", "AnyRes", "RECIPE",
           "RECIPES", "CHAT", "hf_classes", "REPLICA_NAMES", "replica_path"]
