"""The cluster: replica groups behind their routers, the KV links of disaggregated
serving, and the autoscaler.

A replica is a ``Replica`` (one scheduler over one device group) or, under pipeline
parallelism, ``VirtualEngines`` (p schedulers sharing the stages of a ``Pipeline``).
Groups have roles: 'mixed' replicas serve whole requests; 'prefill' replicas compute
prompts and hand each request, with its KV cache, to a 'decode' replica chosen by the
decode pool's router, over the sending replica's link (a SimPy resource: transfers
queue on it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Generator, Sequence
from typing import Any, NamedTuple

import numpy as np
import simpy

from policies.batching import BATCHING
from policies.queue import QUEUE
from policies.routing import ROUTING, RoutingPolicy
from simulator.deployment import Deployment, ReplicaGroup, ScenarioError
from simulator.dtypes import BYTES_PER_ELEMENT
from simulator.optimizations import BeamSearch, ParallelSampling
from simulator.pipeline import Pipeline
from simulator.precision import kv_vector_bytes
from simulator.predictor import Predictor
from simulator.recorder import Recorder
from simulator.replica import Replica
from simulator.request import Request
from simulator.scenario import AutoscaleConfig
from simulator.speculative import SpeculativeReplica

ROUTING_REFERENCE_SHAPE = ([512], [0], 32, 32 * 1024.0)
"""The iteration whose speed ranks replicas of different groups for routers: a 512-token
prefill beside 32 decodes at 1k context (a loaded replica's typical step)."""


class VirtualEngines:
    """A pipeline-parallel replica as routers and the cluster see it: ``p`` schedulers
    (``Replica`` objects, vLLM's virtual engines) over one ``Pipeline``. An arriving
    request joins the one with the fewest unfinished requests, as vLLM's engine does."""

    def __init__(self, index: int, engines: Sequence[Replica], pipeline: Pipeline,
                 speed: float = 1.0) -> None:
        self.index = index
        self.engines = tuple(engines)
        self.pipeline = pipeline
        self.speed = speed

    def _least_busy(self) -> Replica:
        return min(self.engines, key=lambda e: e.num_running + e.num_waiting)

    def submit(self, request: Request, output_tokens: int) -> None:
        self._least_busy().submit(request, output_tokens)

    def submit_prefilled(self, request: Request, output_tokens: int) -> None:
        self._least_busy().submit_prefilled(request, output_tokens)

    def expect_arrivals(self, arrival_s: np.ndarray) -> None:
        """Arrivals are not announced to virtual engines (which one gets a request depends
        on their state); runs are not fast-forwarded under pipeline parallelism anyway."""

    @property
    def num_running(self) -> int:
        return sum(e.num_running for e in self.engines)

    @property
    def num_waiting(self) -> int:
        return sum(e.num_waiting for e in self.engines)

    @property
    def num_outstanding_prompt_tokens(self) -> int:
        return sum(e.num_outstanding_prompt_tokens for e in self.engines)

    @property
    def num_blocks_used(self) -> int:
        return sum(e.num_blocks_used for e in self.engines)

    @property
    def num_kv_blocks(self) -> int:
        return sum(e.num_kv_blocks for e in self.engines)

    @property
    def max_num_seqs(self) -> int:
        return sum(e.max_num_seqs for e in self.engines)

    def record_in_flight(self) -> None:
        for engine in self.engines:
            engine.record_in_flight()

    def check_invariants(self) -> None:
        for engine in self.engines:
            engine.check_invariants()



class KVLink(NamedTuple):
    """The link a prefill replica sends KV caches over, with what one request's cache
    weighs: built once per prefill group."""

    latency_s: float
    bytes_per_s: float
    """Per-device bandwidth times the devices that send at once."""
    bytes_per_token: float
    """One copy of a token's KV, every layer, with its format's scales."""
    bytes_per_seq: float
    """A sequence's recurrent state (hybrid models), sent with its KV."""

    def seconds(self, num_tokens: int) -> float:
        """Latency plus ``num_tokens`` tokens' KV (and the state) over the bandwidth."""
        return self.latency_s + (num_tokens * self.bytes_per_token
                                 + self.bytes_per_seq) / self.bytes_per_s

    @classmethod
    def of(cls, group: ReplicaGroup, deployment: Deployment) -> KVLink:
        """The scenario's KV link (``deployment.kv_transfer``) from a replica of ``group``."""
        link = deployment.scenario.deployment.kv_transfer
        acc = group.accelerator
        per_device = (link.gb_per_s * 1e9 if link.gb_per_s is not None
                      else acc.network_bytes_per_s if link.link == "network"
                      else acc.intra_node_bytes_per_s)
        latency_s = (link.latency_us * 1e-6 if link.latency_us is not None
                     else group.topology.network_latency_s if link.link == "network"
                     else group.topology.efficiency.latency_s)
        model = group.cost.model
        # One token's cached vectors: MLA's latent, else a K and a V per KV head, each with
        # its format's scales (an int4 cache's).
        count, width = ((1, model.kv_latent_size) if model.is_mla
                        else (2 * model.num_kv_heads, model.head_dim))
        per_token = (model.layer_counts().num_attention * count
                     * kv_vector_bytes(group.cost.kv_cache_dtype, width))
        # The devices holding a sequence's KV (a TP group per stage, on one attention-DP
        # rank) each send their share at once.
        devices = group.layout.tensor_parallel * group.layout.pipeline_parallel
        return cls(latency_s, per_device * devices, per_token,
                   model.state_elements_per_seq() * BYTES_PER_ELEMENT[group.cost.state_dtype])


class Cluster:
    """Every replica of a deployment (or the group of them one worker process runs),
    their routers and the admission check that rejects impossible requests."""

    def __init__(self, env: simpy.Environment, deployment: Deployment, recorder: Recorder,
                 on_done: Callable[[Request], None], replica_indices: Sequence[int],
                 predictor: Predictor | None) -> None:
        scenario = deployment.scenario
        eng = scenario.engine
        self.env = env
        self.deployment = deployment
        self.recorder = recorder
        self._on_done = on_done
        self.all_done = env.event()
        """Succeeds once ``expected_requests`` requests are finished or rejected."""
        self.expected_requests: int | None = None
        self._num_done = 0
        self._done_listeners: list[Callable[[Request], None]] = []
        self.max_model_len = deployment.max_model_len
        self.num_kv_blocks = deployment.min_kv_blocks
        self.request_kv_blocks_limit = deployment.request_kv_blocks_limit
        self._one_capacity = self.num_kv_blocks == self.request_kv_blocks_limit
        self.block_size = eng.block_size_tokens
        self.slo_ttft_s = math.inf if scenario.slo.ttft_s is None else scenario.slo.ttft_s
        self._check_policies(predictor)
        # Streams: [0] workload, [1] routing, [2] policies, [3] decoding draws.
        seeds = np.random.SeedSequence(scenario.seed).spawn(4)
        self._decode_seeds = seeds[3].spawn(deployment.num_replicas)
        limits = eng.limits(deployment.max_model_len)
        self.router = ROUTING.build(eng.routing, limits, np.random.default_rng(seeds[1]))
        # The decode pool's router draws from its own stream (spawned from the routing one,
        # so a cluster without a decode pool sees the same routing draws as before).
        self.decode_router: RoutingPolicy = ROUTING.build(
            eng.routing, limits, np.random.default_rng(seeds[1].spawn(1)[0]))
        # Per replica: one stream for its batching policy, one for its queue order.
        self._policy_seeds = [s.spawn(2) for s in seeds[2].spawn(deployment.num_replicas)]
        self._predictor = predictor
        self._speeds = _relative_speeds(deployment)
        wanted = set(replica_indices)
        self.replicas: list[Replica | VirtualEngines] = []
        self._links: dict[int, simpy.Resource] = {}
        self._kv_links: dict[str, KVLink] = {}
        for group in deployment.groups:
            for index in group.replica_indices:
                if index in wanted:
                    self.replicas.append(self._build(group, index))
        self._by_index = {replica.index: replica for replica in self.replicas}
        # Serving at the start: each group's first `num_replicas` (autoscaling starts the
        # rest when it wants them).
        self._active = {i for g in deployment.groups
                        for i in range(g.first_replica, g.first_replica + g.num_replicas)
                        if i in wanted}
        self.entry = [r for r in self.replicas if self._role(r) != "decode"]
        self.decode = [r for r in self.replicas if self._role(r) == "decode"]
        self._entry_active = [r for r in self.entry if r.index in self._active]
        self._decode_active = [r for r in self.decode if r.index in self._active]

    def _role(self, replica: Replica | VirtualEngines) -> str:
        return self.deployment.group_of(replica.index).role

    def _check_policies(self, predictor: Predictor | None) -> None:
        eng = self.deployment.scenario.engine
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

    def _build(self, group: ReplicaGroup, index: int) -> Replica | VirtualEngines:
        """Replica ``index`` of ``group``: one scheduler, or one per pipeline stage."""
        eng = self.deployment.scenario.engine
        dp = group.layout.attention_data_parallel
        # Data-parallel attention ranks run as one scheduler with their limits pooled.
        max_num_seqs = eng.max_num_seqs * dp
        limits = eng.limits(self.max_model_len)
        if dp > 1:
            limits = dataclasses.replace(
                limits, max_num_seqs=max_num_seqs,
                max_num_batched_tokens=limits.max_num_batched_tokens * dp)
        speed = self._speeds[group.name]
        on_prefilled = self._hand_off if group.role == "prefill" else None
        if group.role == "prefill":
            self._links[index] = simpy.Resource(self.env, capacity=1)
            if group.name not in self._kv_links:
                self._kv_links[group.name] = KVLink.of(group, self.deployment)
        num_engines = len(group.stages)
        pipeline = None
        if num_engines > 1:
            pipeline = Pipeline(self.env, group.stages, eng.iteration_overhead_s,
                                group.topology)
        seeds = self._policy_seeds[index]
        # vLLM gives each virtual engine an equal share of the KV blocks.
        num_blocks = group.num_kv_blocks // num_engines
        decoding = eng.decoding
        width = (decoding.beam_width if isinstance(decoding, BeamSearch)
                 else decoding.n if isinstance(decoding, ParallelSampling) else 1)
        extra: dict[str, Any] = {}
        kind: type[Replica] = Replica
        if group.step is not None and group.role != "prefill":
            kind = SpeculativeReplica
            extra = {"step": group.step,
                     "rng": np.random.default_rng(self._decode_seeds[index])}
        engines = []
        for v in range(num_engines):
            rng_batch, rng_queue = (np.random.default_rng(s) for s in
                                    (seeds if v == 0 else [t.spawn(1)[0] for t in seeds]))
            engines.append(kind(
                self.env, index, group.cost,
                BATCHING.build(eng.batching, limits, rng_batch),
                queue=QUEUE.build(eng.queue, limits, rng_queue),
                predictor=self._predictor,
                num_host_blocks=group.memory.num_host_blocks * dp,
                preemption_victim=eng.preemption_victim,
                kv_reservation=eng.kv_reservation,
                prefix_cache=self.deployment.prefix_cache,
                max_model_len=self.max_model_len,
                num_kv_blocks=num_blocks,
                block_size_tokens=eng.block_size_tokens,
                max_num_seqs=max_num_seqs,
                fast_forward=eng.fast_forward,
                stop_s=self.deployment.scenario.stop.duration_s,
                recorder=self.recorder,
                on_done=self.on_done,
                pipeline=pipeline,
                on_prefilled=on_prefilled,
                speed=speed,
                width=width,
                **extra,
            ))
        if pipeline is None:
            return engines[0]
        return VirtualEngines(index, engines, pipeline, speed)

    def on_done(self, request: Request) -> None:
        """A request finished or was rejected."""
        self._num_done += 1
        self._on_done(request)
        for listener in self._done_listeners:
            listener(request)
        if self._num_done == self.expected_requests and not self.all_done.triggered:
            self.all_done.succeed()

    def add_done_listener(self, listener: Callable[[Request], None]) -> None:
        """Call ``listener`` with every request that finishes or is rejected."""
        self._done_listeners.append(listener)

    # ---- arrivals ----

    def _rejection(self, prompt_tokens: int, output_tokens: int) -> str | None:
        code = rejection_codes(self.deployment, prompt_tokens, output_tokens)
        total = prompt_tokens + output_tokens
        if code == TOO_LONG:
            return f"prompt + output = {total} tokens exceeds max_model_len {self.max_model_len}"
        if code == TOO_BIG:
            blocks = request_blocks(self.deployment, prompt_tokens, output_tokens)
            return (f"needs {blocks} KV blocks; the largest replica's cache holds "
                    f"{self.request_kv_blocks_limit}")
        return None

    def arrive(self, request_id: int, prompt_tokens: int, output_tokens: int,
               route: int | None = None,
               attributes: tuple[int, float, int, int] | None = None, *,
               client_arrival_s: float | None = None, group_id: int = -1,
               preprocess_s: float = 0.0) -> None:
        """A request reaches the engine now; ``route`` is its replica (-1: rejected) when
        the whole workload was routed ahead, None to ask the router; ``attributes`` are
        its (priority, ttft_slo_s, prefix_id, prefix_tokens), None for the defaults.
        With input transforms the client sent it at ``client_arrival_s`` (its latencies
        count from then), it belongs to client request ``group_id`` and spent
        ``preprocess_s`` being prepared."""
        now = self.env.now
        request = Request(request_id, now if client_arrival_s is None else client_arrival_s,
                          prompt_tokens)
        request.group_id = group_id
        request.preprocess_s = preprocess_s
        if attributes is not None:
            priority, ttft_slo_s, prefix_id, prefix_tokens = attributes
            assert 0 <= prefix_tokens <= prompt_tokens, (request_id, prefix_tokens)
            request.priority = priority
            request.ttft_slo_s = ttft_slo_s
            request.prefix_id = prefix_id
            request.prefix_tokens = prefix_tokens if prefix_id >= 0 else 0
        slo_s = self.slo_ttft_s if math.isnan(request.ttft_slo_s) else request.ttft_slo_s
        request.deadline_s = request.arrival_s + slo_s  # from the client's send
        reason = self._rejection(prompt_tokens, output_tokens)
        if reason is not None:
            assert route is None or route < 0
            self.recorder.request_rejected(request, output_tokens, reason)
            self.on_done(request)
            return
        if route is None:
            pool = self._entry_active
            if not self._one_capacity:
                pool = self._able(pool, self.entry, request_blocks(
                    self.deployment, prompt_tokens, 1 if self.decode else output_tokens))
            route = pool[self.router.route(request, pool)].index
        self._by_index[route].submit(request, output_tokens)

    def _able(self, active: list[Replica | VirtualEngines],
              every: list[Replica | VirtualEngines], blocks: int
              ) -> list[Replica | VirtualEngines]:
        """The replicas of ``active`` whose schedulers can hold a request of ``blocks``
        KV blocks; if none of the active ones can, those of ``every`` that can (a
        scaled-down group still serves it). Only asked when capacities differ: in a
        cluster of one capacity every request accepted fits every replica."""
        able = [r for r in active if self._capacity(r) >= blocks]
        return able or [r for r in every if self._capacity(r) >= blocks]

    def _capacity(self, replica: Replica | VirtualEngines) -> int:
        return self.deployment.group_of(replica.index).kv_blocks_per_scheduler

    # ---- disaggregated serving ----

    def _hand_off(self, source: Replica, request: Request, output_tokens: int) -> None:
        """A prefill replica computed ``request``'s prompt and first token: send its KV
        to a decode replica over the source's link (queued behind earlier sends)."""
        self.env.process(self._send(source, request, output_tokens))

    def _send(self, source: Replica, request: Request, output_tokens: int
              ) -> Generator[simpy.Event, Any, None]:
        kv_link = self._kv_links[self.deployment.group_of(source.index).name]
        start_s = self.env.now
        with self._links[source.index].request() as link:
            yield link
            yield self.env.timeout(kv_link.seconds(request.num_computed_tokens))
        source.release_sent(request)
        now = self.env.now
        # The first token reaches the client with the hand-over (DistServe, Splitwise).
        request.first_token_s = request.last_token_s = now
        request.kv_transfer_s = now - start_s
        pool = self._decode_active
        if not self._one_capacity:
            pool = self._able(pool, self.decode, request_blocks(
                self.deployment, request.prompt_tokens, output_tokens))
        target = pool[self.decode_router.route(request, pool)]
        target.submit_prefilled(request, output_tokens)

    # ---- autoscaling ----

    def start_autoscalers(self) -> None:
        for group in self.deployment.groups:
            if group.autoscale is not None:
                self.env.process(self._autoscale(group, group.autoscale))

    def _autoscale(self, group: ReplicaGroup, config: AutoscaleConfig
                   ) -> Generator[simpy.Event, Any, None]:
        """Every ``interval_s``, Kubernetes' HPA rule: ceil(active x metric / target)
        replicas within [min, max], no change while the metric is within 10% of the
        target, and a removal only when every recommendation of the last ``cooldown_s``
        asked for fewer (HPA's scale-down stabilization window). New replicas serve
        after ``startup_s``; removed ones take no new requests and stop once they have
        finished what they hold."""
        members = [self._by_index[i] for i in group.replica_indices]
        starting: list[Replica | VirtualEngines] = []
        draining: list[Replica | VirtualEngines] = []
        history: list[tuple[float, int]] = []  # (time, recommendation)
        for replica in members:
            if replica.index in self._active:
                self.recorder.scaling_event(0.0, replica.index, "ready")
        while True:
            yield self.env.timeout(config.interval_s)
            now = self.env.now
            for replica in list(draining):
                if replica.num_running + replica.num_waiting == 0 and not _sending(replica):
                    draining.remove(replica)
                    self.recorder.scaling_event(now, replica.index, "stop")
            active = [r for r in members if r.index in self._active]
            ratio = _scaling_metric(config.metric, active) / config.target
            desired = len(active) if abs(ratio - 1.0) <= HPA_TOLERANCE else math.ceil(
                len(active) * ratio - 1e-9)
            desired = max(config.min_replicas, min(config.max_replicas, desired))
            history.append((now, desired))
            history = [(t, d) for t, d in history if t >= now - config.cooldown_s]
            provisioned = len(active) + len(starting)
            if desired > provisioned:
                idle = [r for r in members if r.index not in self._active
                        and r not in starting and r not in draining]
                for replica in idle[: desired - provisioned]:
                    starting.append(replica)
                    self.recorder.scaling_event(now, replica.index, "start")
                    self.env.process(self._start(replica, config.startup_s, starting))
                continue
            keep = max(d for _, d in history)
            if keep < len(active) and not starting:
                for replica in active[keep - len(active):]:
                    self._set_active(replica, False)
                    draining.append(replica)
                    self.recorder.scaling_event(now, replica.index, "drain")

    def _start(self, replica: Replica | VirtualEngines, startup_s: float,
               starting: list[Replica | VirtualEngines]) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(startup_s)
        starting.remove(replica)
        self._set_active(replica, True)
        self.recorder.scaling_event(self.env.now, replica.index, "ready")

    def _set_active(self, replica: Replica | VirtualEngines, active: bool) -> None:
        if active:
            self._active.add(replica.index)
        else:
            self._active.discard(replica.index)
        self._entry_active = [r for r in self.entry if r.index in self._active]
        self._decode_active = [r for r in self.decode if r.index in self._active]

    # ---- the end ----

    def finish(self) -> None:
        """At the stop: report what is in flight and check every replica's books."""
        for replica in self.replicas:
            replica.record_in_flight()
            replica.check_invariants()


def _sending(replica: Replica | VirtualEngines) -> bool:
    engines = replica.engines if isinstance(replica, VirtualEngines) else (replica,)
    return any(e.num_sending for e in engines)


def _scaling_metric(metric: str, active: Sequence[Replica | VirtualEngines]) -> float:
    """The autoscaler's reading over the active replicas (0 with none)."""
    if not active:
        return 0.0
    if metric == "queue_length":
        return sum(r.num_waiting for r in active) / len(active)
    return sum(max(r.num_blocks_used / r.num_kv_blocks, r.num_running / r.max_num_seqs)
               for r in active) / len(active)


def _relative_speeds(deployment: Deployment) -> dict[str, float]:
    """Each group's replica speed relative to the fastest group's (reference iteration
    ``ROUTING_REFERENCE_SHAPE``; a pipeline's throughput is its slowest stage's)."""
    seconds = {}
    for group in deployment.groups:
        shapes = [stage.iteration(*ROUTING_REFERENCE_SHAPE)[0] for stage in group.stages]
        seconds[group.name] = max(shapes) / group.layout.attention_data_parallel
    fastest = min(seconds.values())
    return {name: fastest / s for name, s in seconds.items()}


HPA_TOLERANCE = 0.1
"""The autoscaler leaves the replica count alone while metric / target is within this of
1 (Kubernetes HPA's default --horizontal-pod-autoscaler-tolerance)."""

TOO_LONG, TOO_BIG = 1, 2


def request_blocks(deployment: Deployment, prompt_tokens: Any, output_tokens: Any) -> Any:
    """KV blocks a request holds at its most (ints or arrays): its prompt and output but
    the last output token (never fed back, so never cached); a multi-token step's extra
    verified positions; under beam search or parallel sampling, the prompt's full blocks
    once and the rest once per sequence."""
    eng = deployment.scenario.engine
    block, decoding = eng.block_size_tokens, eng.decoding
    step = deployment.groups[0].step
    extra = step.query_tokens - 1 if step is not None else 0
    blocks = -(-(prompt_tokens + output_tokens - 1 + extra) // block)
    width = (decoding.beam_width if isinstance(decoding, BeamSearch)
             else decoding.n if isinstance(decoding, ParallelSampling) else 1)
    if width > 1:
        blocks = blocks + (width - 1) * (blocks - prompt_tokens // block)
    return blocks


def rejection_codes(deployment: Deployment, prompt_tokens: Any, output_tokens: Any) -> Any:
    """Per request: 0 accepted, ``TOO_LONG`` (over max_model_len) or ``TOO_BIG`` (more
    KV than any replica able to serve it holds, ``Deployment.request_kv_blocks_limit``).
    The one statement of the admission rule, for ints (one arrival, no numpy overhead)
    and arrays (routing ahead) alike."""
    too_long = prompt_tokens + output_tokens > deployment.max_model_len
    too_big = request_blocks(deployment, prompt_tokens, output_tokens) > (
        deployment.request_kv_blocks_limit)
    return too_long * TOO_LONG + (too_big > too_long) * TOO_BIG  # too big, not too long
