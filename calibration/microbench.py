"""Microbenchmark suites: the ops an eager Llama-like engine runs, timed on a torch device.

Each suite returns ``hardware.profile.MeasuredPoint``s (``shape`` keys as documented
there); ``run_all`` runs them all under one time budget for ``servesim calibrate``.

- ``gemm``: ``F.linear([m, k], [n, k])`` (``nn.Linear``'s layout), (k, n) from the QKV,
  output, gate-up and down projections of Llama-like models with hidden sizes 256..4096,
  m geometric from 1.
  Weights rotate over copies that outsize the last-level cache; activations are one
  tensor (an engine's activations were just written, so they are hot).
- ``prefill_attention``: ``scaled_dot_product_attention`` of one sequence's new tokens,
  ``is_causal=True`` when nothing is cached. With a cached prefix of c tokens the mask is
  not SDPA's ``is_causal`` (that aligns the triangle top-left); query i sees keys
  ``j <= c + i``, so a boolean mask ``tril(diagonal=c)`` is built once per shape, outside
  the timing. GQA uses ``enable_gqa=True`` where torch has it, else KV heads are
  repeated inside the timed call, as an engine on that torch would.
- ``decode_attention``: one query token per sequence over ``context_tokens`` keys, every
  sequence the same length. ``sdpa_decode_loop`` calls SDPA once per sequence (an eager
  engine without paged kernels; the reference engine does this); ``sdpa_decode_padded``
  is one call over the batch stacked (with equal lengths no padding mask is needed;
  mixed lengths would cost what the longest does). The reference engine also writes
  each sequence's new k and v into its cache before the call: those copies are the
  ``kv_cache_write`` points, not part of the loop.
- ``elementwise``: ``ELEMENTWISE_OPS`` below, from dispatch-bound to bandwidth-bound sizes.
- ``copy``: ``dst.copy_(src)`` of 1 MiB..1 GiB (dtype ``uint8``; ``bytes`` is the size
  of one tensor, so memory traffic is twice that).
- Collectives are not measured: ``MeasuredPoint`` has no op class for them, and timing
  them needs several devices under ``torch.distributed``; the collective efficiency
  stays the catalog's.

Shapes whose estimated call time exceeds the mode's cap are skipped (a dtype the device
runs slowly keeps its three cheapest shapes per suite), and every suite stops at its
share of the time budget; both are said in ``MicrobenchReport.notes``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch
import torch.nn.functional as F

from calibration.timing import free_memory_bytes, rotated, time_op
from hardware.profile import MeasuredPoint, OpClass

logger = logging.getLogger(__name__)

T = TypeVar("T")
_Built = tuple[Callable[..., object], list[tuple[object, ...]]]
"""A shape's timed function and the input sets it rotates over."""
Progress = Callable[[str, int, int], None]
"""``progress(suite, shapes_done, shapes_total)``, called as each suite advances."""

SUITES: tuple[str, ...] = ("gemm", "prefill_attention", "decode_attention", "elementwise", "copy")
_BUDGET_SHARE = {"gemm": 0.35, "prefill_attention": 0.2, "decode_attention": 0.25,
                 "elementwise": 0.1, "copy": 0.1}

DEFAULT_DTYPES = {
    "cpu": ["float32", "bfloat16"],
    "cuda": ["float16", "bfloat16", "float32", "tfloat32"],
    "mps": ["float16", "float32"],
}
"""Dtypes measured when none are asked for. ``tfloat32`` is float32 with TF32 matmuls
allowed (GEMM only; other suites skip it)."""

# (hidden, heads, kv_heads, head_dim, intermediate) of Llama-like models, small to medium.
LLAMA_LIKE: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (256, 4, 2, 64, 1024),
    "0.3b": (1024, 16, 4, 64, 2816),
    "llama-3.2-1b": (2048, 32, 8, 64, 8192),
    "llama-3.2-3b": (3072, 24, 8, 128, 8192),
    "llama-3.1-8b": (4096, 32, 8, 128, 14336),
}

