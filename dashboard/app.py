"""The Streamlit entry script: ``streamlit run dashboard/app.py`` (or ``tickcast dashboard``).

It draws the sidebar's interval and ticker pickers, shared by every page and bound to the
URL (``/?interval=day&ticker=SPY`` links straight to a chart; the Live page is ``/``), then runs the chosen page.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard.common import sidebar_selection

VIEWS = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="tickcast", page_icon="📈", layout="wide")

page = st.navigation(
    [
        st.Page(VIEWS / "live.py", title="Live", icon=":material/candlestick_chart:", default=True),
        st.Page(
            VIEWS / "forecast.py", title="Forecast on demand", icon=":material/online_prediction:", url_path="forecast"
        ),
        st.Page(VIEWS / "quality.py", title="Quality", icon=":material/fact_check:", url_path="quality"),
        st.Page(VIEWS / "pipeline.py", title="Pipeline", icon=":material/monitor_heart:", url_path="pipeline"),
        st.Page(VIEWS / "explore.py", title="Explore", icon=":material/query_stats:", url_path="explore"),
    ]
)
sidebar_selection()
page.run()
