"""Pipeline parallelism: stages as SimPy resources, virtual engines, memory per stage."""

from __future__ import annotations

import numpy as np
import pytest
import simpy
from conftest import scenario_with

from hardware.catalog import get_accelerator
from hardware.topology import Topology
from simulator import Scenario, ScenarioError, resolve, simulate
from simulator.clock import on_grid
from simulator.deployment import stage_layer_counts
from simulator.pipeline import Pipeline
from simulator.scenario import LayoutConfig


def _pipeline(env: simpy.Environment, num_stages: int) -> Pipeline:
    stages = resolve(Scenario()).groups[0].stages * num_stages  # only their count matters
    return Pipeline(env, stages, 0.0, Topology.from_accelerator(get_accelerator("h100-sxm")))


@pytest.mark.parametrize("num_stages", [2, 4])
def test_p_equal_stages_with_p_micro_batches_reach_p_times_one_stage_throughput(num_stages):
    # Closed form: p micro-batches cycling through p stages of d seconds each, k times:
    # the last starts after the (p-1) d fill and needs k p d, so all are done at
    # (k p + p - 1) d: one iteration per d once full, p times an unpipelined replica
    # whose iteration takes p d, less the fill bubble.
    env = simpy.Environment()
    pipeline = _pipeline(env, num_stages)
    d, k = on_grid(0.01), 20
    done: list[float] = []

    def micro_batch():
        for _ in range(k):
            yield from pipeline.traverse([d] * num_stages, 0.0)
        done.append(env.now)

    for _ in range(num_stages):
        env.process(micro_batch())
    env.run()
    assert max(done) == pytest.approx((k * num_stages + num_stages - 1) * d, rel=1e-12)
    assert pipeline.busy_s == pytest.approx([k * num_stages * d] * num_stages)


def test_a_micro_batch_waits_for_a_stage_another_holds_and_says_so():
    env = simpy.Environment()
    pipeline = _pipeline(env, 2)
    waits = {}

    def micro_batch(name, stage_s):
        waits[name] = yield from pipeline.traverse(stage_s, 0.001)

    env.process(micro_batch("a", [0.010, 0.030]))
    env.process(micro_batch("b", [0.010, 0.010]))
    env.run()
    # b enters stage 0 when a leaves it (10 ms), reaches stage 1 at 21 ms (its send) but
    # a holds it from 11 ms to 41 ms: b waits 10 ms + 20 ms.
    assert waits["a"] == pytest.approx((0.0, 0.001))
    assert waits["b"] == pytest.approx((0.010 + 0.020, 0.001))


def test_vllm_layer_split_puts_extra_layers_before_the_last_stage():
    layout = LayoutConfig(pipeline_parallel=4)
    assert stage_layer_counts(80, layout) == (20, 20, 20, 20)
    assert stage_layer_counts(10, layout) == (2, 3, 3, 2)  # vLLM's get_pp_indices
    assert stage_layer_counts(10, LayoutConfig(pipeline_parallel=2,
                                               pipeline_layers=(4, 6))) == (4, 6)


def test_stage_memory_holds_only_its_layers():
    one = resolve(scenario_with(model="llama-3.1-70b", deployment={"tensor_parallel": 4}))
    two = resolve(scenario_with(model="llama-3.1-70b",
                                deployment={"tensor_parallel": 4, "pipeline_parallel": 2}))
    group = two.groups[0]
    assert group.stage_layers == (40, 40)
    # Half the layers each: the layers' weights halve; the KV per token halves too, so
    # each stage holds more tokens than the whole model did on its four devices.
    assert group.memory.weight_bytes < 0.55 * one.memory.weight_bytes
    assert group.stages[0].kv_bytes_per_token == pytest.approx(
        one.cost.kv_bytes_per_token / 2)
    assert group.num_kv_blocks > 2 * one.groups[0].num_kv_blocks


def test_a_layout_that_cannot_hold_the_model_says_which_stage_and_the_numbers():
    with pytest.raises(ScenarioError, match=r"pipeline stage 0 \(layers 0-62\).*GiB"):
        resolve(scenario_with(model="llama-3.1-405b", deployment={"pipeline_parallel": 2}))
    with pytest.raises(ScenarioError, match=r"pipeline_layers=.*sums to 30"):
        resolve(scenario_with(deployment={"pipeline_parallel": 2,
                                          "pipeline_layers": [10, 20]}))
    with pytest.raises(ScenarioError, match=r"pipeline_parallel=40 exceeds"):
        resolve(scenario_with(deployment={"pipeline_parallel": 40}))


def test_pipeline_doubles_saturated_throughput_and_keeps_light_load_latency():
    offline = {"kind": "synthetic", "arrival": {"kind": "offline"},
               "prompt_tokens": {"kind": "fixed", "tokens": 256},
               "output_tokens": {"kind": "fixed", "tokens": 128}}
    one = simulate(scenario_with(workload=offline, num_requests=1024,
                                 engine={"max_num_seqs": 128})).summary()
    two = simulate(scenario_with(workload=offline, num_requests=1024,
                                 engine={"max_num_seqs": 128},
                                 deployment={"pipeline_parallel": 2})).summary()
    # Two virtual engines of 128 sequences each keep both stages busy.
    ratio = two["output_tokens_per_s"] / one["output_tokens_per_s"]
    assert 1.6 < ratio < 2.05
    single = {**offline, "arrival": {"kind": "poisson", "rate_per_s": 0.5}}
    a = simulate(scenario_with(workload=single, num_requests=20)).summary()
    b = simulate(scenario_with(workload=single, num_requests=20,
                               deployment={"pipeline_parallel": 2})).summary()
    # One batch at a time: the stages run one after the other, plus one small send.
    assert b["tpot_p50_s"] == pytest.approx(a["tpot_p50_s"], rel=0.05)


def test_bubbles_show_in_the_iteration_frame():
    results = simulate(scenario_with(deployment={"pipeline_parallel": 2}, num_requests=200,
                                     rate_per_s=40))
    it = results.iterations
    assert (it["pipeline_wait_s"] > 0).any()
    assert (it["pipeline_transfer_s"] > 0).all()
    assert (it["pipeline_wait_s"] + it["pipeline_transfer_s"] < it["duration_s"]).all()
    assert 0 < results.summary()["pipeline_wait_frac"] < 1


def test_a_stage_boundary_across_nodes_pays_the_network():
    within = resolve(scenario_with(deployment={"tensor_parallel": 4, "pipeline_parallel": 2}))
    across = resolve(scenario_with(deployment={"tensor_parallel": 8, "pipeline_parallel": 2}))
    env = simpy.Environment()
    near = Pipeline(env, within.groups[0].stages, 0.0, within.groups[0].topology)
    far = Pipeline(env, across.groups[0].stages, 0.0, across.groups[0].topology)
    _, near_send, _, _ = near.price([4096], [0], 0, 0.0)
    _, far_send, _, _ = far.price([4096], [0], 0, 0.0)
    acc = get_accelerator("h100-sxm")
    # 4096 tokens x hidden 4096 x (hidden states + residual) x 2 bytes, split over TP 8.
    far_bytes = 4096 * 4096 * 2 * 2 / 8
    assert far_send >= far_bytes / acc.network_bytes_per_s
    assert near_send < far_send


def test_pipelined_runs_are_deterministic():
    scenario = scenario_with(deployment={"pipeline_parallel": 2}, num_requests=150,
                             rate_per_s=30)
    a, b = simulate(scenario), simulate(scenario)
    assert a.requests.equals(b.requests)
    assert np.array_equal(a.iterations.to_numpy(), b.iterations.to_numpy())
