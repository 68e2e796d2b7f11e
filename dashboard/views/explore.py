"""Explore: one ticker's bars over a chosen window. Distributions of prices, log returns and
volume; correlations among open, high, low, close, vwap and volume; volume spikes; and data
quality (missing bars, gaps, bars rejected to the dead-letter topic)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import analysis, charts, common, data, dlq
from dashboard.common import Selection

MAX_SPIKE_BARS = 3000  # bars drawn in the spike chart (the newest); the table lists every spike


@st.cache_data(ttl=30.0, show_spinner=False)
def cached_dlq(bootstrap: str, topic: str, max_records: int, timeout_s: float) -> dlq.DlqSample:
    """The newest DLQ records, cached: a down broker costs one timeout per half minute, not per rerun."""
    return dlq.read_recent(data.get_settings().kafka, topic, max_records, timeout_s)


def distributions(sel: Selection, bars: pd.DataFrame) -> None:
    """Histograms and summary statistics of close, log returns and volume."""
    within_day = st.toggle(
        "Intraday returns only",
        value=sel.interval != "day",
        disabled=sel.interval == "day",
        help="Leave out each day's first return, which spans the night.",
    )
    returns = analysis.log_returns(bars, sel.interval, within_day=within_day)
    left, mid, right = st.columns(3)
    left.plotly_chart(charts.histogram_figure(bars["close"], "Close", "price"), key="explore_close")
    mid.plotly_chart(charts.histogram_figure(returns, "Log returns", "log return", normal=True), key="explore_returns")
    right.plotly_chart(charts.histogram_figure(bars["volume"], "Volume", "volume", log_y=True), key="explore_volume")
    stats = pd.DataFrame(
        {
            "close": bars["close"].describe(),
            "log return": returns.describe(),
            "volume": bars["volume"].describe(),
        }
    ).T
    stats["skew"] = [bars["close"].skew(), returns.skew(), bars["volume"].skew()]
    stats["excess kurtosis"] = [bars["close"].kurt(), returns.kurt(), bars["volume"].kurt()]
    st.dataframe(stats, width="stretch")
    if len(returns) > 1:
        st.caption(
            f"Return deviation per bar: {returns.std():.3%}; excess kurtosis {returns.kurt():.1f} "
            "(0 for a normal distribution: higher means fatter tails)."
        )


def correlations(bars: pd.DataFrame) -> None:
    """A correlation heatmap of levels or of bar-to-bar log changes."""
    mode = st.radio(
        "Correlate",
        ["log changes", "levels"],
        horizontal=True,
        help="Price levels of one ticker are nearly collinear; bar-to-bar changes show more.",
    )
    corr = analysis.correlations(bars, changes=mode == "log changes")
    st.plotly_chart(charts.correlation_figure(corr, f"Pearson correlation of {mode}"), key="explore_corr")


def spikes(sel: Selection, bars: pd.DataFrame) -> None:
    """Volume spikes: robust z-score against the rolling median."""
    left, right = st.columns(2)
    window = left.slider("Rolling window (bars)", 5, 200, 20, key="spike_window")
    threshold = right.slider("Spike threshold (robust z)", 2.0, 10.0, 4.0, step=0.5, key="spike_threshold")
    found = analysis.volume_spikes(bars, window, threshold)
    hits = found[found["spike"].fillna(False)]
    st.metric(
        "Spikes",
        f"{len(hits):,}",
        help=f"Bars whose volume is more than {threshold:g} robust deviations "
        f"above the median of the {window} bars before.",
    )
    shown = found.tail(MAX_SPIKE_BARS)
    fmt = charts.time_format(analysis.interval_seconds(sel.interval), sel.interval == "day")
    st.plotly_chart(charts.volume_spikes_figure(shown, fmt, threshold), key="explore_spikes")
    if len(found) > MAX_SPIKE_BARS:
        st.caption(f"The chart shows the newest {MAX_SPIKE_BARS:,} bars; the table lists every spike in the window.")
    if not hits.empty:
        table = hits.sort_values("zscore", ascending=False).head(500)
        st.dataframe(
            table[["start", "close", "volume", "rolling_median", "zscore"]].round({"zscore": 1}),
            hide_index=True,
            width="stretch",
        )


def quality(sel: Selection, bars: pd.DataFrame) -> None:
    """Missing bars, gaps, duplicates and the DLQ's rejects."""
    settings = data.get_settings()
    report = analysis.data_quality(bars, sel.interval)
    cols = st.columns(6)
    cols[0].metric("Bars", f"{report.bars:,}")
    cols[1].metric("Expected", f"{report.expected:,}")
    cols[2].metric("Missing", f"{report.missing:,}")
    cols[3].metric("Complete", f"{report.completeness:.1%}")
    cols[4].metric("Duplicates", f"{report.duplicates:,}")
    cols[5].metric("Invalid rows", f"{report.invalid:,}", help="Prices out of order or negative volume.")
    st.caption(report.note + f" Zero-volume bars: {report.zero_volume:,}.")
    if not report.gaps.empty:
        gaps = report.gaps.sort_values("missing_bars", ascending=False).head(500)
        st.markdown(f"**Gaps** ({len(report.gaps):,}, largest first)")
        st.dataframe(gaps, hide_index=True, width="stretch")
    if report.missing_days:
        st.markdown(f"**Weekdays without bars** ({len(report.missing_days)})")
        st.write(", ".join(report.missing_days[:200]) + (" …" if len(report.missing_days) > 200 else ""))

    st.subheader("Rejected to the dead-letter topic")
    topic = settings.kafka.topic_dlq
    sample = cached_dlq(
        settings.kafka.bootstrap_servers, topic, settings.dashboard.dlq_max_records, settings.dashboard.probe_timeout_s
    )
    if sample.error and sample.records.empty:
        st.warning(
            f"Could not read `{topic}`: {sample.error}. Start Kafka with `tickcast infra up` "
            "(or point TICKCAST_KAFKA__BOOTSTRAP_SERVERS at it) to see rejected bars.",
            icon="⚠️",
        )
        return
    if not sample.topic_exists:
        st.info(f"The topic `{topic}` does not exist yet: nothing has been rejected.", icon="ℹ️")
        return
    records = sample.records
    mine = records[records["ticker"] == sel.ticker]
    left, mid, right = st.columns(3)
    left.metric(f"{sel.ticker} in the sample", f"{len(mine):,}")
    mid.metric("All tickers in the sample", f"{len(records):,}")
    right.metric("Records in the topic", format(sample.total_in_topic or 0, ","))
    st.caption(f"The newest {settings.dashboard.dlq_max_records:,} records of `{topic}` at most; refreshed every 30 s.")
    if sample.error:
        st.caption(sample.error)
    if not records.empty:
        flagged = records.assign(this=records["ticker"] == sel.ticker).groupby("reason")
        reasons = pd.DataFrame({"records": flagged.size(), str(sel.ticker): flagged["this"].sum()})
        st.dataframe(reasons.sort_values("records", ascending=False), width="stretch")
    if not mine.empty:
        st.dataframe(mine.sort_values("time", ascending=False).head(200), hide_index=True, width="stretch")


def render() -> None:
    """The Explore page."""
    sel = common.selection()
    st.title(f"Explore · {sel.ticker}" if sel.ticker else "Explore")
    if sel.ticker is None:
        common.explain_no_bars(sel)
        return
    range_label, span = common.range_picker(sel.interval, "explore_range", label="Window")
    with common.degrade("Reading bars from the lake"):
        window = data.cached_window(sel.ticker, sel.interval, span)
        bars = window.bars
        if bars.empty:
            st.info(f"No {sel.interval} bars of {sel.ticker} in the lake yet.", icon="ℹ️")
            return
        first, last = bars["start"].iloc[0], bars["start"].iloc[-1]
        st.caption(f"{len(bars):,} bars from {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC ({range_label}).")
        if len(bars) < 3 or not np.isfinite(bars["close"]).all():
            st.info("Too few bars in this window for statistics; pick a longer one.", icon="ℹ️")
            return
        tabs = st.tabs(["Distributions", "Correlations", "Volume spikes", "Data quality"])
        with tabs[0]:
            distributions(sel, bars)
        with tabs[1]:
            correlations(bars)
        with tabs[2]:
            spikes(sel, bars)
        with tabs[3]:
            quality(sel, bars)


if __name__ == "__main__":
    render()
