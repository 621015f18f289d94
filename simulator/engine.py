"""simulate(scenario) -> Results: build the SimPy world, run it, collect the frames."""

from __future__ import annotations

import functools
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

from policies.routing import ROUTING
from simulator.clock import on_grid, on_grid_array
from simulator.cluster import Cluster, rejection_codes
from simulator.deployment import Deployment, ScenarioError, resolve
from simulator.predictor import Predictor, build_predictor
from simulator.recorder import Recorder
from simulator.request import Request
from simulator.results import GroupInfo, Results, RunInfo
from simulator.scenario import Scenario
from workloads.config import ClosedLoopArrivals, SyntheticWorkload, TraceWorkload
from workloads.generate import RequestArrays, open_loop_requests, trace_requests
from workloads.trace import Dependencies

_LENGTH_CHUNK = 65536
MAX_REJECTED_IN_A_ROW = 100_000
"""A closed loop whose every request is rejected would spin at one instant forever."""


def _predictor(scenario: Scenario, requests: RequestArrays | None) -> Predictor | None:
    """The scenario's length predictor, built once for the whole run (so every replica
    and worker sees the same guesses); ``requests`` is what a learning predictor may
    learn from (None for a closed loop)."""
    config = scenario.engine.predictor
    return None if config is None else build_predictor(config, scenario.seed, requests)


def _rejected(deployment: Deployment, prompt_tokens: np.ndarray,
              output_tokens: np.ndarray) -> np.ndarray:
    """Which requests will be rejected (vectorised, for routing ahead)."""
    return rejection_codes(deployment, prompt_tokens, output_tokens) != 0


def _route_ahead(deployment: Deployment, prompt_tokens: np.ndarray,
                 output_tokens: np.ndarray, requests_have_dependencies: bool = False
                 ) -> np.ndarray | None:
    """With an oblivious router (one whose choices depend on arrival order alone) and a
    fixed set of replicas serving whole requests, the replica of every request, -1 for
    those that will be rejected; else None."""
    scenario = deployment.scenario
    if any(g.role != "mixed" or g.autoscale is not None for g in deployment.groups):
        return None
    if requests_have_dependencies:
        return None
    if deployment.min_kv_blocks != deployment.request_kv_blocks_limit:
        return None  # replicas of different capacities: long requests need routing
    routing_seed = np.random.SeedSequence(scenario.seed).spawn(3)[1]
    router = ROUTING.build(scenario.engine.routing,
                           scenario.engine.limits(deployment.max_model_len),
                           np.random.default_rng(routing_seed))
    assign = getattr(router, "assign", None)
    if assign is None:
        return None
    accepted = ~_rejected(deployment, prompt_tokens, output_tokens)
    routes = np.full(len(prompt_tokens), -1, dtype=np.int64)
    # Mixed groups only: replica i of the router's list is replica i of the cluster.
    routes[accepted] = assign(int(accepted.sum()), deployment.num_replicas)
    return routes


def _open_loop(env: simpy.Environment, cluster: Cluster, request_ids: np.ndarray,
               requests: RequestArrays, routes: np.ndarray | None
               ) -> Generator[simpy.Event, Any, None]:
    n = len(requests.arrival_s)
    route_list: list[int | None] = routes.tolist() if routes is not None else [None] * n
    attributes: list[tuple[int, float, int, int]] | list[None] = (
        requests.attributes() or [None] * n
    )
    deps = requests.dependencies()
    if deps is not None:
        yield from _issue_with_dependencies(env, cluster, request_ids, requests, attributes,
                                            deps)
        return
    rows = zip(request_ids.tolist(), requests.arrival_s.tolist(),
               requests.prompt_tokens.tolist(), requests.output_tokens.tolist(), route_list,
               attributes, strict=True)
    for request_id, t, prompt, output, route, attrs in rows:
        if t > env.now:
            yield env.timeout(t - env.now)
        cluster.arrive(request_id, prompt, output, route, attrs)


def _issue_with_dependencies(env: simpy.Environment, cluster: Cluster, request_ids: np.ndarray,
                             requests: RequestArrays,
                             attributes: list[tuple[int, float, int, int]] | list[None],
                             deps: Dependencies) -> Generator[simpy.Event, Any, None]:
    """Input transforms: a request reaches the engine ``preprocess_s`` after the client
    sent it (compression, retrieval), or after the request it depends on finished
    (Skeleton-of-Thought's point expansions wait for the skeleton). Latencies count
    from the client's send (``arrival_s``)."""
    ids = request_ids.tolist()
    client_s = requests.arrival_s.tolist()
    prompts, outputs = requests.prompt_tokens.tolist(), requests.output_tokens.tolist()
    groups, pre = deps.group_id.tolist(), on_grid_array(deps.preprocess_s).tolist()
    children: dict[int, list[int]] = {}
    for row, parent in enumerate(deps.depends_on.tolist()):
        if parent >= 0:
            children.setdefault(ids[parent], []).append(row)

    def issue(row: int) -> None:
        cluster.arrive(ids[row], prompts[row], outputs[row], None, attributes[row],
                       client_arrival_s=client_s[row], group_id=ids[groups[row]],
                       preprocess_s=pre[row])

    def release(request: Request) -> None:
        for row in children.pop(request.request_id, ()):
            env.timeout(pre[row]).callbacks.append(functools.partial(_issue_later, issue, row))

    cluster.add_done_listener(release)
    independent = np.flatnonzero(deps.depends_on < 0)
    engine_s = requests.arrival_s[independent] + deps.preprocess_s[independent]
    for row in independent[np.argsort(on_grid_array(engine_s), kind="stable")].tolist():
        t = client_s[row] + pre[row]
        if t > env.now:
            yield env.timeout(t - env.now)
        issue(row)


