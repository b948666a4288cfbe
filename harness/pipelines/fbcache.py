"""First-block cache (pixel_pipelines.md §4) for any transformer whose blocks sit in ModuleLists.

Use in a denoise loop (one ``FirstBlockCache`` per request; no family names anywhere)::

    from harness.pipelines.fbcache import FirstBlockCache, resolve_threshold

    thr = resolve_threshold(ctx.residual_threshold, self.rules, enabled=self.first_block_cache)
    with FirstBlockCache(transformer, thr) as fbc:     # thr None → a no-op, nothing is wrapped
        for i in steps:
            with fbc.stream("cond"):                   # one state per CFG stream
                v = transformer(...)
            if cfg:
                with fbc.stream("uncond"):
                    v_neg = transformer(...)
    result.cache = fbc.stats()                         # JSON-ready dict, None when off

Inside the ``with``, the span's block modules get a temporary ``forward`` (restored on exit, even
on error). Per call of the transformer in stream ``key``: the head block always runs;
``r = head_out[hidden] − head_in[hidden]``, ``rel = mean|r − r_prev| / (mean|r_prev| + 1e-9)``
(tensor arithmetic in r's dtype, then ``.item()``), with ``r_prev`` the head residual of the
stream's last COMPUTED call. ``rel < threshold`` → reuse: the other blocks return their inputs and
the tail returns ``tail_residual + its input`` (= the new head output), for every output stream
(hidden and encoder states). Otherwise they run and the cache stores ``r``, the head output and
``tail_residual = tail_out − head_out``. The first call of a stream, and a call whose shapes differ
from the stored ones (e.g. a CFG batch that shrinks), always compute. This is diffusers'
``FirstBlockCacheConfig`` hook arithmetic operation for operation (same bits, tested); decisions
differ only at a tie (``rel < threshold`` vs diffusers' ``not rel > threshold``; the 1e-9 guard
moves rel by ~1e-9/mean|r_prev| relative) and for a NaN rel (we compute, diffusers reuses).

``blocks``: names of the ModuleLists forming the span, in call order (default: the transformer's
children named like diffusers' block lists — ``transformer_blocks``, ``single_transformer_blocks``,
``layers``, ``blocks``, ... — as ``apply_first_block_cache`` picks them). ``io``: a
``{block class or class name: BlockIO}`` override of how a block's outputs map to its inputs;
by default read from diffusers' ``TransformerBlockRegistry`` (a registered hidden-states name that
is not a parameter, like Z-Image's ``x``, falls back to the first parameter). Head and tail must
return the same named streams with the same shapes.

``stats()``: ``{"threshold", "head_block", "tail_block", "span_blocks", "computed", "reused",
"skipped_block_calls", "streams": {key: {"computed", "reused", "decisions" ("C"/"R" per call),
"rel" (per call, None when forced)}}}``. ``reset()`` forgets the per-stream state and counters.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

__all__ = ["FirstBlockCache", "BlockIO", "resolve_threshold", "BLOCK_LISTS", "DEFAULT_STREAM"]

#: ModuleList names holding transformer blocks (diffusers' _ALL_TRANSFORMER_BLOCK_IDENTIFIERS).
BLOCK_LISTS = ("blocks", "transformer_blocks", "single_transformer_blocks", "layers",
               "visual_transformer_blocks", "temporal_transformer_blocks")
#: The stream a call outside any ``stream()`` belongs to.
DEFAULT_STREAM = "default"


def resolve_threshold(requested: float | None, rules, *, enabled: bool = False) -> float | None:
    """The request's threshold; else the family default (``rules.default_residual_threshold``)
    when the loop has the cache switched on; else None (no cache)."""
    if requested is not None:
        return float(requested)
    if enabled:
        return float(rules.default_residual_threshold)
    return None


@dataclass(frozen=True)
class BlockIO:
    """How a block's output maps to its inputs: ``outputs[k]`` is the parameter that output
    element k updates; ``hidden`` is the one whose residual decides; ``tuple_output`` False for
    a block returning one tensor."""

    outputs: tuple[str, ...]
    hidden: str
    tuple_output: bool = True


def _params(cls) -> list[str]:
    return list(inspect.signature(cls.forward).parameters)[1:]  # skip self


def _registry_io(cls) -> BlockIO:
    """BlockIO from diffusers' TransformerBlockRegistry metadata for ``cls``."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    meta = TransformerBlockRegistry.get(cls)  # ValueError when not registered
    params = _params(cls)
    hidden = meta.hidden_states_argument_name
    if hidden not in params:
        hidden = params[0]
    if meta.return_encoder_hidden_states_index is None:
        return BlockIO((hidden,), hidden, tuple_output=False)
    hs, ehs = meta.return_hidden_states_index, meta.return_encoder_hidden_states_index
    names = [""] * (max(hs, ehs) + 1)
    names[hs], names[ehs] = hidden, meta.encoder_hidden_states_argument_name
    return BlockIO(tuple(names), hidden, tuple_output=True)