ELEMENTWISE_OPS: dict[str, tuple[int, int, int]] = {
    "rms_norm": (1, 1, 1),
    "add": (2, 1, 1),
    "silu_mul": (3, 2, 2),
    "rotary": (4, 3, 3),
    "kv_cache_write": (1, 1, 1),
}
"""(tensors_read, tensors_written, kernels) per op, tensors of ``elements`` each, as
``calibration.reference.ReferenceLlama`` runs them: ``rms_norm`` is ``F.rms_norm(x,
(width,), w)`` (the one-row weight not counted); ``add`` is ``x + r``; ``silu_mul`` is
``F.silu(g) * u``; ``rotary`` is ``addcmul(x * cos, roll(x, d / 2), sin)`` (the
``[tokens, 1, d]`` cos/sin tables, 1/heads of x, not counted); ``kv_cache_write`` is
``cache[:, slots].copy_(k.transpose(0, 1))``, new keys ``[tokens, heads, d]`` into a
sequence's ``[heads, max_tokens, d]`` cache (the reference does it per sequence, twice
per layer)."""


class Mode(NamedTuple):
    """Timing settings and shape caps of one mode (quick or full)."""

    warmup: int
    repeats: int
    min_time_s: float
    max_time_s: float
    max_call_s: float
    """Shapes estimated to take longer than this per call are skipped."""
    max_tensor_bytes: int
    """Inputs of one shape may take at most this much memory (also <= 1/4 of free)."""


QUICK = Mode(warmup=2, repeats=5, min_time_s=0.02, max_time_s=0.1, max_call_s=0.04,
             max_tensor_bytes=256 * 2**20)
FULL = Mode(warmup=3, repeats=15, min_time_s=0.05, max_time_s=0.4, max_call_s=0.15,
            max_tensor_bytes=2**30)


class GemmShape(NamedTuple):
    m: int
    k: int
    n: int


class PrefillShape(NamedTuple):
    new_tokens: int
    cached_tokens: int
    heads: int
    kv_heads: int
    head_dim: int


class DecodeShape(NamedTuple):
    seqs: int
    context_tokens: int
    heads: int
    kv_heads: int
    head_dim: int


# ---- shape sets ----


def _spread(items: Sequence[T]) -> list[T]:
    """``items`` reordered so every prefix spans their range: both ends, then midpoints
    by bisection. A suite cut short by its budget still covers small and large shapes."""
    n = len(items)
    if n <= 2:
        return list(items)
    order, spans = [0, n - 1], [(0, n - 1)]
    while spans:
        lo, hi = spans.pop(0)
        if hi - lo > 1:
            mid = (lo + hi) // 2
            order.append(mid)
            spans += [(lo, mid), (mid, hi)]
    return [items[i] for i in order]


def _weights(model: str) -> list[tuple[int, int]]:
    """(k, n) of the QKV, output, gate-up and down projections."""
    hidden, heads, kv_heads, head_dim, inter = LLAMA_LIKE[model]
    q, kv = heads * head_dim, kv_heads * head_dim
    return [(hidden, q + 2 * kv), (q, hidden), (hidden, 2 * inter), (inter, hidden)]


def gemm_shapes(quick: bool) -> list[GemmShape]:
    """Weight-major order (weights built once per (k, n)); both lists spread."""
    if quick:
        pairs = [(256, 512), (512, 2816), (1024, 1536), (2048, 2048), (2048, 16384),
                 (4096, 4096)]
        ms = [1, 2, 3, 4, 6, 8, 12, 16, 64, 256, 1024]  # decode batches: dense at low m
    else:
        pairs = sorted({kn for model in LLAMA_LIKE for kn in _weights(model)},
                       key=lambda kn: kn[0] * kn[1])
        ms = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 32, 64, 256, 1024, 4096]
    return [GemmShape(m, k, n) for k, n in _spread(pairs) for m in _spread(ms)]


