"""Routing policies: which replica an arriving request goes to.

A router sees each replica through ``ReplicaLoad``: counts that change only when
requests arrive, are admitted or finish, never inside a run of decode iterations. That
keeps routing identical whether the engine steps every iteration or fast-forwards.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from pydantic import Field

from policies.registry import Registry
from simulator.plan import EngineLimits, PolicyParams
from simulator.request import Request


class ReplicaLoad(Protocol):
    """What a router may read of a replica (read-only)."""

    @property
    def num_running(self) -> int:
        """Requests admitted and not finished."""
        ...

    @property
    def num_waiting(self) -> int:
        """Requests queued, not admitted (preempted ones included)."""
        ...

    @property
    def num_outstanding_prompt_tokens(self) -> int:
        """Prompt tokens of every request queued or running here."""
        ...

    @property
    def speed(self) -> float:
        """Serving speed relative to the cluster's fastest replica (1.0 for it, and for
        every replica of a homogeneous cluster): load-aware routers divide by it."""
        ...


class RoutingPolicy(Protocol):
    def route(self, request: Request, replicas: Sequence[ReplicaLoad]) -> int:
        """Index of the replica ``request`` goes to; reads the replicas, changes nothing
        but the policy's own state (attributes ending in ``_``)."""
        ...


ROUTING: Registry[RoutingPolicy] = Registry("routing")


@ROUTING.register("round_robin")
class RoundRobin:
    """Replicas in turn, regardless of load (the default of most load balancers).

    Oblivious: its choices depend on arrival order alone, so ``assign`` can route a whole
    open-loop workload up front (the engine then tells each replica its arrivals)."""

    def __init__(self) -> None:
        self.next_ = 0

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> RoundRobin:
        return cls()

    def route(self, request: Request, replicas: Sequence[ReplicaLoad]) -> int:
        index = self.next_ % len(replicas)
        self.next_ = index + 1
        return index

    def assign(self, num_requests: int, num_replicas: int) -> np.ndarray:
        """The replicas of the next ``num_requests`` requests, as ``route`` would give."""
        indices = (self.next_ + np.arange(num_requests)) % num_replicas
        self.next_ += num_requests
        return indices


@ROUTING.register("random")
class RandomRouting:
    """A replica uniformly at random (seeded). Oblivious, like round robin: open-loop
    workloads are routed up front with ``assign``."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> RandomRouting:
        return cls(rng)

    def route(self, request: Request, replicas: Sequence[ReplicaLoad]) -> int:
        return int(self.rng.integers(len(replicas)))

    def assign(self, num_requests: int, num_replicas: int) -> np.ndarray:
        return self.rng.integers(num_replicas, size=num_requests)


class _LeastLoaded:
    """The replica with the smallest load once the request joins it, over its speed (so
    a replica twice as fast takes twice the load); ties go to the first after the last
    pick, so an idle cluster is filled in turn rather than always from replica 0."""

    def __init__(self) -> None:
        self.last_ = -1

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> _LeastLoaded:
        return cls()

    def load(self, replica: ReplicaLoad, request: Request) -> int:
        """The replica's load with ``request`` added to it."""
        raise NotImplementedError

    def route(self, request: Request, replicas: Sequence[ReplicaLoad]) -> int:
        n = len(replicas)
        order = [(self.last_ + 1 + i) % n for i in range(n)]
        best = min(order, key=lambda i: self.load(replicas[i], request) / replicas[i].speed)
        self.last_ = best
        return best


@ROUTING.register("least_requests")
class LeastOutstandingRequests(_LeastLoaded):
    """Fewest requests queued or running (Envoy's and most proxies' least-request)."""

    def load(self, replica: ReplicaLoad, request: Request) -> int:
        return replica.num_running + replica.num_waiting + 1


@ROUTING.register("least_tokens")
class LeastOutstandingTokens(_LeastLoaded):
    """Fewest prompt tokens queued or running: weighs a long prompt more than a short
    one (true output lengths are hidden from policies)."""

    def load(self, replica: ReplicaLoad, request: Request) -> int:
        return replica.num_outstanding_prompt_tokens + request.prompt_tokens


class PowerOfChoicesParams(PolicyParams):
    num_choices: int = Field(
        default=2, ge=1, description="Replicas sampled per request; the least loaded wins."
    )


