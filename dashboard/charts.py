"""Plotly figures of the dashboard.

The price chart puts bars on a category axis of zero-padded ISO labels in ascending order:
nights, weekends and holidays take no room, any interval works the same way, and forecast
steps (labelled the same way) fall into place after the last bar, or between bars when a
forecast is older than the newest bar.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.analysis import Bucket

UP = "#26a69a"
DOWN = "#ef5350"
FORECAST = "#ff8c00"
BAND = "rgba(255, 140, 0, 0.25)"
PAST_BAND = "rgba(120, 144, 156, 0.22)"
BASELINE = "#9e9e9e"
BAND_NAME = "80% band (p10–p90)"
PAST_BAND_NAME = "past 1-step 80% band"
CALIBRATED = "#6a1b9a"
#: The live-calibrated band (serving.streaming.calibration) drawn over the raw one.
CALIBRATED_BAND_NAME = "calibrated 80% band (live)"
#: Appended to a model's name for its calibrated-band scores on the Quality page.
CALIBRATED_SUFFIX = " · calibrated"
MODEL_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
BASELINES = ("naive", "seasonal_naive", "auto_ets")


def time_format(seconds: int | None, daily: bool) -> str:
    """strftime format of axis labels for bars ``seconds`` wide."""
    if daily:
        return "%Y-%m-%d"
    if seconds is not None and seconds < 60:
        return "%Y-%m-%d %H:%M:%S"
    return "%Y-%m-%d %H:%M"


def labels(times: pd.Series | Sequence[pd.Timestamp], fmt: str) -> list[str]:
    """Category labels of UTC timestamps."""
    series = pd.Series(pd.to_datetime(list(times) if not isinstance(times, pd.Series) else times, utc=True))
    return list(series.dt.strftime(fmt))


def _category_axes(fig: go.Figure, rows: int) -> None:
    for row in range(1, rows + 1):
        fig.update_xaxes(type="category", categoryorder="category ascending", row=row, col=1)


def price_figure(
    bars: pd.DataFrame,
    bucket: Bucket,
    interval_seconds: int,
    title: str,
    forecast: pd.DataFrame | None = None,
    anchor_close: float | None = None,
    history: pd.DataFrame | None = None,
    model_label: str | None = None,
    target: str = "close",
    uirevision: str | None = None,
    height: int = 600,
) -> go.Figure:
    """Candlesticks and volume, with a forecast's median and 80% band drawn after its last bar.

    Args:
        bars: display bars (``start``, OHLC, ``volume``), already resampled to ``bucket``.
        bucket: their width (for labels).
        interval_seconds: width of the raw bars (forecast steps are labelled at that resolution).
        title: chart title.
        forecast: steps of one forecast (``step_start``, ``p10``, ``p50``, ``p90``, ``last_bar_start``;
            with ``calibrated_lower``/``calibrated_upper`` the live-calibrated band is drawn too, as
            dashed lines over the raw band).
        anchor_close: the target value at the forecast's last bar; the median and band start there.
        history: step-1 forecasts over time (``step_start``, ``p10``, ``p90``): a faint past band.
        model_label: the forecasting model, for the legend.
        target: the forecast's target field; ``volume`` is drawn on the volume panel.
        uirevision: keeps zoom and legend clicks across refreshes while it stays the same.
    """
    bar_fmt = time_format(bucket.seconds, bucket.is_daily_or_coarser)
    step_fmt = time_format(interval_seconds, interval_seconds >= 86_400)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.03, row_heights=[0.76, 0.24])
    x = labels(bars["start"], bar_fmt)
    fig.add_trace(
        go.Candlestick(
            x=x,
            open=bars["open"],
            high=bars["high"],
            low=bars["low"],
            close=bars["close"],
            name=f"bars ({bucket.label})",
            increasing_line_color=UP,
            decreasing_line_color=DOWN,
        ),
        row=1,
        col=1,
    )
    colors = np.where(bars["close"].to_numpy() >= bars["open"].to_numpy(), UP, DOWN)
    fig.add_trace(
        go.Bar(x=x, y=bars["volume"], marker_color=colors, name="volume", showlegend=False, opacity=0.8), row=2, col=1
    )
    row = 2 if target == "volume" else 1
    if history is not None and not history.empty and history[["p10", "p90"]].notna().all(axis=None):
        hx = labels(history["step_start"], step_fmt)
        fig.add_trace(
            go.Scatter(x=hx, y=history["p90"], mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip"),
            row=row,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=hx,
                y=history["p10"],
                mode="lines",
                line={"width": 0},
                fill="tonexty",
                fillcolor=PAST_BAND,
                name=PAST_BAND_NAME,
                hoverinfo="skip",
            ),
            row=row,
            col=1,
        )
    if forecast is not None and not forecast.empty:
        fx = labels(forecast["step_start"], step_fmt)
        p10, p50, p90 = (forecast[c].astype(float).tolist() for c in ("p10", "p50", "p90"))
        if anchor_close is not None and np.isfinite(anchor_close):
            fx = labels([forecast["last_bar_start"].iloc[0]], step_fmt) + fx
            p10, p50, p90 = [anchor_close, *p10], [anchor_close, *p50], [anchor_close, *p90]
        if np.isfinite(p10).all() and np.isfinite(p90).all():
            fig.add_trace(
                go.Scatter(
                    x=fx, y=p90, mode="lines", line={"width": 0}, showlegend=False, name="p90", hoverinfo="skip"
                ),
                row=row,
                col=1,
            )
            fig.add_trace(
                go.Scatter(
                    x=fx,
                    y=p10,
                    mode="lines",
                    line={"width": 0},
                    fill="tonexty",
                    fillcolor=BAND,
                    name=BAND_NAME,
                    customdata=np.column_stack([p10, p90]),
                    hovertemplate="80%: %{customdata[0]:.4g} – %{customdata[1]:.4g}<extra></extra>",
                ),
                row=row,
                col=1,
            )
        if {"calibrated_lower", "calibrated_upper"} <= set(forecast.columns):
            lo = forecast["calibrated_lower"].astype(float).tolist()
            hi = forecast["calibrated_upper"].astype(float).tolist()
            if anchor_close is not None and np.isfinite(anchor_close):
                lo, hi = [anchor_close, *lo], [anchor_close, *hi]
            if np.isfinite(lo).all() and np.isfinite(hi).all():
                for k, (values, name) in enumerate(((hi, "calibrated upper"), (lo, CALIBRATED_BAND_NAME))):
                    fig.add_trace(
                        go.Scatter(
                            x=fx,
                            y=values,
                            mode="lines",
                            line={"color": CALIBRATED, "width": 1.5, "dash": "dash"},
                            name=name,
                            legendgroup="calibrated",
                            showlegend=k == 1,
                            customdata=np.column_stack([lo, hi]),
                            hovertemplate="calibrated 80%: %{customdata[0]:.4g} – %{customdata[1]:.4g}<extra></extra>",
                        ),
                        row=row,
                        col=1,
                    )
        fig.add_trace(
            go.Scatter(
                x=fx,
                y=p50,
                mode="lines+markers",
                line={"color": FORECAST, "width": 2, "dash": "dot"},
                marker={"size": 4},
                name=f"forecast median{f' · {model_label}' if model_label else ''}",
            ),
            row=row,
            col=1,
        )
    _category_axes(fig, 2)
    fig.update_xaxes(rangeslider_visible=False, nticks=8, tickangle=0)
    fig.update_yaxes(title_text="price", row=1, col=1)
    fig.update_yaxes(title_text="volume", row=2, col=1)
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"},
        height=height,
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
        legend={
            "orientation": "h",
            "yanchor": "bottom",
            "y": 1.01,
            "xanchor": "right",
            "x": 1.0,
            "traceorder": "normal",
        },
        hovermode="x unified",
        uirevision=uirevision or title,
        bargap=0.1,
    )
    return fig


def _model_color(models: Sequence[str], model: str) -> str:
    """Baselines grey; other models coloured by their rank among the non-baselines (stable across charts)."""
    if model.split("/")[0] in BASELINES:
        return BASELINE
    ranked = sorted(m for m in models if m.split("/")[0] not in BASELINES)
    return MODEL_COLORS[ranked.index(model) % len(MODEL_COLORS)]


def rolling_scores_figure(rolling: pd.DataFrame, window: int, height: int = 620) -> go.Figure:
    """Coverage, WQL and MASE over time, one line per model, with the nominal coverage and the naive MASE.

    Where scores carry the live-calibrated band, its coverage and WQL are drawn too (dashed,
    named ``<model> · calibrated``): coverage before and after calibration, side by side.
    """
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=(
            f"80% coverage (last {window} steps; raw solid, calibrated dashed; 0.8 is the target)",
            "WQL (weighted quantile loss; lower is better)",
            "MASE (vs the last-value forecast; below 1 beats it)",
        ),
    )
    models = list(dict.fromkeys(rolling["model"]))
    for model in models:
        part = rolling[rolling["model"] == model]
        color = _model_color(models, model)
        for row, col in enumerate(("coverage_80", "WQL", "MASE"), start=1):
            fig.add_trace(
                go.Scatter(
                    x=part["target_start"],
                    y=part[col],
                    mode="lines",
                    name=model,
                    legendgroup=model,
                    showlegend=row == 1,
                    line={"color": color},
                ),
                row=row,
                col=1,
            )
        for row, col in ((1, "coverage_calibrated"), (2, "WQL_calibrated")):
            if col not in part or not part[col].notna().any():
                continue
            fig.add_trace(
                go.Scatter(
                    x=part["target_start"],
                    y=part[col],
                    mode="lines",
                    name=model + CALIBRATED_SUFFIX,
                    legendgroup=model + CALIBRATED_SUFFIX,
                    showlegend=row == 1,
                    line={"color": color, "dash": "dash"},
                ),
                row=row,
                col=1,
            )
    fig.add_hline(y=0.8, line_dash="dash", line_color="black", opacity=0.5, row=1, col=1)
    fig.add_hline(y=1.0, line_dash="dash", line_color="black", opacity=0.5, row=3, col=1)
    fig.update_yaxes(range=[0, 1], row=1, col=1)
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 40, "b": 10}, hovermode="x unified")
    return fig


def per_step_figure(per_step: pd.DataFrame, metrics: Sequence[str] = ("MASE", "WQL", "coverage_80")) -> go.Figure:
    """Metrics by horizon step, one line per model (``model``, ``step`` and metric columns)."""
    metrics = [m for m in metrics if m in per_step]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[f"{m} by step" for m in metrics])
    models = list(dict.fromkeys(per_step["model"].astype(str)))
    for model in models:
        part = per_step[per_step["model"].astype(str) == model].sort_values("step")
        color = _model_color(models, model)
        for col, metric in enumerate(metrics, start=1):
            fig.add_trace(
                go.Scatter(
                    x=part["step"],
                    y=part[metric],
                    mode="lines+markers",
                    name=model,
                    legendgroup=model,
                    showlegend=col == 1,
                    line={"color": color, "dash": "dash" if model in BASELINES else "solid"},
                ),
                row=1,
                col=col,
            )
        if "coverage_80" in metrics:
            fig.add_hline(
                y=0.8, line_dash="dash", line_color="black", opacity=0.4, row=1, col=metrics.index("coverage_80") + 1
            )
    fig.update_xaxes(title_text="horizon step", dtick=1)
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def summary_figure(summary: pd.DataFrame) -> go.Figure:
    """MASE, WQL and coverage per model as bars; baselines grey, models in colour."""
    metrics = [m for m in ("MASE", "WQL", "coverage_80") if m in summary]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=metrics)
    models = [str(m) for m in summary["model"]]
    colors = [_model_color(models, m) for m in models]
    for col, metric in enumerate(metrics, start=1):
        fig.add_trace(
            go.Bar(x=models, y=summary[metric], marker_color=colors, showlegend=False, name=metric), row=1, col=col
        )
    if "coverage_80" in metrics:
        fig.add_hline(
            y=0.8, line_dash="dash", line_color="black", opacity=0.5, row=1, col=metrics.index("coverage_80") + 1
        )
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def histogram_figure(
    values: pd.Series, title: str, x_title: str, log_y: bool = False, normal: bool = False
) -> go.Figure:
    """A histogram; with ``normal`` a fitted normal density (same mean and deviation) is overlaid."""
    data = values.dropna().astype(float)
    fig = go.Figure(go.Histogram(x=data, nbinsx=80, histnorm="probability density" if normal else None, name=x_title))
    if normal and len(data) > 2 and data.std() > 0:
        mu, sigma = float(data.mean()), float(data.std())
        grid = np.linspace(float(data.min()), float(data.max()), 200)
        density = np.exp(-0.5 * ((grid - mu) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
        fig.add_trace(go.Scatter(x=grid, y=density, mode="lines", name="normal fit", line={"color": "black"}))
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title="density" if normal else "bars",
        height=320,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        showlegend=normal,
        bargap=0.02,
    )
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def correlation_figure(corr: pd.DataFrame, title: str) -> go.Figure:
    """A correlation heatmap from -1 to 1 with the coefficients written in the cells."""
    fig = go.Figure(
        go.Heatmap(
            z=corr.to_numpy(),
            x=list(corr.columns),
            y=list(corr.index),
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            reversescale=True,
            text=np.round(corr.to_numpy(), 2),
            texttemplate="%{text}",
        )
    )
    fig.update_layout(title=title, height=420, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    fig.update_yaxes(autorange="reversed")
    return fig


def volume_spikes_figure(spikes: pd.DataFrame, fmt: str, threshold: float) -> go.Figure:
    """Volume per bar with its rolling median and the spikes (robust z above ``threshold``) marked."""
    x = labels(spikes["start"], fmt)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=spikes["volume"], name="volume", marker_color="#90a4ae"))
    fig.add_trace(
        go.Scatter(x=x, y=spikes["rolling_median"], mode="lines", name="rolling median", line={"color": "black"})
    )
    hit = spikes["spike"].fillna(False).to_numpy(dtype=bool)
    fig.add_trace(
        go.Scatter(
            x=[x[i] for i in np.flatnonzero(hit)],
            y=spikes.loc[hit, "volume"],
            mode="markers",
            name=f"spike (z > {threshold:g})",
            marker={"color": DOWN, "size": 9, "symbol": "triangle-down"},
            customdata=spikes.loc[hit, "zscore"],
            hovertemplate="%{x}<br>volume %{y:.4g}<br>z %{customdata:.1f}<extra></extra>",
        )
    )
    fig.update_xaxes(type="category", categoryorder="category ascending", nticks=12)
    fig.update_layout(
        height=360,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        legend={"orientation": "h", "y": 1.08},
        bargap=0.05,
    )
    return fig


def throughput_figure(history: pd.DataFrame) -> go.Figure:
    """Rates over the time this page has been open (``time`` plus one column per series)."""
    fig = go.Figure()
    for col in history.columns:
        if col != "time":
            fig.add_trace(go.Scatter(x=history["time"], y=history[col], mode="lines+markers", name=col))
    fig.update_layout(
        height=300,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        yaxis_title="per second",
        legend={"orientation": "h", "y": 1.1},
    )
    return fig
