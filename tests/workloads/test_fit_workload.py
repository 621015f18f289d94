"""fit_workload recovers known parameters, picks the family the data came from, and its
look-alike reproduces the trace's statistics and runs in the simulator."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from simulator.conformance import tiny_scenario
from simulator.engine import simulate
from simulator.scenario import Scenario
from workloads.config import (
    GammaArrivals,
    LogNormalLength,
    NormalLength,
    PoissonArrivals,
    SyntheticWorkload,
    UniformLength,
    ZipfLength,
)
from workloads.fit import KS_GOOD, fit_workload
from workloads.generate import open_loop_requests
from workloads.trace import RequestArrays

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def draw(arrival, prompt, output, n=20_000, seed=1) -> RequestArrays:
    workload = SyntheticWorkload(arrival=arrival, prompt_tokens=prompt, output_tokens=output)
    return open_loop_requests(workload, num_requests=n, duration_s=None,
                              rng=np.random.default_rng(seed))


LOGNORMAL = LogNormalLength(median_tokens=800, sigma=0.9)
OUTPUT = LogNormalLength(median_tokens=200, sigma=0.7, max_tokens=4096)


@pytest.fixture(scope="module")
def poisson_trace() -> RequestArrays:
    return draw(PoissonArrivals(rate_per_s=7.0), LOGNORMAL, OUTPUT)


@pytest.fixture(scope="module")
def gamma_trace() -> RequestArrays:
    return draw(GammaArrivals(rate_per_s=7.0, cv=2.5), LOGNORMAL, OUTPUT, seed=2)


def test_poisson_rate_recovered_and_poisson_chosen(poisson_trace):
    fit = fit_workload(poisson_trace)
    assert fit.rate_per_s == pytest.approx(7.0, rel=0.03)
    assert fit.arrival.family == "poisson"
    assert isinstance(fit.to_workload().arrival, PoissonArrivals)
    assert fit.arrival.ks_distance < KS_GOOD
    assert fit.gap_cv == pytest.approx(1.0, abs=0.05)
    assert fit.dispersion_index == pytest.approx(1.0, abs=0.15)


def test_gamma_cv_recovered_and_gamma_chosen(gamma_trace):
    fit = fit_workload(gamma_trace)
    assert fit.arrival.family == "gamma"
    assert fit.arrival.params["cv"] == pytest.approx(2.5, rel=0.10)
    assert fit.rate_per_s == pytest.approx(7.0, rel=0.05)
    # Both reported; the wrong family is visibly wrong.
    families = {c.family: c for c in fit.candidates["arrival_gap_s"]}
    assert set(families) == {"gamma", "poisson"}
    assert families["gamma"].ks_distance < KS_GOOD < 0.2 < families["poisson"].ks_distance
    assert fit.dispersion_index > 2.0  # bursty: counts per window vary far more than Poisson


def test_lognormal_recovered_and_chosen(poisson_trace):
    fit = fit_workload(poisson_trace)
    prompt = fit.prompt
    assert prompt.family == "lognormal"
    assert prompt.params["median_tokens"] == pytest.approx(800, rel=0.05)
    assert prompt.params["sigma"] == pytest.approx(0.9, rel=0.05)
    assert prompt.ks_distance < KS_GOOD and prompt.verdict == "good"
    wrong = {c.family: c for c in fit.candidates["prompt_tokens"]}
    assert wrong["uniform"].ks_distance > 0.3 and wrong["uniform"].verdict == "poor"
    assert wrong["normal"].ks_distance > 0.1
    # Clipped to the observed range.
    assert prompt.config.min_tokens == poisson_trace.prompt_tokens.min()
    assert prompt.config.max_tokens == poisson_trace.prompt_tokens.max()


@pytest.mark.parametrize("dist", [
    NormalLength(mean_tokens=500, std_tokens=80, min_tokens=1),
    UniformLength(min_tokens=10, max_tokens=900),
    ZipfLength(exponent=1.4, min_tokens=1, max_tokens=3000),
    LogNormalLength(median_tokens=12, sigma=1.1),  # small counts: rounding matters
], ids=lambda d: d.kind)
def test_the_generating_family_is_chosen(dist):
    trace = draw(PoissonArrivals(rate_per_s=5.0), dist, dist, n=10_000, seed=3)
    fit = fit_workload(trace)
    assert fit.prompt.family == dist.kind
    assert fit.prompt.ks_distance < 0.03
    if isinstance(dist, LogNormalLength):
        assert fit.prompt.params["median_tokens"] == pytest.approx(12, rel=0.05)
        assert fit.prompt.params["sigma"] == pytest.approx(1.1, rel=0.05)


def test_look_alike_matches_the_trace(gamma_trace):
    fit = fit_workload(gamma_trace)
    look = open_loop_requests(fit.to_workload(), num_requests=len(gamma_trace.arrival_s),
                              duration_s=None, rng=np.random.default_rng(9))
    for column in ("prompt_tokens", "output_tokens"):
        a, b = getattr(gamma_trace, column), getattr(look, column)
        assert b.mean() == pytest.approx(a.mean(), rel=0.04), column
        for q in (50, 90):
            assert np.percentile(b, q) == pytest.approx(np.percentile(a, q), rel=0.04), column

    def rate(r: RequestArrays) -> float:
        return (len(r.arrival_s) - 1) / (r.arrival_s[-1] - r.arrival_s[0])

    assert rate(look) == pytest.approx(rate(gamma_trace), rel=0.05)
    # The report says the same thing, row by row.
    report = fit.report()
    assert list(report.index) == ["arrival_gap_s", "prompt_tokens", "output_tokens"]
    assert report.loc["prompt_tokens", "fit_p50"] == pytest.approx(
        report.loc["prompt_tokens", "trace_p50"], rel=0.04)


def test_to_workload_rescales_the_rate(gamma_trace):
    fit = fit_workload(gamma_trace)
    doubled = fit.to_workload(rate_per_s=2 * fit.rate_per_s)
    assert doubled.arrival.rate_per_s == pytest.approx(2 * fit.rate_per_s)
    assert doubled.arrival.cv == fit.arrival.params["cv"]
    assert doubled.prompt_tokens == fit.prompt.config
    n = 20_000
    base = open_loop_requests(fit.to_workload(), num_requests=n, duration_s=None,
                              rng=np.random.default_rng(4))
    fast = open_loop_requests(doubled, num_requests=n, duration_s=None,
                              rng=np.random.default_rng(4))
    np.testing.assert_allclose(fast.arrival_s, base.arrival_s / 2, rtol=1e-12)
    with pytest.raises(ValueError):
        fit.to_workload(rate_per_s=0.0)


def test_independence_is_reported():
    rng = np.random.default_rng(5)
    z = rng.multivariate_normal([0, 0], [[1, 0.6], [0.6, 1]], size=5000)
    prompt = np.maximum(1, np.rint(np.exp(6 + z[:, 0]))).astype(np.int64)
    output = np.maximum(1, np.rint(np.exp(5 + 0.5 * z[:, 1]))).astype(np.int64)
    trace = RequestArrays(np.cumsum(rng.exponential(0.1, 5000)), prompt, output)
    fit = fit_workload(trace)
    assert fit.prompt_output_spearman == pytest.approx(0.58, abs=0.05)


def test_report_yaml_and_all_candidates(poisson_trace):
    fit = fit_workload(poisson_trace)
    full = fit.report(all_candidates=True)
    assert full["chosen"].sum() == 3
    assert {"ks_distance", "ks_pvalue", "aic", "bic", "trace_p99", "fit_p99"} <= set(full)
    # Within each quantity the rows are in BIC order.
    for _, group in full.groupby(level="quantity", sort=False):
        assert group["bic"].is_monotonic_increasing
    loaded = yaml.safe_load(fit.to_yaml())
    assert SyntheticWorkload.model_validate(loaded["workload"]) == fit.to_workload()


def test_degenerate_inputs():
    one = RequestArrays(np.array([0.0, 1.0, 3.0, 3.0, 4.0]), np.full(5, 64), np.arange(1, 6))
    fit = fit_workload(one)
    assert fit.prompt.family == "fixed" and fit.prompt.config.tokens == 64
    assert fit.notes  # the zero gap was raised
    with pytest.raises(ValueError, match="at least 3"):
        fit_workload(one.take(slice(0, 2)))
    with pytest.raises(ValueError, match="offline"):
        fit_workload(RequestArrays(np.zeros(4), np.full(4, 5), np.full(4, 5)))


def test_fitted_workload_runs_in_a_scenario():
    trace = draw(GammaArrivals(rate_per_s=40.0, cv=1.8),
                 LogNormalLength(median_tokens=80, sigma=0.8, max_tokens=300),
                 LogNormalLength(median_tokens=30, sigma=0.7, max_tokens=120), n=3000)
    fit = fit_workload(trace)
    base = tiny_scenario().model_dump(mode="json")
    scenario = Scenario.from_dict({**base, "workload": fit.to_workload().model_dump()})
    assert scenario.workload == fit.to_workload()
    results = simulate(scenario)
    summary = results.summary()
    assert summary["num_finished"] == summary["num_requests"] == 200


def test_fit_trace_example_runs(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import fit_trace

    monkeypatch.setattr(sys, "argv", ["fit_trace.py", "--requests", "300"])
    fit_trace.main()
    out = capsys.readouterr().out
    assert "ttft_p99_s" in out and "look-alike" in out and "ks_distance" in out
