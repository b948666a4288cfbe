"""What the pixel denoise loops share: ``PixelResult``, ``sync`` and ``DenoiserBase`` (construction,
timed loading, warm-up, the timed step loop); each family module keeps its model-specific steps.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.context import PixelContext

__all__ = ["PixelResult", "DenoiserBase", "sync"]


@dataclass
class PixelResult:
    """What one request produced: uint8 images, the final packed latents and timings (seconds)."""

    images: np.ndarray                 # (N, H, W, 3) uint8
    final_latents: np.ndarray          # packed (N, seq, 4C), float32 copy of the model dtype values
    timesteps: np.ndarray              # the timesteps actually run
    step_latents: list[np.ndarray] = field(default_factory=list)  # after each step, if recorded
    initial_latents: np.ndarray | None = None  # packed start latents, if recorded
    decoded: np.ndarray | None = None  # (N, H, W, 3) float32 in [0, 1], before quantisation
    timings: dict[str, Any] = field(default_factory=dict)
    cache: dict | None = None          # first-block cache stats (FirstBlockCache.stats), if it ran
    memory: dict | None = None         # per-phase memory figures (harness.memory.MemoryMeter)


def sync(device) -> None:
    """Wait for queued CUDA work, so that timings cover it; a no-op elsewhere."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _host(latents) -> np.ndarray:
    return latents.float().cpu().numpy().copy()


