"""Topology: collectives priced by where their devices sit, checked against formulas written
out by hand from the link rates (bytes over bandwidth, plus fixed latencies)."""

from __future__ import annotations

import numpy as np
import pytest

from hardware.catalog import get_accelerator
from hardware.efficiency import DEFAULT_EFFICIENCY
from hardware.roofline import all_reduce_s
from hardware.topology import Topology
from simulator.cost import BatchShape, CostModel
from simulator.model_catalog import get_model

H100 = get_accelerator("h100-sxm")
EFF = DEFAULT_EFFICIENCY.collective
TOPO = Topology.from_accelerator(H100)
# Hand-written rates: NVLink 4 is 900 GB/s bidirectional (450 per direction), NDR 400 Gb/s
# is 50 GB/s per NIC, one-way network latency 5 us (the spec's default).
NVLINK = 450e9 * EFF.bus_frac
NIC = 50e9 * EFF.network_bus_frac
NET_LATENCY = 5e-6
MIB = 2**20


def fixed(n: int) -> float:
    """The collective fixed cost for n devices: a kernel latency and a per-device share."""
    return EFF.latency_s + EFF.per_device_latency_s * n


def test_from_accelerator_reads_the_node_of_the_part():
    assert TOPO.devices_per_node == 8
    assert TOPO.intra_node_bytes_per_s == 450e9
    assert TOPO.network_bytes_per_s == 50e9
    assert TOPO.network_latency_s == pytest.approx(NET_LATENCY)
    assert TOPO.intra_node_link == "nvlink4"
    assert TOPO.node_sizes(8) == (8,) and TOPO.node_sizes(12) == (8, 4)
    assert TOPO.num_nodes(16) == 2 and TOPO.crosses_node(9) and not TOPO.crosses_node(8)


def test_single_device_moves_nothing():
    assert TOPO.all_reduce_s(MIB, 1) == 0.0
    assert TOPO.all_gather_s(MIB, 1) == 0.0
    assert TOPO.all_to_all_s(MIB, 1) == 0.0


@pytest.mark.parametrize("n", [2, 4, 8])
def test_all_reduce_within_a_node_is_the_ring_of_today(n):
    # The same function every TP all-reduce used before topologies existed.
    for message in (8192.0, 64 * MIB):
        today = all_reduce_s(message, num_devices=n, link_bytes_per_s=450e9, eff=EFF)
        assert TOPO.all_reduce_s(message, n) == today
    # and still lands on the measured TensorRT-LLM kernels (shared/FACTS.md).
    measured_8k = {2: 2.8e-6, 4: 3.1e-6, 8: 3.5e-6}[n]
    assert TOPO.all_reduce_s(8192.0, n) == pytest.approx(measured_8k, rel=0.25)
    if n == 2:
        assert TOPO.all_reduce_s(512 * MIB, 2) == pytest.approx(1.68e-3, rel=0.15)


def test_hierarchical_all_reduce_across_two_nodes():
    # 16 devices on 8-device nodes: reduce-scatter in each node over NVLink (each device
    # sends 7/8 of the message), a ring all-reduce between the two nodes of each device's
    # 1/8 slice on its own NIC (2 x (2-1)/2 of the slice, two network hops), then an
    # all-gather in each node (7/8 again).
    message = 256 * MIB
    reduce_scatter = fixed(8) + 7 / 8 * message / NVLINK
    between_nodes = EFF.latency_s + 2 * NET_LATENCY + 1.0 * (message / 8) / NIC
    all_gather = fixed(8) + 7 / 8 * message / NVLINK
    expected = reduce_scatter + between_nodes + all_gather
    assert TOPO.all_reduce_s(message, 16) == pytest.approx(expected, rel=1e-12)
    # Only 1/8 of the message crosses the network: far cheaper than a flat ring on the NICs.
    flat_ring = 2 * 15 / 16 * message / NIC
    assert TOPO.all_reduce_s(message, 16) < 0.25 * flat_ring


def test_all_gather_across_two_nodes():
    # Each device starts with 1/16: a ring between the nodes gives each device 2/16 = 1/8
    # of the message (one hop, 1/16 of the message on each NIC), then a gather in the node.
    message = 64 * MIB
    expected = (EFF.latency_s + NET_LATENCY + message / 16 / NIC
                + fixed(8) + 7 / 8 * message / NVLINK)
    assert TOPO.all_gather_s(message, 16) == pytest.approx(expected, rel=1e-12)
    assert TOPO.reduce_scatter_s(message, 16) == TOPO.all_gather_s(message, 16)


def test_all_to_all_within_a_node_is_its_bytes_over_nvlink():
    buffer = 32 * MIB
    expected = fixed(8) + 7 / 8 * buffer / NVLINK
    assert TOPO.all_to_all_s(buffer, 8) == pytest.approx(expected, rel=1e-12)


