"""simulate(scenario) -> Results: build the SimPy world, run it, collect the frames."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import simpy

from policies.batching import BATCHING
from policies.routing import ROUTING
from simulator.clock import on_grid, on_grid_array
from simulator.deployment import Deployment, resolve
from simulator.recorder import Recorder
from simulator.replica import Replica
from simulator.request import Request
from simulator.results import Results, RunInfo
from simulator.scenario import Scenario
from workloads.config import ClosedLoopArrivals, SyntheticWorkload
from workloads.generate import open_loop_requests

_LENGTH_CHUNK = 65536


class _Cluster:
    """Replicas behind a router, and the admission check that rejects impossible requests."""

    def __init__(self, env: simpy.Environment, deployment: Deployment, recorder: Recorder,
                 on_done: Callable[[Request], None]) -> None:
        scenario = deployment.scenario
        eng = scenario.engine
        self.env = env
        self.recorder = recorder
        self.on_done = on_done
        self.max_model_len = deployment.max_model_len
        self.num_kv_blocks = deployment.memory.num_kv_blocks
        self.block_size = eng.block_size_tokens
        self.router = ROUTING.get(eng.routing)()
        batching_cls = BATCHING.get(eng.batching)
        self.replicas = [
            Replica(
                env, i, deployment.cost, batching_cls.from_engine(eng),
                num_kv_blocks=self.num_kv_blocks,
                block_size_tokens=eng.block_size_tokens,
                max_num_seqs=eng.max_num_seqs,
                fast_forward=eng.fast_forward,
                stop_s=scenario.stop.duration_s,
                recorder=recorder,
                on_done=on_done,
            )
            for i in range(scenario.deployment.replicas)
        ]
        self._next_id = 0

    def _rejection(self, prompt_tokens: int, output_tokens: int) -> str | None:
        total = prompt_tokens + output_tokens
        if total > self.max_model_len:
            return f"prompt + output = {total} tokens exceeds max_model_len {self.max_model_len}"
        # The last output token is never fed back, so its KV is never stored.
        blocks = math.ceil((total - 1) / self.block_size)
        if blocks > self.num_kv_blocks:
            return f"needs {blocks} KV blocks; the whole cache holds {self.num_kv_blocks}"
        return None

    def rejected(self, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        """Vectorised ``_rejection``: which requests will be rejected."""
        total = prompt_tokens + output_tokens
        blocks = -(-(total - 1) // self.block_size)
        return (total > self.max_model_len) | (blocks > self.num_kv_blocks)

    def route_ahead(self, arrival_s: np.ndarray, prompt_tokens: np.ndarray,
                    output_tokens: np.ndarray) -> list[int] | None:
        """With an oblivious router, route a whole open-loop workload now and tell each
        replica its arrivals (so runs need no interrupts). None if the router is not."""
        assign = getattr(self.router, "assign", None)
        if assign is None:
            return None
        accepted = ~self.rejected(prompt_tokens, output_tokens)
        routes = np.full(len(arrival_s), -1, dtype=np.int64)
        routes[accepted] = assign(int(accepted.sum()), len(self.replicas))
        for replica in self.replicas:
            replica.expect_arrivals(arrival_s[routes == replica.index])
        return routes.tolist()

    def arrive(self, prompt_tokens: int, output_tokens: int, route: int | None = None) -> None:
        """A request arrives now; ``route`` is its replica when routed ahead."""
        request = Request(self._next_id, self.env.now, prompt_tokens)
        self._next_id += 1
        reason = self._rejection(prompt_tokens, output_tokens)
        if reason is not None:
            assert route is None or route < 0
            self.recorder.request_rejected(request, output_tokens, reason)
            self.on_done(request)
            return
        index = self.router.route(request, self.replicas) if route is None else route
        self.replicas[index].submit(request, output_tokens)


def _open_loop(env: simpy.Environment, cluster: _Cluster, arrival_s: np.ndarray,
               prompt_tokens: np.ndarray, output_tokens: np.ndarray
               ) -> Generator[simpy.Event, Any, None]:
    times = on_grid_array(arrival_s)
    ahead = cluster.route_ahead(times, prompt_tokens, output_tokens)
    routes: list[int | None] = list(ahead) if ahead is not None else [None] * len(times)
    rows = zip(times.tolist(), prompt_tokens.tolist(), output_tokens.tolist(), routes,
               strict=True)
    for t, prompt, output, route in rows:
        if t > env.now:
            yield env.timeout(t - env.now)
        cluster.arrive(prompt, output, route)


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

    def start(self, cluster: _Cluster) -> None:
        self.cluster = cluster
        for _ in range(self.concurrency):
            self._issue()

    def on_done(self, request: Request) -> None:
        if self.think_s > 0:
            self.env.timeout(self.think_s).callbacks.append(lambda _event: self._issue())
        else:
            self._issue()

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
        self.issued += 1
        self.cluster.arrive(self._prompts.pop(), self._outputs.pop())


def simulate(scenario: Scenario) -> Results:
    """Run ``scenario`` to its stop condition and return its frames and summary.

    Deterministic: the same scenario (seed included) gives identical results. Raises
    ``ScenarioError`` (a ValueError) when the deployment cannot run, with the numbers.
    """
    wall_start = time.perf_counter()  # reported only; simulated time is env.now alone
    deployment = resolve(scenario)
    env = simpy.Environment()
    recorder = Recorder(scenario.deployment.replicas)
    (workload_seed,) = np.random.SeedSequence(scenario.seed).spawn(1)
    rng = np.random.default_rng(workload_seed)
    workload, stop = scenario.workload, scenario.stop

    closed: _ClosedLoop | None = None
    if isinstance(workload, SyntheticWorkload) and isinstance(workload.arrival, ClosedLoopArrivals):
        closed = _ClosedLoop(
            env, workload, workload.arrival, stop.num_requests, stop.duration_s, rng
        )
        cluster = _Cluster(env, deployment, recorder, closed.on_done)
        closed.start(cluster)
    else:
        cluster = _Cluster(env, deployment, recorder, lambda _request: None)
        arrays = open_loop_requests(
            workload, num_requests=stop.num_requests, duration_s=stop.duration_s, rng=rng
        )
        env.process(_open_loop(env, cluster, arrays.arrival_s, arrays.prompt_tokens,
                               arrays.output_tokens))

    if stop.duration_s is not None:
        env.run(until=stop.duration_s)
    else:
        env.run()
    for replica in cluster.replicas:
        replica.record_in_flight()

    info = RunInfo(
        accelerator=deployment.accelerator,
        compute_dtype=deployment.cost.compute_dtype,
        num_replicas=scenario.deployment.replicas,
        devices_per_replica=scenario.deployment.tensor_parallel,
        kv_capacity_blocks=deployment.memory.num_kv_blocks,
        block_size_tokens=scenario.engine.block_size_tokens,
        slo_ttft_s=scenario.slo.ttft_s,
        slo_tpot_s=scenario.slo.tpot_s,
        end_s=float(env.now),
        wall_s=time.perf_counter() - wall_start,
    )
    return Results(
        scenario,
        recorder.requests_frame(),
        recorder.iterations_frame(),
        info,
        np.asarray(recorder.itl_stall_s, dtype=np.float64),
    )
