"""Routing policies: which replica an arriving request goes to.

A router sees each replica through ``ReplicaLoad``: counts that change only when
requests arrive, are admitted or finish, never inside a run of decode iterations. That
keeps routing identical whether the engine steps every iteration or fast-forwards.
"""

from __future__ import annotations

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
    """The replica with the smallest load; ties go to the first after the last pick, so
    an idle cluster is filled in turn rather than always from replica 0."""

    def __init__(self) -> None:
        self.last_ = -1

    @classmethod
    def from_config(
        cls, params: PolicyParams, limits: EngineLimits, rng: np.random.Generator
    ) -> _LeastLoaded:
        return cls()

    def load(self, replica: ReplicaLoad) -> int:
        raise NotImplementedError

    def route(self, request: Request, replicas: Sequence[ReplicaLoad]) -> int:
        n = len(replicas)
        order = [(self.last_ + 1 + i) % n for i in range(n)]
        best = min(order, key=lambda i: self.load(replicas[i]))
        self.last_ = best
        return best


@ROUTING.register("least_requests")
class LeastOutstandingRequests(_LeastLoaded):
    """Fewest requests queued or running (Envoy's and most proxies' least-request)."""

    def load(self, replica: ReplicaLoad) -> int:
        return replica.num_running + replica.num_waiting


@ROUTING.register("least_tokens")
class LeastOutstandingTokens(_LeastLoaded):
    """Fewest prompt tokens queued or running: weighs a long prompt more than a short
    one (true output lengths are hidden from policies)."""

    def load(self, replica: ReplicaLoad) -> int:
        return replica.num_outstanding_prompt_tokens


class PowerOfChoicesParams(PolicyParams):
    num_choices: int = Field(
        default=2, ge=1, description="Replicas sampled per request; the least loaded wins."
    )


@ROUTING.register("power_of_two", params=PowerOfChoicesParams)
class PowerOfTwoChoices:
    """Sample ``num_choices`` distinct replicas, send to the one with the fewest requests
    queued or running (Mitzenmacher, "The Power of Two Choices in Randomized Load
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
        loads = [replicas[i].num_running + replicas[i].num_waiting for i in sampled]
        return int(sampled[int(np.argmin(loads))])
