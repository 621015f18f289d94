"""servesim dashboard: ``servesim dashboard`` (or ``streamlit run dashboard/app.py``)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

PAGES = Path(__file__).parent / "views"

st.set_page_config(page_title="servesim", layout="wide")
page = st.navigation([
    st.Page(PAGES / "scenario.py", title="Scenario", default=True),
    st.Page(PAGES / "run.py", title="Run"),
    st.Page(PAGES / "explore.py", title="Explore"),
    st.Page(PAGES / "compare.py", title="Compare"),
    st.Page(PAGES / "plan.py", title="Plan"),
    st.Page(PAGES / "calibration.py", title="Calibration"),
])
page.run()
