"""Quality: how good the forecasts were. Live scores over time per ticker and model (80%
coverage, WQL, MASE) from the lake's ``scores`` table, and the latest backtest report
against the baselines from ``reports/<name>/``."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import streamlit as st

from dashboard import analysis, charts, common, data
from dashboard.common import Selection

METRIC_HELP = (
    "**MASE**: summed absolute error of the median over that of the last-value forecast (below 1 beats it). "
    "**WQL**: summed quantile loss over summed absolute actuals (lower is better). "
    "**coverage_80**: share of actuals inside the model's raw 80% band (0.8 is calibrated). "
    "**coverage_calibrated**, **WQL_calibrated**: the same for the band the forecaster calibrates live "
    "from its own scores (adaptive conformal inference), over the steps that had one."
)
FORMATS = {
    "MASE": "{:.3f}",
    "WQL": "{:.5f}",
    "coverage_80": "{:.1%}",
    "coverage_calibrated": "{:.1%}",
    "WQL_calibrated": "{:.5f}",
    "calibrated_coverage": "{:.1%}",
    "calibrated_wql": "{:.5f}",
    "MAE": "{:.4g}",
    "MASE_vs_naive": "{:.3f}",
    "WQL_vs_naive": "{:.3f}",
}


def _styled(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for col, fmt in FORMATS.items():
        if col in out:
            out[col] = [fmt.format(v) if pd.notna(v) else "–" for v in out[col]]
    return out


def live_scores(sel: Selection) -> None:
    """Scores of the selected ticker over a range, per model."""
    assert sel.ticker is not None
    settings = data.get_settings()
    left, right = st.columns([3, 2], vertical_alignment="bottom")
    with left:
        range_label, span = common.range_picker(sel.interval, "quality_range")
    window = right.slider(
        "Rolling window (scored steps)",
        8,
        2048,
        min(settings.forecaster.score_window, 2048),
        step=8,
        key="quality_window",
    )
    with common.degrade("Reading scores from the lake"):
        newest_scored = data.cached_newest("scores", sel.ticker, sel.interval)
        if newest_scored is None:
            st.info(
                f"No scores for {sel.ticker} ({sel.interval}) yet. The forecaster (`tickcast forecaster`) scores each "
                "forecast step when its actual bar arrives and writes the scores to the lake.",
                icon="ℹ️",
            )
            return
        since = None if span is None else _since(newest_scored, span)
        newest = data.cached_rows("scores", sel.ticker, sel.interval, since)
        if newest.empty:
            st.info(f"No scores for {sel.ticker} in the last {range_label}.", icon="ℹ️")
            return
        summary = analysis.score_summary(newest)
        st.subheader(f"{sel.ticker}: scores over {range_label}")
        st.dataframe(_styled(summary), hide_index=True, width="stretch")
        st.caption(METRIC_HELP)
        rolling = analysis.rolling_scores(newest, window)
        st.plotly_chart(
            charts.rolling_scores_figure(rolling, window), key="quality_rolling", config={"displaylogo": False}
        )
        by_step = analysis.score_summary(newest, by=("model", "step"))
        st.plotly_chart(charts.per_step_figure(by_step), key="quality_steps", config={"displaylogo": False})


def _since(newest: pd.Timestamp, span: timedelta) -> pd.Timestamp:
    # Ranges end at the end of the newest scored day: the scores of a replay are not "now".
    newest_day = newest.tz_convert("UTC").normalize() + pd.Timedelta(days=1)
    return newest_day - pd.Timedelta(span)


def across_tickers(sel: Selection) -> None:
    """The forecaster's newest rolling aggregates across tickers, when it writes them."""
    with common.degrade("Reading the rolling aggregates"):
        agg = data.cached_aggregates(data.get_lake().url, sel.interval)
        if agg.empty:
            return
        st.subheader("Across tickers (the forecaster's latest rolling aggregates)")
        computed = agg["computed_at"].max()
        models = agg[agg["scope"] == "model"].drop(columns=["scope", "ticker"], errors="ignore")
        tickers = agg[agg["scope"] == "ticker"]
        if not models.empty:
            st.dataframe(
                _styled(models.rename(columns={"mase": "MASE", "wql": "WQL"})), hide_index=True, width="stretch"
            )
        if not tickers.empty:
            worst = tickers.sort_values("wql", ascending=False).head(20).rename(columns={"mase": "MASE", "wql": "WQL"})
            st.caption("Highest WQL per ticker (worst first):")
            st.dataframe(_styled(worst.drop(columns=["scope"])), hide_index=True, width="stretch")
        st.caption(f"Computed at {computed:%Y-%m-%d %H:%M:%S} UTC.")


def backtest(sel: Selection) -> None:
    """The newest backtest report (or a chosen one) against the baselines."""
    with common.degrade("Reading backtest reports"):
        url = data.get_lake().url
        reports = data.cached_reports(url)
        if not reports:
            st.info(
                "No backtest reports in the lake yet. A backtest (see training/evaluation.py) writes "
                "`reports/<name>/` with the summary against the naive, seasonal-naive and AutoETS baselines.",
                icon="ℹ️",
            )
            return
        names = [r.name for r in reports]
        name = st.selectbox("Report", names, index=0, key="quality_report", help="Newest first.")
        report = data.cached_report(url, name)
        meta = report.info.meta
        cols = st.columns(4)
        created = str(meta.get("created_at") or "–")
        cols[0].metric("Created", created[:10], help=f"{created[:19].replace('T', ' ')} UTC")
        cols[1].metric("Series", f"{len(meta.get('series', [])):,}" if meta.get("series") else "–")
        cols[2].metric("Windows per model", f"{meta.get('windows', '–')}")
        config = meta.get("config", {}) if isinstance(meta.get("config"), dict) else {}
        cols[3].metric("Horizon / context", f"{config.get('horizon', '–')} / {config.get('context_length', '–')}")
        if report.summary.empty:
            st.warning(f"Report {name} has no summary.json.", icon="⚠️")
            return
        summary = report.summary
        st.dataframe(_styled(summary), hide_index=True, width="stretch")
        best = summary.sort_values("WQL").iloc[0]["model"] if "WQL" in summary else None
        baselines = [m for m in summary["model"] if str(m) in charts.BASELINES]
        models = [m for m in summary["model"] if str(m) not in charts.BASELINES]
        if best is not None and models and baselines:
            verdict = "beats every baseline" if best in models else f"is beaten by the {best} baseline"
            st.caption(f"On WQL, the best model {verdict}. " + METRIC_HELP)
        if isinstance(meta.get("models"), dict) and meta["models"]:
            st.caption("Models: " + ", ".join(f"`{k}` ({v})" for k, v in meta["models"].items()))
        st.plotly_chart(charts.summary_figure(summary), key="backtest_summary", config={"displaylogo": False})
        if not report.per_step.empty:
            st.plotly_chart(
                charts.per_step_figure(report.per_step), key="backtest_steps", config={"displaylogo": False}
            )
        if "example_forecast.png" in report.images:
            with st.expander("Example forecast of the report"):
                st.image(data.cached_report_image(url, name, "example_forecast.png"))


def render() -> None:
    """The Quality page."""
    sel = common.selection()
    st.title("Forecast quality")
    live_tab, backtest_tab = st.tabs(["Live scores", "Backtest"])
    with live_tab:
        if sel.ticker is None:
            common.explain_no_bars(sel)
        else:
            live_scores(sel)
            across_tickers(sel)
    with backtest_tab:
        backtest(sel)


if __name__ == "__main__":
    render()
