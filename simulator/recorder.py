"""Recorder: the rows a run produces, kept in growable numpy columns.

Iteration rows arrive one at a time (mixed iterations) or as whole arrays (a
fast-forwarded decode run); both append without Python loops over the batch.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from simulator.request import Request


class _Columns:
    """Named numpy columns with amortised O(1) append of rows and of blocks of rows."""

    def __init__(self, dtypes: dict[str, type]) -> None:
        self._dtypes = dtypes
        self._size = 0
        self._data: dict[str, np.ndarray] = {
            name: np.empty(1024, dtype=dt) for name, dt in dtypes.items()
        }

    def _reserve(self, extra: int) -> None:
        need = self._size + extra
        capacity = len(next(iter(self._data.values())))
        if need <= capacity:
            return
        capacity = max(need, 2 * capacity)
        for name, col in self._data.items():
            grown = np.empty(capacity, dtype=col.dtype)
            grown[: self._size] = col[: self._size]
            self._data[name] = grown

    def append(self, *values: object) -> None:
        self._reserve(1)
        i = self._size
        for col, value in zip(self._data.values(), values, strict=True):
            col[i] = value
        self._size += 1

    def extend(self, n: int, *values: object) -> None:
        """Append ``n`` rows; ``values`` in column order, arrays of length n or scalars
        (broadcast)."""
        self._reserve(n)
        i = self._size
        for col, value in zip(self._data.values(), values, strict=True):
            col[i : i + n] = value
        self._size += n

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({name: col[: self._size] for name, col in self._data.items()})


ITERATION_COLUMNS: dict[str, type] = {
    "replica": np.int64,
    "iteration": np.int64,
    "start_s": np.float64,
    "duration_s": np.float64,
    "num_prefill_tokens": np.int64,
    "num_prefill_seqs": np.int64,
    "num_decode_seqs": np.int64,
    "kv_blocks_used": np.int64,
    "num_preempted": np.int64,
    "flops": np.float64,
    "hbm_bytes": np.float64,
}

REQUEST_STATUSES = ["finished", "rejected", "in_flight"]


class Recorder:
    """Collects request and iteration rows for one simulation."""

    def __init__(self) -> None:
        self.iterations = _Columns(ITERATION_COLUMNS)
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
                "status": np.int8,
            }
        )
        self._reject_reasons: dict[int, str] = {}
        self.itl_stall_s: list[float] = []

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

    def iterations_frame(self) -> pd.DataFrame:
        df = self.iterations.frame()
        return df.sort_values(["replica", "iteration"], kind="stable").reset_index(drop=True)
