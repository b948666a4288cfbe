"""Rules the diffusers image families share, as mixins of their frozen rules dataclasses: the
defaults most pipelines agree on, the latent geometry of a VAE with 2x2 packing, an
``AutoencoderKL``-style VAE config, and a ``FlowMatchEulerDiscreteScheduler`` config.

A family's rules class lists these bases and overrides what differs (a class attribute for a
constant, a property for a number read from its configs). Numbers only: no torch.
"""
from __future__ import annotations

__all__ = ["ImageRulesDefaults", "LatentGeometry", "AutoencoderKLGeometry", "FlowMatchSchedule",
           "UNSUPPORTED_SCHEDULER_OPTIONS", "unsupported_scheduler_option"]


class ImageRulesDefaults:
    """What ``PixelGenerationTokenizer`` asks and most families answer alike."""

    #: Largest pixel area a request may ask for (2048² unless the family caps lower).
    max_area = 2048 * 2048
    #: Input images a request may carry (img2img: one).
    max_input_images = 1
    #: "img2img" (one input image to start from), "conditioning" (reference images) or "none".
    image_role = "img2img"
    #: True CFG scale when a request gives none (1.0: off).
    default_true_cfg_scale = 1.0
    #: First-block cache threshold when the cache is on and a request gives none (MAX's).
    default_residual_threshold = 0.05
    #: The pipelines' ``default_sample_size`` (latent pixels per side when a request gives no
    #: height/width): the default size is this times the VAE scale factor, as diffusers computes it.
    default_sample_size = 128

    @property
    def default_size(self) -> int:
        """Height/width when a request gives none: ``default_sample_size × vae_scale_factor``
        (FluxPipeline, Flux2(Klein)Pipeline, QwenImagePipeline). Not the VAE's ``sample_size``."""
        return self.default_sample_size * self.vae_scale_factor

    def default_guidance(self, img2img: bool) -> float:
        """guidance_scale when a request gives none; an img2img pipeline may have its own."""
        if img2img:
            return getattr(self, "default_img2img_guidance_scale", self.default_guidance_scale)
        return self.default_guidance_scale


class LatentGeometry:
    """Latent shapes of a VAE with ``self.size_multiple`` pixels per packed token and
    ``self.latent_channels`` channels, as the pipelines' ``prepare_latents`` floor them."""

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the unpacked latents."""
        f = self.size_multiple
        return 2 * (int(height) // f), 2 * (int(width) // f)

    def image_seq_len(self, height: int, width: int) -> int:
        """Tokens of the packed (2x2) latents."""
        h, w = self.latent_size(height, width)
        return (h // 2) * (w // 2)

    def noise_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """Shape torch.randn draws the initial noise in: (B, C, h, w)."""
        h, w = self.latent_size(height, width)
        return (batch, self.latent_channels, h, w)

    def vae_sample_shape(self, height: int, width: int) -> tuple[int, ...]:
        """Shape of the img2img VAE posterior sample (one input image)."""
        return self.noise_shape(1, height, width)


class AutoencoderKLGeometry(LatentGeometry):
    """Rules read from an ``AutoencoderKL``-style VAE config (``self.vae_config``): the scale
    factor of its resolution levels, the latent normalisation, and its trained sample size."""

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    @property
    def size_multiple(self) -> int:
        """Width/height multiple: the VAE factor times the 2x2 packing / patchify."""
        return 2 * self.vae_scale_factor

    @property
    def scaling_factor(self) -> float:
        return float(self.vae_config["scaling_factor"])

    @property
    def shift_factor(self) -> float:
        return float(self.vae_config.get("shift_factor") or 0.0)


class FlowMatchSchedule:
    """Rules read from a ``FlowMatchEulerDiscreteScheduler`` config (``self.scheduler_config``):
    the resolution-dependent shift mu and the options of ``_fast.flow_match_sigmas``. Missing keys
    take the same ``.get`` defaults the diffusers pipelines use."""

    def linear_shift_mu(self, image_seq_len: int) -> float:
        """``calculate_shift``: mu linear in the packed sequence length (FLUX.1's rule)."""
        from _fast import calculate_shift

        cfg = self.scheduler_config
        return calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256),
                               cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                               cfg.get("max_shift", 1.15))

    def mu(self, height: int, width: int) -> float | None:
        """Dynamic-shift mu from the packed sequence length; None without dynamic shifting."""
        if not self.scheduler_config.get("use_dynamic_shifting"):
            return None
        return self.linear_shift_mu(self.image_seq_len(height, width))

    def sigma_options(self, mu: float | None, *, shifted: bool = True,
                      terminal: bool = True) -> dict:
        """Keyword arguments of ``flow_match_sigmas`` / ``z_image_sigmas`` for this scheduler.

        ``shifted=False`` drops the shift and ``terminal=False`` the shift_terminal stretch (wrong
        variants, for the parity tests' negative controls)."""
        cfg = self.scheduler_config
        dynamic = bool(cfg.get("use_dynamic_shifting")) and shifted
        return dict(
            shift=float(cfg.get("shift", 1.0)) if shifted else 1.0,
            use_dynamic_shifting=dynamic,
            mu=mu if dynamic else None,
            time_shift_type=cfg.get("time_shift_type", "exponential"),
            shift_terminal=cfg.get("shift_terminal") if terminal else None,
            invert_sigmas=bool(cfg.get("invert_sigmas", False)),
            num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
            use_karras_sigmas=bool(cfg.get("use_karras_sigmas", False)),
            use_exponential_sigmas=bool(cfg.get("use_exponential_sigmas", False)),
        )


#: Scheduler options the harness's schedules do not implement: a folder using one is refused.
UNSUPPORTED_SCHEDULER_OPTIONS = ("use_beta_sigmas", "stochastic_sampling", "use_flow_sigmas")


def unsupported_scheduler_option(scheduler_config: dict) -> str | None:
    """The first option of ``UNSUPPORTED_SCHEDULER_OPTIONS`` the config switches on, or None."""
    return next((k for k in UNSUPPORTED_SCHEDULER_OPTIONS if scheduler_config.get(k)), None)