@ROUTING.register("power_of_two", params=PowerOfChoicesParams)
class PowerOfTwoChoices:
    """Sample ``num_choices`` distinct replicas, send to the one with the fewest requests
    queued or running, over its speed (Mitzenmacher, "The Power of Two Choices in Randomized Load
    Balancing", IEEE TPDS 2001): nearly least-loaded balance at a fraction of the
    probing."""

    def __init__(self, num_choices: int, rng: np.random.Generator) -> None:
        self.num_choices = num_choices
        self.rng = rng

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> PowerOfTwoChoices:
        assert isinstance(params, PowerOfChoicesParams)
        return cls(params.num_choices, rng)

    def route(self, request: Request, replicas: Sequence[ReplicaLoad]) -> int:
        k = min(self.num_choices, len(replicas))
        sampled = self.rng.choice(len(replicas), size=k, replace=False)
        loads = [(replicas[i].num_running + replicas[i].num_waiting + 1) / replicas[i].speed
                 for i in sampled]
        return int(sampled[int(np.argmin(loads))])


class PrefixAffinityParams(PolicyParams):
    balance_abs_threshold: int = Field(
        default=32, ge=0,
        description="Requests (running + waiting) by which a prefix's home must exceed the "
                    "least-loaded replica, together with the relative threshold, before the "
                    "prefix moves there.",
    )
    balance_rel_threshold: float = Field(
        default=1.5, ge=1.0,
        description="Factor by which a prefix's home load must exceed the least-loaded "
                    "replica's, together with the absolute threshold, before the prefix "
                    "moves there.",
    )
    max_prefixes: int | None = Field(
        default=None, gt=0,
        description="Most prefix homes remembered; the least recently routed is forgotten "
                    "beyond (a router's bounded memory). None: one entry per distinct "
                    "prefix_id seen.",
    )


@ROUTING.register("prefix_affinity", params=PrefixAffinityParams)
class PrefixAffinity:
    """Requests sharing a ``prefix_id`` go where that prefix went last, so they find it in
    that replica's prefix cache, unless that replica is overloaded; modelled on SGLang's
    router ``cache_aware`` policy (sgl-router).

    Load is requests running + waiting. A request without a prefix, or with a prefix not
    seen yet, goes to the least-loaded replica (ties: lowest index). A known prefix goes
    to its home unless the home is imbalanced against the least-loaded replica, i.e. both
    ``home - least > balance_abs_threshold`` and ``home > balance_rel_threshold * least``;
    then it goes to the least-loaded replica, which becomes its new home. Sessions carry
    their id as ``prefix_id``, so this is also session affinity; for stickiness without
    balancing, set ``balance_abs_threshold`` above any queue.

    Unlike sgl-router, which keeps an approximate radix tree per worker and matches prompt
    text, prefixes here are exact ids; and the imbalance test compares the request's home
    with the least-loaded replica rather than the cluster's busiest with its idlest, so a
    prefix whose home is not the overloaded replica keeps its cache.

    Learned state ``homes_`` maps prefix_id to replica index, least recently routed
    first; it grows by one entry per distinct prefix_id unless ``max_prefixes`` caps it.
    """

    def __init__(self, balance_abs_threshold: int = 32, balance_rel_threshold: float = 1.5,
                 max_prefixes: int | None = None) -> None:
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.max_prefixes = max_prefixes
        self.homes_: OrderedDict[int, int] = OrderedDict()

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> PrefixAffinity:
        assert isinstance(params, PrefixAffinityParams)
        return cls(params.balance_abs_threshold, params.balance_rel_threshold,
                   params.max_prefixes)

    def is_imbalanced(self, home_load: int, least_load: int) -> bool:
        """Whether a home with ``home_load`` requests should yield to a replica with
        ``least_load`` (both thresholds exceeded, strictly, as in sgl-router). A query:
        changes nothing."""
        return (home_load - least_load > self.balance_abs_threshold
                and home_load > self.balance_rel_threshold * least_load)

    def route(self, request: Request, replicas: Sequence[ReplicaLoad]) -> int:
        loads = [r.num_running + r.num_waiting for r in replicas]
        least = loads.index(min(loads))
        prefix_id = request.prefix_id
        if prefix_id < 0:
            return least
        home = self.homes_.get(prefix_id)
        if home is None or self.is_imbalanced(loads[home], loads[least]):
            home = least
        self.homes_[prefix_id] = home
        self.homes_.move_to_end(prefix_id)
        if self.max_prefixes is not None and len(self.homes_) > self.max_prefixes:
            self.homes_.popitem(last=False)
        return home