def _attention_configs(quick: bool) -> list[tuple[int, int, int]]:
    models = ["llama-3.2-1b", "llama-3.1-8b"] if quick else [
        "0.3b", "llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b"]
    return [LLAMA_LIKE[m][1:4] for m in models]


def prefill_shapes(quick: bool) -> list[PrefillShape]:
    if quick:
        lengths = [(16, 0), (128, 0), (512, 0), (2048, 0), (128, 512), (512, 1536)]
    else:
        lengths = [(n, 0) for n in (16, 32, 64, 128, 256, 512, 1024, 2048)]
        lengths += [(16, 1024), (64, 512), (128, 2048), (256, 1024), (512, 2048), (1024, 1024)]
    return [PrefillShape(new, cached, *cfg)
            for new, cached in _spread(lengths) for cfg in _attention_configs(quick)]


def decode_shapes(quick: bool) -> list[DecodeShape]:
    seqs = [1, 8, 64] if quick else [1, 4, 16, 64]
    contexts = [16, 256, 2048] if quick else [16, 128, 1024, 4096]
    return [DecodeShape(s, c, *cfg) for s in _spread(seqs) for c in _spread(contexts)
            for cfg in _attention_configs(quick)]


def elementwise_sizes(quick: bool) -> list[int]:
    return [2**8, 2**12, 2**16, 2**20, 2**23] if quick else [4**i for i in range(3, 13)]


def copy_sizes(quick: bool) -> list[int]:
    return [2**20, 2**24, 2**28] if quick else [2**20 * 4**i for i in range(6)]


# ---- the bench: device, mode, budget, probes ----


@dataclass(slots=True)
class Bench:
    """Where and how suites run. Suites append to ``notes``; ``flops_per_s`` and
    ``bytes_per_s`` cache probe results used to estimate a shape's time before running it.
    """

    device: str = "cpu"
    mode: Mode = QUICK
    deadline_s: float = math.inf
    """``time.perf_counter()`` value after which a suite measures nothing more."""
    progress: Progress | None = None
    notes: list[str] = field(default_factory=list)
    flops_per_s: dict[str, float | None] = field(default_factory=dict)
    bytes_per_s: float | None = None
    gqa: bool | None = None
    """Whether SDPA takes ``enable_gqa`` here (probed on first use)."""

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    def remaining_s(self) -> float:
        return self.deadline_s - time.perf_counter()

    def matmul_rate(self, dtype: str) -> float | None:
        """Matmul FLOP/s of ``dtype`` from a small probe (cached); None if it fails."""
        if dtype not in self.flops_per_s:
            self.flops_per_s[dtype] = self._probe_matmul(dtype)
        return self.flops_per_s[dtype]

    def _probe_matmul(self, dtype: str) -> float | None:
        rate = None
        for m, k in ((64, 256), (256, 1024)):
            try:
                with _dtype_context(dtype):
                    a = torch.randn(m, k, device=self.device).to(_torch_dtype(dtype))
                    b = torch.randn(k, k, device=self.device).to(_torch_dtype(dtype))
                    t = time_op(torch.matmul, [(a, b)], device=self.device, warmup=2,
                                repeats=3, min_time_s=0.0, max_time_s=0.05)
            except (RuntimeError, TypeError) as exc:
                self.notes.append(f"{dtype}: matmul fails on {self.device} ({exc}); skipped")
                return None
            rate = 2.0 * m * k * k / t.median_s
            if t.median_s > 2e-3:  # slow enough that the small probe is not dispatch-bound
                break
        return rate

    def copy_rate(self) -> float:
        """Bytes/s of a 64 MiB copy (size over time), probed once."""
        if self.bytes_per_s is None:
            src = torch.ones(2**26, dtype=torch.uint8, device=self.device)
            dst = torch.zeros_like(src)
            t = time_op(lambda: dst.copy_(src), device=self.device, warmup=2, repeats=3,
                        min_time_s=0.0, max_time_s=0.05)
            self.bytes_per_s = src.numel() / t.median_s
        return self.bytes_per_s

    def estimate_s(self, dtype: str, flops: float, moved_bytes: float, calls: int = 1) -> float:
        """A rough time of one call, to skip shapes too slow for the mode."""
        rate = self.matmul_rate(dtype) or 1e9
        return calls * 10e-6 + flops / rate + moved_bytes / (2 * self.copy_rate())


