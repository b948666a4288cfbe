"""harness: MAX-style request contexts driving real diffusers / transformers models.

Importing the package is cheap: torch, diffusers and transformers are imported lazily by the
pipelines that need them.
"""

__version__ = "0.1.0"
