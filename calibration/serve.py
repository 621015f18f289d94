"""A real serving loop around ``ReferenceLlama``: continuous batching, measured.

``serve`` replays an open-loop workload in wall-clock time: a request joins the waiting
queue once the wall clock (from the loop's start) passes its arrival. Each iteration is
scheduled exactly as the simulator's ``orca`` batching (``OrcaBatching``, i.e.
``TokenBudgetBatching`` without chunked prefill, KV never short): every decoding request
computes one token; then waiting requests are admitted first come, first served, with
their whole prompt, while ``max_num_seqs`` and the token budget ``max_num_batched_tokens``
last (the first that does not fit stops admission). Prefills and decodes run in the same
forward. A request's first token comes from its prefill; it finishes once it has
generated ``output_tokens`` tokens (greedy sampling on random weights has no stop token).

Timestamps are ``time.perf_counter()`` seconds from the loop's start. The token(s) of an
iteration are stamped when its forward returns (the sampled ids are on the host).
The simulator's other rules are kept too: a request's KV cache is allocated at
admission (prompt plus outputs fed back) and freed when it finishes.

This module measures the wall clock by design: it is the ground truth the simulator is
calibrated and validated against, not part of the engine.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from calibration.reference import KVCache, ReferenceLlama
from simulator.cost import BatchShape


class RequestColumns(Protocol):
    """A workload as columns, e.g. ``workloads.trace.RequestArrays``."""

    @property
    def arrival_s(self) -> np.ndarray: ...
    @property
    def prompt_tokens(self) -> np.ndarray: ...
    @property
    def output_tokens(self) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class Workload:
    """Requests in arrival order: arrival (s from the start), prompt and output tokens."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray


def synthetic_workload(
    rng: np.random.Generator,
    num_requests: int,
    rate_per_s: float,
    prompt_tokens: tuple[int, int] = (16, 256),
    output_tokens: tuple[int, int] = (4, 64),
) -> Workload:
    """Poisson arrivals at ``rate_per_s`` (the first one gap after 0) and lengths uniform
    on the inclusive ``(min, max)`` ranges. Draws from ``rng``."""
    arrival_s = np.cumsum(rng.exponential(1.0 / rate_per_s, num_requests))
    prompts = rng.integers(prompt_tokens[0], prompt_tokens[1] + 1, num_requests)
    outputs = rng.integers(output_tokens[0], output_tokens[1] + 1, num_requests)
    return Workload(arrival_s, prompts, outputs)


@dataclass(frozen=True, slots=True)
class ServeLimits:
    """The engine limits the loop schedules with (the simulator's ``engine`` fields)."""

    max_num_seqs: int = 32
    """Running requests at most."""
    max_num_batched_tokens: int = 512
    """Tokens computed per iteration at most, decodes included."""
    max_model_len: int = 2048
    """Prompt plus output tokens of one request at most."""


@dataclass(slots=True)
class _Running:
    """A request in the batch; ``cache`` holds its KV until it finishes."""

    index: int
    cache: KVCache
    prompt: list[int]
    last_token: int = -1
    num_generated: int = 0