def _torch_dtype(name: str) -> torch.dtype:
    if name == "tfloat32":
        return torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch dtype {name!r}")
    return dtype


@contextlib.contextmanager
def _dtype_context(name: str) -> Iterator[None]:
    """TF32 matmuls for 'tfloat32' (restored after); nothing for other dtypes."""
    if name != "tfloat32":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _randn(shape: Sequence[int], dtype: str, device: str) -> torch.Tensor:
    return torch.randn(*shape, device=device).to(_torch_dtype(dtype))


# ---- the runner shared by all suites ----




@dataclass(frozen=True, slots=True)
class _Case:
    op: OpClass
    name: str
    dtype: str
    shape: dict[str, int]
    estimate_s: float
    """A rough time of one call (``Bench.estimate_s``)."""
    tensor_bytes: int
    """Memory of one input set (and temporaries), checked against ``Mode.max_tensor_bytes``."""
    build: Callable[[], _Built]
    """Makes (fn, input sets to rotate over)."""


def _run_cases(bench: Bench, suite: str, cases: list[_Case],
               memory_cap: int | None = None) -> list[MeasuredPoint]:
    """Times each case in order, skipping those too slow, too big (over ``memory_cap``,
    by default the mode's cap) or past the deadline; appends a note for each kind of skip."""
    mode = bench.mode
    free_cap = free_memory_bytes(bench.device) // 4
    memory_cap = min(mode.max_tensor_bytes if memory_cap is None else memory_cap, free_cap)
    # A dtype too slow for the mode keeps its three cheapest shapes, so it is still seen.
    keep_s: dict[str, float] = {}
    for dtype in {c.dtype for c in cases}:
        estimates = sorted(c.estimate_s for c in cases if c.dtype == dtype)
        keep_s[dtype] = max(mode.max_call_s, estimates[min(2, len(estimates) - 1)])
    points: list[MeasuredPoint] = []
    too_slow: dict[str, int] = {}
    too_big = out_of_time = 0
    for done, case in enumerate(cases):
        if bench.progress:
            bench.progress(suite, done, len(cases))
        if case.estimate_s > keep_s[case.dtype]:
            too_slow[case.dtype] = too_slow.get(case.dtype, 0) + 1
            continue
        if case.tensor_bytes > memory_cap:
            too_big += 1
            continue
        if bench.remaining_s() < 2 * case.estimate_s:
            out_of_time += 1
            continue
        try:
            with _dtype_context(case.dtype):
                fn, sets = case.build()
                t = time_op(fn, sets, device=bench.device, warmup=mode.warmup,
                            repeats=mode.repeats, min_time_s=mode.min_time_s,
                            max_time_s=max(1e-3, min(mode.max_time_s, bench.remaining_s())))
                del sets
        except RuntimeError as exc:  # out of memory, or a kernel missing for this dtype
            bench.notes.append(f"{suite} {case.name} {case.dtype} {case.shape}: failed ({exc})")
            continue
        points.append(MeasuredPoint(
            op=case.op, name=case.name, dtype=case.dtype, shape=case.shape,
            seconds=t.median_s, seconds_p10=t.p10_s, seconds_p90=t.p90_s, repeats=t.repeats,
        ))
    if bench.progress:
        bench.progress(suite, len(cases), len(cases))
    for dtype, count in sorted(too_slow.items()):
        bench.notes.append(f"{suite}: {count} {dtype} shapes skipped, estimated over "
                           f"{keep_s[dtype] * 1e3:.0f} ms per call")
    if too_big:
        bench.notes.append(f"{suite}: {too_big} shapes skipped, inputs over "
                           f"{memory_cap / 2**20:.0f} MiB")
    if out_of_time:
        bench.notes.append(f"{suite}: cut short by the time budget, {out_of_time} of "
                           f"{len(cases)} shapes not measured")
    return points


