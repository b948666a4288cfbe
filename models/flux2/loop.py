"""The FLUX.2 denoise loop (Klein and dev layouts) over a PixelContext, calling only the models.

Prompt embeddings are the text encoder's hidden states of the rules' layers stacked on the feature
axis; the transformer gets ``timestep / 1000``, 4-axis int64 ids, reference-image tokens appended
after the noise tokens (output sliced back), Klein's CFG ``v_neg + g·(v − v_neg)`` or dev's
embedded guidance. Decoding scatters the tokens by their ids, undoes the VAE's latent BatchNorm,
unpatchifies and decodes. ``_fast`` kernels move the data on CPU float32; torch ops elsewhere.
There is no first-block cache here (``NO_FIRST_BLOCK_CACHE`` says why): a request asking for one
is refused.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from harness.context import PixelContext
from harness.errors import RequestError
from harness.pipelines.denoise import DenoiserBase, PixelResult

from .loading import load_components
from .rules import NO_FIRST_BLOCK_CACHE

__all__ = ["Flux2Denoiser", "PixelResult", "LOOP_FAULTS", "NO_FIRST_BLOCK_CACHE"]

#: Deliberately wrong variants, for the parity tests' negative controls only.
LOOP_FAULTS = ("timestep_not_divided", "guidance_x1000", "no_bn_denorm", "last_layer_only",
               "cfg_unguided")
class Flux2Denoiser(DenoiserBase):
    """Runs PixelContexts of one loaded FLUX.2 model (CPU or CUDA, float32 or bfloat16).

    ``first_block_cache`` is the loops' switch; FLUX.2 refuses it (NO_FIRST_BLOCK_CACHE).
    """

    LOOP_FAULTS = LOOP_FAULTS
    load_components = staticmethod(load_components)

    # ---------------------------------------------------------------------------------- layout
    def _patchify(self, x):
        import torch

        if self._host_f32:
            from _fast import patchify_latents

            return torch.from_numpy(patchify_latents(x.numpy()))
        b, c, h, w = x.shape  # Flux2Pipeline._patchify_latents
        x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, c * 4, h // 2, w // 2)

    def _unpatchify(self, x):
        import torch

        if self._host_f32:
            from _fast import unpatchify_latents

            return torch.from_numpy(unpatchify_latents(x.numpy()))
        b, c, h, w = x.shape  # Flux2Pipeline._unpatchify_latents
        x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c // 4, h * 2, w * 2)

    def _scatter(self, tokens, ids: np.ndarray, h2: int, w2: int):
        """Tokens (B, seq, C) → (B, C, h2, w2) at their ids (``_unpack_latents_with_ids``)."""
        import torch

        if self._host_f32:
            from _fast import scatter_by_ids

            return torch.from_numpy(scatter_by_ids(tokens.numpy(), ids, h2, w2))
        out = []
        pos = torch.from_numpy(np.ascontiguousarray(ids)).to(tokens.device)
        for data, p in zip(tokens, pos):
            flat = p[:, 1] * w2 + p[:, 2]
            o = torch.zeros((h2 * w2, data.shape[1]), device=data.device, dtype=data.dtype)
            o.scatter_(0, flat.unsqueeze(1).expand(-1, data.shape[1]), data)
            out.append(o.view(h2, w2, -1).permute(2, 0, 1))
        return torch.stack(out, dim=0)

    def _bn_stats(self, like):
        """(mean, std) of the VAE's latent BatchNorm as (1, 4C, 1, 1), std = sqrt(var + eps)."""
        import torch

        vae = self.c["vae"]
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
        return mean, std.to(like.device, like.dtype)

    # ---------------------------------------------------------------------------------- steps
    def encode_prompt(self, tokens: np.ndarray, mask: np.ndarray, n: int,
                      layers: tuple[int, ...]):
        """(n, L, len(layers)·D): the chosen hidden states stacked on the feature axis, as the
        pipelines' ``_get_qwen3_prompt_embeds`` / ``_get_mistral_3_small_prompt_embeds``."""
        import torch

        te = self.c["text_encoder"]
        ids = torch.from_numpy(np.array(tokens, dtype=np.int64))[None].to(te.device)
        attn = torch.from_numpy(np.asarray(mask).astype(np.int64))[None].to(te.device)
        out = te(input_ids=ids, attention_mask=attn, output_hidden_states=True, use_cache=False)
        x = torch.stack([out.hidden_states[k] for k in layers], dim=1)
        x = x.to(dtype=te.dtype, device=self.device)
        b, c, seq, d = x.shape
        x = x.permute(0, 2, 1, 3).reshape(b, seq, c * d)
        return x.repeat(1, n, 1).view(b * n, seq, -1)

    def _reference_latents(self, ctx: PixelContext, n: int):
        """Reference-image tokens (n, N, 128): VAE mode → patchify → BatchNorm-normalise → pack
        (``prepare_image_latents``), or None without reference images."""
        import torch

        extra = ctx.extra_model_args
        if not extra.get("reference_nhwc"):
            return None
        vae = self.c["vae"]
        packed = []
        for pixels in extra["reference_nhwc"]:
            pixels = np.asarray(pixels, dtype=np.float32)
            # An NCHW view of freshly allocated NHWC pixels, as VaeImageProcessor hands it over
            # (the convolutions choose their path, and with it the bits, from the strides).
            image = torch.empty(pixels.shape, dtype=torch.float32).copy_(torch.from_numpy(pixels))
            image = image.permute(0, 3, 1, 2).to(device=vae.device, dtype=vae.dtype)
            z = self._patchify(vae.encode(image).latent_dist.mode())
            mean, std = self._bn_stats(z)
            z = (z - mean) / std
            packed.append(z.reshape(1, z.shape[1], -1).permute(0, 2, 1).squeeze(0))
        tokens = torch.cat(packed, dim=0).unsqueeze(0).repeat(n, 1, 1)
        return tokens.to(self.device)

    def _prepare(self, ctx: PixelContext, fault: str | None) -> dict:
        """Everything the steps reuse: embeddings, ids, guidance, schedule, start latents."""
        import torch

        n = ctx.num_images_per_prompt
        layers = tuple(ctx.extra_model_args.get("text_layers") or self.rules.text_layers)
        if fault == "last_layer_only":
            layers = (layers[-1],) * len(layers)
        st: dict[str, Any] = {"cfg": ctx.negative_tokens is not None}
        st["embeds"] = self.encode_prompt(ctx.tokens.all, ctx.mask, n, layers)
        st["txt_ids"] = torch.from_numpy(ctx.text_ids).to(self.device)
        if st["cfg"]:
            st["neg_embeds"] = self.encode_prompt(ctx.negative_tokens.all, ctx.negative_mask, n,
                                                  layers)
            st["neg_txt_ids"] = torch.from_numpy(ctx.negative_text_ids).to(self.device)
        # diffusers packs the (B, 4C, h2, w2) noise as a transposed view: keep those strides for
        # the first x_embedder matmul (no bit difference measured on CPU; GEMM paths may differ).
        packed = np.ascontiguousarray(np.asarray(ctx.latents, dtype=np.float32).transpose(0, 2, 1))
        st["latents"] = torch.from_numpy(packed).permute(0, 2, 1).to(
            device=self.device, dtype=st["embeds"].dtype)
        img_ids = torch.from_numpy(ctx.latent_image_ids).to(self.device)
        st["seq"] = img_ids.shape[1]
        st["ref"] = self._reference_latents(ctx, n)
        if st["ref"] is not None:
            ref_ids = torch.from_numpy(ctx.extra_model_args["reference_ids"]).to(self.device)
            img_ids = torch.cat([img_ids, ref_ids], dim=1)
        st["img_ids"] = img_ids
        st["guidance"] = None
        if self.rules.passes_guidance:  # unscaled: the transformer multiplies by 1000 itself
            g = ctx.guidance_scale * (1000.0 if fault == "guidance_x1000" else 1.0)
            st["guidance"] = torch.full([1], g, device=self.device, dtype=torch.float32).expand(n)
        st["timesteps"] = torch.from_numpy(ctx.timesteps).to(self.device)
        st["sigmas"] = torch.from_numpy(ctx.sigmas).to(self.device)
        return st

    def _velocity(self, ctx: PixelContext, st: dict, latents, i: int, fault: str | None,
                  fbc=None):
        """Velocity of the noise tokens at step i, with Klein's CFG when it runs (``fbc`` is
        never on: see ``_cache``)."""
        import torch

        transformer = self.c["transformer"]
        timestep = st["timesteps"][i].expand(latents.shape[0]).to(latents.dtype)
        model_t = timestep if fault == "timestep_not_divided" else timestep / 1000
        x = latents.to(transformer.dtype)
        if st["ref"] is not None:
            x = torch.cat([latents, st["ref"]], dim=1).to(transformer.dtype)
        common = dict(hidden_states=x, timestep=model_t, guidance=st["guidance"],
                      img_ids=st["img_ids"], return_dict=False)
        seq = latents.shape[1]
        v = transformer(encoder_hidden_states=st["embeds"], txt_ids=st["txt_ids"],
                        **common)[0][:, :seq:]
        if st["cfg"]:
            v_neg = transformer(encoder_hidden_states=st["neg_embeds"], txt_ids=st["neg_txt_ids"],
                                **common)[0][:, :seq:]
            g = 1.0 if fault == "cfg_unguided" else ctx.guidance_scale
            v = v_neg + g * (v - v_neg)
        return v

    def _decode(self, latents, ctx: PixelContext, fault: str | None = None):
        """scatter by ids → ``x·sqrt(var+eps) + mean`` → unpatchify → VAE → uint8."""
        vae = self.c["vae"]
        h2, w2 = self.rules.token_grid(ctx.height, ctx.width)
        x = self._scatter(latents, ctx.latent_image_ids, h2, w2)
        if fault != "no_bn_denorm":
            mean, std = self._bn_stats(x)
            x = x * std + mean
        x = self._unpatchify(x)
        image = vae.decode(x.to(vae.device), return_dict=False)[0]
        image = (image * 0.5 + 0.5).clamp(0, 1)
        decoded = image.cpu().permute(0, 2, 3, 1).float().numpy()
        return (decoded * 255).round().astype(np.uint8), decoded

    def _cache(self, ctx: PixelContext):
        """Refuses a first-block cache (NO_FIRST_BLOCK_CACHE); else the base's no-op cache."""
        if ctx.residual_threshold is not None or self.first_block_cache:
            raise RequestError(NO_FIRST_BLOCK_CACHE)
        return super()._cache(ctx)

    def _warm_step(self, ctx: PixelContext) -> None:
        st = self._prepare(ctx, None)
        x = self._step(ctx, st, st["latents"], 0, None)
        self._scatter(x, ctx.latent_image_ids, *self.rules.token_grid(ctx.height, ctx.width))