@dataclass(slots=True)
class ServeResult:
    """What one ``serve`` run measured.

    ``iterations``: one row per forward, in order. ``start_s`` (scheduling began),
    ``schedule_s`` (choosing the batch, before the forward), ``duration_s`` (the forward:
    inputs to the device, the model, argmax, ids back on the host), ``postprocess_s``
    (applying the sampled tokens: finishing requests, freeing caches),
    ``overhead_s`` (= schedule_s + postprocess_s, the loop's own time), ``idle_s`` (waiting
    for an arrival with nothing to run, before this iteration), the batch shape as the
    cost model takes it (``prefill_tokens``, ``prefill_context_tokens`` tuples,
    ``num_decode_seqs``, ``decode_context_tokens``: KV tokens the decodes attend, each new
    token included) and totals ``num_prefill_tokens``, ``num_prefill_seqs``,
    ``num_tokens``, ``num_seqs``.

    ``requests``: one row per request, the simulator's columns (``request_id``,
    ``arrival_s``, ``first_scheduled_s``, ``first_token_s``, ``finish_s``,
    ``prompt_tokens``, ``output_tokens``, ``generated_tokens``, ``status``) and the
    latencies as ``simulator.results.Results.requests`` derives them (``ttft_s``,
    ``e2e_s``, ``tpot_s``, ``queue_s``).
    """

    iterations: pd.DataFrame
    requests: pd.DataFrame
    limits: ServeLimits
    num_threads: int
    device: str
    dtype: str
    model_name: str
    wall_s: float
    """Seconds from the loop's start to the last request's finish."""
    warmup_s: float
    """Seconds the warm-up forwards took, before the loop's start."""

    def batch_shapes(self) -> list[BatchShape]:
        """Each iteration's shape, for ``CostModel.price`` (no copy of the frame)."""
        it = self.iterations
        return [
            BatchShape(p, c, int(n), int(d))
            for p, c, n, d in zip(it["prefill_tokens"], it["prefill_context_tokens"],
                                  it["num_decode_seqs"], it["decode_context_tokens"],
                                  strict=True)
        ]


def _check(requests: RequestColumns, limits: ServeLimits, model: ReferenceLlama) -> None:
    arrival = np.asarray(requests.arrival_s, dtype=np.float64)
    prompt = np.asarray(requests.prompt_tokens)
    output = np.asarray(requests.output_tokens)
    if not len(arrival) == len(prompt) == len(output):
        raise ValueError(f"{len(arrival)} arrivals, {len(prompt)} prompts, "
                         f"{len(output)} outputs: the columns must be equal-length")
    if np.any(np.diff(arrival) < 0) or np.any(arrival < 0):
        raise ValueError("arrival_s must be non-negative and non-decreasing")
    if np.any(prompt < 1) or np.any(output < 1):
        raise ValueError("prompt_tokens and output_tokens must be >= 1")
    longest = int((prompt + output).max(initial=0))
    if longest > limits.max_model_len:
        raise ValueError(f"a request needs {longest} tokens > max_model_len="
                         f"{limits.max_model_len}")
    if longest > model.max_positions:
        raise ValueError(f"a request needs {longest} tokens > the model's "
                         f"max_positions={model.max_positions}")
    if int(prompt.max(initial=0)) > limits.max_num_batched_tokens:
        raise ValueError(f"a prompt of {int(prompt.max())} tokens can never fit "
                         f"max_num_batched_tokens={limits.max_num_batched_tokens}")


