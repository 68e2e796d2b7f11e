"""Forecast on demand: pick a ticker, horizon and model; Serve forecasts it from the lake's bars
(``POST /v1/forecast/ticker``), and the page charts the result and offers it as CSV."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import analysis, charts, common, data, health, serve_api
from dashboard.common import Selection

RESULT_KEY = "on_demand_result"
LEVELS = (0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95)
CONTEXT_BARS_SHOWN = 200
# Enough time to hold CONTEXT_BARS_SHOWN bars of each interval, nights and weekends included.
CONTEXT_SPAN = {
    "second": timedelta(hours=1),
    "minute": timedelta(days=5),
    "hour": timedelta(days=92),
    "day": timedelta(days=366),
}


@st.cache_data(ttl=10.0, show_spinner=False)
def cached_models(serve_url: str, timeout_s: float) -> tuple[list[dict[str, Any]], str | None]:
    """Serve's ``GET /v1/models``, cached briefly."""
    return health.serve_models(data.get_settings(), timeout_s)


def model_key(model: dict[str, Any]) -> str:
    """``id/version`` of a model from ``/v1/models``."""
    return f"{model.get('id')}/{model.get('version')}"


def show_result(sel: Selection, result: dict[str, Any], models: dict[str, dict[str, Any]]) -> None:
    """Chart, table and CSV download of a forecast response."""
    payload = result["payload"]
    table = serve_api.forecast_table(payload)
    ticker, interval = payload["ticker"], payload["interval"]
    model = models.get(f"{payload.get('model_id')}/{payload.get('model_version')}", {})
    cols = st.columns(4)
    cols[0].metric("Model", f"{payload.get('model_id')}/{payload.get('model_version')}")
    cols[1].metric("Context used", f"{payload.get('context_used', '–')} bars")
    cols[2].metric("Last bar seen (UTC)", f"{pd.Timestamp(payload['last_bar_start']):%Y-%m-%d %H:%M}")
    cols[3].metric("Horizon", f"{payload['horizon']} steps")
    if payload.get("bundled"):
        label = model.get("label") or "tickcast's bundled model, trained on synthetic series (not an Amazon checkpoint)"
        st.caption(f"Served by the bundled model: {label}")
    with common.degrade("Reading the context bars from the lake"):
        window = data.cached_window(ticker, interval, CONTEXT_SPAN[interval])
        context = window.bars[window.bars["start"] <= table["last_bar_start"].iloc[0]].tail(CONTEXT_BARS_SHOWN)
        bars, bucket = analysis.display_bars(context, interval, CONTEXT_BARS_SHOWN)
        anchor = context.loc[context["start"] == table["last_bar_start"].iloc[0], payload.get("target", "close")]
        fig = charts.price_figure(
            bars,
            bucket,
            analysis.interval_seconds(interval),
            f"{ticker} · {interval} · on-demand forecast of {payload.get('target', 'close')}",
            forecast=table,
            anchor_close=float(anchor.iloc[-1]) if not anchor.empty else None,
            model_label=table["model"].iloc[0],
            target=str(payload.get("target", "close")),
            height=520,
        )
        st.plotly_chart(fig, key="on_demand_chart", config={"displaylogo": False})
    shown = table.drop(columns=["last_bar_start"])
    st.dataframe(shown, hide_index=True, width="stretch")
    csv = shown.assign(step_start=shown["step_start"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(index=False)
    st.download_button(
        "Download CSV",
        csv,
        file_name=f"{ticker}-{interval}-forecast-{payload.get('model_id')}.csv".replace("/", "_"),
        mime="text/csv",
        icon=":material/download:",
    )


def render() -> None:
    """The Forecast on demand page."""
    sel = common.selection()
    settings = data.get_settings()
    st.title("Forecast on demand")
    models, problem = cached_models(settings.serving.url, settings.dashboard.probe_timeout_s)
    if problem:
        st.warning(
            f"Serve is not reachable at `{settings.serving.url}` ({problem}). Start it with `tickcast serve` "
            "(or the whole platform with `tickcast up`), or point TICKCAST_SERVING__URL at it. "
            "The Live and Quality pages keep working from the lake.",
            icon="⚠️",
        )
        return
    if not models:
        st.warning("Serve answered but reports no model loaded yet; retry in a moment.", icon="⚠️")
        return
    if sel.ticker is None:
        common.explain_no_bars(sel)
        return
    by_key = {model_key(m): m for m in models}
    with st.form("on_demand"):
        st.markdown(f"**{sel.ticker}** · {sel.interval} bars (change them in the sidebar)")
        left, mid, right = st.columns(3)
        key = left.selectbox(
            "Model", list(by_key), format_func=lambda k: health.describe_model(by_key[k]), help="From GET /v1/models."
        )
        chosen = by_key[key]
        max_h = int(chosen.get("max_horizon") or 64)
        horizon = mid.number_input(
            "Horizon (bars)", 1, max_h, min(settings.forecaster.horizon, max_h), help=f"1 to {max_h} for this model."
        )
        max_ctx = int(chosen.get("context_length") or settings.serving.max_series_length)
        context = right.number_input(
            "Context (bars)",
            8,
            max_ctx,
            min(settings.forecaster.context_length, max_ctx),
            help="Past bars the model sees.",
        )
        defaults = [q for q in settings.forecaster.quantiles if q in LEVELS] or [0.1, 0.5, 0.9]
        levels = st.multiselect("Quantile levels", LEVELS, default=defaults, help="0.1 and 0.9 draw the 80% band.")
        submitted = st.form_submit_button("Forecast", type="primary", icon=":material/play_arrow:")
    if submitted:
        try:
            with st.spinner(f"Forecasting {sel.ticker} with {key}…"):
                payload = serve_api.forecast_ticker(
                    settings, sel.ticker, sel.interval, int(horizon), key, sorted(levels) or None, int(context)
                )
            st.session_state[RESULT_KEY] = {"payload": payload}
        except serve_api.ForecastRejected as exc:
            st.error(exc.one_line(), icon="🚫")
        except serve_api.ServeUnavailable as exc:
            st.warning(exc.one_line(), icon="⚠️")
    result = st.session_state.get(RESULT_KEY)
    if result and result["payload"].get("ticker") == sel.ticker and result["payload"].get("interval") == sel.interval:
        show_result(sel, result, by_key)
    elif not submitted:
        st.caption("Pick a model, horizon and context, then press Forecast.")


if __name__ == "__main__":
    render()
