"""The Z-Image denoise loop over a PixelContext, calling only the model components.

Copies ZImagePipeline's arithmetic: Qwen3 ``hidden_states[-2]`` of the masked tokens; the model
time reversed, ``(1000 − t) / 1000``; CFG (``guidance_scale > 0``) as one batched ``[pos; neg]``
transformer call, ``pred = pos + g·(pos − neg)``, optional norm cap (``cfg_normalization``) and
positive-only steps past ``cfg_truncation``; the output negated before the Euler step; latents in
float32 throughout. An optional first-block cache (``harness.pipelines.fbcache``) wraps the main
``layers``; each transformer call kind (``cfg`` batch, ``cond`` only) is its own cache stream.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from harness.context import PixelContext
from harness.pipelines.denoise import DenoiserBase, PixelResult

from .loading import load_components

__all__ = ["ZImageDenoiser", "PixelResult", "LOOP_FAULTS"]

#: Deliberately wrong variants, for the parity tests' negative controls only.
LOOP_FAULTS = ("time_not_reversed", "output_not_negated")


class ZImageDenoiser(DenoiserBase):
    """Runs PixelContexts of one loaded Z-Image model (CPU or CUDA, float32 or bfloat16).

    ``first_block_cache=True`` turns the cache on for every request (threshold: the request's,
    else the family default); a request with ``residual_threshold`` turns it on by itself.
    """

    load_components = staticmethod(load_components)
    LOOP_FAULTS = LOOP_FAULTS
    CACHE_BLOCKS = ("layers",)

    # ---------------------------------------------------------------------------------- pieces
    def encode_prompt(self, tokens: np.ndarray, mask: np.ndarray):
        """(L_valid, D) embeddings: ``hidden_states[-2]`` rows of the unmasked tokens, computed
        on the padded sequence exactly as ZImagePipeline._encode_prompt (padding changes bits)."""
        import torch

        te = self.c["text_encoder"]
        ids = torch.from_numpy(np.array(tokens, dtype=np.int64))[None].to(te.device)
        m = torch.from_numpy(np.array(mask, dtype=bool))[None].to(te.device)
        hidden = te(input_ids=ids, attention_mask=m, output_hidden_states=True).hidden_states[-2]
        return hidden[0][m[0]]

    def _euler(self, x, v, sigma, sigma_next, s: float, s_next: float):
        """FlowMatchEulerDiscreteScheduler.step: ``(x.float() + dt·v).to(v.dtype)``, v float32
        (img2img start latents are in the prompt dtype; every later step is float32)."""
        import torch

        x = x.to(torch.float32)
        if self.device.type == "cpu":  # latents are float32 whatever the model dtype
            from _fast import euler_step

            return torch.from_numpy(euler_step(x.numpy(), v.numpy(), s, s_next))
        return (x + (sigma_next - sigma) * v).to(v.dtype)

    def _initial_latents(self, ctx: PixelContext, n: int):
        """(B, C, h, w) float32 start latents: the noise, or for img2img
        ``σ_start·noise + (1−σ_start)·z`` with z the VAE posterior sample (scale_noise)."""
        import torch

        extra = ctx.extra_model_args
        if "image_nhwc" not in extra:
            return torch.from_numpy(np.array(ctx.latents, dtype=np.float32)).to(self.device)
        vae = self.c["vae"]
        text_dtype = self.c["text_encoder"].dtype  # prompt_embeds[0].dtype in the pipeline
        # An NCHW view of freshly allocated NHWC pixels, exactly as VaeImageProcessor makes it
        # (the convolution path, and so the bits, follow the strides; see pipelines/flux.py).
        pixels = np.asarray(extra["image_nhwc"], dtype=np.float32)
        image = torch.empty(pixels.shape, dtype=torch.float32).copy_(torch.from_numpy(pixels))
        image = image.permute(0, 3, 1, 2).to(device=self.device, dtype=text_dtype)
        dist = vae.encode(image).latent_dist
        sample = torch.from_numpy(extra["vae_sample_noise"]).to(dist.parameters.device,
                                                                 dist.parameters.dtype)
        z = dist.mean + dist.std * sample  # DiagonalGaussianDistribution.sample
        z = (z - vae.config.shift_factor) * vae.config.scaling_factor
        if n > z.shape[0]:
            z = torch.cat([z] * (n // z.shape[0]), dim=0)
        noise = torch.from_numpy(ctx.latents).to(device=self.device, dtype=text_dtype)
        sigma = torch.from_numpy(ctx.sigmas[:1]).to(device=self.device, dtype=z.dtype)
        sigma = sigma.expand(n)[:, None, None, None]
        return sigma * noise + (1.0 - sigma) * z

    def _decode(self, latents, ctx: PixelContext, fault: str | None = None):
        """``x / scaling + shift`` → VAE → ``(x·0.5+0.5).clamp(0,1)`` → uint8, as diffusers."""
        vae = self.c["vae"]
        x = latents.to(vae.dtype)
        x = x / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(x.to(vae.device), return_dict=False)[0]
        image = (image * 0.5 + 0.5).clamp(0, 1)
        decoded = image.cpu().permute(0, 2, 3, 1).float().numpy()
        return (decoded * 255).round().astype(np.uint8), decoded

    def _prepare(self, ctx: PixelContext, fault: str | None = None) -> dict:
        """Everything the steps reuse: embeddings, schedule, model times, start latents."""
        import torch

        n = ctx.num_images_per_prompt
        st: dict[str, Any] = {"n": n, "cfg": ctx.negative_tokens is not None}
        pos = self.encode_prompt(ctx.tokens.all, ctx.mask)
        st["pos"] = [pos] * n
        st["neg"] = []
        if st["cfg"]:
            neg = self.encode_prompt(ctx.negative_tokens.all, ctx.negative_mask)
            st["neg"] = [neg] * n
        st["latents"] = self._initial_latents(ctx, n)
        st["timesteps"] = torch.from_numpy(ctx.timesteps).to(self.device)
        st["sigmas"] = torch.from_numpy(ctx.sigmas).to(self.device)
        # The pipeline compares Python floats of the float32 model times with cfg_truncation.
        st["t_norms"] = [float(t) for t in self.rules.model_times(ctx.timesteps)]
        return st

    def _guidance_at(self, ctx: PixelContext, st: dict, i: int) -> float:
        """The step's guidance: 0 past ``cfg_truncation`` (only when it is <= 1, as diffusers)."""
        g = ctx.guidance_scale
        trunc = ctx.cfg_truncation
        if st["cfg"] and trunc is not None and float(trunc) <= 1 and st["t_norms"][i] > trunc:
            return 0.0
        return g

    def _velocity(self, ctx: PixelContext, st: dict, latents, i: int, fault: str | None, fbc):
        """The negated model output at step i (what the Euler step takes) and the call kind."""
        import torch

        transformer = self.c["transformer"]
        n = st["n"]
        t = st["timesteps"][i].expand(latents.shape[0])
        timestep = t / 1000 if fault == "time_not_reversed" else (1000 - t) / 1000
        g = self._guidance_at(ctx, st, i)
        apply_cfg = st["cfg"] and g > 0
        x = latents.to(transformer.dtype)
        if apply_cfg:
            x, caps, timestep = x.repeat(2, 1, 1, 1), st["pos"] + st["neg"], timestep.repeat(2)
        else:
            caps = st["pos"]
        x_list = list(x.unsqueeze(2).unbind(dim=0))
        with fbc.stream("cfg" if apply_cfg else "cond"):
            out = transformer(x_list, timestep, caps, return_dict=False)[0]
        if apply_cfg:
            preds = []
            for j in range(n):
                pos, neg = out[j].float(), out[n + j].float()
                pred = pos + g * (pos - neg)
                norm = ctx.cfg_normalization
                if norm and float(norm) > 0.0:  # ‖pred‖ <= factor·‖pos‖, whole tensor
                    pos_norm = torch.linalg.vector_norm(pos)
                    new_norm = torch.linalg.vector_norm(pred)
                    bound = pos_norm * float(norm)
                    if new_norm > bound:
                        pred = pred * (bound / new_norm)
                preds.append(pred)
            v = torch.stack(preds, dim=0)
        else:
            v = torch.stack([o.float() for o in out], dim=0)
        v = v.squeeze(2)
        v = v if fault == "output_not_negated" else -v
        return v.to(torch.float32)

    def _warm_step(self, ctx: PixelContext) -> None:
        with self._cache(ctx) as fbc:
            st = self._prepare(ctx)
            self._step(ctx, st, st["latents"], 0, None, fbc)
