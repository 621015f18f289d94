"""simulate(scenario) -> Results: build the SimPy world, run it, collect the frames."""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import simpy

from policies.batching import BATCHING
from policies.queue import QUEUE
from policies.routing import ROUTING
from simulator.clock import on_grid, on_grid_array
from simulator.deployment import Deployment, ScenarioError, resolve
from simulator.predictor import Predictor, build_predictor
from simulator.recorder import Recorder
from simulator.replica import Replica
from simulator.request import Request
from simulator.results import Results, RunInfo
from simulator.scenario import Scenario
from workloads.config import ClosedLoopArrivals, SyntheticWorkload, TraceWorkload
from workloads.generate import RequestArrays, open_loop_requests, trace_requests

_LENGTH_CHUNK = 65536
MAX_REJECTED_IN_A_ROW = 100_000
"""A closed loop whose every request is rejected would spin at one instant forever."""


class _Cluster:
    """Replicas behind a router, and the admission check that rejects impossible requests.

    Holds all replicas of the deployment, or a group of them when replica groups run in
    separate processes (``replica_indices``)."""

    def __init__(self, env: simpy.Environment, deployment: Deployment, recorder: Recorder,
                 on_done: Callable[[Request], None], replica_indices: Sequence[int],
                 predictor: Predictor | None) -> None:
        scenario = deployment.scenario
        eng = scenario.engine
        self.env = env
        self.deployment = deployment
        self.recorder = recorder
        self.on_done = on_done
        self.max_model_len = deployment.max_model_len
        self.num_kv_blocks = deployment.memory.num_kv_blocks
        self.block_size = eng.block_size_tokens
        self.slo_ttft_s = math.inf if scenario.slo.ttft_s is None else scenario.slo.ttft_s
        limits = eng.limits(deployment.max_model_len)
        seeds = np.random.SeedSequence(scenario.seed).spawn(3)
        self.router = ROUTING.build(eng.routing, limits, np.random.default_rng(seeds[1]))
        # Per replica: one stream for its batching policy, one for its queue order.
        policy_seeds = [s.spawn(2) for s in seeds[2].spawn(scenario.deployment.replicas)]
        if predictor is None and getattr(QUEUE.get(eng.queue.kind), "needs_predictor", False):
            raise ScenarioError(
                f"engine.queue={eng.queue.kind!r} orders by predicted output length: set "
                f"engine.predictor (e.g. {{kind: oracle}} or {{kind: noisy, sigma: 0.5}})"
            )
        if eng.kv_reservation == "predicted" and predictor is None:
            raise ScenarioError(
                "engine.kv_reservation='predicted' reserves prompt + predicted output: set "
                "engine.predictor (e.g. {kind: oracle} or {kind: noisy, sigma: 0.5})"
            )
        if eng.kv_reservation == "max":
            blocks = -(-(self.max_model_len - 1) // self.block_size)
            if blocks > self.num_kv_blocks:
                raise ScenarioError(
                    f"engine.kv_reservation='max' reserves max_model_len - 1 = "
                    f"{self.max_model_len - 1} tokens ({blocks} blocks) per request, but the "
                    f"KV cache holds {self.num_kv_blocks} blocks; lower engine.max_model_len"
                )
        self.replicas = [
            Replica(
                env, i, deployment.cost,
                BATCHING.build(eng.batching, limits, np.random.default_rng(policy_seeds[i][0])),
                queue=QUEUE.build(eng.queue, limits, np.random.default_rng(policy_seeds[i][1])),
                predictor=predictor,
                num_host_blocks=deployment.memory.num_host_blocks,
                preemption_victim=eng.preemption_victim,
                kv_reservation=eng.kv_reservation,
                prefix_cache=eng.prefix_cache,
                max_model_len=deployment.max_model_len,
                num_kv_blocks=self.num_kv_blocks,
                block_size_tokens=eng.block_size_tokens,
                max_num_seqs=eng.max_num_seqs,
                fast_forward=eng.fast_forward,
                stop_s=scenario.stop.duration_s,
                recorder=recorder,
                on_done=on_done,
            )
            for i in replica_indices
        ]
        self._by_index = {replica.index: replica for replica in self.replicas}

    def _rejection(self, prompt_tokens: int, output_tokens: int) -> str | None:
        code = _rejection_codes(self.deployment, prompt_tokens, output_tokens)
        total = prompt_tokens + output_tokens
        if code == _TOO_LONG:
            return f"prompt + output = {total} tokens exceeds max_model_len {self.max_model_len}"
        if code == _TOO_BIG:
            blocks = math.ceil((total - 1) / self.block_size)
            return f"needs {blocks} KV blocks; the whole cache holds {self.num_kv_blocks}"
        return None

    def arrive(self, request_id: int, prompt_tokens: int, output_tokens: int,
               route: int | None = None,
               attributes: tuple[int, float, int, int] | None = None) -> None:
        """A request arrives now; ``route`` is its replica (-1: rejected) when the whole
        workload was routed ahead, None to ask the router; ``attributes`` are its
        (priority, ttft_slo_s, prefix_id, prefix_tokens), None for the defaults."""
        now = self.env.now
        request = Request(request_id, now, prompt_tokens)
        if attributes is not None:
            priority, ttft_slo_s, prefix_id, prefix_tokens = attributes
            assert 0 <= prefix_tokens <= prompt_tokens, (request_id, prefix_tokens)
            request.priority = priority
            request.ttft_slo_s = ttft_slo_s
            request.prefix_id = prefix_id
            request.prefix_tokens = prefix_tokens if prefix_id >= 0 else 0
        slo_s = self.slo_ttft_s if math.isnan(request.ttft_slo_s) else request.ttft_slo_s
        request.deadline_s = now + slo_s
        reason = self._rejection(prompt_tokens, output_tokens)
        if reason is not None:
            assert route is None or route < 0
            self.recorder.request_rejected(request, output_tokens, reason)
            self.on_done(request)
            return
        index = self.router.route(request, self.replicas) if route is None else route
        self._by_index[index].submit(request, output_tokens)


def _predictor(scenario: Scenario, requests: RequestArrays | None) -> Predictor | None:
    """The scenario's length predictor, built once for the whole run (so every replica
    and worker sees the same guesses); ``requests`` is what a learning predictor may
    learn from (None for a closed loop)."""
    config = scenario.engine.predictor
    return None if config is None else build_predictor(config, scenario.seed, requests)


_TOO_LONG, _TOO_BIG = 1, 2


def _rejection_codes(deployment: Deployment, prompt_tokens: Any, output_tokens: Any) -> Any:
    """Per request: 0 accepted, ``_TOO_LONG`` (over max_model_len) or ``_TOO_BIG`` (more
    KV than the whole cache). The one statement of the admission rule, for ints (one
    arrival, no numpy overhead) and arrays (routing ahead) alike."""
    total = prompt_tokens + output_tokens
    too_long = total > deployment.max_model_len
    # The last output token is never fed back, so its KV is never stored.
    blocks = -(-(total - 1) // deployment.scenario.engine.block_size_tokens)
    too_big = blocks > deployment.memory.num_kv_blocks
    return too_long * _TOO_LONG + (too_big > too_long) * _TOO_BIG  # too big, not too long


def _rejected(deployment: Deployment, prompt_tokens: np.ndarray,
              output_tokens: np.ndarray) -> np.ndarray:
    """Which requests will be rejected (vectorised, for routing ahead)."""
    return _rejection_codes(deployment, prompt_tokens, output_tokens) != 0


def _route_ahead(deployment: Deployment, prompt_tokens: np.ndarray,
                 output_tokens: np.ndarray) -> np.ndarray | None:
    """With an oblivious router (one whose choices depend on arrival order alone), the
    replica of every request, -1 for those that will be rejected; else None."""
    scenario = deployment.scenario
    routing_seed = np.random.SeedSequence(scenario.seed).spawn(3)[1]
    router = ROUTING.build(scenario.engine.routing,
                           scenario.engine.limits(deployment.max_model_len),
                           np.random.default_rng(routing_seed))
    assign = getattr(router, "assign", None)
    if assign is None:
        return None
    accepted = ~_rejected(deployment, prompt_tokens, output_tokens)
    routes = np.full(len(prompt_tokens), -1, dtype=np.int64)
    routes[accepted] = assign(int(accepted.sum()), scenario.deployment.replicas)
    return routes


def _open_loop(env: simpy.Environment, cluster: _Cluster, request_ids: np.ndarray,
               requests: RequestArrays, routes: np.ndarray | None
               ) -> Generator[simpy.Event, Any, None]:
    n = len(requests.arrival_s)
    route_list: list[int | None] = routes.tolist() if routes is not None else [None] * n
    attributes: list[tuple[int, float, int, int]] | list[None] = (
        requests.attributes() or [None] * n
    )
    rows = zip(request_ids.tolist(), requests.arrival_s.tolist(),
               requests.prompt_tokens.tolist(), requests.output_tokens.tolist(), route_list,
               attributes, strict=True)
    for request_id, t, prompt, output, route, attrs in rows:
        if t > env.now:
            yield env.timeout(t - env.now)
        cluster.arrive(request_id, prompt, output, route, attrs)


class _ClosedLoop:
    """``concurrency`` clients, each sending its next request ``think_time_s`` after the
    previous one finished (or was rejected), until the stop condition."""

    def __init__(self, env: simpy.Environment, workload: SyntheticWorkload,
                 arrival: ClosedLoopArrivals, num_requests: int | None,
                 duration_s: float | None, rng: np.random.Generator) -> None:
        self.env = env
        self.workload = workload
        self.think_s = on_grid(arrival.think_time_s)
        self.concurrency = arrival.concurrency
        self.num_requests = num_requests
        self.duration_s = duration_s
        self.prompt_rng, self.output_rng = rng.spawn(2)
        self.issued = 0
        self.cluster: _Cluster | None = None
        self._prompts: list[int] = []
        self._outputs: list[int] = []
        self._pending = 0  # next requests owed to clients with no think time
        self._issuing = False
        self._rejected_in_a_row = 0

    def start(self, cluster: _Cluster) -> None:
        self.cluster = cluster
        for _ in range(self.concurrency):
            self._issue()

    def on_done(self, request: Request) -> None:
        """A client's request finished or was rejected: it sends the next one after its
        think time. Never recursive: a rejection happens inside ``arrive``."""
        if request.replica < 0:
            self._rejected_in_a_row += 1
            if self._rejected_in_a_row > MAX_REJECTED_IN_A_ROW:
                raise ScenarioError(
                    f"closed-loop clients: {MAX_REJECTED_IN_A_ROW} requests in a row were "
                    f"rejected (longer than max_model_len or the whole KV cache), so the run "
                    f"would never advance; cap the workload's lengths or raise the limits"
                )
        else:
            self._rejected_in_a_row = 0
        if self.think_s > 0:
            self.env.timeout(self.think_s).callbacks.append(lambda _event: self._issue())
            return
        self._pending += 1
        if not self._issuing:
            self._issuing = True
            while self._pending:
                self._pending -= 1
                self._issue()
            self._issuing = False

    def _issue(self) -> None:
        assert self.cluster is not None
        if self.num_requests is not None and self.issued >= self.num_requests:
            return
        if self.duration_s is not None and self.env.now >= self.duration_s:
            return
        if not self._prompts:
            # Lengths in chunks, in the same order as an open-loop run would draw them.
            prompts = self.workload.prompt_tokens.sample(self.prompt_rng, _LENGTH_CHUNK)
            outputs = self.workload.output_tokens.sample(self.output_rng, _LENGTH_CHUNK)
            self._prompts, self._outputs = prompts.tolist(), outputs.tolist()
            self._prompts.reverse()
            self._outputs.reverse()
        request_id = self.issued
        self.issued += 1
        self.cluster.arrive(request_id, self._prompts.pop(), self._outputs.pop())


@dataclass(frozen=True, slots=True)
class _GroupRun:
    """What one group of replicas produced (a whole run, or one worker's share)."""

    requests: pd.DataFrame
    iterations: pd.DataFrame
    itl_extra_s: np.ndarray
    end_s: float


def _run(env: simpy.Environment, cluster: _Cluster, recorder: Recorder,
         stop_s: float | None) -> _GroupRun:
    if stop_s is not None:
        env.run(until=stop_s)
    else:
        env.run()
    for replica in cluster.replicas:
        replica.record_in_flight()
        replica.check_invariants()
    return _GroupRun(
        recorder.requests_frame(),
        recorder.iterations_frame([r.index for r in cluster.replicas]),
        np.sort(np.asarray(recorder.itl_extra_s, dtype=np.float64)),
        float(env.now),
    )


def _run_open_loop(deployment: Deployment, replica_indices: Sequence[int],
                   request_ids: np.ndarray, requests: RequestArrays,
                   routes: np.ndarray | None, predictor: Predictor | None) -> _GroupRun:
    """Simulate ``replica_indices`` fed with these requests (the rejected ones included)."""
    scenario = deployment.scenario
    env = simpy.Environment()
    recorder = Recorder(scenario.deployment.replicas)
    cluster = _Cluster(env, deployment, recorder, lambda _request: None, replica_indices,
                       predictor)
    if routes is not None:
        for replica in cluster.replicas:
            replica.expect_arrivals(requests.arrival_s[routes == replica.index])
    env.process(_open_loop(env, cluster, request_ids, requests, routes))
    return _run(env, cluster, recorder, scenario.stop.duration_s)


def _run_in_workers(deployment: Deployment, workers: int, requests: RequestArrays,
                    routes: np.ndarray, predictor: Predictor | None) -> _GroupRun:
    """Routed ahead, replicas never interact: simulate groups of them in parallel
    processes and merge. The frames equal a single-process run's (a test holds them)."""
    groups = np.array_split(np.arange(deployment.scenario.deployment.replicas), workers)
    tasks = []
    for g, group in enumerate(groups):
        # Rejected requests (route -1) are recorded by the first group.
        mine = np.isin(routes, group) | ((routes < 0) if g == 0 else False)
        ids = np.flatnonzero(mine)
        tasks.append((deployment, group.tolist(), ids, requests.take(ids), routes[ids],
                      predictor))
    method = "fork" if sys.platform == "linux" else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        parts = list(pool.map(_run_open_loop, *zip(*tasks, strict=True)))
    frame = pd.concat([p.requests for p in parts], ignore_index=True)
    return _GroupRun(
        frame.sort_values("request_id", kind="stable", ignore_index=True),
        pd.concat([p.iterations for p in parts], ignore_index=True),
        np.sort(np.concatenate([p.itl_extra_s for p in parts])),
        max(p.end_s for p in parts),
    )


PARALLEL_MIN_REQUESTS = 20_000
"""Below this many requests a run stays in one process (workers cost ~0.1 s to start)."""


def _num_workers(workers: int | None, num_replicas: int, num_requests: int) -> int:
    if workers is None:
        if num_requests < PARALLEL_MIN_REQUESTS:
            return 1
        workers = os.cpu_count() or 1
    return max(1, min(workers, num_replicas))


def simulate(scenario: Scenario, *, workers: int | None = None) -> Results:
    """Run ``scenario`` to its stop condition and return its frames and summary.

    Deterministic: the same scenario (seed included) gives identical results, whatever
    ``workers`` is. ``workers`` > 1 simulates groups of replicas in that many processes
    when routing is oblivious (round robin) and the workload open-loop, where replicas
    cannot affect each other; None picks the CPU count for runs of at least
    ``PARALLEL_MIN_REQUESTS`` requests. Raises ``ScenarioError`` (a ValueError) when the
    deployment cannot run, with the numbers.
    """
    wall_start = time.perf_counter()  # reported only; simulated time is env.now alone
    deployment = resolve(scenario)
    # Streams: [0] workload, [1] routing, [2] per-replica policies.
    workload_seed = np.random.SeedSequence(scenario.seed).spawn(3)[0]
    rng = np.random.default_rng(workload_seed)
    workload, stop = scenario.workload, scenario.stop
    workload_report: str | None = None
    all_replicas = range(scenario.deployment.replicas)

    if isinstance(workload, SyntheticWorkload) and isinstance(workload.arrival, ClosedLoopArrivals):
        env = simpy.Environment()
        recorder = Recorder(scenario.deployment.replicas)
        closed = _ClosedLoop(
            env, workload, workload.arrival, stop.num_requests, stop.duration_s, rng
        )
        predictor = _predictor(scenario, None)
        cluster = _Cluster(env, deployment, recorder, closed.on_done, all_replicas, predictor)
        closed.start(cluster)
        run = _run(env, cluster, recorder, stop.duration_s)
    else:
        if isinstance(workload, TraceWorkload):
            arrays, workload_report = trace_requests(
                workload, num_requests=stop.num_requests, duration_s=stop.duration_s, rng=rng)
        else:
            arrays = open_loop_requests(
                workload, num_requests=stop.num_requests, duration_s=stop.duration_s, rng=rng
            )
        arrays = arrays._replace(arrival_s=on_grid_array(arrays.arrival_s))
        routes = _route_ahead(deployment, arrays.prompt_tokens, arrays.output_tokens)
        predictor = _predictor(scenario, arrays)
        num_workers = _num_workers(workers, len(all_replicas), len(arrays.arrival_s))
        if routes is not None and num_workers > 1:
            run = _run_in_workers(deployment, num_workers, arrays, routes, predictor)
        else:
            ids = np.arange(len(arrays.arrival_s))
            run = _run_open_loop(deployment, all_replicas, ids, arrays, routes, predictor)

    info = RunInfo(
        accelerator=deployment.accelerator,
        compute_dtype=deployment.cost.compute_dtype,
        num_replicas=scenario.deployment.replicas,
        devices_per_replica=scenario.deployment.tensor_parallel,
        kv_capacity_blocks=deployment.memory.num_kv_blocks,
        block_size_tokens=scenario.engine.block_size_tokens,
        slo_ttft_s=scenario.slo.ttft_s,
        slo_tpot_s=scenario.slo.tpot_s,
        end_s=run.end_s,
        wall_s=time.perf_counter() - wall_start,
        workload_report=workload_report,
    )
    return Results(scenario, run.requests, run.iterations, info, run.itl_extra_s)