def _issue_later(issue: Callable[[int], None], row: int, _event: simpy.Event) -> None:
    issue(row)


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
        self.cluster: Cluster | None = None
        self._prompts: list[int] = []
        self._outputs: list[int] = []
        self._pending = 0  # next requests owed to clients with no think time
        self._issuing = False
        self._rejected_in_a_row = 0

    def start(self, cluster: Cluster) -> None:
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
    scaling: pd.DataFrame


def _run(env: simpy.Environment, cluster: Cluster, recorder: Recorder,
         stop_s: float | None) -> _GroupRun:
    cluster.start_autoscalers()
    if stop_s is not None:
        env.run(until=stop_s)
    elif any(g.autoscale is not None for g in cluster.deployment.groups):
        # The autoscaler ticks forever: run until every request is done.
        env.run(until=cluster.all_done)
    else:
        env.run()
    cluster.finish()
    return _GroupRun(
        recorder.requests_frame(),
        recorder.iterations_frame([r.index for r in cluster.replicas]),
        np.sort(np.asarray(recorder.itl_extra_s, dtype=np.float64)),
        float(env.now),
        recorder.scaling_frame(),
    )


def _run_open_loop(deployment: Deployment, replica_indices: Sequence[int],
                   request_ids: np.ndarray, requests: RequestArrays,
                   routes: np.ndarray | None, predictor: Predictor | None) -> _GroupRun:
    """Simulate ``replica_indices`` fed with these requests (the rejected ones included)."""
    scenario = deployment.scenario
    env = simpy.Environment()
    recorder = Recorder(deployment.num_replicas)
    cluster = Cluster(env, deployment, recorder, lambda _request: None, replica_indices,
                      predictor)
    cluster.expected_requests = len(request_ids)
    if routes is not None:
        for replica in cluster.replicas:
            replica.expect_arrivals(requests.arrival_s[routes == replica.index])
    env.process(_open_loop(env, cluster, request_ids, requests, routes))
    return _run(env, cluster, recorder, scenario.stop.duration_s)


def _run_in_workers(deployment: Deployment, workers: int, requests: RequestArrays,
                    routes: np.ndarray, predictor: Predictor | None) -> _GroupRun:
    """Routed ahead, replicas never interact: simulate groups of them in parallel
    processes and merge. The frames equal a single-process run's (a test holds them)."""
    groups = np.array_split(np.arange(deployment.num_replicas), workers)
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
        pd.concat([p.scaling for p in parts], ignore_index=True),
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
    all_replicas = range(deployment.num_replicas)

    if isinstance(workload, SyntheticWorkload) and isinstance(workload.arrival, ClosedLoopArrivals):
        env = simpy.Environment()
        recorder = Recorder(deployment.num_replicas)
        closed = _ClosedLoop(
            env, workload, workload.arrival, stop.num_requests, stop.duration_s, rng
        )
        predictor = _predictor(scenario, None)
        cluster = Cluster(env, deployment, recorder, closed.on_done, all_replicas, predictor)
        cluster.expected_requests = stop.num_requests
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
        routes = _route_ahead(deployment, arrays.prompt_tokens, arrays.output_tokens,
                              arrays.dependencies() is not None)
        predictor = _predictor(scenario, arrays)
        num_workers = _num_workers(workers, len(all_replicas), len(arrays.arrival_s))
        if routes is not None and num_workers > 1:
            run = _run_in_workers(deployment, num_workers, arrays, routes, predictor)
        else:
            ids = np.arange(len(arrays.arrival_s))
            run = _run_open_loop(deployment, all_replicas, ids, arrays, routes, predictor)

    groups = tuple(
        GroupInfo(g.name, g.role, g.accelerator, g.cost.compute_dtype, g.first_replica,
                  g.max_replicas, g.devices_per_replica, len(g.stages), g.num_kv_blocks)
        for g in deployment.groups
    )
    info = RunInfo(
        accelerator=deployment.accelerator,
        compute_dtype=deployment.cost.compute_dtype,
        num_replicas=deployment.num_replicas,
        devices_per_replica=groups[0].devices_per_replica,
        kv_capacity_blocks=groups[0].kv_capacity_blocks,
        block_size_tokens=scenario.engine.block_size_tokens,
        slo_ttft_s=scenario.slo.ttft_s,
        slo_tpot_s=scenario.slo.tpot_s,
        end_s=run.end_s,
        wall_s=time.perf_counter() - wall_start,
        workload_report=workload_report,
        groups=groups,
        replica_s=_provisioned_s(deployment, run.scaling, run.end_s),
        weight_bytes_per_device=deployment.memory.weight_bytes,
    )
    return Results(scenario, run.requests, run.iterations, info, run.itl_extra_s, run.scaling)


def _provisioned_s(deployment: Deployment, scaling: pd.DataFrame, end_s: float
                   ) -> tuple[float, ...] | None:
    """Seconds each replica was paid for: from 'start' (or 'ready' at 0, for those
    running from the outset) to 'stop' or the end; None without autoscaling."""
    if not any(g.autoscale is not None for g in deployment.groups):
        return None
    paid = np.zeros(deployment.num_replicas)
    for group in deployment.groups:
        if group.autoscale is None:
            paid[list(group.replica_indices)] = end_s
    since: dict[int, float] = {}
    for t, replica, event in scaling.itertuples(index=False):
        if event == "start" or (event == "ready" and replica not in since):
            since[replica] = t
        elif event == "stop":
            paid[replica] += t - since.pop(replica)
    for replica, t in since.items():
        paid[replica] += end_s - t
    return tuple(paid.tolist())
