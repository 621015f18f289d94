"""Queue orders and output-length predictors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_scenario

from simulator import Scenario, check_policy, simulate
from simulator.predictor import NoisyPredictor, OraclePredictor, build_predictor


@pytest.mark.parametrize(("policy", "engine"), [
    ("fcfs", None),
    ("sjf", {"predictor": {"kind": "oracle"}}),
    ("sjf", {"predictor": {"kind": "noisy", "sigma": 0.8}}),
])
def test_queue_orders_conform(policy, engine):
    check_policy("queue", policy, engine)


@pytest.fixture(scope="module")
def bimodal(tmp_path_factory) -> Scenario:
    # Half the requests want 20 tokens, half 1000, arriving faster than 16 slots serve.
    rng = np.random.default_rng(0)
    n = 600
    path = tmp_path_factory.mktemp("trace") / "bimodal.csv"
    pd.DataFrame({
        "arrival_s": np.cumsum(rng.exponential(1 / 12.0, n)),
        "prompt_tokens": 200,
        "output_tokens": np.where(rng.random(n) < 0.5, 20, 1000),
    }).to_csv(path, index=False)
    return Scenario.model_validate({
        "engine": {"max_num_seqs": 16},
        "workload": {"kind": "trace", "path": str(path)},
        "stop": {"num_requests": None},
    })


def test_sjf_cuts_mean_latency_on_a_bimodal_mix(bimodal):
    # Shortest processing time first minimises mean completion time (Smith, 1956): short
    # requests stop queueing behind long ones. Throughput is unchanged.
    fcfs = simulate(bimodal).summary()
    sjf = simulate(bimodal.with_overrides(["engine.queue=sjf",
                                           "engine.predictor={kind: oracle}"])).summary()
    assert sjf.e2e_mean_s < 0.7 * fcfs.e2e_mean_s
    assert sjf.output_tokens_per_s == pytest.approx(fcfs.output_tokens_per_s, rel=0.02)


def test_sjf_without_a_predictor_says_what_is_missing():
    s = tiny_scenario(engine={"queue": "sjf"}, workload={
        "kind": "synthetic", "arrival": {"kind": "offline"},
        "prompt_tokens": {"kind": "fixed", "tokens": 10},
        "output_tokens": {"kind": "fixed", "tokens": 10}}, stop={"num_requests": 20})
    with pytest.raises(ValueError, match=r"engine\.predictor"):
        simulate(s)


def test_noisy_predictor_has_the_stated_log_error_and_is_stable():
    predict = build_predictor(NoisyPredictor(sigma=0.5), seed=3)
    errors = np.log([predict(i, 50, 100) / 100 for i in range(4000)])
    assert errors.std() == pytest.approx(0.5, rel=0.05)  # log-normal error, sigma 0.5
    assert abs(errors.mean()) < 0.03
    assert predict(17, 50, 100) == predict(17, 50, 100)  # the same request, the same guess
    assert build_predictor(OraclePredictor(), seed=3)(5, 50, 321) == 321.0
