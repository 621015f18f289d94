"""Results of one run: the request and iteration frames, their summary, and exporters.

The engine builds the frames; this module only reads them. Everything here is
vectorised numpy/pandas so that 10^6 requests and 10^7 iterations summarise in
seconds. Nothing is written to disk except by an explicit export call.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hardware.spec import AcceleratorSpec
from simulator.dtypes import ComputeDType

log = logging.getLogger(__name__)

LATENCY_METRICS = ("ttft", "tpot", "itl", "e2e", "queue")
"""Latency metrics in the summary, each as ``{m}_mean_s`` and ``{m}_p{50,90,99}_s``."""

PERCENTILES = (50, 90, 99)

DERIVED_REQUEST_COLUMNS = ("ttft_s", "e2e_s", "tpot_s", "queue_s")

_TRACE_CHUNK_EVENTS = 10_000


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """One replica group of the cluster, as the summary needs it."""

    name: str
    role: str  # "mixed", "prefill" or "decode"
    accelerator: AcceleratorSpec
    compute_dtype: ComputeDType
    first_replica: int  # its replicas are first_replica .. first_replica + num_replicas - 1
    num_replicas: int  # replica slots (an autoscaled group's maximum)
    devices_per_replica: int  # tensor x pipeline x attention-data parallel
    num_stages: int  # pipeline stages; each runs on devices_per_replica / num_stages devices
    kv_capacity_blocks: int  # per replica


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the summary needs to know about the deployment and the run, besides the frames.

    ``accelerator``, ``compute_dtype``, ``devices_per_replica`` and ``kv_capacity_blocks``
    describe the first replica group, the only one unless the deployment has groups;
    ``groups`` describes them all (empty: one group made of the fields above)."""

    accelerator: AcceleratorSpec
    compute_dtype: ComputeDType  # the dtype whose peak MFU is measured against, e.g. "bf16"
    num_replicas: int  # replica slots, all groups
    devices_per_replica: int
    kv_capacity_blocks: int  # per replica
    block_size_tokens: int
    slo_ttft_s: float | None  # None: no TTFT target
    slo_tpot_s: float | None  # None: no TPOT target
    end_s: float  # simulated time at which the run stopped (>= every timestamp)
    wall_s: float  # wall-clock seconds the simulation took (for reporting only)
    workload_report: str | None = None  # a trace's rows kept, and dropped by why; else None
    groups: tuple[GroupInfo, ...] = ()
    replica_s: tuple[float, ...] | None = None
    weight_bytes_per_device: float = math.nan  # the first group's (memory a knob saves)
    """Seconds each replica was provisioned (paid for) in [0, end_s]; None: all of it."""

    @property
    def all_groups(self) -> tuple[GroupInfo, ...]:
        if self.groups:
            return self.groups
        return (GroupInfo("group0", "mixed", self.accelerator, self.compute_dtype, 0,
                          self.num_replicas, self.devices_per_replica, 1,
                          self.kv_capacity_blocks),)

    def per_replica(self, field: str) -> np.ndarray:
        """A group field (or an accelerator one, prefixed ``accelerator.``) per replica."""
        values = []
        for group in self.all_groups:
            if field.startswith("accelerator."):
                value = getattr(group.accelerator, field.partition(".")[2])
            else:
                value = getattr(group, field)
            values.extend([value] * group.num_replicas)
        return np.asarray(values)

    @property
    def provisioned_s(self) -> np.ndarray:
        """Seconds each replica was paid for."""
        if self.replica_s is None:
            return np.full(self.num_replicas, self.end_s)
        return np.asarray(self.replica_s, dtype=np.float64)

    @property
    def num_devices(self) -> float:
        """Devices of the cluster, averaged over the run when replicas scale."""
        devices = self.per_replica("devices_per_replica").astype(np.float64)
        if self.replica_s is None or self.end_s <= 0:
            return float(devices.sum())
        return float(devices @ self.provisioned_s / self.end_s)


