"""Rate schedules, diurnal and Markov-modulated arrivals, and multi-turn sessions.

Statistical checks compare counts with their expectation under the configured rate,
allowing four standard deviations (a Poisson count of mean m has sd sqrt(m)).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from simulator import simulate
from simulator.conformance import tiny_scenario
from workloads.config import SyntheticWorkload
from workloads.generate import open_loop_requests
from workloads.trace import RequestArrays

LENGTHS: dict[str, Any] = {
    "prompt_tokens": {"kind": "uniform", "min_tokens": 4, "max_tokens": 200},
    "output_tokens": {"kind": "uniform", "min_tokens": 1, "max_tokens": 60},
}


def workload(arrival: dict[str, Any], **extra: Any) -> SyntheticWorkload:
    return SyntheticWorkload.model_validate({"kind": "synthetic", "arrival": arrival,
                                             **LENGTHS, **extra})


def generate(w: SyntheticWorkload, *, num_requests: int | None = None,
             duration_s: float | None = None, seed: int = 7) -> RequestArrays:
    return open_loop_requests(w, num_requests=num_requests, duration_s=duration_s,
                              rng=np.random.default_rng(seed))


def within_poisson_sd(count: int, mean: float, k: float = 4.0) -> bool:
    return abs(count - mean) <= k * math.sqrt(mean)


STEP = {"kind": "schedule", "segments": [{"start_s": 0, "rate_per_s": 5},
                                         {"start_s": 100, "rate_per_s": 20},
                                         {"start_s": 250, "rate_per_s": 2}]}
DIURNAL = {"kind": "diurnal", "mean_rate_per_s": 20, "amplitude_frac": 0.8,
           "period_s": 100, "phase_s": 10}
MMPP = {"kind": "mmpp", "states": [{"rate_per_s": 2, "mean_dwell_s": 20},
                                   {"rate_per_s": 40, "mean_dwell_s": 5},
                                   {"rate_per_s": 0, "mean_dwell_s": 10}]}


# ---------------------------------------------------------------- rate schedules


def test_step_schedule_counts_per_segment_match_rate_times_duration() -> None:
    t = generate(workload(STEP), duration_s=400).arrival_s
    edges = [0, 100, 250, 400]
    counts = np.histogram(t, bins=edges)[0]
    for count, rate, width in zip(counts, [5, 20, 2], np.diff(edges), strict=True):
        assert within_poisson_sd(int(count), rate * width), (count, rate * width)
    assert np.all(np.diff(t) >= 0) and t[0] > 0 and t[-1] < 400


def test_ramp_schedule_counts_follow_the_integral_of_the_linear_rate() -> None:
    ramp = {"kind": "schedule", "ramp": True,
            "segments": [{"start_s": 0, "rate_per_s": 0}, {"start_s": 100, "rate_per_s": 40}]}
    t = generate(workload(ramp), duration_s=150).arrival_s
    counts = np.histogram(t, bins=[0, 50, 100, 150])[0]
    # rate 0.4 t on [0, 100]: ∫ = 0.2 t²; then 40/s.
    for count, mean in zip(counts, [500, 1500, 2000], strict=True):
        assert within_poisson_sd(int(count), mean), (count, mean)


def test_diurnal_counts_per_phase_bin_follow_the_sinusoid() -> None:
    period, mean_rate, amp, phase, num_periods = 100.0, 20.0, 0.8, 10.0, 30
    t = generate(workload(DIURNAL), duration_s=period * num_periods).arrival_s
    edges = np.linspace(0, period, 11)
    counts = np.histogram(np.mod(t, period), bins=edges)[0]
    w = 2 * math.pi / period
    for count, lo, hi in zip(counts, edges[:-1], edges[1:], strict=True):
        # ∫ m (1 + A sin(w (s - φ))) ds over the bin, times the number of periods
        integral = mean_rate * ((hi - lo) + amp / w * (math.cos(w * (lo - phase))
                                                      - math.cos(w * (hi - phase))))
        assert within_poisson_sd(int(count), integral * num_periods), (lo, count)
    # busiest bin holds the crest at phase + period / 4 = 35 s
    assert edges[np.argmax(counts)] == 30.0


def test_diurnal_amplitude_zero_is_poisson_rate() -> None:
    flat = {**DIURNAL, "amplitude_frac": 0.0}
    t = generate(workload(flat), duration_s=500).arrival_s
    assert within_poisson_sd(len(t), 20 * 500)


def test_mmpp_long_run_rate_is_dwell_weighted_and_gaps_are_bursty() -> None:
    duration = 100_000.0
    t = generate(workload(MMPP), duration_s=duration).arrival_s
    expected_rate = (2 * 20 + 40 * 5 + 0 * 10) / (20 + 5 + 10)  # 6.857/s
    # The count's sd is dominated by the random dwells (about 2 % here), not Poisson noise.
    assert len(t) / duration == pytest.approx(expected_rate, rel=0.08)
    gaps = np.diff(t)
    assert np.std(gaps) / np.mean(gaps) > 1.5  # Poisson would give 1


@pytest.mark.parametrize("arrival", [STEP, DIURNAL, MMPP], ids=["schedule", "diurnal", "mmpp"])
def test_request_bound_and_duration_bound_give_the_same_first_requests(
    arrival: dict[str, Any],
) -> None:
    w = workload(arrival)
    by_duration = generate(w, duration_s=300)
    by_count = generate(w, num_requests=500)
    n = min(500, len(by_duration.arrival_s))
    for a, b in zip(by_duration, by_count, strict=True):
        if a is not None:
            np.testing.assert_array_equal(a[:n], b[:n])
    both = generate(w, num_requests=100, duration_s=300)
    np.testing.assert_array_equal(both.arrival_s, by_count.arrival_s[:100])


def test_schedule_ending_at_rate_zero_needs_a_duration() -> None:
    ending = {"kind": "schedule", "segments": [{"start_s": 0, "rate_per_s": 5},
                                               {"start_s": 10, "rate_per_s": 0}]}
    with pytest.raises(ValueError, match="rate_per_s"):
        generate(workload(ending), num_requests=100)
    t = generate(workload(ending), duration_s=100).arrival_s
    assert np.all(t < 10) and within_poisson_sd(len(t), 50)


# ---------------------------------------------------------------- sessions


SESSIONS = {"num_turns": 4, "message_tokens": {"kind": "uniform", "min_tokens": 5,
                                                "max_tokens": 50},
            "mean_think_time_s": 2.0, "think_time_dist": "fixed"}


def turns_by_session(r: RequestArrays) -> list[np.ndarray]:
    assert r.prefix_id is not None
    return [np.flatnonzero(r.prefix_id == s) for s in np.unique(r.prefix_id)]


def test_session_turns_grow_by_output_plus_message_and_share_the_session_id() -> None:
    w = workload({"kind": "poisson", "rate_per_s": 1.0}, sessions=SESSIONS)
    r = generate(w, duration_s=1000)
    assert r.prefix_id is not None and r.prefix_tokens is not None
    assert np.all(np.diff(r.arrival_s) >= 0)
    np.testing.assert_array_equal(r.prefix_tokens, r.prompt_tokens)
    sessions = turns_by_session(r)
    complete = [idx for idx in sessions if r.arrival_s[idx[0]] < 1000 - 6]
    assert len(complete) > 900
    for idx in complete:
        assert len(idx) == 4
        np.testing.assert_allclose(np.diff(r.arrival_s[idx]), 2.0, rtol=1e-12)
        new_message = np.diff(r.prompt_tokens[idx]) - r.output_tokens[idx[:-1]]
        assert np.all((new_message >= 5) & (new_message <= 50))
    assert np.array_equal(np.unique(r.prefix_id), np.arange(len(sessions)))


def test_session_turn_counts_and_exponential_think_times() -> None:
    sessions = {**SESSIONS, "num_turns": {"kind": "uniform", "min_tokens": 1, "max_tokens": 7},
                "think_time_dist": "exponential", "mean_think_time_s": 3.0}
    w = workload({"kind": "poisson", "rate_per_s": 2.0}, sessions=sessions)
    r = generate(w, duration_s=2000)
    groups = [idx for idx in turns_by_session(r) if r.arrival_s[idx[0]] < 1800]
    num_turns = np.array([len(idx) for idx in groups])
    assert set(num_turns) == set(range(1, 8))
    # mean 4, sd 2 per session
    assert abs(num_turns.mean() - 4.0) < 4 * 2.0 / math.sqrt(len(num_turns))
    think = np.concatenate([np.diff(r.arrival_s[idx]) for idx in groups])
    assert abs(think.mean() - 3.0) < 4 * 3.0 / math.sqrt(len(think))
    assert np.std(think) / np.mean(think) == pytest.approx(1.0, abs=0.1)


def test_session_bounds_count_turns_and_extend_each_other() -> None:
    w = workload({"kind": "poisson", "rate_per_s": 3.0}, sessions=SESSIONS)
    short, long = generate(w, num_requests=200), generate(w, num_requests=900)
    assert len(short.arrival_s) == 200
    for a, b in zip(short, long, strict=True):
        if a is not None:
            np.testing.assert_array_equal(a, b[:200])
    by_duration = generate(w, duration_s=60)
    assert np.all(by_duration.arrival_s < 60) and 200 < len(by_duration.arrival_s) < 900
    np.testing.assert_array_equal(by_duration.arrival_s,
                                  long.arrival_s[: len(by_duration.arrival_s)])


# ---------------------------------------------------------------- existing configs


def digest(r: RequestArrays) -> str:
    h = hashlib.sha256()
    for column in r:
        if column is not None:
            h.update(np.ascontiguousarray(column).tobytes())
    return h.hexdigest()


FULL = {"kind": "synthetic", "arrival": {"kind": "gamma", "rate_per_s": 7.0, "cv": 2.5},
        "prompt_tokens": {"kind": "lognormal", "median_tokens": 300, "sigma": 1.0,
                          "max_tokens": 4000},
        "output_tokens": {"kind": "zipf", "exponent": 1.3, "max_tokens": 500},
        "classes": [{"weight": 2, "priority": 1},
                    {"weight": 1, "ttft_slo_s": 0.5,
                     "output_tokens": {"kind": "uniform", "max_tokens": 40}}],
        "shared_prefix": {"num_prefixes": 4, "request_frac": 0.6,
                          "tokens": {"kind": "uniform", "min_tokens": 50, "max_tokens": 500}}}
PLAIN = {"kind": "synthetic", "arrival": {"kind": "poisson", "rate_per_s": 12.0},
         "prompt_tokens": {"kind": "normal", "mean_tokens": 300, "std_tokens": 50},
         "output_tokens": {"kind": "fixed", "tokens": 20}}


@pytest.mark.parametrize(("config", "expected"), [
    (FULL, "98e07c1036c6584abad5c093d362298ef9dd6a51a8789da356a353b2174d5646"),
    (PLAIN, "609e14a946ea33215c9c3106e1e0a6f2669f21a370d9413eddb1f4b95a0119c1"),
], ids=["gamma_classes_prefixes", "poisson"])
def test_existing_configs_give_bit_identical_requests(config: dict[str, Any],
                                                     expected: str) -> None:
    """Digests recorded with the code before rate schedules and sessions existed."""
    r = open_loop_requests(SyntheticWorkload.model_validate(config), num_requests=3000,
                           duration_s=400.0, rng=np.random.default_rng(123))
    assert len(r.arrival_s) == 3000
    assert digest(r) == expected


# ---------------------------------------------------------------- bad configs


@pytest.mark.parametrize(("arrival", "field"), [
    ({"kind": "schedule", "segments": [{"start_s": 0, "rate_per_s": -1}]}, "rate_per_s"),
    ({"kind": "schedule", "segments": [{"start_s": 0, "rate_per_s": 1},
                                       {"start_s": 60, "rate_per_s": 2},
                                       {"start_s": 30, "rate_per_s": 3}]}, "sorted by start_s"),
    ({"kind": "schedule", "segments": [{"start_s": 5, "rate_per_s": 1}]}, r"segments\[0\]"),
    ({"kind": "schedule", "segments": [{"start_s": 0, "rate_per_s": 0}]}, "rate_per_s"),
    ({"kind": "schedule", "segments": []}, "segments"),
    ({**DIURNAL, "amplitude_frac": 1.5}, "amplitude_frac"),
    ({**DIURNAL, "mean_rate_per_s": -3}, "mean_rate_per_s"),
    ({**DIURNAL, "period_s": 0}, "period_s"),
    ({"kind": "mmpp", "states": [{"rate_per_s": 1, "mean_dwell_s": 1}]}, "states"),
    ({"kind": "mmpp", "states": [{"rate_per_s": 1, "mean_dwell_s": 0},
                                 {"rate_per_s": 1, "mean_dwell_s": 1}]}, "mean_dwell_s"),
    ({"kind": "mmpp", "states": [{"rate_per_s": 0, "mean_dwell_s": 1},
                                 {"rate_per_s": 0, "mean_dwell_s": 1}]}, "rate_per_s"),
])
def test_bad_arrival_configs_name_the_field(arrival: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        workload(arrival)


@pytest.mark.parametrize(("extra", "field"), [
    ({"shared_prefix": {"num_prefixes": 2, "tokens": 10}}, "shared_prefix"),
    ({"classes": [{"weight": 1}]}, "classes"),
    ({"sessions": {**SESSIONS, "mean_think_time_s": -1}}, "mean_think_time_s"),
    ({"sessions": {**SESSIONS, "num_turns": 0}}, "num_turns"),
    ({"sessions": {**SESSIONS, "think_time_dist": "weibull"}}, "think_time_dist"),
])
def test_bad_session_configs_name_the_field(extra: dict[str, Any], field: str) -> None:
    if "sessions" not in extra:
        extra = {**extra, "sessions": SESSIONS}
    with pytest.raises(ValidationError, match=field):
        workload({"kind": "poisson", "rate_per_s": 1}, **extra)


def test_sessions_refuse_closed_loop_arrivals() -> None:
    with pytest.raises(ValidationError, match="sessions"):
        workload({"kind": "closed_loop", "concurrency": 4}, sessions=SESSIONS)


# ---------------------------------------------------------------- through the engine


@pytest.mark.parametrize("arrival", [
    {"kind": "schedule", "ramp": True, "segments": [{"start_s": 0, "rate_per_s": 20},
                                                    {"start_s": 2, "rate_per_s": 80}]},
    {"kind": "diurnal", "mean_rate_per_s": 50, "amplitude_frac": 1.0, "period_s": 4},
    {"kind": "mmpp", "states": [{"rate_per_s": 10, "mean_dwell_s": 1},
                                {"rate_per_s": 100, "mean_dwell_s": 0.5}]},
], ids=["schedule", "diurnal", "mmpp"])
def test_rate_modulated_workload_simulates(arrival: dict[str, Any]) -> None:
    w = {"kind": "synthetic", "arrival": arrival, **tiny_scenario().workload.model_dump()}
    w["arrival"] = arrival
    results = simulate(tiny_scenario(workload=w))
    assert (results.requests.status == "finished").sum() == 200


def test_sessions_simulate_and_hit_the_prefix_cache() -> None:
    w = tiny_scenario().workload.model_dump()
    w["arrival"] = {"kind": "poisson", "rate_per_s": 10.0}
    w["sessions"] = {"num_turns": 5, "message_tokens": {"kind": "uniform", "min_tokens": 4,
                                                        "max_tokens": 40},
                     "mean_think_time_s": 0.5}
    w["prompt_tokens"] = {"kind": "uniform", "min_tokens": 4, "max_tokens": 100}
    w["output_tokens"] = {"kind": "uniform", "min_tokens": 1, "max_tokens": 30}
    results = simulate(tiny_scenario(workload=w))
    assert (results.requests.status == "finished").sum() == 200
    assert results.summary()["prefix_hit_rate_frac"] > 0
