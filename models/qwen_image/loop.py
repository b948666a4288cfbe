"""The Qwen-Image denoise loop (text-to-image and edit) over a PixelContext, model components only.

Prompt embeddings are the Qwen2.5-VL last hidden state with the template prefix dropped; the
transformer gets ``timestep / 1000`` and the image grids read back from the context's ids; true
CFG is ``comb = v_neg + s·(v − v_neg)`` rescaled per token to the conditional norm (``torch.norm``,
as the pipeline); edit models append the VAE latents of the conditioning images after the noise
tokens and keep the first ``seq`` outputs. Decoding divides by the reciprocal of ``latents_std``,
exactly like QwenImagePipeline. Layout constants come from the family rules. A first-block cache
(``fbcache``) runs when the context has a ``residual_threshold``, or at the family default when
``first_block_cache`` is switched on; streams "cond" / "uncond", as the pipelines name them.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from harness.context import PixelContext
from harness.pipelines.denoise import DenoiserBase, PixelResult

from .loading import load_components
from .rules import shapes_from_ids

__all__ = ["QwenImageDenoiser", "PixelResult", "LOOP_FAULTS"]

#: Deliberately wrong variants, for the parity tests' negative controls only.
LOOP_FAULTS = ("no_norm_rescale", "decode_multiply_std", "timestep_not_divided")


class QwenImageDenoiser(DenoiserBase):
    """Runs PixelContexts of one loaded Qwen-Image(-Edit) model (CPU or CUDA, float32/bfloat16)."""

    load_components = staticmethod(load_components)
    LOOP_FAULTS = LOOP_FAULTS

    # ---------------------------------------------------------------------------------- layout
    def _pack(self, x):
        """(B, C, 1, h, w) or (B, 1, C, h, w) → (B, seq, 4C) (QwenImagePipeline._pack_latents)."""
        import torch

        b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        c = x.shape[1] * x.shape[2]
        if self._host_f32:
            from _fast import pack_latents

            return torch.from_numpy(pack_latents(np.ascontiguousarray(x.numpy()).reshape(
                b, c, h, w)))
        x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // 2) * (w // 2), c * 4)

    def _unpack(self, x, h: int, w: int):
        """Tokens → (B, C, 1, h, w) (QwenImagePipeline._unpack_latents)."""
        import torch

        if self._host_f32:
            from _fast import qwen_unpack_latents

            return torch.from_numpy(qwen_unpack_latents(x.numpy(), h, w))
        b, _, f = x.shape
        x = x.view(b, h // 2, w // 2, f // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, f // 4, 1, h, w)

    # ---------------------------------------------------------------------------------- inputs
    def encode_prompt(self, tokens: np.ndarray, drop: int, n: int, extra: dict):
        """(n, L − drop, D) prompt embeddings as QwenImage*Pipeline.encode_prompt makes them."""
        import torch

        te = self.c["text_encoder"]
        ids = torch.from_numpy(np.array(tokens, dtype=np.int64))[None].to(self.device)
        kw: dict[str, Any] = {}
        if "pixel_values" in extra:  # the edit pipelines feed the processor's image inputs too
            kw["pixel_values"] = torch.from_numpy(extra["pixel_values"]).to(self.device)
            kw["image_grid_thw"] = torch.from_numpy(extra["image_grid_thw"]).to(self.device)
        out = te(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True,
                 **kw)
        embeds = out.hidden_states[-1][:, drop:].to(dtype=te.dtype, device=self.device)
        seq = embeds.shape[1]
        return embeds.repeat(1, n, 1).view(n, seq, -1)

    def _condition_latents(self, ctx: PixelContext, n: int):
        """Packed VAE latents of the conditioning images, ``(z_mode − mean) / std`` as
        QwenImageEdit(Plus)Pipeline._encode_vae_image, concatenated along the tokens."""
        import torch

        vae = self.c["vae"]
        z_dim = vae.config.z_dim
        packed = []
        for pixels in ctx.vae_condition_images:
            # An NCHW view of NHWC pixels, as VaeImageProcessor makes it (the strides select the
            # convolution path, hence the bits), plus the frame axis the pipeline unsqueezes.
            pixels = np.asarray(pixels, dtype=np.float32)
            image = torch.empty(pixels.shape, dtype=torch.float32).copy_(torch.from_numpy(pixels))
            image = image.permute(0, 3, 1, 2).unsqueeze(2).to(device=self.device, dtype=self.dtype)
            z = vae.encode(image).latent_dist.mode()
            mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(z.device,
                                                                                    z.dtype)
            std = torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(z.device, z.dtype)
            z = (z - mean) / std
            if n > z.shape[0]:
                z = torch.cat([z] * (n // z.shape[0]), dim=0)
            packed.append(self._pack(z.cpu() if self._host_f32 else z).to(self.device))
        return torch.cat(packed, dim=1)

    def _shapes(self, ctx: PixelContext) -> list[tuple[int, int, int]]:
        """The img_shapes the transformer builds its rope from, read back from the context's ids
        (and checked to rebuild them exactly), plus consistency with the latents."""
        from _fast import qwen_image_ids

        ids = np.asarray(ctx.latent_image_ids)
        shapes = shapes_from_ids(ids)
        if not np.array_equal(qwen_image_ids(shapes), ids):
            raise ValueError("latent_image_ids are not the centred Qwen-Image grid of "
                             f"{shapes} (the transformer's rope could not match them)")
        h, w = self.rules.latent_size(ctx.height, ctx.width)
        if shapes[0][1:] != (h // 2, w // 2) or ctx.latents.shape[1] != (h // 2) * (w // 2):
            raise ValueError(f"the first image grid {shapes[0]} does not match {ctx.height}x"
                             f"{ctx.width} and latents {ctx.latents.shape}")
        n_cond = len(ctx.vae_condition_images or [])
        if len(shapes) != 1 + n_cond:
            raise ValueError(f"the ids hold {len(shapes) - 1} conditioning grids for {n_cond} "
                             f"conditioning images")
        return shapes

    @staticmethod
    def _check_text_ids(name: str, ids: np.ndarray, length: int, shapes) -> None:
        from _fast import qwen_text_ids

        if not np.array_equal(np.asarray(ids), qwen_text_ids(length, shapes)):
            raise ValueError(f"{name} are not the Qwen-Image text positions of {length} tokens "
                             f"after {shapes}")

    def _prepare(self, ctx: PixelContext, fault: str | None, *, encode_images: bool = True) -> dict:
        """Everything the steps reuse: embeddings, image grids, schedule, start latents."""
        import torch

        n = ctx.num_images_per_prompt
        extra = ctx.extra_model_args
        drop = int(extra["drop_idx"])
        shapes = self._shapes(ctx)
        st: dict[str, Any] = {"true_cfg": ctx.negative_tokens is not None,
                              "img_shapes": [shapes]}
        st["embeds"] = self.encode_prompt(ctx.tokens.all, drop, n, extra)
        self._check_text_ids("text_ids", ctx.text_ids, st["embeds"].shape[1], shapes)
        if st["true_cfg"]:
            st["neg_embeds"] = self.encode_prompt(ctx.negative_tokens.all, drop, n, extra)
            self._check_text_ids("negative_text_ids", ctx.negative_text_ids,
                                 st["neg_embeds"].shape[1], shapes)
        dtype = st["embeds"].dtype  # prepare_latents uses the prompt-embedding dtype
        st["latents"] = torch.from_numpy(ctx.latents).to(device=self.device, dtype=dtype)
        st["cond"] = None
        if ctx.vae_condition_images:
            if encode_images:
                st["cond"] = self._condition_latents(ctx, n).to(dtype)
            else:  # warm-up: the right shapes are enough
                count = sum(f * h * w for f, h, w in shapes[1:])
                st["cond"] = torch.zeros((n, count, ctx.latents.shape[2]), dtype=dtype,
                                         device=self.device)
        st["timesteps"] = torch.from_numpy(ctx.timesteps).to(self.device)
        st["sigmas"] = torch.from_numpy(ctx.sigmas).to(self.device)
        return st

    def _velocity(self, ctx: PixelContext, st: dict, latents, i: int, fault: str | None,
                  fbc=None):
        """Velocity at step i; with true CFG the combination rescaled to the conditional norm.
        Each pass runs in its own first-block-cache stream when ``fbc`` is given."""
        from contextlib import nullcontext

        import torch

        stream = fbc.stream if fbc is not None else (lambda _key: nullcontext())
        transformer = self.c["transformer"]
        model_in = latents if st["cond"] is None else torch.cat([latents, st["cond"]], dim=1)
        timestep = st["timesteps"][i].expand(latents.shape[0]).to(latents.dtype)
        model_t = timestep if fault == "timestep_not_divided" else timestep / 1000
        common = dict(hidden_states=model_in, timestep=model_t, guidance=None,
                      encoder_hidden_states_mask=None, img_shapes=st["img_shapes"],
                      attention_kwargs={}, return_dict=False)
        seq = latents.shape[1]
        with stream("cond"):
            v = transformer(encoder_hidden_states=st["embeds"], **common)[0][:, :seq]
        if not st["true_cfg"]:
            return v
        with stream("uncond"):
            v_neg = transformer(encoder_hidden_states=st["neg_embeds"], **common)[0][:, :seq]
        comb = v_neg + ctx.true_cfg_scale * (v - v_neg)
        if fault == "no_norm_rescale":
            return comb
        cond_norm = torch.norm(v, dim=-1, keepdim=True)
        comb_norm = torch.norm(comb, dim=-1, keepdim=True)
        return comb * (cond_norm / comb_norm)

    def _decode(self, latents, ctx: PixelContext, fault: str | None):
        """unpack → ``x / (1/latents_std) + latents_mean`` → VAE (first frame) →
        ``(x·0.5+0.5).clamp(0,1)`` → uint8, as QwenImagePipeline and VaeImageProcessor do."""
        import torch

        vae = self.c["vae"]
        z_dim = vae.config.z_dim
        h, w = self.rules.latent_size(ctx.height, ctx.width)
        x = self._unpack(latents, h, w).to(vae.device).to(vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(x.device, x.dtype)
        if fault == "decode_multiply_std":
            std = torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(x.device,
                                                                                 x.dtype)
            x = x * std + mean
        else:
            recip = 1.0 / torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(
                x.device, x.dtype)
            x = x / recip + mean
        image = vae.decode(x, return_dict=False)[0][:, :, 0]
        image = (image * 0.5 + 0.5).clamp(0, 1)
        decoded = image.cpu().permute(0, 2, 3, 1).float().numpy()
        return (decoded * 255).round().astype(np.uint8), decoded

    # ---------------------------------------------------------------------------------- run
    def _warm_step(self, ctx: PixelContext) -> None:
        """Without the VAE: conditioning latents are zeros of the right shape."""
        st = self._prepare(ctx, None, encode_images=False)
        x = self._step(ctx, st, st["latents"], 0, None)
        self._unpack(x, *self.rules.latent_size(ctx.height, ctx.width))