def _usable(bench: Bench, dtypes: Sequence[str], suite: str) -> list[str]:
    """Dtypes whose matmul works; 'tfloat32' only for GEMMs."""
    return [d for d in dtypes if (suite == "gemm" or d != "tfloat32")
            and bench.matmul_rate(d) is not None]


# ---- suites ----


def gemm(bench: Bench, dtypes: Sequence[str],
         shapes: Sequence[GemmShape] | None = None) -> list[MeasuredPoint]:
    """``F.linear(x [m, k], w [n, k])`` for each shape and dtype (name ``linear``): the
    weight layout of ``nn.Linear``, which engines (and the reference model) run; BLAS
    takes different paths for it than for ``[k, n]`` weights, at small m especially."""
    shapes = gemm_shapes(bench.mode is QUICK) if shapes is None else shapes
    weights: dict[tuple[int, int, str], list[torch.Tensor]] = {}

    def build(s: GemmShape, dtype: str) -> _Built:
        key = (s.k, s.n, dtype)
        if key not in weights:  # one rotation of weights per (k, n, dtype), kept while m varies
            for old in [old for old in weights if old[:2] != key[:2]]:
                del weights[old]
            first = _randn((s.n, s.k), dtype, bench.device)
            weights[key] = [w for (w,) in rotated([first], bench.device)]  # type: ignore[misc]
        x = _randn((s.m, s.k), dtype, bench.device)
        return torch.nn.functional.linear, [(x, w) for w in weights[key]]

    cases = []
    for s in shapes:
        for dtype in _usable(bench, dtypes, "gemm"):
            moved = _torch_dtype(dtype).itemsize * (s.k * s.n + s.m * (s.k + s.n))
            cases.append(_Case(
                "gemm", "linear", dtype, s._asdict(),
                bench.estimate_s(dtype, 2.0 * s.m * s.k * s.n, moved), moved,
                lambda s=s, dtype=dtype: build(s, dtype),  # type: ignore[misc]
            ))
    try:
        return _run_cases(bench, "gemm", cases)
    finally:
        weights.clear()


def _sdpa(bench: Bench, heads: int, kv_heads: int) -> Callable[..., torch.Tensor]:
    """SDPA with grouped KV heads: ``enable_gqa`` where torch has it, else repeated KV."""
    if heads == kv_heads:
        return F.scaled_dot_product_attention
    if bench.gqa is None:
        q = torch.zeros(1, 2, 1, 8, device=bench.device)
        k = torch.zeros(1, 1, 2, 8, device=bench.device)
        try:
            F.scaled_dot_product_attention(q, k, k, enable_gqa=True)
            bench.gqa = True
        except (TypeError, RuntimeError):
            bench.gqa = False
            bench.notes.append("SDPA has no enable_gqa here: KV heads are repeated per call")
    if bench.gqa:
        return lambda q, k, v, **kw: F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
    group = heads // kv_heads
    return lambda q, k, v, **kw: F.scaled_dot_product_attention(
        q, k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1), **kw)


def prefix_causal_mask(new_tokens: int, cached_tokens: int, device: str) -> torch.Tensor:
    """``[new_tokens, cached_tokens + new_tokens]`` booleans, True where new token i (at
    position ``cached_tokens + i``) may attend key j: ``j <= cached_tokens + i``."""
    mask = torch.ones(new_tokens, cached_tokens + new_tokens, dtype=torch.bool, device=device)
    return mask.tril(diagonal=cached_tokens)


