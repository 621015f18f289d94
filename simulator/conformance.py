"""check_policy: the conformance suite every policy passes, built-in or a user's.

Like scikit-learn's ``check_estimator``: it runs the policy through small scenarios on
a tiny model and device (KV pressure, chunking, long prompts, bursts, closed loops,
several replicas, a duration stop) and asserts what the engine promises whatever the
policy: no request lost or duplicated, tokens conserved, KV within capacity, ordered
timestamps, deterministic frames, and fast-forwarded runs identical to stepped ones
(so a policy that claims ``IterationPlan.may_repeat`` must mean it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

from policies.batching import BATCHING
from policies.queue import QUEUE
from policies.routing import ROUTING
from simulator.deployment import resolve
from simulator.engine import simulate
from simulator.results import Results
from simulator.scenario import Scenario

TINY_MODEL: dict[str, Any] = {
    "name": "tiny",
    "num_layers": 2,
    "hidden_size": 256,
    "num_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 64,
    "intermediate_size": 512,
    "vocab_size": 1000,
    "max_context_tokens": 4096,
}
"""A 1.7M-parameter model: 1 KiB of KV per token in bf16, sub-millisecond iterations."""

TINY_DEVICE: dict[str, Any] = {
    "name": "tiny-gpu",
    "memory_gib": 1.0,
    "hbm_tb_per_s": 1.0,
    "peak_tflops": {"bf16": 100.0},
    "intra_node_gb_per_s": 100.0,
    "pcie_gb_per_s": 32.0,
    "network_gb_per_s": 25.0,
    "tdp_w": 300.0,
    "idle_w": 60.0,
    "price_per_hour_usd": 1.0,
}


def tiny_scenario(**sections: Any) -> Scenario:
    """A scenario on the tiny model and device. Keyword arguments replace top-level
    fields; dict sections without a ``kind`` are merged one level deep."""
    data: dict[str, Any] = {
        "name": "tiny",
        "model": dict(TINY_MODEL),
        "hardware": {"accelerator": dict(TINY_DEVICE)},
        "engine": {"runtime_reserved_gib": 0.0, "max_num_seqs": 32,
                   "max_num_batched_tokens": 512},
        "workload": {
            "kind": "synthetic",
            "arrival": {"kind": "poisson", "rate_per_s": 50.0},
            "prompt_tokens": {"kind": "uniform", "min_tokens": 4, "max_tokens": 300},
            "output_tokens": {"kind": "uniform", "min_tokens": 1, "max_tokens": 120},
        },
        "stop": {"num_requests": 200},
        "seed": 1,
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict) and "kind" not in value:
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Scenario.model_validate(data)


def check_results(results: Results, capacity_blocks: int) -> None:
    """Assert the engine's invariants on one run's frames (AssertionError says which)."""
    req, it = results.requests, results.iterations
    assert req.request_id.is_unique, "a request was recorded twice"
    assert set(req.status.unique()) <= {"finished", "rejected", "in_flight"}
    done = req[req.status == "finished"]
    assert (done.generated_tokens == done.output_tokens).all(), "a request was over/under-served"
    live = req[req.status == "in_flight"]
    assert (live.generated_tokens < live.output_tokens).all(), "an unfinished request is done"
    ordered = done[["arrival_s", "first_scheduled_s", "first_token_s", "finish_s"]].to_numpy()
    assert (np.diff(ordered, axis=1) >= 0).all(), "arrival <= scheduled <= first token <= finish"
    assert (it.kv_blocks_used <= capacity_blocks).all(), "KV in use exceeded the cache"
    assert (it.kv_blocks_used >= 0).all()
    block = results.info.block_size_tokens
    assert (it.kv_tokens <= it.kv_blocks_used * block).all(), "more KV tokens than block room"
    assert (it.kv_blocks_used + it.kv_blocks_cached <= capacity_blocks).all(), (
        "in-use plus cached blocks exceeded the cache")
    # Tokens conserved: a decode emits one token per sequence; a prefill emits one when it
    # completes (a first token, or again after a recompute preemption).
    decoded = int(it.num_decode_seqs.sum())
    first_tokens = int(req.first_token_s.notna().sum())
    generated = int(req.generated_tokens.sum())
    assert decoded + first_tokens <= generated <= decoded + first_tokens + int(
        req.num_preemptions.sum()
    ), "tokens were created or lost"
    for _, group in it.groupby("replica"):
        starts = group.start_s.to_numpy()
        ends = (group.start_s + group.duration_s).to_numpy()
        assert (starts[1:] >= ends[:-1] - 1e-12).all(), "iterations of a replica overlap"


_LOAD = {"kind": "uniform", "min_tokens": 1}
CONFORMANCE_CASES: dict[str, dict[str, Any]] = {
    "light load": {"engine": {"max_model_len": 512}},
    "kv pressure": {
        "hardware": {"accelerator": {**TINY_DEVICE, "memory_gib": 0.01}},  # ~110 blocks
        "engine": {"gpu_memory_utilization_frac": 1.0, "max_num_batched_tokens": 1024,
                   "max_model_len": 1000},
        "workload": {"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 2000.0},
                     "prompt_tokens": {**_LOAD, "max_tokens": 600},
                     "output_tokens": {**_LOAD, "max_tokens": 400}},
    },
    "shared prefixes": {  # prefix-cache hits, evictions under KV pressure, affinity
        "hardware": {"accelerator": {**TINY_DEVICE, "memory_gib": 0.012}},
        "deployment": {"replicas": 2},
        "engine": {"gpu_memory_utilization_frac": 1.0, "max_num_batched_tokens": 1024,
                   "max_model_len": 1000},
        "workload": {"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 800.0},
                     "prompt_tokens": {**_LOAD, "max_tokens": 200},
                     "output_tokens": {**_LOAD, "max_tokens": 200},
                     "shared_prefix": {"num_prefixes": 6, "request_frac": 0.7,
                                       "tokens": {**_LOAD, "min_tokens": 16,
                                                  "max_tokens": 400}}},
    },
    "small chunks": {"engine": {"max_num_batched_tokens": 64,
                                "long_prefill_token_threshold": 24}},
    "whole prompts": {"engine": {"chunked_prefill": False, "max_num_batched_tokens": 1024,
                                 "max_model_len": 1024}},
    "offline burst": {
        "workload": {"kind": "synthetic", "arrival": {"kind": "offline"},
                     "prompt_tokens": {**_LOAD, "max_tokens": 1500},
                     "output_tokens": {**_LOAD, "max_tokens": 300}},
        "engine": {"max_model_len": 1500, "max_num_batched_tokens": 1500},  # some rejected
    },
    "closed loop": {
        "engine": {"max_model_len": 512},
        "workload": {"kind": "synthetic",
                     "arrival": {"kind": "closed_loop", "concurrency": 9, "think_time_s": 0.002},
                     "prompt_tokens": {**_LOAD, "max_tokens": 300},
                     "output_tokens": {**_LOAD, "max_tokens": 200}},
    },
    "replicas": {"deployment": {"replicas": 3}, "engine": {"max_model_len": 512},
                 "workload": {"kind": "synthetic",
                              "arrival": {"kind": "gamma", "rate_per_s": 400.0, "cv": 3.0},
                              "prompt_tokens": {**_LOAD, "max_tokens": 400},
                              "output_tokens": {**_LOAD, "max_tokens": 200}}},
    "duration stop": {"stop": {"num_requests": None, "duration_s": 1.5},
                      "engine": {"max_model_len": 512}},
}


MIN_APPLICABLE_CASES = 5


def check_policy(kind: Literal["batching", "queue", "routing"],
                 policy: str | Mapping[str, Any],
                 engine: Mapping[str, Any] | None = None) -> None:
    """Run ``policy`` (a registered name, or ``{kind: name, ...params}``) as the
    scenario's ``engine.<kind>`` through ``CONFORMANCE_CASES``; raise AssertionError
    naming the case and the broken promise.

    A case whose engine limits the policy refuses when it is built (a ValueError from
    ``from_config``, e.g. whole-prompt batching under a budget below max_model_len) does
    not apply; at least ``MIN_APPLICABLE_CASES`` must. ``engine`` adds settings the
    policy needs to every case (e.g. ``{"predictor": {"kind": "oracle"}}``)."""
    registry = {"batching": BATCHING, "queue": QUEUE, "routing": ROUTING}[kind]
    applicable = 0
    for case, sections in CONFORMANCE_CASES.items():
        settings = {**sections.get("engine", {}), **(engine or {}), kind: policy}
        scenario = tiny_scenario(**{**sections, "engine": settings})
        deployment = resolve(scenario)
        try:
            registry.build(getattr(scenario.engine, kind),
                           scenario.engine.limits(deployment.max_model_len),
                           np.random.default_rng(0))
        except ValueError:
            continue
        applicable += 1
        results = simulate(scenario)
        try:
            check_results(results, resolve(scenario).memory.num_kv_blocks)
            if scenario.stop.duration_s is None:
                statuses = set(results.requests.status)
                assert statuses <= {"finished", "rejected"}, "a request never finished"
            again = simulate(scenario)
            _assert_same(results, again, "the same scenario gave different frames")
            stepped = simulate(scenario.with_overrides(["engine.fast_forward=false"]))
            _assert_same(results, stepped, "fast-forwarded runs differ from stepped ones "
                                           "(does the policy's may_repeat hold?)")
        except AssertionError as exc:
            raise AssertionError(f"{kind} policy {policy!r}, case {case!r}: {exc}") from exc
    assert applicable >= MIN_APPLICABLE_CASES, (
        f"{kind} policy {policy!r} refused all but {applicable} conformance cases"
    )


def _assert_same(a: Results, b: Results, message: str) -> None:
    try:
        pd.testing.assert_frame_equal(a.requests, b.requests, check_exact=True)
        pd.testing.assert_frame_equal(a.iterations, b.iterations, check_exact=True)
    except AssertionError:
        raise AssertionError(message) from None
