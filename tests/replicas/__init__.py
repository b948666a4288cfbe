"""Replicas of the real image checkpoints (FLUX.1-dev/schnell, FLUX.2-klein-4B/dev, Qwen-Image,
Qwen-Image-Edit-2509, Z-Image-Turbo): the real configs with depth cut, built offline; see each
module for the sources of every config and what was reduced."""