def _client_latency(req: pd.DataFrame) -> dict[str, float]:
    """End-to-end latency per client request (rows grouped by ``group_id``, a row with
    -1 on its own): mean and percentiles over client requests all of whose parts
    finished. Equals the per-request E2E when nothing was split."""
    arrival = req["arrival_s"].to_numpy(dtype=np.float64)
    finish = req["finish_s"].to_numpy(dtype=np.float64)
    group = (req["group_id"].to_numpy() if "group_id" in req.columns
             else np.full(len(req), -1))
    if (group < 0).all():
        e2e = finish - arrival
    else:
        keys = np.where(group >= 0, group, req["request_id"].to_numpy())
        frame = pd.DataFrame({"key": keys, "arrival_s": arrival, "finish_s": finish,
                              "unfinished": np.isnan(finish)})
        grouped = frame.groupby("key").agg(arrival_s=("arrival_s", "min"),
                                           finish_s=("finish_s", "max"),
                                           unfinished=("unfinished", "max"))
        done = grouped[~grouped["unfinished"].to_numpy(dtype=bool)]
        e2e = (done["finish_s"] - done["arrival_s"]).to_numpy(dtype=np.float64)
    e2e = e2e[~np.isnan(e2e)]
    out = {"client_e2e_mean_s": float(e2e.mean()) if e2e.size else math.nan}
    for p, value in zip(PERCENTILES, _percentiles(e2e), strict=True):
        out[f"client_e2e_p{p}_s"] = float(value)
    return out


def _column(frame: pd.DataFrame, name: str, default: float) -> np.ndarray:
    """``frame[name]`` as float64, or ``default`` everywhere for a frame without it (one
    from before the column existed)."""
    if name in frame.columns:
        return frame[name].to_numpy(dtype=np.float64)
    return np.full(len(frame), default)


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is zero or NaN."""
    if not denominator or math.isnan(denominator):
        return math.nan
    return float(numerator) / float(denominator)


def _percentiles(values: np.ndarray) -> np.ndarray:
    """numpy's default ("linear") percentiles at PERCENTILES; NaN for no samples."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return np.full(len(PERCENTILES), math.nan)
    return np.percentile(values, PERCENTILES)


def weighted_percentiles(
    values: np.ndarray, weights: np.ndarray, percents: Sequence[float]
) -> np.ndarray:
    """Percentiles of ``values`` where ``values[i]`` occurs ``weights[i]`` times, without
    materialising the repetition (sort, then cumulative weights).

    Inverted-CDF definition: the ``q``-th percentile is the smallest value whose
    cumulative weight is at least ``q/100 × Σ weights``. For integer weights this equals
    ``np.percentile(np.repeat(values, weights), q, method="inverted_cdf")``; it never
    interpolates, so every percentile is an observed value. Zero weights are ignored;
    no positive weight gives NaN.
    """
    keep = weights > 0
    values, weights = values[keep], weights[keep]
    if values.size == 0:
        return np.full(len(percents), math.nan)
    order = np.argsort(values)
    sorted_values = values[order]
    cumulative = np.cumsum(weights[order])
    targets = np.asarray(percents, dtype=np.float64) / 100.0 * cumulative[-1]
    index = np.searchsorted(cumulative, targets, side="left")
    return sorted_values[np.minimum(index, sorted_values.size - 1)]