def prefill_attention(bench: Bench, dtypes: Sequence[str],
                      shapes: Sequence[PrefillShape] | None = None) -> list[MeasuredPoint]:
    """Causal SDPA of one sequence: ``sdpa_causal`` with nothing cached, else
    ``sdpa_prefix_masked`` with the boolean mask ``j <= cached + i``."""
    shapes = prefill_shapes(bench.mode is QUICK) if shapes is None else shapes

    def build(s: PrefillShape, dtype: str) -> _Built:
        total = s.cached_tokens + s.new_tokens
        q = _randn((1, s.heads, s.new_tokens, s.head_dim), dtype, bench.device)
        k = _randn((1, s.kv_heads, total, s.head_dim), dtype, bench.device)
        v = _randn((1, s.kv_heads, total, s.head_dim), dtype, bench.device)
        sdpa = _sdpa(bench, s.heads, s.kv_heads)
        if s.cached_tokens == 0:
            return (lambda q, k, v: sdpa(q, k, v, is_causal=True)), rotated((q, k, v), bench.device)
        mask = prefix_causal_mask(s.new_tokens, s.cached_tokens, bench.device)
        return (lambda q, k, v: sdpa(q, k, v, attn_mask=mask)), rotated((q, k, v), bench.device)

    cases = []
    for s in shapes:
        for dtype in _usable(bench, dtypes, "prefill_attention"):
            total = s.cached_tokens + s.new_tokens
            attended = s.cached_tokens + (s.new_tokens + 1) / 2
            moved = _torch_dtype(dtype).itemsize * s.head_dim * (
                2 * s.heads * s.new_tokens + 2 * s.kv_heads * total)
            flops = 4.0 * s.head_dim * s.heads * s.new_tokens * attended
            cases.append(_Case(
                "prefill_attention", "sdpa_causal" if s.cached_tokens == 0 else
                "sdpa_prefix_masked", dtype, {"seqs": 1, **s._asdict()},
                bench.estimate_s(dtype, flops, moved), moved,
                lambda s=s, dtype=dtype: build(s, dtype),  # type: ignore[misc]
            ))
    return _run_cases(bench, "prefill_attention", cases)


def decode_attention(bench: Bench, dtypes: Sequence[str],
                     shapes: Sequence[DecodeShape] | None = None,
                     padded: bool = True) -> list[MeasuredPoint]:
    """One query token per sequence: ``sdpa_decode_loop`` (a call per sequence) and, if
    ``padded``, ``sdpa_decode_padded`` (one call over the stacked batch)."""
    shapes = decode_shapes(bench.mode is QUICK) if shapes is None else shapes

    def build(s: DecodeShape, dtype: str, loop: bool) -> _Built:
        q = _randn((s.seqs, s.heads, 1, s.head_dim), dtype, bench.device)
        k = _randn((s.seqs, s.kv_heads, s.context_tokens, s.head_dim), dtype, bench.device)
        v = _randn((s.seqs, s.kv_heads, s.context_tokens, s.head_dim), dtype, bench.device)
        sdpa = _sdpa(bench, s.heads, s.kv_heads)
        if not loop:
            return sdpa, rotated((q, k, v), bench.device)

        def run(qs: list[torch.Tensor], ks: list[torch.Tensor], vs: list[torch.Tensor]) -> None:
            for qi, ki, vi in zip(qs, ks, vs, strict=True):
                sdpa(qi, ki, vi)

        # Each sequence's tensors are views of one contiguous slab, as cache pages would be.
        first = tuple(list(t.split(1, dim=0)) for t in (q, k, v))
        return run, rotated(first, bench.device)

    cases = []
    for s in shapes:
        for dtype in _usable(bench, dtypes, "decode_attention"):
            moved = _torch_dtype(dtype).itemsize * s.seqs * s.head_dim * (
                2 * s.heads + 2 * s.kv_heads * s.context_tokens)
            flops = 4.0 * s.head_dim * s.heads * s.context_tokens * s.seqs
            for loop in (True, False) if padded else (True,):
                cases.append(_Case(
                    "decode_attention", "sdpa_decode_loop" if loop else "sdpa_decode_padded",
                    dtype, s._asdict(),
                    bench.estimate_s(dtype, flops, moved, calls=s.seqs if loop else 1), moved,
                    lambda s=s, dtype=dtype, loop=loop: build(s, dtype, loop),  # type: ignore[misc]
                ))
    return _run_cases(bench, "decode_attention", cases)