class _TransformerClock:
    """Seconds spent inside ``module``'s forward calls (forward pre/post hooks; on CUDA each
    boundary synchronises, so the figure is device time, not launch time)."""

    def __init__(self, module, device) -> None:
        self.module, self.device, self.seconds = module, device, 0.0
        self._handles: list = []
        self._t = 0.0

    def _pre(self, *_args) -> None:
        sync(self.device)
        self._t = time.perf_counter()

    def _post(self, *_args) -> None:
        sync(self.device)
        self.seconds += time.perf_counter() - self._t

    def __enter__(self):
        if self.module is not None:
            self._handles = [self.module.register_forward_pre_hook(self._pre),
                             self.module.register_forward_hook(self._post)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()


class DenoiserBase:
    """Runs PixelContexts of one loaded model (CPU or CUDA, float32 or bfloat16).

    A family subclass (in ``models/<family>/loop.py``) sets ``LOOP_FAULTS``, and supplies
    ``load_components`` (its folder → modules loader), ``_prepare``, ``_velocity``, ``_decode``
    and ``_warm_step``.
    """

    #: Deliberately wrong variants, for the parity tests' negative controls only.
    LOOP_FAULTS: tuple[str, ...] = ()
    #: The ModuleLists the first-block cache spans (None: FirstBlockCache's default).
    CACHE_BLOCKS: tuple[str, ...] | None = None
    #: ``--offload model``: the components in the order the pipeline calls them (its
    #: ``model_cpu_offload_seq``; components not named follow in load order).
    OFFLOAD_ORDER: tuple[str, ...] = ("text_encoder", "text_encoder_2", "image_encoder",
                                      "transformer", "vae")

    def __init__(self, components: dict, rules, *, device: str = "cpu", dtype: str = "float32",
                 progress: bool = True, first_block_cache: bool = False):
        import torch

        from harness.env import torch_dtype

        self.c = components
        self.rules = rules
        self.device = torch.device(device)
        self.dtype = torch_dtype(dtype)
        self.progress = progress
        #: Run the first-block cache at the family default when a request gives no threshold.
        self.first_block_cache = first_block_cache
        # The numba kernels are exact float32 data movement / arithmetic on host memory.
        self._host_f32 = self.device.type == "cpu" and self.dtype == torch.float32
        self.load_s = 0.0
        from harness.workstation import Modes

        self.modes = Modes()
        #: What the libraries logged while loading (quantizers, optional kernels), not printed.
        self.load_log: list[str] = []
        self.load_memory: dict | None = None

    @classmethod
    def from_folder(cls, folder, rules, *, device: str = "cpu", dtype: str = "float32",
                    progress: bool = True, first_block_cache: bool = False, modes=None):
        """Load the components of ``folder`` and time it (``load_s``). ``modes``
        (``harness.workstation.Modes``): quantize at load, install the offload hooks (loading
        on the CPU first), mark the transformer's repeated blocks for regional compile."""
        from harness.memory import MemoryMeter
        from harness.workstation import Modes, apply_offload, quiet_imports

        modes = modes or Modes()
        meter = MemoryMeter(device)
        t0 = time.perf_counter()
        kw = {"quantize": modes.quantize} if modes.quantize else {}
        with meter.phase("load"), quiet_imports() as log:
            comps = cls.load_components(
                folder, device="cpu" if modes.offload != "none" else device, dtype=dtype, **kw)
            apply_offload(comps, modes.offload, device, cls.OFFLOAD_ORDER)
            if modes.compile:
                comps["transformer"].compile_repeated_blocks(fullgraph=True)
            sync(device)
        self = cls(comps, rules, device=device, dtype=dtype, progress=progress,
                   first_block_cache=first_block_cache)
        self.load_s = time.perf_counter() - t0
        self.modes, self.load_log = modes, log
        self.load_memory = meter.phases["load"]
        return self

    @staticmethod
    def load_components(folder, *, device: str, dtype: str) -> dict:
        """``{name: module}`` of a model folder (the family's own loader)."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------- steps
    def _euler(self, x, v, sigma, sigma_next, s: float, s_next: float):
        """FlowMatchEulerDiscreteScheduler.step: ``(x.float() + dt·v).to(v.dtype)``, dt float32.

        On CPU float32 the numba kernel (same two roundings) is ~1.7x faster than the torch ops.
        """
        import torch

        if self._host_f32:
            from _fast import euler_step

            return torch.from_numpy(euler_step(x.numpy(), v.numpy(), s, s_next))
        dt = sigma_next - sigma  # 0-d float32: dt·v stays in v's dtype (no promotion)
        return (x.to(torch.float32) + dt * v).to(v.dtype)

    def _step(self, ctx: PixelContext, st: dict, latents, i: int, fault: str | None, fbc=None):
        """Latents after step i: the family's velocity, then the Euler step."""
        v = self._velocity(ctx, st, latents, i, fault, fbc)
        sig, host = st["sigmas"], ctx.sigmas
        return self._euler(latents, v, sig[i], sig[i + 1], float(host[i]), float(host[i + 1]))

    def _cache(self, ctx: PixelContext):
        """The request's first-block cache (a no-op without a threshold)."""
        from .fbcache import FirstBlockCache, resolve_threshold

        threshold = resolve_threshold(ctx.residual_threshold, self.rules,
                                      enabled=self.first_block_cache)
        return FirstBlockCache(self.c["transformer"], threshold, blocks=self.CACHE_BLOCKS)

    # ---------------------------------------------------------------------------------- run
    def warm_up(self, ctx: PixelContext) -> float:
        """One untimed step on the request's shapes (first-call costs, kernel cache loads), no
        VAE decode; returns seconds."""
        import torch

        t0 = time.perf_counter()
        with torch.no_grad():
            self._warm_step(ctx)
        sync(self.device)
        return time.perf_counter() - t0

    def __call__(self, ctx: PixelContext, *, record_steps: bool = False,
                 fault: str | None = None) -> PixelResult:
        """Denoise ``ctx`` and decode; ``fault`` (test-only, one of LOOP_FAULTS) breaks one rule.

        With the first-block cache on, ``result.cache`` holds its statistics (else None).
        """
        if fault is not None and fault not in self.LOOP_FAULTS:
            raise ValueError(f"unknown loop fault {fault!r}; known: {', '.join(self.LOOP_FAULTS)}")
        import torch
        from tqdm.auto import tqdm

        from harness.memory import MemoryMeter

        fbc = self._cache(ctx)
        meter = MemoryMeter(self.device)
        t_total = time.perf_counter()
        timings: dict[str, Any] = {}
        with torch.no_grad(), fbc:
            with meter.phase("text_encoders"):
                st = self._prepare(ctx, fault)
                latents = st["latents"]
                initial = _host(latents) if record_steps else None
                sync(self.device)
            timings["prepare_s"] = time.perf_counter() - t_total

            steps_s, recorded = [], []
            count = len(ctx.timesteps)
            bar = tqdm(total=count, desc="denoise", unit="step", leave=False,
                       disable=not self.progress)
            clock = _TransformerClock(self.c.get("transformer"), self.device)
            with meter.phase("denoise"), clock:
                for i in range(count):
                    t_step = time.perf_counter()
                    latents = self._step(ctx, st, latents, i, fault, fbc)
                    if record_steps:
                        recorded.append(_host(latents))
                    sync(self.device)
                    steps_s.append(time.perf_counter() - t_step)
                    bar.update()
            bar.close()
            timings["steps_s"] = steps_s
            # time inside the transformer's forward calls during the steps: the rest of a step
            # (scheduler, packing, CFG combine, cache checks) is the loop's own overhead
            timings["transformer_s"] = clock.seconds

            t0 = time.perf_counter()
            with meter.phase("decode"):
                images, decoded = self._decode(latents, ctx, fault)
            timings["decode_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_total
        return PixelResult(
            images=images, decoded=decoded, final_latents=_host(latents),
            timesteps=np.array(ctx.timesteps), step_latents=recorded, initial_latents=initial,
            timings=timings, cache=fbc.stats(), memory=meter.summary())