def warm_up(model: ReferenceLlama, rng: np.random.Generator, limits: ServeLimits,
            rounds: int = 3) -> None:
    """Run prefill-only, decode-only and mixed forwards ``rounds`` times each on
    throwaway caches, so first-call costs (allocator growth, kernel selection, thread
    pool start) stay out of the measurement. Draws token ids from ``rng``."""
    vocab = model.spec.vocab_size
    num_decode = max(1, min(limits.max_num_seqs - 1, 4))
    # Every warm-up batch within the limits, as the loop's own will be.
    prompt = max(1, min(64, limits.max_num_batched_tokens // (num_decode + 1)))
    for _ in range(rounds):
        caches = [model.new_cache(prompt + 4) for _ in range(num_decode + 1)]
        prompts = [rng.integers(0, vocab, prompt).tolist() for _ in caches]
        model.step(prompts[:num_decode], caches[:num_decode])  # prefill only
        model.step([[1]] * num_decode, caches[:num_decode])  # decode only
        model.step([[1]] * num_decode + prompts[-1:], caches)  # mixed


def serve(
    model: ReferenceLlama,
    requests: RequestColumns,
    limits: ServeLimits | None = None,
    *,
    num_threads: int | None = None,
    warmup_rounds: int = 3,
    seed: int = 0,
) -> ServeResult:
    """Serve ``requests`` (in arrival order) on ``model`` in wall-clock time; measure.

    ``num_threads`` sets ``torch.set_num_threads`` for the run (restored afterwards;
    None keeps torch's current). Token ids (warm-up's and the prompts', independent
    streams) are drawn from ``seed``. Blocks until every request finishes: the run lasts
    about the last arrival plus the time to drain. Raises ValueError when a request can
    never run under ``limits``.
    """
    limits = limits or ServeLimits()
    _check(requests, limits, model)
    arrival = np.asarray(requests.arrival_s, dtype=np.float64)
    prompt_tokens = np.asarray(requests.prompt_tokens, dtype=np.int64)
    output_tokens = np.asarray(requests.output_tokens, dtype=np.int64)
    warm_rng, prompt_rng = (np.random.default_rng(s)
                            for s in np.random.SeedSequence(seed).spawn(2))
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        with torch.inference_mode():
            t = time.perf_counter()
            warm_up(model, warm_rng, limits, warmup_rounds)
            warmup_s = time.perf_counter() - t
            prompts = [prompt_rng.integers(0, model.spec.vocab_size, int(n)).tolist()
                       for n in prompt_tokens]
            loop = _Loop(model, limits, arrival, prompt_tokens, output_tokens, prompts)
            loop.run()
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    return ServeResult(
        iterations=loop.iterations_frame(),
        requests=loop.requests_frame(),
        limits=limits,
        num_threads=threads,
        device=str(model.device),
        dtype=str(model.dtype).removeprefix("torch."),
        model_name=model.spec.name,
        wall_s=loop.end_s,
        warmup_s=warmup_s,
    )


class _Loop:
    """The loop's state: queues, running requests, and the rows it records."""

    def __init__(self, model: ReferenceLlama, limits: ServeLimits, arrival: np.ndarray,
                 prompt_tokens: np.ndarray, output_tokens: np.ndarray,
                 prompts: list[list[int]]) -> None:
        self.model = model
        self.limits = limits
        self.arrival = arrival
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.prompts = prompts
        n = len(arrival)
        self.first_scheduled = np.full(n, math.nan)
        self.first_token = np.full(n, math.nan)
        self.finish = np.full(n, math.nan)
        self.generated = np.zeros(n, dtype=np.int64)
        self.next_arrival = 0  # first request not yet in the waiting queue
        self.waiting: deque[int] = deque()
        self.running: list[_Running] = []  # admission order; all decode (whole prompts)
        self.rows: list[tuple[object, ...]] = []
        self.end_s = 0.0

    def run(self) -> None:
        """Iterate until every request has finished: arrivals → schedule → forward →
        apply, sleeping only when nothing can run."""
        t0 = time.perf_counter()
        idle_s = 0.0
        while self.next_arrival < len(self.arrival) or self.waiting or self.running:
            start = time.perf_counter() - t0
            self._take_arrivals(start)
            decodes, admitted = self.running, self._admit()
            if not decodes and not admitted:
                # Nothing to run: sleep until the next arrival (time.sleep is ~0.1 ms late).
                wait_s = float(self.arrival[self.next_arrival]) - (time.perf_counter() - t0)
                if wait_s > 0:
                    time.sleep(wait_s)
                idle_s += time.perf_counter() - t0 - start
                continue
            decode_context = sum(r.cache.num_tokens for r in decodes) + len(decodes)
            batch = decodes + admitted
            inputs = [[r.last_token] for r in decodes] + [r.prompt for r in admitted]
            fwd_start = time.perf_counter()
            sampled = self.model.step(inputs, [r.cache for r in batch])
            fwd_end = time.perf_counter()
            now = fwd_end - t0
            self._apply(start, now, batch, admitted, sampled)
            prefill = tuple(int(self.prompt_tokens[r.index]) for r in admitted)
            done = time.perf_counter()
            self.rows.append((
                start, fwd_start - t0 - start, fwd_end - fwd_start, done - fwd_end, idle_s,
                prefill, (0,) * len(prefill), len(decodes), decode_context,
            ))
            idle_s = 0.0
            self.end_s = now

    def _take_arrivals(self, now: float) -> None:
        """Requests whose arrival has passed join the waiting queue, in order."""
        n = len(self.arrival)
        while self.next_arrival < n and self.arrival[self.next_arrival] <= now:
            self.waiting.append(self.next_arrival)
            self.next_arrival += 1

    def _admit(self) -> list[_Running]:
        """OrcaBatching: the decodes take one token each of the budget; then waiting
        requests join FCFS with their whole prompt while a sequence slot and the budget
        last, the first that does not fit stopping admission. Allocates their caches."""
        limits = self.limits
        budget = limits.max_num_batched_tokens - len(self.running)
        num_running = len(self.running)
        admitted: list[_Running] = []
        while self.waiting and budget > 0:
            i = self.waiting[0]
            tokens = int(self.prompt_tokens[i])
            if num_running >= limits.max_num_seqs or tokens > budget:
                break
            self.waiting.popleft()
            budget -= tokens
            num_running += 1
            # Computed tokens: the prompt, then every output but the last fed back.
            cache = self.model.new_cache(tokens + int(self.output_tokens[i]) - 1)
            admitted.append(_Running(i, cache, self.prompts[i]))
        return admitted

    def _apply(self, start: float, now: float, batch: list[_Running],
               admitted: list[_Running], sampled: list[int]) -> None:
        """Record the sampled tokens; finished requests leave (dropping their caches)."""
        for r in admitted:
            self.first_scheduled[r.index] = start
            self.first_token[r.index] = now
        running = []
        for r, token in zip(batch, sampled, strict=True):
            r.last_token = token
            r.num_generated += 1
            if r.num_generated == self.output_tokens[r.index]:
                self.finish[r.index] = now
                self.generated[r.index] = r.num_generated
            else:
                running.append(r)
        self.running = running

    def iterations_frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows, columns=[
            "start_s", "schedule_s", "duration_s", "postprocess_s", "idle_s",
            "prefill_tokens", "prefill_context_tokens", "num_decode_seqs",
            "decode_context_tokens",
        ])
        df.insert(0, "iteration", np.arange(len(df), dtype=np.int64))
        df.insert(5, "overhead_s", df["schedule_s"] + df["postprocess_s"])
        df["num_prefill_tokens"] = df["prefill_tokens"].map(sum).astype(np.int64)
        df["num_prefill_seqs"] = df["prefill_tokens"].map(len).astype(np.int64)
        df["num_tokens"] = df["num_prefill_tokens"] + df["num_decode_seqs"]
        df["num_seqs"] = df["num_prefill_seqs"] + df["num_decode_seqs"]
        return df

    def requests_frame(self) -> pd.DataFrame:
        finished = ~np.isnan(self.finish)
        df = pd.DataFrame({
            "request_id": np.arange(len(self.arrival), dtype=np.int64),
            "arrival_s": self.arrival,
            "first_scheduled_s": self.first_scheduled,
            "first_token_s": self.first_token,
            "finish_s": self.finish,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "generated_tokens": self.generated,
            "status": np.where(finished, "finished", "in_flight"),
        })
        # As simulator.results.Results.requests derives them.
        generated = self.generated.astype(np.float64)
        df["ttft_s"] = self.first_token - self.arrival
        df["e2e_s"] = self.finish - self.arrival
        with np.errstate(divide="ignore", invalid="ignore"):
            tpot = (self.finish - self.first_token) / (generated - 1.0)
        df["tpot_s"] = np.where(finished & (generated >= 2), tpot, np.nan)
        df["queue_s"] = self.first_scheduled - self.arrival
        return df