def _elementwise_op(op: str, elements: int, dtype: str, device: str
                    ) -> tuple[Callable[..., object], tuple[object, ...]]:
    """(fn, first input set) of one op of ``ELEMENTWISE_OPS`` over ``elements`` (a power
    of two): rows of 1024 (fewer if ``elements`` is smaller), or for rotary and the KV
    write ``[tokens, heads, 64]`` with up to 8 heads."""
    if op in ("rotary", "kv_cache_write"):
        head_dim = min(64, elements)
        heads = max(1, min(8, elements // head_dim))
        tokens = max(1, elements // (heads * head_dim))
        x = _randn((tokens, heads, head_dim), dtype, device)
        if op == "kv_cache_write":  # a sequence's cache is [kv_heads, max_tokens, head_dim]
            cache = torch.zeros((heads, 2 * tokens, head_dim), dtype=x.dtype, device=device)
            return (lambda cache, k: cache[:, tokens:].copy_(k.transpose(0, 1))), (cache, x)
        cos = _randn((tokens, 1, head_dim), dtype, device)
        sin = _randn((tokens, 1, head_dim), dtype, device)
        return (lambda x, cos, sin: torch.addcmul(
            x * cos, torch.roll(x, head_dim // 2, dims=-1), sin)), (x, cos, sin)
    width = min(elements, 1024)
    x = _randn((max(1, elements // width), width), dtype, device)
    y = torch.randn_like(x)
    if op == "rms_norm":
        w = _randn((width,), dtype, device)
        return (lambda x, w: F.rms_norm(x, (width,), w, 1e-6)), (x, w)
    if op == "add":
        return torch.add, (x, y)
    if op == "silu_mul":
        return (lambda g, u: F.silu(g) * u), (x, y)
    raise ValueError(f"unknown elementwise op {op!r}")


def elementwise(bench: Bench, dtypes: Sequence[str], sizes: Sequence[int] | None = None,
                ops: Sequence[str] = tuple(ELEMENTWISE_OPS)) -> list[MeasuredPoint]:
    """Each op of ``ELEMENTWISE_OPS`` at each element count (powers of two)."""
    sizes = elementwise_sizes(bench.mode is QUICK) if sizes is None else sizes

    def build(op: str, elements: int, dtype: str) -> _Built:
        fn, first = _elementwise_op(op, elements, dtype, bench.device)
        return fn, rotated(first, bench.device)

    cases = []
    for elements in _spread(sizes):
        for op in ops:
            read, written, kernels = ELEMENTWISE_OPS[op]
            for dtype in _usable(bench, dtypes, "elementwise"):
                moved = _torch_dtype(dtype).itemsize * elements * (read + written)
                cases.append(_Case(
                    "elementwise", op, dtype,
                    {"elements": elements, "tensors_read": read, "tensors_written": written},
                    bench.estimate_s(dtype, 0.0, moved, calls=kernels), moved // 2,
                    lambda op=op, e=elements, dtype=dtype: build(op, e, dtype),  # type: ignore[misc]
                ))
    return _run_cases(bench, "elementwise", cases)


def copy(bench: Bench, sizes: Sequence[int] | None = None) -> list[MeasuredPoint]:
    """``dst.copy_(src)`` of ``bytes`` (uint8 tensors; traffic is twice ``bytes``)."""
    sizes = copy_sizes(bench.mode is QUICK) if sizes is None else sizes

    def build(size: int) -> _Built:
        src = torch.ones(size, dtype=torch.uint8, device=bench.device)
        dst = torch.zeros_like(src)  # written now, so no page faults while timed
        return (lambda dst, src: dst.copy_(src)), rotated((dst, src), bench.device)

    cases = [
        _Case("copy", "copy", "uint8", {"bytes": size}, 10e-6 + size / bench.copy_rate(),
              2 * size, lambda size=size: build(size))  # type: ignore[misc]
        for size in _spread(sizes)
    ]
    # Copies are capped by free memory only: measuring big ones is the point.
    return _run_cases(bench, "copy", cases, memory_cap=2 * max(sizes, default=0))


# ---- everything ----


@dataclass(frozen=True, slots=True)
class MicrobenchReport:
    """What ``measure`` returns: the points, and notes on what was skipped and why."""

    points: list[MeasuredPoint]
    notes: list[str]
    wall_s: float
    flops_per_s: dict[str, float | None]
    """Probed matmul FLOP/s per dtype (None: the dtype does not work on the device)."""


def measure(
    device: str = "cpu",
    dtypes: Sequence[str] | None = None,
    *,
    quick: bool = False,
    time_budget_s: float = math.inf,
    progress: Progress | None = None,
    suites: Sequence[str] = SUITES,
) -> MicrobenchReport:
    """Run ``suites`` on ``device`` for ``dtypes`` (default ``DEFAULT_DTYPES``).

    The budget is shared out as each suite starts (``_BUDGET_SHARE`` of what is left,
    so time one suite leaves unused passes to the next); a suite past its share stops
    and says so in the notes. Wall time may pass ``time_budget_s`` by about one call of
    the slowest shape."""
    start = time.perf_counter()
    kind = torch.device(device).type
    if kind not in DEFAULT_DTYPES:
        raise ValueError(f"calibration supports cpu, cuda and mps devices, not {device!r}")
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suites {unknown}; known: {', '.join(SUITES)}")
    bench = Bench(device, QUICK if quick else FULL, progress=progress)
    dtypes = list(dtypes or DEFAULT_DTYPES[kind])
    for dtype in dtypes:
        _torch_dtype(dtype)  # unknown names fail here, before any timing
    rates = {d: bench.matmul_rate(d) for d in dtypes}
    best = max((r for r in rates.values() if r), default=None)
    for dtype, rate in rates.items():
        if rate and best and rate < best / 8:
            bench.notes.append(
                f"{dtype} matmul is slow on {device}: {rate / 1e9:.2f} GFLOP/s, 1/"
                f"{best / rate:.0f} of the best dtype; only its cheapest shapes are measured")
    end = start + time_budget_s
    points: list[MeasuredPoint] = []
    for i, suite in enumerate(suites):
        now = time.perf_counter()
        share = _BUDGET_SHARE[suite] / sum(_BUDGET_SHARE[s] for s in suites[i:])
        bench.deadline_s = now + max(0.0, end - now) * share if math.isfinite(end) else end
        points += _SUITES[suite](bench, dtypes)
    return MicrobenchReport(points, bench.notes, time.perf_counter() - start, rates)


_SUITES: dict[str, Callable[[Bench, Sequence[str]], list[MeasuredPoint]]] = {
    "gemm": gemm,
    "prefill_attention": prefill_attention,
    "decode_attention": decode_attention,
    "elementwise": elementwise,
    "copy": lambda bench, _dtypes: copy(bench),
}


def run_all(
    device: str = "cpu",
    dtypes: list[str] | None = None,
    quick: bool = False,
    time_budget_s: float = math.inf,
    progress: Progress | None = None,
) -> list[MeasuredPoint]:
    """Every suite on ``device``; notes on skipped shapes are logged as warnings
    (``measure`` returns them instead)."""
    report = measure(device, dtypes, quick=quick, time_budget_s=time_budget_s,
                     progress=progress)
    for note in report.notes:
        logger.warning(note)
    return report.points


# ---- the host ----


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                 capture_output=True, text=True, timeout=5, check=False)
            if out.stdout.strip():
                return out.stdout.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def device_info(device: str = "cpu") -> dict[str, Any]:
    """The ``hardware.profile.HostInfo`` fields known here (not ``created``, ``quick``)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    elif dev.type == "mps":
        name = f"{_cpu_name()} (MPS)"
    else:
        name = _cpu_name()
    return {
        "device_type": dev.type,
        "device_name": name,
        "num_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "platform": f"{platform.system()}-{platform.release()}-{platform.machine()}",
    }
