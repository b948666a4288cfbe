"""The Wan denoise loop over a VideoPixelContext, calling only the model components.

Copies WanPipeline / WanImageToVideoPipeline's arithmetic: UMT5 ``last_hidden_state`` of the
padded prompt with the rows past its length zeroed; CFG (``guidance_scale > 1``) as two
transformer calls, ``v = v_neg + g·(v − v_neg)``; Wan 2.2's two experts switched at the boundary
timestep (``t >= boundary`` runs ``transformer`` with ``guidance_scale``, else ``transformer_2``
with ``guidance_scale_2``); image-to-video's condition (the first frame VAE-encoded with zeros
behind it, ``(z − mean)·(1/std)``, and the frame mask) concatenated to the latents, plus CLIP
image embeddings where the transformer takes them; the UniPC step from the context's coefficient
table (the fused numba kernel on CPU float32, the same expressions in torch elsewhere), or
FlowMatchEuler's; decode ``x / (1/std) + mean`` → VAE → ``(x·0.5+0.5).clamp(0,1)``. The
first-block cache wraps ``transformer``'s ``blocks`` (Wan 2.2: the high-noise expert only, as
diffusers' hook on ``pipe.transformer``), streams "cond" / "uncond" as the pipelines name them.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np

from harness.pipelines.denoise import DenoiserBase, PixelResult

from .loading import load_components

__all__ = ["WanDenoiser", "PixelResult", "LOOP_FAULTS"]

#: Deliberately wrong variants, for the parity tests' negative controls only.
LOOP_FAULTS = ("no_corrector", "euler_step", "no_boundary_switch", "decode_multiply_std",
               "embeds_not_zeroed", "i2v_no_mask")


def _mean_std(vae, like):
    import torch

    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(like.device, like.dtype)
    recip = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(like.device,
                                                                              like.dtype)
    return mean, recip


class WanDenoiser(DenoiserBase):
    """Runs VideoPixelContexts of one loaded Wan model (CPU or CUDA, float32 or bfloat16)."""

    load_components = staticmethod(load_components)
    LOOP_FAULTS = LOOP_FAULTS
    CACHE_BLOCKS = ("blocks",)
    OFFLOAD_ORDER = ("text_encoder", "image_encoder", "transformer", "transformer_2", "vae")

    # ---------------------------------------------------------------------------------- inputs
    def encode_prompt(self, tokens: np.ndarray, mask: np.ndarray, n: int,
                      fault: str | None = None):
        """(n, 512, D) embeddings as WanPipeline._get_t5_prompt_embeds: the encoder on the padded
        ids with the int64 mask, rows past the prompt zeroed, repeated per video."""
        import torch

        te = self.c["text_encoder"]
        ids = torch.from_numpy(np.array(tokens, dtype=np.int64))[None].to(te.device)
        m = torch.from_numpy(np.array(mask, dtype=np.int64))[None].to(te.device)
        hidden = te(ids, m).last_hidden_state.to(dtype=te.dtype, device=self.device)
        length = int(np.asarray(mask).sum())
        u = hidden[0]
        if fault != "embeds_not_zeroed":
            u = torch.cat([u[:length], u.new_zeros(u.shape[0] - length, u.shape[1])])
        embeds = u[None]
        return embeds.repeat(1, n, 1).view(n, embeds.shape[1], -1)

    def _image_embeds(self, ctx):
        """CLIP ``hidden_states[-2]`` of the processor's pixels (Wan 2.1 image-to-video)."""
        import torch

        pixels = ctx.extra_model_args.get("clip_pixel_values")
        if pixels is None:
            return None
        enc = self.c["image_encoder"]
        px = torch.from_numpy(np.asarray(pixels, dtype=np.float32)).to(enc.device)
        return enc(pixel_values=px, output_hidden_states=True).hidden_states[-2].to(self.device)

    def _condition(self, ctx, n: int, fault: str | None):
        """(n, 4 + z, F', h, w): the frame mask and the VAE latents of the first frame followed
        by zeros, as WanImageToVideoPipeline.prepare_latents builds them."""
        import torch

        vae = self.c["vae"]
        pixels = np.asarray(ctx.extra_model_args["image_nhwc"], dtype=np.float32)
        # An NCHW view of NHWC pixels, as VaeImageProcessor hands it on, then the frame axis.
        image = torch.empty(pixels.shape, dtype=torch.float32).copy_(torch.from_numpy(pixels))
        image = image.permute(0, 3, 1, 2).to(self.device).unsqueeze(2)
        frames, height, width = ctx.num_frames, ctx.height, ctx.width
        video = torch.cat([image, image.new_zeros(image.shape[0], image.shape[1], frames - 1,
                                                  height, width)], dim=2)
        video = video.to(device=vae.device, dtype=vae.dtype)
        z = vae.encode(video).latent_dist.mode()
        z = z.repeat(n, 1, 1, 1, 1).to(device=self.device, dtype=torch.float32)
        mean, recip = _mean_std(vae, z)
        z = (z - mean) * recip
        k = self.rules.vae_scale_factor_temporal
        h, w = z.shape[-2:]
        mask = torch.ones(n, 1, frames, h, w)
        mask[:, :, 1:] = 0
        if fault == "i2v_no_mask":
            mask[:] = 0
        first = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=k)
        mask = torch.concat([first, mask[:, :, 1:]], dim=2)
        mask = mask.view(n, -1, k, h, w).transpose(1, 2).to(z.device)
        return torch.concat([mask, z], dim=1)

    def _table(self, ctx, fault: str | None) -> np.ndarray:
        """The context's UniPC table; on CUDA recomputed with the device's log/expm1, as the
        scheduler computes its coefficients on the latents' device."""
        table = np.array(ctx.step_coefficients, dtype=np.float32)
        if self.device.type != "cpu" and table.size:
            import torch

            dev = self.device

            def on(name):
                fn = getattr(torch, name)
                return lambda a: fn(torch.from_numpy(a).to(dev)).cpu().numpy()

            table = self.rules.coefficients(np.asarray(ctx.sigmas, np.float32), log=on("log"),
                                            expm1=on("expm1"))
        if fault == "no_corrector" and table.size:
            from _fast.unipc import C_ORDER

            table[:, C_ORDER] = 0
        return table

    def _prepare(self, ctx, fault: str | None = None, *, encode_image: bool = True) -> dict:
        """Everything the steps reuse: embeddings, condition, schedule, start latents."""
        import torch

        n = ctx.num_images_per_prompt
        t_dtype = self.c["transformer"].dtype
        st: dict[str, Any] = {"n": n, "cfg": ctx.negative_tokens is not None,
                              "unipc": ctx.step_coefficients.size > 0 and fault != "euler_step"}
        st["embeds"] = self.encode_prompt(ctx.tokens.all, ctx.mask, n, fault).to(t_dtype)
        if st["cfg"]:
            st["neg_embeds"] = self.encode_prompt(ctx.negative_tokens.all, ctx.negative_mask, n,
                                                  fault).to(t_dtype)
        st["image_embeds"] = None
        if "clip_pixel_values" in ctx.extra_model_args:
            st["image_embeds"] = self._image_embeds(ctx).repeat(1, 1, 1).to(t_dtype)
        st["latents"] = torch.from_numpy(np.array(ctx.latents, dtype=np.float32)).to(self.device)
        st["condition"] = None
        if "image_nhwc" in ctx.extra_model_args:
            if encode_image:
                st["condition"] = self._condition(ctx, n, fault)
            else:  # warm-up: the right shape is enough
                shape = list(ctx.latents.shape)
                shape[1] += 4
                st["condition"] = torch.zeros(shape, device=self.device)
        ts = np.asarray(ctx.timesteps)
        # UniPC's timesteps are int64 in the pipeline (whole numbers in the context).
        st["timesteps"] = torch.from_numpy(ts.astype(np.int64) if st["unipc"] else ts).to(
            self.device)
        st["sigmas"] = torch.from_numpy(np.asarray(ctx.sigmas, np.float32)).to(self.device)
        st["table"] = self._table(ctx, fault) if st["unipc"] else None
        st["last"] = st["m1"] = st["m2"] = None
        return st

    # ---------------------------------------------------------------------------------- steps
    def _expert(self, ctx, st: dict, i: int, fault: str | None):
        """(model, guidance) at step i: the boundary switch of Wan 2.2's two experts."""
        b = ctx.boundary_timestep
        t = float(ctx.timesteps[i])
        if b is None or t >= b or fault == "no_boundary_switch":
            return self.c["transformer"], ctx.guidance_scale
        return self.c["transformer_2"], ctx.guidance_scale_2

    def _velocity(self, ctx, st: dict, latents, i: int, fault: str | None, fbc=None):
        model, g = self._expert(ctx, st, i, fault)
        stream = fbc.stream if fbc is not None else (lambda _key: nullcontext())
        x = latents if st["condition"] is None else __import__("torch").cat(
            [latents, st["condition"]], dim=1)
        x = x.to(model.dtype)
        timestep = st["timesteps"][i].expand(latents.shape[0])
        common = dict(hidden_states=x, timestep=timestep,
                      encoder_hidden_states_image=st["image_embeds"], attention_kwargs=None,
                      return_dict=False)
        with stream("cond"):
            v = model(encoder_hidden_states=st["embeds"], **common)[0]
        if st["cfg"]:
            with stream("uncond"):
                v_neg = model(encoder_hidden_states=st["neg_embeds"], **common)[0]
            v = v_neg + g * (v - v_neg)
        return v

    def _step(self, ctx, st: dict, latents, i: int, fault: str | None, fbc=None):
        """Latents after step i: the velocity, then UniPC (or Euler) on float32 latents."""
        v = self._velocity(ctx, st, latents, i, fault, fbc)
        if not st["unipc"]:
            sig, host = st["sigmas"], ctx.sigmas
            return self._euler(latents, v, sig[i], sig[i + 1], float(host[i]),
                               float(host[i + 1]))
        row = st["table"][i]
        prev = [latents if a is None else a for a in (st["last"], st["m1"], st["m2"])]
        if self._host_f32 and v.dtype == latents.dtype:
            import torch

            from _fast.unipc import unipc_step

            out = unipc_step(row, latents.numpy(), v.numpy(), *(p.numpy() for p in prev))
            xn, xc, m = (torch.from_numpy(a) for a in out)
        else:
            xn, xc, m = _unipc_torch(row, latents, v, *prev)
        st["last"], st["m2"], st["m1"] = xc, st["m1"], m
        return xn

    def _decode(self, latents, ctx, fault: str | None = None):
        """``x / (1/std) + mean`` → VAE → ``(x·0.5+0.5).clamp(0,1)``; frames (B, F, H, W, 3)."""
        vae = self.c["vae"]
        x = latents.to(vae.device, dtype=vae.dtype)
        mean, recip = _mean_std(vae, x)
        if fault == "decode_multiply_std":
            x = x * (1.0 / recip) + mean
        else:
            x = x / recip + mean
        video = vae.decode(x, return_dict=False)[0]
        frames = (video.permute(0, 2, 1, 3, 4) * 0.5 + 0.5).clamp(0, 1)
        decoded = frames.cpu().permute(0, 1, 3, 4, 2).float().numpy()
        return (decoded * 255).round().astype(np.uint8), decoded

    def _warm_step(self, ctx) -> None:
        """One step without the VAE (the I2V condition is zeros of the right shape)."""
        with self._cache(ctx) as fbc:
            st = self._prepare(ctx, None, encode_image=False)
            self._step(ctx, st, st["latents"], 0, None, fbc)


def _unipc_torch(row, x, v, last, m1, m2):
    """The UniPC step as UniPCMultistepScheduler writes it, with 0-d float32 coefficients on the
    latents' device (a bfloat16 model output promotes as in diffusers)."""
    import torch

    from _fast import unipc as u

    def c(k):
        return torch.tensor(float(row[k]), dtype=torch.float32, device=x.device)

    m = x - c(u.SIGMA) * v
    order_c, order_p = int(row[u.C_ORDER]), int(row[u.P_ORDER])
    if order_c:
        corr = c(u.C_RHO0) * ((m2 - m1) / c(u.C_RK)) if order_c == 2 else 0
        xc = (c(u.C_X) * last - c(u.C_M) * m1) - c(u.C_B) * (corr + c(u.C_RHOL) * (m - m1))
        xc = xc.to(x.dtype)
    else:
        xc = x
    base = c(u.P_X) * xc - c(u.P_M) * m
    if order_p == 2:
        xn = base - c(u.P_B) * (c(u.P_RHO) * ((m1 - m) / c(u.P_RK)))
    else:
        xn = base - c(u.P_B) * 0
    return xn.to(x.dtype), xc, m
