"""Routing policies: which replica an arriving request goes to."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from policies.registry import Registry
from simulator.plan import ReplicaView
from simulator.request import Request


class RoutingPolicy(Protocol):
    def route(self, request: Request, replicas: Sequence[ReplicaView]) -> int:
        """Index of the replica ``request`` goes to; reads the replicas, changes nothing
        but the policy's own state (attributes ending in ``_``)."""
        ...


class RoutingPolicyFactory(Protocol):
    def __call__(self) -> RoutingPolicy: ...


ROUTING: Registry[RoutingPolicyFactory] = Registry("routing")


@ROUTING.register("round_robin")
class RoundRobin:
    """Replicas in turn, regardless of load (the default of most load balancers)."""

    def __init__(self) -> None:
        self.next_ = 0

    def route(self, request: Request, replicas: Sequence[ReplicaView]) -> int:
        index = self.next_ % len(replicas)
        self.next_ = index + 1
        return index
