"""Fast paths: numba kernels (latents, ids, schedules) and the Cython token core.

Plain arrays in, plain arrays out; nothing here imports torch or knows about models. Kernels are
imported lazily so that ``import _fast.tokens`` does not pay for numba.
"""
import importlib

_KERNELS = {
    "pack_latents": "latents",
    "unpack_latents": "latents",
    "latent_image_ids": "ids",
    "flow_match_sigmas": "schedules",
    "calculate_shift": "schedules",
    "empirical_mu": "schedules",
    "trim_for_strength": "schedules",
    "euler_step": "schedules",
    "patchify_latents": "layouts",
    "unpatchify_latents": "layouts",
    "flux2_pack": "layouts",
    "scatter_by_ids": "layouts",
    "qwen_pack_latents": "layouts",
    "qwen_unpack_latents": "layouts",
    "flux2_image_ids": "ids_nd",
    "flux2_reference_ids": "ids_nd",
    "flux2_text_ids": "ids_nd",
    "qwen_image_ids": "ids_nd",
    "qwen_text_ids": "ids_nd",
    "torch_linspace_f32": "schedules_torch_compat",
    "z_image_sigmas": "schedules_torch_compat",
}

__all__ = sorted(_KERNELS) + ["tokens"]


def __getattr__(name):
    module = _KERNELS.get(name)
    if module is None:
        raise AttributeError(f"module '_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"_fast.{module}"), name)
    globals()[name] = value
    return value
