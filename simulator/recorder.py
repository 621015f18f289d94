"""Recorder: the rows a run produces, kept in growable numpy columns.

Iteration rows arrive one at a time (mixed iterations) or as whole arrays (a
fast-forwarded decode run); both append without Python loops over the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from simulator.request import Request


class _Columns:
    """Named numpy columns with amortised O(1) append of rows and of blocks of rows."""

    def __init__(self, dtypes: dict[str, type]) -> None:
        self._size = 0
        # Zero-filled, so a block append may skip columns that are zero in it.
        self._data: dict[str, np.ndarray] = {
            name: np.zeros(1024, dtype=dt) for name, dt in dtypes.items()
        }

    def _reserve(self, extra: int) -> None:
        need = self._size + extra
        capacity = len(next(iter(self._data.values())))
        if need <= capacity:
            return
        capacity = max(need, capacity + capacity // 2)
        for name, col in self._data.items():
            grown = np.zeros(capacity, dtype=col.dtype)
            grown[: self._size] = col[: self._size]
            self._data[name] = grown

    def append(self, *values: object) -> None:
        self._reserve(1)
        i = self._size
        for col, value in zip(self._data.values(), values, strict=True):
            col[i] = value
        self._size += 1

    def extend(self, n: int, names: tuple[str, ...], values: tuple[object, ...]) -> None:
        """Append ``n`` rows giving the ``names`` columns (arrays of length n or scalars,
        broadcast); the other columns of these rows stay zero."""
        self._reserve(n)
        i = self._size
        data = self._data
        for name, value in zip(names, values, strict=True):
            data[name][i : i + n] = value
        self._size += n

    def columns(self) -> dict[str, np.ndarray]:
        """Views of the filled part of each column (no copy)."""
        return {name: col[: self._size] for name, col in self._data.items()}

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.columns())


ITERATION_COLUMNS: dict[str, type] = {
    # Compact rows: a million-request run has millions of iterations. "replica" and
    # "iteration" are not stored: each replica has its own buffer and records every
    # iteration it completes, in order, so they are the buffer and the row's position.
    "start_s": np.float64,
    "duration_s": np.float64,
    "num_prefill_tokens": np.int32,
    "num_prefill_seqs": np.int32,
    "num_decode_seqs": np.int32,
    "kv_blocks_used": np.int32,
    "num_preempted": np.int32,
    "flops": np.float64,
    "hbm_bytes": np.float64,
    # Inter-token latency of the decodes that also ran in the previous decode step: this
    # iteration's duration, plus any prefill-only iterations that paused them.
    "decode_gap_s": np.float64,
    "num_decode_continuing": np.int32,
    "swap_bytes": np.float64,  # KV copied between device and host (per device)
    # KV tokens stored in the blocks in use once the iteration is done (shared prefix
    # blocks once): kv_blocks_used x block size minus this is allocated but unused.
    "kv_tokens": np.int64,
    "kv_blocks_cached": np.int32,  # prefix-cache blocks nobody references (evictable)
    # Pipeline parallelism (0 without): seconds this micro-batch waited for stages held by
    # other micro-batches, and spent sending activations between stages. The stages were
    # busy for duration_s minus both (minus the driver's overhead).
    "pipeline_wait_s": np.float64,
    "pipeline_transfer_s": np.float64,
    # Speculative and lookahead decoding (0 otherwise, where each decode keeps 1 token):
    # tokens the decodes kept, and tokens they proposed, this iteration.
    "num_accepted_tokens": np.int64,
    "num_proposed_tokens": np.int64,
}

REQUEST_STATUSES = ["finished", "rejected", "in_flight"]


class Recorder:
    """Collects request and iteration rows for one simulation."""

    def __init__(self, num_replicas: int) -> None:
        # One buffer per replica: each is already in iteration order, so the frame is a
        # concatenation, never a sort.
        self.iterations = [_Columns(ITERATION_COLUMNS) for _ in range(num_replicas)]
        self._requests = _Columns(
            {
                "request_id": np.int64,
                "replica": np.int64,
                "arrival_s": np.float64,
                "first_scheduled_s": np.float64,
                "first_token_s": np.float64,
                "finish_s": np.float64,
                "prompt_tokens": np.int64,
                "output_tokens": np.int64,
                "generated_tokens": np.int64,
                "num_preemptions": np.int64,
                "recomputed_tokens": np.int64,
                "priority": np.int64,
                "ttft_slo_s": np.float64,
                "prefix_id": np.int64,
                "prefix_hit_tokens": np.int64,
                "kv_transfer_s": np.float64,
                "group_id": np.int64,
                "preprocess_s": np.float64,
                "status": np.int8,
            }
        )
        self._reject_reasons: dict[int, str] = {}
        self.itl_extra_s: list[float] = []  # gaps the iteration rows cannot carry
        self._scaling: list[tuple[float, int, str]] = []

    def scaling_event(self, time_s: float, replica: int, event: str) -> None:
        """An autoscaler's step for ``replica``: 'start' (provisioning begins, paid from
        now), 'ready' (serving), 'drain' (no new requests), 'stop' (released)."""
        self._scaling.append((time_s, replica, event))

    def scaling_frame(self) -> pd.DataFrame:
        """The autoscalers' events in time order (empty without autoscaling)."""
        frame = pd.DataFrame(self._scaling, columns=["time_s", "replica", "event"])
        return frame.astype({"time_s": np.float64, "replica": np.int64, "event": object})

    def request_done(
        self, request: Request, output_tokens: int, status: str, finish_s: float = math.nan
    ) -> None:
        self._requests.append(
            request.request_id,
            request.replica,
            request.arrival_s,
            request.first_scheduled_s,
            request.first_token_s,
            finish_s,
            request.prompt_tokens,
            output_tokens,
            request.num_output_tokens,
            request.num_preemptions,
            request.num_recomputed_tokens,
            request.priority,
            request.ttft_slo_s,
            request.prefix_id,
            request.prefix_hit_tokens,
            request.kv_transfer_s,
            request.group_id,
            request.preprocess_s,
            REQUEST_STATUSES.index(status),
        )

    def request_rejected(self, request: Request, output_tokens: int, reason: str) -> None:
        self._reject_reasons[request.request_id] = reason
        self.request_done(request, output_tokens, "rejected")

    def requests_frame(self) -> pd.DataFrame:
        df = self._requests.frame().sort_values("request_id", kind="stable")
        df = df.reset_index(drop=True)
        df["status"] = pd.Categorical.from_codes(
            df["status"].to_numpy(), dtype=pd.CategoricalDtype(REQUEST_STATUSES)
        )
        reasons = df["request_id"].map(self._reject_reasons)
        df["reject_reason"] = reasons.astype(object).where(reasons.notna(), None)
        return df

    def iterations_frame(self, replicas: Sequence[int]) -> pd.DataFrame:
        """Rows of ``replicas`` (in that order), each replica's in iteration order."""
        parts = [self.iterations[r].columns() for r in replicas]
        sizes = [len(p["start_s"]) for p in parts]
        replica = np.concatenate([np.full(n, r, dtype=np.int32) for r, n in zip(replicas, sizes,
                                                                                strict=True)])
        iteration = np.concatenate([np.arange(n, dtype=np.int64) for n in sizes])
        columns = {name: np.concatenate([p[name] for p in parts]) for name in ITERATION_COLUMNS}
        return pd.DataFrame({"replica": replica, "iteration": iteration, **columns})