class Results:
    """The outcome of ``simulate(scenario)``.

    Attributes:
        scenario: the scenario that was run (opaque here; only ``info`` feeds numbers).
        iterations: one row per iteration per replica, as the engine recorded it.
        info: deployment facts and the stop time (:class:`RunInfo`).
        itl_extra_s: inter-token gaps the iteration frame does not carry: the token a
            recompute emits after a preemption, and a request's first decode after the
            decodes were paused while it joined (prefill-only iterations).

    ``requests`` is the engine's request frame plus derived latency columns, computed on
    first access. ``summary()`` is computed once and cached. Neither mutates the frames
    the engine passed in.
    """

    def __init__(
        self,
        scenario: Any,
        requests: pd.DataFrame,
        iterations: pd.DataFrame,
        info: RunInfo,
        itl_extra_s: np.ndarray,
        scaling: pd.DataFrame | None = None,
    ) -> None:
        self.scenario = scenario
        self.scaling = (scaling if scaling is not None
                        else pd.DataFrame({"time_s": [], "replica": [], "event": []}))
        """Autoscaler events (time_s, replica, event: start, ready, drain, stop)."""
        self._raw_requests = requests
        self.iterations = iterations
        self.info = info
        self.itl_extra_s = itl_extra_s
        self._summary: pd.Series | None = None

    # ---- frames ----

    @functools.cached_property
    def requests(self) -> pd.DataFrame:
        """Request rows plus ``ttft_s`` (first token − arrival), ``e2e_s`` (finish −
        arrival), ``tpot_s`` ((finish − first token) / (generated − 1), finished requests
        with ≥ 2 generated tokens, else NaN) and ``queue_s`` (first scheduled − arrival).
        Times that did not happen are NaN, and so is anything derived from them."""
        df = self._raw_requests.copy(deep=False)  # new columns must not leak into the input
        arrival = df["arrival_s"].to_numpy(dtype=np.float64)
        first_token = df["first_token_s"].to_numpy(dtype=np.float64)
        finish = df["finish_s"].to_numpy(dtype=np.float64)
        generated = df["generated_tokens"].to_numpy(dtype=np.float64)
        has_tpot = (df["status"] == "finished").to_numpy(dtype=bool) & (generated >= 2)
        df["ttft_s"] = first_token - arrival
        df["e2e_s"] = finish - arrival
        with np.errstate(divide="ignore", invalid="ignore"):
            tpot = (finish - first_token) / (generated - 1.0)
        df["tpot_s"] = np.where(has_tpot, tpot, np.nan)
        df["queue_s"] = df["first_scheduled_s"].to_numpy(dtype=np.float64) - arrival
        return df

    # ---- summary ----

    def summary(self) -> pd.Series:
        """Run-level metrics as floats indexed by name (units in the names); see
        :meth:`_compute_summary` for definitions. Computed once; returns a copy."""
        if self._summary is None:
            self._summary = self._compute_summary()
        return self._summary.copy()

    def _compute_summary(self) -> pd.Series:
        """Definitions (finished = status "finished"):

        - ``duration_s`` = ``info.end_s`` − first arrival: the window throughput is over.
        - TTFT over requests that got a first token; TPOT and E2E over finished requests.
          ``mean`` and linear (numpy default) percentiles.
        - ITL samples: each iteration's ``decode_gap_s`` (time since the replica's previous
          decode step: its duration, plus any prefill-only iterations that paused the
          decodes) once per ``num_decode_continuing`` sequence, plus ``itl_extra_s``;
          inverted-CDF weighted percentiles (:func:`weighted_percentiles`).
        - Throughput counts finished requests' prompt and generated tokens over
          ``duration_s``; per device divides by replicas × devices per replica.
        - Goodput: finished requests with TTFT ≤ SLO and TPOT ≤ SLO (NaN TPOT, a single
          output token, meets it; a None target is always met), per ``duration_s``;
          ``slo_attainment_frac`` divides that count by the requests not in flight at the
          stop (rejected ones count as failures).
        - MFU/MBU: Σ flops (hbm_bytes) / (Σ busy seconds × peak), per device, weighted
          by devices where groups differ. An iteration keeps its stages busy for its
          duration less its pipeline waits and sends (all of it without pipelining).
        - Energy: per device, an iteration draws idle + (TDP − idle) × clip(max(MFU_i,
          MBU_i), 0, 1) while busy and idle otherwise, over the time each replica was
          provisioned ([0, end_s] unless autoscaled).
        - Cost: Σ over replicas of devices × price per hour × provisioned seconds / 3600.
        """
        info, req = self.info, self.requests
        status = req["status"].to_numpy(dtype=object)
        finished = status == "finished"
        num_requests = len(req)
        num_finished = int(finished.sum())
        num_rejected = int((status == "rejected").sum())
        num_in_flight = int((status == "in_flight").sum())
        first_arrival = float(req["arrival_s"].min()) if num_requests else math.nan
        duration_s = info.end_s - first_arrival

        m: dict[str, float] = {
            "num_requests": num_requests,
            "num_finished": num_finished,
            "num_rejected": num_rejected,
            "num_in_flight": num_in_flight,
            "duration_s": duration_s,
        }

        ttft = req["ttft_s"].to_numpy(dtype=np.float64)
        tpot = req["tpot_s"].to_numpy(dtype=np.float64)
        e2e = req["e2e_s"].to_numpy(dtype=np.float64)
        queue = req["queue_s"].to_numpy(dtype=np.float64)
        samples = {"ttft": ttft, "tpot": tpot[finished], "e2e": e2e[finished], "queue": queue}
        for name in LATENCY_METRICS:
            if name == "itl":
                mean, pcts = self._itl_stats()
            else:
                values = samples[name]
                values = values[~np.isnan(values)]
                mean = float(values.mean()) if values.size else math.nan
                pcts = _percentiles(values)
            m[f"{name}_mean_s"] = mean
            for p, value in zip(PERCENTILES, pcts, strict=True):
                m[f"{name}_p{p}_s"] = float(value)

        # Starvation: the longest wait for a first schedule, counting requests still
        # waiting at the stop (their wait so far).
        never = (status == "in_flight") & np.isnan(queue)
        waits = np.concatenate([queue[~np.isnan(queue)],
                                info.end_s - req["arrival_s"].to_numpy(dtype=np.float64)[never]])
        m["queue_max_s"] = float(waits.max()) if waits.size else math.nan
        m["recomputed_tokens"] = float(req["recomputed_tokens"].sum())
        # Prefix caching: the share of admitted prompt tokens found cached (vLLM's
        # prefix-cache hit rate, in tokens), and the prefill those hits saved.
        admitted = ~np.isnan(req["first_scheduled_s"].to_numpy(dtype=np.float64))
        hits = req["prefix_hit_tokens"].to_numpy(dtype=np.float64)
        m["prefix_hit_rate_frac"] = _ratio(float(hits[admitted].sum()),
                                           float(req["prompt_tokens"].to_numpy()[admitted].sum()))
        m["prefill_tokens_saved"] = float(hits.sum())
        # A client request split into several (Skeleton-of-Thought) is done when its last
        # part is: its end-to-end latency runs from its send to that finish.
        m.update(_client_latency(req))
        # Disaggregated serving: the KV hand-over from prefill to decode replicas.
        transfer = _column(req, "kv_transfer_s", math.nan)
        transfer = transfer[~np.isnan(transfer)]
        m["kv_transfer_mean_s"] = float(transfer.mean()) if transfer.size else math.nan
        m["kv_transfer_p99_s"] = (float(np.percentile(transfer, 99)) if transfer.size
                                  else math.nan)

        # Throughput of finished requests over the measurement window.
        input_tokens = float(req["prompt_tokens"].to_numpy()[finished].sum())
        output_tokens = float(req["generated_tokens"].to_numpy()[finished].sum())
        total_tokens = input_tokens + output_tokens
        devices = info.num_devices
        m["request_throughput_per_s"] = _ratio(num_finished, duration_s)
        m["input_tokens_per_s"] = _ratio(input_tokens, duration_s)
        m["output_tokens_per_s"] = _ratio(output_tokens, duration_s)
        m["total_tokens_per_s"] = _ratio(total_tokens, duration_s)
        m["output_tokens_per_s_per_device"] = _ratio(output_tokens, duration_s * devices)
        m["total_tokens_per_s_per_device"] = _ratio(total_tokens, duration_s * devices)

        good = finished.copy()
        # A request's own TTFT target (its class's) wins over the scenario's.
        own = req["ttft_slo_s"].to_numpy(dtype=np.float64)
        default = math.nan if info.slo_ttft_s is None else info.slo_ttft_s
        target = np.where(np.isnan(own), default, own)
        good &= np.isnan(target) | (ttft <= target)
        if info.slo_tpot_s is not None:
            good &= np.isnan(tpot) | (tpot <= info.slo_tpot_s)
        num_good = int(good.sum())
        m["goodput_requests_per_s"] = _ratio(num_good, duration_s)
        m["slo_attainment_frac"] = _ratio(num_good, num_requests - num_in_flight)

        m.update(self._utilisation(duration_s))
        m.update(self._decoding())
        m["energy_per_output_token_j"] = _ratio(m["energy_j"], output_tokens)
        price = info.per_replica("accelerator.price_per_hour_usd").astype(np.float64)
        paid = info.per_replica("devices_per_replica") * info.provisioned_s
        cost_usd = float(price @ paid) / 3600.0
        m["cost_usd"] = cost_usd
        m["num_devices_mean"] = devices
        m["cost_per_million_output_tokens_usd"] = _ratio(cost_usd * 1e6, output_tokens)
        m["cost_per_million_total_tokens_usd"] = _ratio(cost_usd * 1e6, total_tokens)
        return pd.Series(m, dtype=np.float64, name="value").rename_axis("metric")

    def _itl_stats(self) -> tuple[float, np.ndarray]:
        """Mean and weighted percentiles of inter-token latency (see ``summary``)."""
        durations = self.iterations["decode_gap_s"].to_numpy(dtype=np.float64)
        decode_seqs = self.iterations["num_decode_continuing"].to_numpy(dtype=np.int64)
        stalls = np.asarray(self.itl_extra_s, dtype=np.float64)
        values = np.concatenate([durations, stalls])
        weights = np.concatenate([decode_seqs, np.ones(stalls.size, dtype=np.int64)])
        total_weight = float(weights.sum())
        mean = _ratio(float(durations @ decode_seqs.astype(np.float64)) + float(stalls.sum()),
                      total_weight)
        return mean, weighted_percentiles(values, weights, PERCENTILES)

    def _decoding(self) -> dict[str, float]:
        """Tokens kept per decode step and the acceptance of proposals (speculative and
        lookahead decoding; one token per step and NaN otherwise), and the memory the
        deployment's knobs leave for weights and KV."""
        it, info = self.iterations, self.info
        kept = _column(it, "num_accepted_tokens", 0.0)
        proposed = _column(it, "num_proposed_tokens", 0.0)
        seqs = it["num_decode_seqs"].to_numpy(dtype=np.float64)
        multi = proposed > 0
        steps = float(seqs[multi].sum())
        return {
            "tokens_per_step_mean": _ratio(float(kept[multi].sum()), steps) if multi.any()
            else 1.0,
            "acceptance_rate_frac": _ratio(float(kept[multi].sum()) - steps,
                                           float(proposed[multi].sum())),
            "weight_gib_per_device": info.weight_bytes_per_device / 2**30,
            "kv_capacity_tokens": float(info.kv_capacity_blocks * info.block_size_tokens),
        }

    def _utilisation(self, duration_s: float) -> dict[str, float]:
        info, it = self.info, self.iterations
        replicas = it["replica"].to_numpy(dtype=np.int64)
        # Per iteration row: the figures of its replica's group.
        compute = np.array([g.accelerator.peak_flops_per_s(g.compute_dtype)
                            for g in info.all_groups for _ in range(g.num_replicas)])
        peak_bytes = info.per_replica("accelerator.hbm_bytes_per_s").astype(np.float64)
        idle_w = info.per_replica("accelerator.idle_w").astype(np.float64)
        tdp_w = info.per_replica("accelerator.tdp_w").astype(np.float64)
        stages = info.per_replica("num_stages").astype(np.float64)
        devices = info.per_replica("devices_per_replica").astype(np.float64)
        per_stage = devices / stages  # devices one iteration's stage runs on
        capacity = info.per_replica("kv_capacity_blocks").astype(np.float64) / stages
        dur = it["duration_s"].to_numpy(dtype=np.float64)
        wait = _column(it, "pipeline_wait_s", 0.0)
        busy = dur - wait - _column(it, "pipeline_transfer_s", 0.0)
        flops = it["flops"].to_numpy(dtype=np.float64)
        hbm = it["hbm_bytes"].to_numpy(dtype=np.float64)
        kv = it["kv_blocks_used"].to_numpy(dtype=np.float64)
        kv_tokens = it["kv_tokens"].to_numpy(dtype=np.float64)
        w = per_stage[replicas]  # device weight of each row
        row_flops, row_bytes = compute[replicas], peak_bytes[replicas]

        with np.errstate(divide="ignore", invalid="ignore"):
            load = np.maximum(flops / (busy * row_flops), hbm / (busy * row_bytes))
        load = np.clip(np.nan_to_num(load, nan=0.0, posinf=1.0), 0.0, 1.0)
        row_idle, row_tdp = idle_w[replicas], tdp_w[replicas]
        busy_energy_j = float(((row_idle + (row_tdp - row_idle) * load) * busy * w).sum())
        busy_device_s = np.bincount(replicas, weights=busy * w, minlength=info.num_replicas)
        idle_device_s = np.clip(devices * info.provisioned_s - busy_device_s, 0.0, None)
        energy_j = busy_energy_j + float(idle_w @ idle_device_s)
        busy_s = float(busy.sum())
        window = stages * np.minimum(info.provisioned_s, duration_s)
        row_capacity = capacity[replicas]
        kv_frac = kv / row_capacity if kv.size else kv
        return {
            "mfu_frac": _ratio(float(flops @ w), float((busy * w) @ row_flops)),
            "mbu_frac": _ratio(float(hbm @ w), float((busy * w) @ row_bytes)),
            "busy_frac": _ratio(busy_s, float(window.sum())),
            "kv_utilization_mean_frac": _ratio(float(kv @ dur), float(row_capacity @ dur)),
            "kv_utilization_max_frac": float(kv_frac.max()) if kv.size else math.nan,
            # Allocated but unused: the share of the blocks in use (time-weighted) that
            # holds no token (last-block slack, reservations not yet filled).
            "kv_fragmentation_frac": 1.0 - _ratio(float(kv_tokens @ dur),
                                                  float(kv @ dur) * info.block_size_tokens),
            "pipeline_wait_frac": _ratio(float(wait.sum()), float(dur.sum())),
            "num_preemptions": float(it["num_preempted"].sum()),
            "swap_bytes": float(it["swap_bytes"].sum()),
            "energy_j": energy_j,
        }

    # ---- exports ----

    def to_parquet(self, directory: str | Path) -> list[Path]:
        """Write ``requests.parquet`` (with derived columns) and ``iterations.parquet``."""
        out = _ensure_dir(directory)
        paths = [out / "requests.parquet", out / "iterations.parquet"]
        self.requests.to_parquet(paths[0], index=False)
        self.iterations.to_parquet(paths[1], index=False)
        return paths

    def to_csv(self, directory: str | Path) -> list[Path]:
        """Write ``requests.csv`` (with derived columns) and ``iterations.csv``; missing
        times are empty cells."""
        out = _ensure_dir(directory)
        paths = [out / "requests.csv", out / "iterations.csv"]
        self.requests.to_csv(paths[0], index=False)
        self.iterations.to_csv(paths[1], index=False)
        return paths

    def summary_to_json(self, path: str | Path) -> Path:
        """Write ``summary()`` as a JSON object ``{metric: value}``; NaN becomes null."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        values = {k: (None if math.isnan(v) else v) for k, v in self.summary().items()}
        path.write_text(json.dumps(values, indent=2) + "\n")
        return path

    def to_chrome_trace(self, path: str | Path, max_iterations: int | None = 200_000) -> Path:
        """Write the timeline as Chrome/Perfetto trace JSON (open in ui.perfetto.dev).

        One process per replica (pid = replica). Each iteration is a complete event
        ("X") named "prefill", "decode" or "prefill+decode", ts/dur in microseconds, args
        with its prefill tokens, decode sequences and KV blocks. Counter tracks ("C")
        ``kv_blocks_used`` and ``decode_seqs`` are sampled at iteration starts, a sample
        only where the value changed. An iteration that preempted emits an instant
        event ("i") named "preempt". With more than ``max_iterations`` iterations, only
        the ``max_iterations`` that start earliest are kept and a warning says how many
        were left out. Events are streamed to the file in chunks.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        it = self.iterations
        if max_iterations is not None and len(it) > max_iterations:
            keep = np.sort(np.argsort(it["start_s"].to_numpy(), kind="stable")[:max_iterations])
            log.warning(
                "chrome trace: kept the first %d of %d iterations, left out %d",
                max_iterations, len(it), len(it) - max_iterations,
            )
            it = it.iloc[keep]
        events = _trace_events(it, self.info.num_replicas)
        with path.open("w") as f:
            f.write('{"displayTimeUnit":"ms","traceEvents":[\n')
            separator = ""
            # Encode in chunks: one json.dumps call per event costs more than the encoding.
            while chunk := list(itertools.islice(events, _TRACE_CHUNK_EVENTS)):
                f.write(separator + json.dumps(chunk, separators=(",", ":"))[1:-1])
                separator = ",\n"
            f.write("\n]}\n")
        return path

    def save(self, directory: str | Path) -> list[Path]:
        """Write every export into ``directory``: frames as Parquet and CSV,
        ``summary.json`` and ``trace.json``. Returns the paths written."""
        out = _ensure_dir(directory)
        return [
            *self.to_parquet(out),
            *self.to_csv(out),
            self.summary_to_json(out / "summary.json"),
            self.to_chrome_trace(out / "trace.json"),
        ]