def test_all_to_all_across_nodes_waits_for_the_network_share():
    buffer = 32 * MIB
    # 16 devices: 7/16 of a buffer stays in the node (NVLink), 8/16 leaves it on the NIC,
    # both at once; the NIC is the slower by far.
    assert 7 / 16 * buffer / NVLINK < 8 / 16 * buffer / NIC
    expected = fixed(16) + NET_LATENCY + 8 / 16 * buffer / NIC
    assert TOPO.all_to_all_s(buffer, 16) == pytest.approx(expected, rel=1e-12)
    # 12 devices (8 + 4): a device of the half-empty node sends 8/12 over its NIC.
    expected_12 = fixed(12) + NET_LATENCY + 8 / 12 * buffer / NIC
    assert TOPO.all_to_all_s(buffer, 12) == pytest.approx(expected_12, rel=1e-12)


def test_all_to_all_takes_arrays():
    buffers = np.array([MIB, 4 * MIB])
    got = TOPO.all_to_all_s(buffers, 16)
    assert got.shape == (2,)
    assert got[1] == pytest.approx(TOPO.all_to_all_s(4 * MIB, 16), rel=1e-12)


def test_send_within_and_across_nodes():
    size = 100 * MIB
    assert TOPO.send_s(size, crosses_node=False) == pytest.approx(
        EFF.latency_s + size / NVLINK, rel=1e-12)
    assert TOPO.send_s(size, crosses_node=True) == pytest.approx(
        NET_LATENCY + size / NIC, rel=1e-12)


def test_pcie_node_uses_its_slower_link():
    l40s = Topology.from_accelerator(get_accelerator("l40s"))  # PCIe Gen4: 32 GB/s
    message = 16 * MIB
    expected = fixed(4) + 2 * 3 / 4 * message / (32e9 * EFF.bus_frac)
    assert l40s.all_reduce_s(message, 4) == pytest.approx(expected, rel=1e-12)


# ---- the cost model's tensor-parallel group ----

DECODE = BatchShape(num_decode_seqs=64, decode_context_tokens=64 * 2000)


def test_tp_group_within_a_node_is_unchanged():
    # llama-3.1-70b on TP8: two all-reduces of the batch's hidden states per layer, each
    # the ring over NVLink that the cost model has always used.
    model = get_model("llama-3.1-70b")
    cost = CostModel(model, H100, DEFAULT_EFFICIENCY, tensor_parallel=8)
    message = 64 * model.hidden_size * 2.0
    ring = all_reduce_s(message, num_devices=8, link_bytes_per_s=450e9, eff=EFF)
    got = float(cost.price(DECODE).ops["tp_all_reduce"].seconds)
    assert got == pytest.approx(2 * model.num_layers * ring, rel=1e-12)


def test_tp16_on_eight_device_nodes_pays_the_network():
    model = get_model("llama-3.1-405b")
    two_nodes = CostModel(model, H100, DEFAULT_EFFICIENCY, tensor_parallel=16)
    # The same 16 devices in one (hypothetical) 16-device NVLink node.
    one_node = CostModel(model, H100, DEFAULT_EFFICIENCY, tensor_parallel=16,
                         topology=Topology(16, 450e9, 50e9, NET_LATENCY))
    message = 64 * model.hidden_size * 2.0
    expected_each = (2 * (fixed(8) + 7 / 8 * message / NVLINK)
                     + EFF.latency_s + 2 * NET_LATENCY + (message / 8) / NIC)
    across = float(two_nodes.price(DECODE).ops["tp_all_reduce"].seconds)
    within = float(one_node.price(DECODE).ops["tp_all_reduce"].seconds)
    assert across == pytest.approx(2 * model.num_layers * expected_each, rel=1e-12)
    assert across > 1.5 * within
    # The logits gather spans the two nodes as well.
    gather_across = float(two_nodes.price(DECODE).ops["logits_gather"].seconds)
    assert gather_across > float(one_node.price(DECODE).ops["logits_gather"].seconds)


def test_cost_model_prices_collectives_with_its_own_efficiency():
    # A topology built with the catalog efficiency still uses the profile's collectives.
    slow = DEFAULT_EFFICIENCY.model_copy(update={
        "collective": EFF.model_copy(update={"bus_frac": EFF.bus_frac / 2})})
    model = get_model("llama-3.1-70b")
    base = CostModel(model, H100, DEFAULT_EFFICIENCY, tensor_parallel=8, topology=TOPO)
    halved = CostModel(model, H100, slow, tensor_parallel=8, topology=TOPO)
    message = 64 * model.hidden_size * 2.0
    assert float(halved.price(DECODE).ops["tp_all_reduce"].seconds) == pytest.approx(
        2 * model.num_layers * (fixed(8) + 2 * 7 / 8 * message / (NVLINK / 2)), rel=1e-12)
    assert float(halved.price(DECODE).seconds) > float(base.price(DECODE).seconds)
