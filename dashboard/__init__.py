"""tickcast's Streamlit dashboard: live bars and forecasts, forecast quality, pipeline health
and exploratory analysis of the lake.

Run it with ``tickcast dashboard``. The pages live in :mod:`dashboard.views`; everything they
compute is in plain modules that work without Streamlit (:mod:`dashboard.data` for lake
reads, :mod:`dashboard.analysis` for the numbers, :mod:`dashboard.charts` for the figures,
:mod:`dashboard.health` for service probes), so tests and benchmarks call them directly.
"""