@dataclass
class _Stream:
    """Per-stream state and counters."""

    r_prev: Any = None
    head_out: dict | None = None      # name → tensor of the last computed call
    tail_res: tuple | None = None     # tail output layout, residual per element
    reuse: bool = False               # decision of the call in flight
    decisions: list[str] = field(default_factory=list)
    rel: list[float | None] = field(default_factory=list)


class _Block:
    """One wrapped block: its io map and the positional-parameter index table."""

    def __init__(self, name: str, module, io: BlockIO):
        self.name, self.module, self.io = name, module, io
        self.index = {p: i for i, p in enumerate(_params(type(module)))}
        missing = [p for p in io.outputs if p not in self.index]
        if missing:
            raise ValueError(f"block {name} ({type(module).__name__}) has no parameter "
                             f"{missing[0]!r}; pass io= for it")

    def arg(self, name: str, args, kwargs):
        if name in kwargs:
            return kwargs[name]
        i = self.index[name]
        if i >= len(args):
            raise ValueError(f"block {self.name} was called without {name!r}")
        return args[i]

    def split(self, out) -> tuple:
        return tuple(out) if self.io.tuple_output else (out,)

    def join(self, parts: Sequence):
        return tuple(parts) if self.io.tuple_output else parts[0]


class FirstBlockCache:
    """First-block cache over ``transformer``'s blocks; a context manager (see module notes)."""

    def __init__(self, transformer, threshold: float | None, *,
                 blocks: Sequence[str] | None = None,
                 io: Mapping[Any, BlockIO] | None = None):
        if threshold is not None and not threshold > 0:
            raise ValueError(f"residual threshold must be > 0, got {threshold!r}")
        self.transformer = transformer
        self.threshold = None if threshold is None else float(threshold)
        self._lists = tuple(blocks) if blocks is not None else None
        self._io = dict(io or {})
        self._blocks: list[_Block] = []
        self._saved: list[tuple[Any, bool, Any]] = []
        self._streams: dict[str, _Stream] = {}
        self._key = DEFAULT_STREAM

    @property
    def enabled(self) -> bool:
        return self.threshold is not None

    # ------------------------------------------------------------------------------ blocks
    def _block_io(self, module) -> BlockIO:
        cls = type(module)
        for key in (cls, cls.__name__):
            if key in self._io:
                return self._io[key]
        try:
            return _registry_io(cls)
        except ValueError:
            raise ValueError(f"no BlockIO known for {cls.__name__}; pass io={{"
                             f"{cls.__name__!r}: BlockIO(...)}}") from None

    def _span(self) -> list[_Block]:
        import torch

        names = self._lists
        if names is None:
            names = [n for n, m in self.transformer.named_children()
                     if n in BLOCK_LISTS and isinstance(m, torch.nn.ModuleList)]
        span = []
        for list_name in names:
            modules = getattr(self.transformer, list_name)
            span += [_Block(f"{list_name}.{i}", m, self._block_io(m))
                     for i, m in enumerate(modules)]
        if len(span) < 2:
            raise ValueError(f"a first-block cache needs at least 2 blocks, found {len(span)} "
                             f"in {list(names)}")
        return span

    def __enter__(self) -> "FirstBlockCache":
        if not self.enabled:
            return self
        if self._saved:
            raise RuntimeError("this FirstBlockCache is already installed")
        self._blocks = self._span()
        last = len(self._blocks) - 1
        try:
            for pos, b in enumerate(self._blocks):
                had = "forward" in b.module.__dict__  # e.g. another hook's instance forward
                self._saved.append((b.module, had, b.module.__dict__.get("forward")))
                orig = b.module.forward
                if pos == 0:
                    b.module.forward = self._head(b, orig)
                else:
                    b.module.forward = self._rest(b, orig, tail=pos == last)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        while self._saved:
            module, had, fwd = self._saved.pop()
            if had:
                module.forward = fwd
            else:
                module.__dict__.pop("forward", None)

    # ------------------------------------------------------------------------------ streams
    @contextmanager
    def stream(self, key: str) -> Iterator[None]:
        """Calls of the transformer inside belong to CFG stream ``key``."""
        prev, self._key = self._key, str(key)
        try:
            yield
        finally:
            self._key = prev

    def _state(self) -> _Stream:
        st = self._streams.get(self._key)
        if st is None:
            st = self._streams[self._key] = _Stream()
        return st

    def reset(self) -> None:
        self._streams.clear()

    # ------------------------------------------------------------------------------ forwards
    def _head(self, b: _Block, orig):
        def forward(*args, **kwargs):
            h_in = b.arg(b.io.hidden, args, kwargs)
            out = orig(*args, **kwargs)
            parts = b.split(out)
            h_out = parts[b.io.outputs.index(b.io.hidden)]
            r = h_out - h_in
            st = self._state()
            rel = None
            fresh = st.r_prev is None or st.r_prev.shape != r.shape
            if not fresh:
                num = (r - st.r_prev).abs().mean()
                den = st.r_prev.abs().mean()
                rel = (num / (den + 1e-9)).item()
            st.reuse = rel is not None and rel < self.threshold
            st.rel.append(rel)
            st.decisions.append("R" if st.reuse else "C")
            if not st.reuse:
                st.r_prev = r
                st.head_out = dict(zip(b.io.outputs, parts))
            return out

        return forward

    def _rest(self, b: _Block, orig, *, tail: bool):
        def forward(*args, **kwargs):
            st = self._state()
            if not st.reuse:
                out = orig(*args, **kwargs)
                if tail:
                    parts = b.split(out)
                    st.tail_res = tuple(self._tail_residual(b, parts, st.head_out))
                return out
            ins = [b.arg(n, args, kwargs) for n in b.io.outputs]
            if tail:
                ins = [res + x for res, x in zip(st.tail_res, ins)]
            return b.join(ins)

        return forward

    @staticmethod
    def _tail_residual(b: _Block, parts, head_out: dict):
        for name, t in zip(b.io.outputs, parts):
            h = head_out.get(name)
            if h is None or h.shape != t.shape:
                raise ValueError(
                    f"tail block {b.name} output {name!r} {tuple(t.shape)} has no head output of "
                    f"the same shape ({None if h is None else tuple(h.shape)}): the cached span "
                    f"must keep one layout; pass blocks= to choose it")
            yield t - h

    # ------------------------------------------------------------------------------ report
    def stats(self) -> dict | None:
        """Counters per stream (JSON-ready), or None when the cache is off."""
        if not self.enabled:
            return None
        streams = {}
        for key, st in self._streams.items():
            streams[key] = {"computed": st.decisions.count("C"),
                            "reused": st.decisions.count("R"),
                            "decisions": "".join(st.decisions), "rel": list(st.rel)}
        computed = sum(s["computed"] for s in streams.values())
        reused = sum(s["reused"] for s in streams.values())
        n = len(self._blocks) if self._blocks else len(self._span())
        return {
            "threshold": self.threshold,
            "head_block": self._blocks[0].name if self._blocks else None,
            "tail_block": self._blocks[-1].name if self._blocks else None,
            "span_blocks": n,
            "computed": computed, "reused": reused,
            "skipped_block_calls": reused * (n - 1),
            "streams": streams,
        }
