"""Live: the newest bars of a ticker as candles and volume, with the latest forecast's median
and 80% band drawn after the last bar it saw (and, when the forecaster calibrates live, the
calibrated 80% band as dashed lines). The chart area refreshes on its own (a
Streamlit fragment), so the rest of the page stays put and nothing flickers."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import streamlit as st

from dashboard import analysis, charts, common, data
from dashboard.common import Selection


def forecast_since(window: data.Window, interval: str, max_bars: int) -> pd.Timestamp | None:
    """Earliest last-bar time of forecasts worth reading: those that can show on the chart."""
    if window.last is None:
        return None
    horizon_room = window.last - pd.Timedelta(common.interval_delta(interval)) * max_bars
    return max(window.start, horizon_room) if window.start is not None else horizon_room


def _anchor(bars: pd.DataFrame, forecast: pd.DataFrame, target: str) -> float | None:
    if forecast.empty or target not in bars:
        return None
    hit = bars.loc[bars["start"] == forecast["last_bar_start"].iloc[0], target]
    return float(hit.iloc[-1]) if not hit.empty else None


def live_panel(sel: Selection, range_label: str, span: timedelta | None, show_past: bool) -> None:
    """The refreshing part: metrics and the chart."""
    assert sel.ticker is not None
    settings = data.get_settings()
    max_bars = settings.dashboard.max_chart_bars
    with common.degrade("Reading bars from the lake"):
        window = data.cached_window(sel.ticker, sel.interval, span)
        if window.empty:
            st.info(f"No {sel.interval} bars of {sel.ticker} in the lake yet.", icon="ℹ️")
            return
        bars, bucket = analysis.display_bars(window.bars, sel.interval, max_bars)
        forecasts = data.cached_rows(
            "forecasts", sel.ticker, sel.interval, forecast_since(window, sel.interval, max_bars)
        )
        models = sorted(forecasts["model"].unique()) if not forecasts.empty else []
        newest_model = analysis.latest_forecast(forecasts)["model"].iloc[0] if models else None
        model = newest_model
        if len(models) > 1:
            model = st.selectbox("Model", models, index=models.index(newest_model), key="live_model")
        latest = analysis.latest_forecast(forecasts, model)
        target = str(latest["target"].iloc[0]) if not latest.empty else "close"
        history = None
        native = bucket == analysis.native_bucket(sel.interval)
        if show_past and native and not forecasts.empty:
            history = analysis.one_step_history(forecasts, model)
            history = history[history["step_start"] <= window.last]

        raw = window.bars
        last = raw.iloc[-1]
        prev = raw.iloc[-2] if len(raw) > 1 else last
        cols = st.columns(4)
        cols[0].metric(
            "Last close",
            f"{last['close']:,.4g}",
            f"{(last['close'] / prev['close'] - 1) * 100:+.2f}%" if prev["close"] else None,
            help="Change against the previous bar's close.",
        )
        if sel.interval == "day":
            cols[1].metric("Last bar", f"{last['start']:%Y-%m-%d}")
        else:
            fmt = "%H:%M:%S" if sel.interval == "second" else "%H:%M"
            cols[1].metric(f"Last bar · {last['start']:%Y-%m-%d}", f"{last['start']:{fmt}}", help="UTC.")
        cols[2].metric(
            "Bars in range", f"{len(raw):,}", help=f"{range_label}; drawn as {len(bars):,} {bucket.label} candles."
        )
        if latest.empty:
            cols[3].metric("Forecast", "none yet")
        else:
            end = latest.iloc[-1]
            band = (
                f"80%: {end['p10']:,.4g} – {end['p90']:,.4g}" if pd.notna(end["p10"]) and pd.notna(end["p90"]) else ""
            )
            lo, hi = end.get("calibrated_lower"), end.get("calibrated_upper")
            if lo is not None and hi is not None and pd.notna(lo) and pd.notna(hi):
                band = f"{band} · calibrated: {lo:,.4g} – {hi:,.4g}".lstrip(" ·")
            cols[3].metric(
                f"Median in {len(latest)} steps",
                f"{end['p50']:,.4g}",
                band or None,
                delta_color="off",
                help=f"{target} forecast by {model}, issued {latest['issued_at'].iloc[0]:%Y-%m-%d %H:%M:%S} UTC.",
            )

        title = f"{sel.ticker} · {sel.interval} bars · {range_label}"
        fig = charts.price_figure(
            bars,
            bucket,
            analysis.interval_seconds(sel.interval),
            title,
            forecast=latest if not latest.empty else None,
            anchor_close=_anchor(raw, latest, target),
            history=history,
            model_label=model,
            target=target,
            uirevision=f"{sel.ticker}|{sel.interval}|{range_label}",
        )
        st.plotly_chart(fig, key="live_chart", config={"displaylogo": False, "scrollZoom": False})
        notes = []
        if not native:
            notes.append(f"{len(raw):,} bars resampled to {bucket.label} candles for drawing.")
        if latest.empty:
            notes.append(
                "No forecast for this ticker in range yet: "
                "the forecaster (`tickcast forecaster`) writes one per new bar."
            )
        else:
            behind = int((window.last - latest["last_bar_start"].iloc[0]) / common.interval_delta(sel.interval))
            if behind > 0:
                notes.append(f"The newest forecast saw the bar {behind} bar(s) before the newest one.")
        if show_past and not native:
            notes.append("The past 1-step band is drawn only when bars are not resampled; pick a shorter range.")
        if notes:
            st.caption(" ".join(notes))


def render() -> None:
    """The Live page."""
    sel = common.selection()
    settings = data.get_settings()
    st.title(f"Live · {sel.ticker}" if sel.ticker else "Live")
    if sel.ticker is None:
        common.explain_no_bars(sel)
        return
    left, mid, right = st.columns([4, 1, 1], vertical_alignment="bottom")
    with left:
        range_label, span = common.range_picker(sel.interval, "live_range")
    auto = mid.toggle("Auto-refresh", value=True, help=f"Redraw the chart every {settings.dashboard.refresh_s:g} s.")
    show_past = right.toggle("Past band", value=False, help="Also draw the 80% band of past one-step forecasts.")
    run_every = settings.dashboard.refresh_s if auto else None
    st.fragment(run_every=run_every)(live_panel)(sel, range_label, span, show_past)


if __name__ == "__main__":
    render()