def _ensure_dir(directory: str | Path) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _changed(values: np.ndarray, replica: np.ndarray) -> np.ndarray:
    """True where a counter differs from the previous row of the same replica (rows are
    grouped by replica in time order), and at each replica's first row."""
    mask = np.ones(values.size, dtype=bool)
    mask[1:] = (values[1:] != values[:-1]) | (replica[1:] != replica[:-1])
    return mask


def _trace_events(it: pd.DataFrame, num_replicas: int) -> Iterator[dict[str, Any]]:
    """Chrome trace events for ``it`` (one pass; columns pulled out as lists once)."""
    it = it.sort_values(["replica", "start_s"], kind="stable")
    replica = it["replica"].to_numpy(dtype=np.int64)
    for r in sorted(set(range(num_replicas)) | set(np.unique(replica).tolist())):
        yield {"name": "process_name", "ph": "M", "pid": r, "tid": 0,
               "args": {"name": f"replica {r}"}}
    ts_us = (it["start_s"].to_numpy(dtype=np.float64) * 1e6).tolist()
    dur_us = (it["duration_s"].to_numpy(dtype=np.float64) * 1e6).tolist()
    prefill = it["num_prefill_tokens"].to_numpy(dtype=np.int64)
    decode = it["num_decode_seqs"].to_numpy(dtype=np.int64)
    kv = it["kv_blocks_used"].to_numpy(dtype=np.int64)
    preempted = it["num_preempted"].to_numpy(dtype=np.int64)
    kv_changed = _changed(kv, replica).tolist()
    decode_changed = _changed(decode, replica).tolist()
    names = np.where(prefill > 0, np.where(decode > 0, "prefill+decode", "prefill"), "decode")
    rows = zip(replica.tolist(), names.tolist(), ts_us, dur_us, prefill.tolist(),
               decode.tolist(), kv.tolist(), preempted.tolist(), kv_changed, decode_changed,
               strict=True)
    for pid, name, ts, dur, n_prefill, n_decode, n_kv, n_preempted, kv_new, dec_new in rows:
        yield {"name": name, "ph": "X", "pid": pid, "tid": 0, "ts": ts, "dur": dur,
               "args": {"prefill_tokens": n_prefill, "decode_seqs": n_decode,
                        "kv_blocks_used": n_kv}}
        if kv_new:
            yield {"name": "kv_blocks_used", "ph": "C", "pid": pid, "ts": ts,
                   "args": {"blocks": n_kv}}
        if dec_new:
            yield {"name": "decode_seqs", "ph": "C", "pid": pid, "ts": ts,
                   "args": {"seqs": n_decode}}
        if n_preempted:
            yield {"name": "preempt", "ph": "i", "s": "p", "pid": pid, "tid": 0, "ts": ts,
                   "args": {"num_preempted": n_preempted}}
