"""Routing policies: which replica an arriving request goes to."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from policies.registry import Registry
from simulator.plan import EngineLimits, PolicyParams, ReplicaView
from simulator.request import Request


class RoutingPolicy(Protocol):
    def route(self, request: Request, replicas: Sequence[ReplicaView]) -> int:
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
    def from_config(cls, params: PolicyParams, limits: EngineLimits) -> RoundRobin:
        return cls()

    def route(self, request: Request, replicas: Sequence[ReplicaView]) -> int:
        index = self.next_ % len(replicas)
        self.next_ = index + 1
        return index

    def assign(self, num_requests: int, num_replicas: int) -> np.ndarray:
        """The replicas of the next ``num_requests`` requests, as ``route`` would give."""
        indices = (self.next_ + np.arange(num_requests)) % num_replicas
        self.next_ += num_requests
        return indices
