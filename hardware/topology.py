"""Where a replica's devices sit, and what moving bytes between them costs.

A cluster is nodes of ``devices_per_node`` devices, joined inside a node by one link
(NVLink/xGMI, or PCIe) and across nodes by a network with one NIC per device (the
vendors' reference nodes: eight GPUs, eight NICs). A group of n devices is placed
packed from the start of a node: one node when n <= devices_per_node, else
ceil(n / devices_per_node) nodes, every one full but perhaps the last.

Collectives are priced by where their participants sit. Within a node they are the
ring formulas of ``hardware.roofline`` over the intra-node link. Across nodes they are
hierarchical, as NCCL runs them on multi-node jobs: the intra-node steps stay on the fast
link, and only 1/g of the message crosses the network per device, each of a node's g
devices using its own NIC. docs/parallelism.md gives every formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hardware.efficiency import DEFAULT_EFFICIENCY, CollectiveEfficiency
from hardware.roofline import Scalar
from hardware.roofline import all_gather_s as ring_all_gather_s
from hardware.roofline import all_reduce_s as ring_all_reduce_s
from hardware.spec import AcceleratorSpec


@dataclass(frozen=True, slots=True)
class Topology:
    """Nodes of identical devices: an intra-node link and an inter-node network.

    Every method is a query (nothing is mutated) that works elementwise on floats or
    numpy arrays of bytes, and returns seconds. Bandwidths are per direction per device.
    """

    devices_per_node: int
    """Devices sharing one node's intra-node link."""
    intra_node_bytes_per_s: float
    """Device-to-device bandwidth inside a node, bytes/s per direction per device."""
    network_bytes_per_s: float
    """Inter-node bandwidth per device (its NIC), bytes/s per direction."""
    network_latency_s: float
    """One-way inter-node message latency, seconds."""
    intra_node_link: str = "pcie"
    """Name of the intra-node link (nvlink4, xgmi, pcie5, ...), for people."""
    efficiency: CollectiveEfficiency = field(default=DEFAULT_EFFICIENCY.collective)
    """Shares of the link rates achieved, and fixed costs."""

    def __post_init__(self) -> None:
        if self.devices_per_node < 1:
            raise ValueError(f"devices_per_node={self.devices_per_node} must be at least 1")
        for name in ("intra_node_bytes_per_s", "network_bytes_per_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.network_latency_s < 0:
            raise ValueError(f"network_latency_s={self.network_latency_s} must be >= 0")

    @classmethod
    def from_accelerator(
        cls, accelerator: AcceleratorSpec, efficiency: CollectiveEfficiency | None = None
    ) -> Topology:
        """The reference node of ``accelerator`` (its devices_per_node, links and network),
        priced with ``efficiency`` (default: the catalog's collective efficiency)."""
        return cls(
            devices_per_node=accelerator.devices_per_node,
            intra_node_bytes_per_s=accelerator.intra_node_bytes_per_s,
            network_bytes_per_s=accelerator.network_bytes_per_s,
            network_latency_s=accelerator.network_latency_us * 1e-6,
            intra_node_link=accelerator.intra_node_link,
            efficiency=efficiency or DEFAULT_EFFICIENCY.collective,
        )

    # ---- placement ----

    def node_sizes(self, num_devices: int) -> tuple[int, ...]:
        """Devices of a packed group of ``num_devices`` in each node it spans, first to last."""
        if num_devices < 1:
            raise ValueError(f"a group needs at least one device, got {num_devices}")
        full, rest = divmod(num_devices, self.devices_per_node)
        return (self.devices_per_node,) * full + ((rest,) if rest else ())

    def num_nodes(self, num_devices: int) -> int:
        """Nodes a packed group of ``num_devices`` spans."""
        return math.ceil(num_devices / self.devices_per_node)

    def crosses_node(self, num_devices: int) -> bool:
        """Whether a packed group of ``num_devices`` spans more than one node."""
        return num_devices > self.devices_per_node

    def link_bytes_per_s(self, num_devices: int) -> float:
        """Nominal rate of the slowest link a packed group uses: the intra-node link within
        a node, the network per device across nodes."""
        if self.crosses_node(num_devices):
            return self.network_bytes_per_s
        return self.intra_node_bytes_per_s

    # ---- collectives ----

    def all_reduce_s(self, message_bytes: Scalar, num_devices: int) -> Scalar:
        """All-reduce of ``message_bytes`` (every device holds the whole message).

        Within a node: ring (``hardware.roofline.all_reduce_s``). Across nodes:
        hierarchical, intra-node reduce-scatter + inter-node ring all-reduce of 1/g of the
        message on each device's NIC (g devices in the node) + intra-node all-gather.
        With uneven nodes the fullest node's intra steps and the emptiest node's NICs
        (which carry the most) bound the time.
        """
        if not self.crosses_node(num_devices):
            return ring_all_reduce_s(message_bytes, num_devices=num_devices,
                                     link_bytes_per_s=self.intra_node_bytes_per_s,
                                     eff=self.efficiency)
        sizes = self.node_sizes(num_devices)
        intra = self._intra_all_gather_s(message_bytes, max(sizes))  # reduce-scatter: same
        inter = self._inter_ring_s(message_bytes / min(sizes), len(sizes), passes=2)
        return intra + inter + intra

    def all_gather_s(self, message_bytes: Scalar, num_devices: int) -> Scalar:
        """All-gather of a message of ``message_bytes`` in total (each device starts with
        1/n of it). Within a node: ring. Across nodes: inter-node ring all-gather among the
        devices of equal local rank (each ends with 1/g of the message), then an intra-node
        all-gather of the whole message."""
        if not self.crosses_node(num_devices):
            return self._intra_all_gather_s(message_bytes, num_devices)
        sizes = self.node_sizes(num_devices)
        inter = self._inter_ring_s(message_bytes / min(sizes), len(sizes), passes=1)
        return inter + self._intra_all_gather_s(message_bytes, max(sizes))

    def reduce_scatter_s(self, message_bytes: Scalar, num_devices: int) -> Scalar:
        """Reduce-scatter of ``message_bytes`` (each device ends with 1/n of the sum): the
        all-gather's steps run backwards, so it moves the same bytes and costs the same."""
        return self.all_gather_s(message_bytes, num_devices)

    def all_to_all_s(self, bytes_per_device: Scalar, num_devices: int) -> Scalar:
        """All-to-all where each device holds ``bytes_per_device``, 1/n of it for each peer
        (itself included), and sends the (n-1)/n for the others.

        A device in a node of s group members sends (s-1)/n of its buffer over the
        intra-node link and (n-s)/n over its NIC, both at once: its time is the fixed
        cost (plus the network latency when the group spans nodes) and the slower share's
        bytes over its bandwidth; the slowest device sets the time.
        """
        if num_devices <= 1:
            return 0.0 * bytes_per_device
        eff = self.efficiency
        fixed_s = eff.latency_s + eff.per_device_latency_s * num_devices
        intra_rate = self.intra_node_bytes_per_s * eff.bus_frac
        if not self.crosses_node(num_devices):
            return fixed_s + (num_devices - 1) / num_devices * bytes_per_device / intra_rate
        net_rate = self.network_bytes_per_s * eff.network_bus_frac
        slowest: Scalar = 0.0 * bytes_per_device
        for s in set(self.node_sizes(num_devices)):
            intra_s = (s - 1) / num_devices * bytes_per_device / intra_rate
            inter_s = (num_devices - s) / num_devices * bytes_per_device / net_rate
            slowest = np.maximum(slowest, np.maximum(intra_s, inter_s))
        if not isinstance(bytes_per_device, np.ndarray):
            slowest = float(slowest)
        return fixed_s + self.network_latency_s + slowest

    def send_s(self, num_bytes: Scalar, crosses_node: bool) -> Scalar:
        """One point-to-point copy of ``num_bytes`` (pipeline-stage activations, a KV cache):
        the collective fixed cost and the intra-node link within a node; the network
        latency and one NIC across nodes."""
        eff = self.efficiency
        if crosses_node:
            return self.network_latency_s + num_bytes / (
                self.network_bytes_per_s * eff.network_bus_frac)
        return eff.latency_s + num_bytes / (self.intra_node_bytes_per_s * eff.bus_frac)

    # ---- pieces ----

    def _intra_all_gather_s(self, message_bytes: Scalar, num_devices: int) -> Scalar:
        return ring_all_gather_s(message_bytes, num_devices=num_devices,
                                 link_bytes_per_s=self.intra_node_bytes_per_s,
                                 eff=self.efficiency)

    def _inter_ring_s(self, bytes_per_nic: Scalar, num_nodes: int, passes: int) -> Scalar:
        """A ring over ``num_nodes`` nodes, one device (NIC) each, of ``bytes_per_nic``:
        ``passes`` = 1 for an all-gather or reduce-scatter, 2 for an all-reduce. Each of
        its passes x (N-1) steps is a network hop and pays the network latency."""
        eff = self.efficiency
        steps = passes * (num_nodes - 1)
        traffic = steps / num_nodes * bytes_per_nic
        return (eff.latency_s + steps * self.network_latency_s
                + traffic / (self.network_bytes_per_s * eff.network_bus_frac))
