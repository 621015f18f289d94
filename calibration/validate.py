"""``servesim validate``: a real model served on the device against the simulator's
prediction with a calibration profile.

For each reference model size, the real loop (``calibration.serve``) serves a small
synthetic workload; then

- **per iteration**: every measured batch shape is priced by the cost model with the
  profile (``CostModel.price``), so the error is the cost model's alone (no scheduling
  difference can hide or add any);
- **end to end**: the same requests (arrival times, lengths) are simulated with
  ``simulate`` under the same engine limits and ``orca`` batching, which is the loop's
  scheduling, with the loop's measured per-iteration overhead; median TTFT and TPOT are
  compared.

The per-op-class errors are the profile's held-out microbenchmark errors.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from calibration.fit import mape
from hardware.profile import CalibrationProfile
from simulator.cost import CostModel
from simulator.engine import simulate
from simulator.model import ModelSpec
from simulator.scenario import Scenario

TARGET_ITERATION_MAPE = 0.10
TARGET_MEDIAN_ERROR = 0.15


@dataclass(frozen=True)
class SizeReport:
    """One model size: per-iteration and end-to-end errors."""

    model: str
    num_requests: int
    num_iterations: int
    iteration_mape: float
    """Mean absolute percentage error of predicted vs measured forward time."""
    iteration_mape_by_kind: dict[str, float]
    loop_overhead_s: float
    """Median time per iteration the loop spent outside the forward (fed to the simulator)."""
    ttft_p50_measured_s: float
    ttft_p50_simulated_s: float
    tpot_p50_measured_s: float
    tpot_p50_simulated_s: float
    iterations: pd.DataFrame
    """Per iteration: kind, num_tokens, measured_s, predicted_s."""

    @property
    def ttft_error(self) -> float:
        return self.ttft_p50_simulated_s / self.ttft_p50_measured_s - 1.0

    @property
    def tpot_error(self) -> float:
        return self.tpot_p50_simulated_s / self.tpot_p50_measured_s - 1.0

    @property
    def meets_targets(self) -> bool:
        return (self.iteration_mape <= TARGET_ITERATION_MAPE
                and abs(self.ttft_error) <= TARGET_MEDIAN_ERROR
                and abs(self.tpot_error) <= TARGET_MEDIAN_ERROR)


def _kind(shape_prefill: int, decode: int) -> str:
    if shape_prefill and decode:
        return "mixed"
    return "prefill" if shape_prefill else "decode"


def scenario_for(spec: ModelSpec, profile_path: Path, trace_path: Path, limits: object,
                 overhead_s: float) -> Scenario:
    """The simulator's description of what the loop ran: the model and profile at fp32,
    orca batching under the loop's limits, its overhead, the same requests."""
    return Scenario.from_dict({
        "name": f"validate-{spec.name}",
        "model": spec.model_dump(),
        "hardware": {"profile": str(profile_path)},
        "deployment": {"weight_dtype": "fp32", "activation_dtype": "fp32",
                       "kv_cache_dtype": "fp32"},
        "engine": {
            "batching": "orca", "chunked_prefill": False, "prefix_cache": "none",
            "max_num_seqs": limits.max_num_seqs,  # type: ignore[attr-defined]
            "max_num_batched_tokens": limits.max_num_batched_tokens,  # type: ignore[attr-defined]
            "max_model_len": limits.max_model_len,  # type: ignore[attr-defined]
            "iteration_overhead_s": overhead_s, "runtime_reserved_gib": 0.0,
        },
        "workload": {"kind": "trace", "path": str(trace_path)},
        "stop": {"num_requests": None},
    })


def validate_size(profile: CalibrationProfile, profile_path: Path, size: str, *,
                  num_requests: int, rate_per_s: float, num_threads: int | None,
                  seed: int = 0) -> SizeReport:
    """Serve one reference size for real, then predict it (module docstring)."""
    import torch

    from calibration.reference import REFERENCE_SPECS, ReferenceLlama
    from calibration.serve import ServeLimits, serve, synthetic_workload

    spec = ModelSpec.model_validate(REFERENCE_SPECS[size])
    model = ReferenceLlama(spec, device=profile.host.device_type, dtype=torch.float32, seed=seed)
    workload = synthetic_workload(np.random.default_rng(seed), num_requests, rate_per_s)
    # Whole prompts (orca): the token budget must cover the longest request.
    limits = ServeLimits(max_num_seqs=32, max_num_batched_tokens=512, max_model_len=512)
    real = serve(model, workload, limits, num_threads=num_threads, seed=seed)

    cost = CostModel(spec, profile.accelerator, profile.efficiency, weight_dtype="fp32",
                     activation_dtype="fp32", kv_cache_dtype="fp32")
    it = real.iterations
    predicted = np.array([float(cost.price(s).seconds) for s in real.batch_shapes()])
    measured = it["duration_s"].to_numpy(dtype=np.float64)
    kinds = [_kind(p, d) for p, d in zip(it["num_prefill_tokens"], it["num_decode_seqs"],
                                          strict=True)]
    frame = pd.DataFrame({"kind": kinds, "num_tokens": it["num_tokens"],
                          "measured_s": measured, "predicted_s": predicted})
    by_kind = {k: mape(g.predicted_s, g.measured_s) for k, g in frame.groupby("kind")}
    overhead_s = float(np.median(it["overhead_s"]))

    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "requests.csv"
        pd.DataFrame({"arrival_s": workload.arrival_s, "prompt_tokens": workload.prompt_tokens,
                      "output_tokens": workload.output_tokens}).to_csv(trace, index=False)
        scenario = scenario_for(spec, profile_path, trace, limits, overhead_s)
        # A trace starts at its first arrival; the loop's clock starts at 0.
        simulated = simulate(scenario).requests
    measured_requests = real.requests
    return SizeReport(
        model=spec.name, num_requests=num_requests, num_iterations=len(it),
        iteration_mape=mape(predicted, measured), iteration_mape_by_kind=by_kind,
        loop_overhead_s=overhead_s,
        ttft_p50_measured_s=float(measured_requests["ttft_s"].median()),
        ttft_p50_simulated_s=float(simulated["ttft_s"].median()),
        tpot_p50_measured_s=float(measured_requests["tpot_s"].median()),
        tpot_p50_simulated_s=float(simulated["tpot_s"].median()),
        iterations=frame,
    )


def plot_html(reports: list[SizeReport], path: Path) -> bool:
    """Measured against predicted iteration time per size (plotly HTML); False when
    plotly is not installed."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        return False
    fig = go.Figure()
    top = 0.0
    for r in reports:
        f = r.iterations
        fig.add_trace(go.Scatter(x=f.measured_s * 1e3, y=f.predicted_s * 1e3, mode="markers",
                                 name=f"{r.model} (MAPE {r.iteration_mape:.1%})",
                                 text=f.kind, marker={"size": 5, "opacity": 0.6}))
        top = max(top, float(f.measured_s.max()), float(f.predicted_s.max()))
    fig.add_trace(go.Scatter(x=[0, top * 1e3], y=[0, top * 1e3], mode="lines",
                             name="exact", line={"dash": "dash", "color": "grey"}))
    fig.update_layout(title="servesim validate: iteration time, predicted vs measured",
                      xaxis_title="measured (ms)", yaxis_title="predicted (ms)",
                      xaxis_type="log", yaxis_type="log")
    fig.write_html(path)
    return True
