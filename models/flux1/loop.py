"""The FLUX.1 denoise loop over a PixelContext, calling only the model components.

Text encoders → prompt embeddings exactly as ``FluxPipeline.encode_prompt``; the transformer
gets ``timestep / 1000`` and the unscaled guidance; true CFG ``v_neg + s·(v − v_neg)``; the Euler
step, packing and unpacking come from ``_fast`` on CPU float32 (torch ops with the same arithmetic
elsewhere); decoding copies FluxPipeline's dtype path. Layout constants come from the family rules.
A first-block cache (``fbcache``) runs when the context has a ``residual_threshold``, or at the
family default when ``first_block_cache`` is switched on; streams "cond" / "uncond".
"""
from __future__ import annotations

from typing import Any

import numpy as np

from harness.context import PixelContext
from harness.pipelines.denoise import DenoiserBase, PixelResult

from .loading import load_components

__all__ = ["FluxDenoiser", "PixelResult", "LOOP_FAULTS"]

#: Deliberately wrong variants, for the parity tests' negative controls only.
LOOP_FAULTS = ("timestep_not_divided", "guidance_x1000")


class FluxDenoiser(DenoiserBase):
    """Runs PixelContexts of one loaded FLUX.1-layout model (CPU or CUDA, float32 or bfloat16)."""

    LOOP_FAULTS = LOOP_FAULTS
    load_components = staticmethod(load_components)

    # ---------------------------------------------------------------------------------- layout
    def _pack(self, x):
        import torch

        if self._host_f32:
            from _fast import pack_latents

            return torch.from_numpy(pack_latents(x.numpy()))
        b, c, h, w = x.shape  # FluxPipeline._pack_latents
        x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // 2) * (w // 2), c * 4)

    def _unpack(self, x, h: int, w: int):
        import torch

        if self._host_f32:
            from _fast import unpack_latents

            return torch.from_numpy(unpack_latents(x.numpy(), h, w))
        b, _, f = x.shape  # FluxPipeline._unpack_latents
        x = x.view(b, h // 2, w // 2, f // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, f // 4, h, w)

    # ---------------------------------------------------------------------------------- steps
    def encode_prompt(self, tokens: np.ndarray, tokens_2: np.ndarray, n: int):
        """(prompt_embeds (n, L, D), pooled (n, P)) as FluxPipeline._get_{t5,clip}_prompt_embeds."""
        import torch

        te, te2 = self.c["text_encoder"], self.c["text_encoder_2"]
        ids = torch.from_numpy(np.array(tokens, dtype=np.int64))[None].to(te.device)
        pooled = te(ids, output_hidden_states=False).pooler_output
        pooled = pooled.to(dtype=te.dtype, device=self.device).repeat(1, n).view(n, -1)
        ids2 = torch.from_numpy(np.array(tokens_2, dtype=np.int64))[None].to(te2.device)
        embeds = te2(ids2, output_hidden_states=False)[0].to(dtype=te2.dtype, device=self.device)
        seq = embeds.shape[1]
        return embeds.repeat(1, n, 1).view(n, seq, -1), pooled

    def _initial_latents(self, ctx: PixelContext, n: int):
        """Packed start latents: the noise, or for img2img ``σ_start·noise + (1−σ_start)·z``
        with z the VAE posterior sample (FluxImg2ImgPipeline.prepare_latents, scale_noise)."""
        import torch

        noise = torch.from_numpy(ctx.latents).to(device=self.device, dtype=self.dtype)
        extra = ctx.extra_model_args
        if "image_nhwc" not in extra:
            return noise
        vae = self.c["vae"]
        # An NCHW view of freshly allocated NHWC pixels, exactly as VaeImageProcessor makes it:
        # the convolutions pick their path from the strides (channels-last; even the stride of
        # the size-1 batch axis counts), and each path gives different bits.
        pixels = np.asarray(extra["image_nhwc"], dtype=np.float32)
        image = torch.empty(pixels.shape, dtype=torch.float32).copy_(torch.from_numpy(pixels))
        image = image.permute(0, 3, 1, 2).to(device=self.device, dtype=self.dtype)
        dist = vae.encode(image).latent_dist
        sample = torch.from_numpy(extra["vae_sample_noise"]).to(dist.parameters.device,
                                                                 dist.parameters.dtype)
        z = dist.mean + dist.std * sample  # DiagonalGaussianDistribution.sample
        z = (z - vae.config.shift_factor) * vae.config.scaling_factor
        z = torch.cat([z] * (n // z.shape[0]), dim=0)
        sigma = torch.from_numpy(ctx.sigmas[:1]).to(device=self.device, dtype=z.dtype)
        sigma = sigma.expand(n)[:, None, None]
        return sigma * noise + (1.0 - sigma) * self._pack(z)

    def _decode(self, latents, ctx: PixelContext, fault: str | None = None):
        """unpack → ``x / scaling + shift`` → VAE → ``(x·0.5+0.5).clamp(0,1)`` → uint8
        (diffusers' VaeImageProcessor.postprocess + numpy_to_pil)."""
        vae = self.c["vae"]
        h, w = self.rules.latent_size(ctx.height, ctx.width)
        x = self._unpack(latents, h, w)
        x = x / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(x.to(vae.device), return_dict=False)[0]
        image = (image * 0.5 + 0.5).clamp(0, 1)
        decoded = image.cpu().permute(0, 2, 3, 1).float().numpy()
        return (decoded * 255).round().astype(np.uint8), decoded

    def _prepare(self, ctx: PixelContext, fault: str | None) -> dict:
        """Everything the steps reuse: embeddings, ids, guidance, schedule, start latents."""
        import torch

        n = ctx.num_images_per_prompt
        st: dict[str, Any] = {"true_cfg": ctx.negative_tokens is not None}
        st["embeds"], st["pooled"] = self.encode_prompt(ctx.tokens.all, ctx.tokens_2.all, n)
        text_dtype = self.c["text_encoder"].dtype
        st["txt_ids"] = torch.from_numpy(ctx.text_ids).to(device=self.device, dtype=text_dtype)
        if st["true_cfg"]:
            st["neg_embeds"], st["neg_pooled"] = self.encode_prompt(
                ctx.negative_tokens.all, ctx.negative_tokens_2.all, n)
            st["neg_txt_ids"] = torch.from_numpy(ctx.negative_text_ids).to(device=self.device,
                                                                           dtype=text_dtype)
        st["latents"] = self._initial_latents(ctx, n)
        st["img_ids"] = torch.from_numpy(ctx.latent_image_ids).to(device=self.device,
                                                                  dtype=st["embeds"].dtype)
        st["guidance"] = None
        if self.rules.guidance_embeds:  # unscaled: the transformer multiplies by 1000 itself
            g = ctx.guidance_scale * (1000.0 if fault == "guidance_x1000" else 1.0)
            st["guidance"] = torch.full([1], g, device=self.device, dtype=torch.float32).expand(n)
        st["timesteps"] = torch.from_numpy(ctx.timesteps).to(self.device)
        st["sigmas"] = torch.from_numpy(ctx.sigmas).to(self.device)
        return st

    def _velocity(self, ctx: PixelContext, st: dict, latents, i: int, fault: str | None,
                  fbc=None):
        """Velocity at step i, with true CFG ``v_neg + s·(v − v_neg)`` when it runs; each pass in
        its own first-block-cache stream when ``fbc`` is given."""
        from contextlib import nullcontext

        stream = fbc.stream if fbc is not None else (lambda _key: nullcontext())
        transformer = self.c["transformer"]
        timestep = st["timesteps"][i].expand(latents.shape[0]).to(latents.dtype)
        # The transformer multiplies by 1000 again; t/1000 is taken in the latents' dtype.
        model_t = timestep if fault == "timestep_not_divided" else timestep / 1000
        common = dict(hidden_states=latents, timestep=model_t, guidance=st["guidance"],
                      img_ids=st["img_ids"], return_dict=False)
        with stream("cond"):
            v = transformer(pooled_projections=st["pooled"], encoder_hidden_states=st["embeds"],
                            txt_ids=st["txt_ids"], **common)[0]
        if st["true_cfg"]:
            with stream("uncond"):
                v_neg = transformer(pooled_projections=st["neg_pooled"],
                                    encoder_hidden_states=st["neg_embeds"],
                                    txt_ids=st["neg_txt_ids"], **common)[0]
            v = v_neg + ctx.true_cfg_scale * (v - v_neg)
        return v

    def _warm_step(self, ctx: PixelContext) -> None:
        st = self._prepare(ctx, None)
        x = self._step(ctx, st, st["latents"], 0, None)
        self._unpack(x, *self.rules.latent_size(ctx.height, ctx.width))
