"""Calibration: a measured device profile, its fit, and its GEMM roofline.

The profile is validated by ``hardware.profile``; the tables are
``calibration.report``'s, and the fitted curve is the cost model's own GEMM price for
each measured shape (the formula ``calibration.fit.fit_gemm`` fitted). No torch.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from pydantic import ValidationError
from rich.table import Table

from calibration.fit import TORCH_DTYPES, gemm_seconds
from calibration.report import device_table, fit_table, roofline_notes
from hardware.profile import CalibrationProfile, load_profile
from simulator.dtypes import BYTES_PER_ELEMENT


def parse_profile(text: str | bytes, source: str) -> CalibrationProfile:
    """Validate a profile's JSON text; ValueError says what is wrong, as load_profile does."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{source} is not JSON: {exc}") from None
    try:
        return CalibrationProfile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()[:5])
        raise ValueError(f"{source} is not a valid calibration profile: {problems}") from None


def table_frame(table: Table) -> pd.DataFrame:
    """A rich table's cells as a DataFrame (every cell is the report's text)."""
    return pd.DataFrame({str(c.header): [str(v) for v in c.cells] for c in table.columns})


def gemm_frame(profile: CalibrationProfile) -> pd.DataFrame:
    """One row per measured GEMM: arithmetic intensity, achieved and fitted FLOP/s. The
    fitted time is the cost model's (``calibration.fit.gemm_seconds``) with the profile's
    efficiency."""
    rows = []
    for p in profile.points:
        dtype = TORCH_DTYPES.get(p.dtype)
        if p.op != "gemm" or dtype is None:
            continue
        m, k, n = p.shape["m"], p.shape["k"], p.shape["n"]
        eb = BYTES_PER_ELEMENT[dtype]
        flops = 2.0 * m * k * n
        fitted_s = gemm_seconds(profile.accelerator, profile.efficiency, dtype, m, k, n)
        rows.append({"dtype": p.dtype, "m": m, "k": k, "n": n,
                     "intensity_flops_per_byte": flops / ((k * n + m * k + m * n) * eb),
                     "measured_flops_per_s": flops / p.seconds,
                     "fitted_flops_per_s": flops / fitted_s,
                     "measured_s": p.seconds, "fitted_s": fitted_s})
    return pd.DataFrame(rows)


def roofline_figure(profile: CalibrationProfile, gemms: pd.DataFrame) -> go.Figure:
    """Log-log: measured points, the fitted cost per weight shape (a line over M), and
    the device's peak roofline per dtype."""
    fig = go.Figure()
    acc = profile.accelerator
    span = np.geomspace(max(gemms["intensity_flops_per_byte"].min() / 2, 1e-2),
                        gemms["intensity_flops_per_byte"].max() * 2, 200)
    for torch_dtype, rows in gemms.groupby("dtype"):
        fig.add_trace(go.Scatter(
            x=rows["intensity_flops_per_byte"], y=rows["measured_flops_per_s"],
            mode="markers", name=f"measured {torch_dtype}",
            text=[f"m={r.m} k={r.k} n={r.n}" for r in rows.itertuples()],
            hovertemplate="%{text}<br>%{x:.3g} FLOP/B, %{y:.3g} FLOP/s<extra></extra>"))
        for i, ((k, n), shape) in enumerate(rows.groupby(["k", "n"])):
            shape = shape.sort_values("m")
            fig.add_trace(go.Scatter(
                x=shape["intensity_flops_per_byte"], y=shape["fitted_flops_per_s"],
                mode="lines", line={"dash": "dot"}, legendgroup=f"fit {torch_dtype}",
                showlegend=i == 0, name=f"fitted {torch_dtype} (per k x n, over m)",
                hovertemplate=f"k={k} n={n}<br>%{{x:.3g}} FLOP/B, %{{y:.3g}} FLOP/s"
                              "<extra></extra>"))
        peak = acc.peak_flops_per_s(TORCH_DTYPES[str(torch_dtype)])
        fig.add_trace(go.Scatter(
            x=span, y=np.minimum(peak, span * acc.hbm_bytes_per_s), mode="lines",
            name=f"peak roofline {torch_dtype}", line={"color": "grey"}))
    fig.update_xaxes(type="log", title="arithmetic intensity, FLOP/byte")
    fig.update_yaxes(type="log", title="achieved, FLOP/s")
    fig.update_layout(height=500, margin={"t": 30})
    return fig


def _show(profile: CalibrationProfile, source: str) -> None:
    host = profile.host
    st.success(f"{source}: **{profile.accelerator.name}**, measured {host.created} with torch "
               f"{host.torch_version} ({host.device_type}, {host.num_threads} threads"
               f"{', quick' if host.quick else ''}); {len(profile.points)} points")
    device = device_table(profile)
    st.subheader(str(device.title))
    st.dataframe(table_frame(device), hide_index=True)
    fits = fit_table(profile)
    st.subheader("Fit per op class")
    st.caption(str(fits.title))
    st.dataframe(table_frame(fits), hide_index=True)
    st.subheader("GEMM roofline")
    gemms = gemm_frame(profile)
    if gemms.empty:
        st.info("The profile has no GEMM points to draw.")
    else:
        st.plotly_chart(roofline_figure(profile, gemms))
        with st.expander("GEMM points"):
            st.dataframe(gemms, hide_index=True)
    for note in roofline_notes(profile):
        st.markdown(f"- {note}")


def _choose() -> tuple[CalibrationProfile, str] | None:
    uploaded = st.file_uploader("Upload a calibration profile (JSON)", type=["json"],
                                key="calibration.upload")
    path = st.text_input("...or a path on the server", key="calibration.path",
                         placeholder="profiles/my-gpu.json")
    try:
        if uploaded is not None:
            return parse_profile(uploaded.getvalue(), uploaded.name), uploaded.name
        if path.strip():
            return load_profile(path.strip()), path.strip()
    except ValueError as exc:
        st.error(str(exc))
    return None


def main() -> None:
    st.title("Calibration")
    st.caption("A profile written by `servesim calibrate`: the device against its peaks, "
               "the fit per op class, and measured GEMMs against the cost model's curve.")
    chosen = _choose()
    if chosen is None:
        st.info("Upload a profile or give its path.")
        return
    _show(*chosen)


main()
