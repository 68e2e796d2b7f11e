"""Rolling-origin backtests of Chronos models against the baselines a forecaster asks for.

For every series the last ``n_origins`` forecast origins, ``stride`` steps apart, are cut;
at each origin every model sees at most ``context_length`` past values and forecasts
``horizon`` steps, which are then compared with what happened.

Models:

* ``naive``: the random walk. The point forecast is the last value; quantiles are the last
  value plus the empirical quantiles of the context's own ``h``-step changes (so the
  interval widens with the horizon as the data says, not as a Gaussian assumes).
* ``seasonal_naive``: the value one season ago; quantiles from the context's own errors of
  that rule at each step.
* ``auto_ets``: statsforecast's ``AutoETS`` (model selected by AICc), quantiles from its
  prediction intervals.
* any Chronos model (bundled, registered, hub id, local directory or ``s3://`` prefix); its
  point forecast is the median.

Metrics, per horizon step and overall:

* MASE: mean of ``|actual - point| / scale`` where ``scale`` is the in-sample mean absolute
  ``mase_season``-step change of the window's context;
* WQL: ``sum 2 * QL_q(actual, forecast_q) / (n_quantiles * sum |actual|)`` over windows and
  quantile levels, with ``QL_q(y, f) = max(q (y - f), (q - 1)(y - f))`` (as in the Chronos
  papers);
* coverage_80: share of actuals inside the forecast's ``[q0.1, q0.9]`` interval (0.8 is
  perfect calibration).

With many series the windows are scored in Ray tasks (one chunk of series per task);
otherwise in this process. :func:`write_report` saves the tables (CSV, JSON, Markdown) and
PNG plots into the lake under ``reports/<name>/``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from serving.runtime import DetachedSettings
    from tickcast.lake import Lake
    from tickcast.settings import Settings

log = logging.getLogger(__name__)

#: Quantile levels scored (0.5 is the point forecast; 0.1 and 0.9 bound the 80% interval).
QUANTILES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
BASELINES: tuple[str, ...] = ("naive", "seasonal_naive", "auto_ets")


@dataclass(frozen=True)
class BacktestConfig:
    """How a backtest cuts windows and scores them.

    Args:
        horizon: steps forecast at each origin.
        context_length: most past values a model sees.
        n_origins: forecast origins per series (the most recent ones).
        stride: steps between origins (default: ``horizon``, so windows do not overlap).
        season_length: season of ``seasonal_naive`` and ``auto_ets`` (5 for business days,
            the bars per session for intraday data).
        mase_season: season of the MASE scale (1: the one-step naive).
        quantiles: levels to score; must contain 0.1, 0.5 and 0.9.
        baselines: which baselines to run.
        min_context: origins with less history are skipped.
        batch_size: series per model call.
        ray_min_series: use Ray tasks from this many series on (0: never).
        ray_chunk: series per Ray task.
    """

    horizon: int = 8
    context_length: int = 512
    n_origins: int = 20
    stride: int | None = None
    season_length: int = 5
    mase_season: int = 1
    quantiles: tuple[float, ...] = QUANTILES
    baselines: tuple[str, ...] = BASELINES
    min_context: int = 32
    batch_size: int = 64
    ray_min_series: int = 64
    ray_chunk: int = 16

    def __post_init__(self) -> None:
        for level in (0.1, 0.5, 0.9):
            if not any(math.isclose(level, q) for q in self.quantiles):
                raise ValueError(f"quantiles must include {level} (point forecast and 80% interval)")
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}; use {', '.join(BASELINES)}")


@dataclass
class Window:
    """One forecast origin of one series."""

    series: str
    origin: int
    context: np.ndarray
    actual: np.ndarray


#: A batch forecaster: contexts, horizon, quantile levels -> (points (n, h), quantiles (n, q, h)).
BatchForecaster = Callable[[list[np.ndarray], int, Sequence[float]], tuple[np.ndarray, np.ndarray]]


def make_windows(series: Mapping[str, np.ndarray], config: BacktestConfig) -> list[Window]:
    """The rolling-origin windows of every series, oldest origin first."""
    stride = config.stride or config.horizon
    windows = []
    for name, values in series.items():
        y = np.asarray(values, dtype=np.float64)
        origins = [len(y) - config.horizon - k * stride for k in range(config.n_origins)]
        for origin in sorted(o for o in origins if o >= config.min_context):
            context = y[max(0, origin - config.context_length) : origin]
            windows.append(Window(name, origin, context, y[origin : origin + config.horizon]))
    return windows


# -- baselines ---------------------------------------------------------------------------
def naive_forecast(context: np.ndarray, horizon: int, quantiles: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Random walk: last value; quantiles from the context's empirical ``h``-step changes."""
    last = float(context[-1])
    point = np.full(horizon, last)
    q = np.empty((len(quantiles), horizon))
    for j in range(1, horizon + 1):
        changes = context[j:] - context[:-j] if len(context) > j else np.zeros(1)
        q[:, j - 1] = last + np.quantile(changes, quantiles)
    return point, q


def seasonal_naive_forecast(
    context: np.ndarray, horizon: int, quantiles: Sequence[float], season: int
) -> tuple[np.ndarray, np.ndarray]:
    """The value one season before each target step; quantiles from the rule's in-sample errors."""
    n = len(context)
    if season <= 1 or n < 2 * season:
        return naive_forecast(context, horizon, quantiles)
    point = np.empty(horizon)
    q = np.empty((len(quantiles), horizon))
    for j in range(1, horizon + 1):
        lag = season * math.ceil(j / season)
        point[j - 1] = context[n + j - 1 - lag]
        # the same rule applied inside the context: y[t] predicted by y[t - lag]
        errors = context[lag:] - context[:-lag] if n > lag else np.zeros(1)
        q[:, j - 1] = point[j - 1] + np.quantile(errors, quantiles)
    return point, q


def auto_ets_forecasts(
    contexts: list[np.ndarray], horizon: int, quantiles: Sequence[float], season: int
) -> tuple[np.ndarray, np.ndarray]:
    """statsforecast AutoETS per context; quantiles from its (Gaussian) prediction intervals."""
    from statsforecast.models import AutoETS

    def level_of(q: float) -> int | float:
        level = round(abs(2 * q - 1) * 100, 6)
        return int(level) if float(level).is_integer() else level

    levels: list[Any] = sorted({level_of(q) for q in quantiles if not math.isclose(q, 0.5)})
    points = np.empty((len(contexts), horizon))
    out = np.empty((len(contexts), len(quantiles), horizon))
    for i, context in enumerate(contexts):
        m = season if season > 1 and len(context) >= 3 * season else 1
        fc = AutoETS(season_length=m).forecast(y=context.astype(np.float64), h=horizon, level=levels)
        points[i] = fc["mean"]
        for k, level_q in enumerate(quantiles):
            if math.isclose(level_q, 0.5):
                out[i, k] = fc["mean"]
            else:
                key = f"{'lo' if level_q < 0.5 else 'hi'}-{level_of(level_q)}"
                out[i, k] = fc[key]
    return points, out


def chronos_forecaster(pipeline: Any, batch_size: int = 64) -> BatchForecaster:
    """A batch forecaster around a loaded Chronos pipeline (Chronos-2, Bolt or T5)."""
    import torch

    def forecast(contexts: list[np.ndarray], horizon: int, quantiles: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        q_all, points = [], []
        for start in range(0, len(contexts), batch_size):
            chunk = [torch.tensor(c, dtype=torch.float32) for c in contexts[start : start + batch_size]]
            quants, _ = pipeline.predict_quantiles(chunk, prediction_length=horizon, quantile_levels=list(quantiles))
            # Chronos-2 gives one (n_variates, h, q) tensor per series; Bolt and T5 one (batch, h, q)
            stacked = torch.stack([x[0] for x in quants]) if isinstance(quants, list) else quants
            arr = stacked.float().cpu().numpy()  # (b, h, q)
            q_all.append(np.transpose(arr, (0, 2, 1)))
            median = int(np.argmin([abs(q - 0.5) for q in quantiles]))
            points.append(arr[:, :, median])
        return np.concatenate(points), np.concatenate(q_all)

    return forecast


def baseline_forecaster(name: str, config: BacktestConfig) -> BatchForecaster:
    """The batch forecaster of a baseline by name."""
    if name == "auto_ets":
        return lambda ctx, h, qs: auto_ets_forecasts(ctx, h, qs, config.season_length)

    def run(contexts: list[np.ndarray], horizon: int, quantiles: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        pairs = [
            naive_forecast(c, horizon, quantiles)
            if name == "naive"
            else seasonal_naive_forecast(c, horizon, quantiles, config.season_length)
            for c in contexts
        ]
        return np.stack([p for p, _ in pairs]), np.stack([q for _, q in pairs])

    return run


# -- scoring -----------------------------------------------------------------------------
def quantile_losses(actual: np.ndarray, forecast_q: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """``2 * QL_q`` summed over levels: actual (n, h), forecast_q (n, q, h) -> (n, h)."""
    levels = np.asarray(quantiles)[None, :, None]
    diff = actual[:, None, :] - forecast_q
    return (2.0 * np.maximum(levels * diff, (levels - 1.0) * diff)).sum(axis=1)


def mase_scale(context: np.ndarray, season: int = 1) -> float:
    """Mean absolute ``season``-step change of the context (NaN when undefined or zero)."""
    if len(context) <= season:
        return float("nan")
    scale = float(np.mean(np.abs(context[season:] - context[:-season])))
    return scale if scale > 0 else float("nan")


def score(
    windows: list[Window], model: str, points: np.ndarray, forecast_q: np.ndarray, config: BacktestConfig
) -> pd.DataFrame:
    """One row per (window, step) with the pieces every metric is aggregated from."""
    qs = list(config.quantiles)
    lo = int(np.argmin([abs(q - 0.1) for q in qs]))
    hi = int(np.argmin([abs(q - 0.9) for q in qs]))
    actual = np.stack([w.actual for w in windows])
    qloss = quantile_losses(actual, forecast_q, qs)
    scales = np.array([mase_scale(w.context, config.mase_season) for w in windows])
    n, h = actual.shape
    return pd.DataFrame(
        {
            "model": model,
            "series": np.repeat([w.series for w in windows], h),
            "origin": np.repeat([w.origin for w in windows], h),
            "step": np.tile(np.arange(1, h + 1), n),
            "actual": actual.ravel(),
            "point": points.ravel(),
            "lo80": forecast_q[:, lo, :].ravel(),
            "hi80": forecast_q[:, hi, :].ravel(),
            "abs_error": np.abs(actual - points).ravel(),
            "scale": np.repeat(scales, h),
            "qloss": qloss.ravel(),
            "n_quantiles": len(qs),
        }
    )


def aggregate(rows: pd.DataFrame, by: Sequence[str] = ("model", "step")) -> pd.DataFrame:
    """MASE, WQL and 80% coverage of scored rows, grouped by ``by``."""
    df = rows.assign(
        scaled_error=rows["abs_error"] / rows["scale"],
        covered=(rows["actual"] >= rows["lo80"]) & (rows["actual"] <= rows["hi80"]),
        abs_actual=rows["actual"].abs(),
        qloss_norm=rows["qloss"] / rows["n_quantiles"],
    )
    grouped = df.groupby(list(by), sort=True)
    out = pd.DataFrame(
        {
            "MASE": grouped["scaled_error"].mean(),
            "WQL": grouped["qloss_norm"].sum() / grouped["abs_actual"].sum(),
            "coverage_80": grouped["covered"].mean(),
            "n": grouped.size(),
        }
    )
    return out.reset_index()


@dataclass
class BacktestResult:
    """Scored rows, the per-step table and the summary (one row per model)."""

    rows: pd.DataFrame
    per_step: pd.DataFrame
    summary: pd.DataFrame
    config: BacktestConfig
    models: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    used_ray: bool = False

    @property
    def per_series(self) -> pd.DataFrame:
        """One row per (model, series): see :func:`per_series`."""
        return per_series(self.rows)


def per_series(rows: pd.DataFrame) -> pd.DataFrame:
    """MASE, WQL and 80% coverage per model and series, plus the ratios to ``naive`` on the
    same series when it ran: a mean over series can hide one series where a model loses."""
    table = aggregate(rows, by=("model", "series"))
    if "naive" in set(table["model"]):
        base = table[table["model"] == "naive"].set_index("series")
        table["MASE_vs_naive"] = table["MASE"] / table["series"].map(base["MASE"])
        table["WQL_vs_naive"] = table["WQL"] / table["series"].map(base["WQL"])
    return table.sort_values(["series", "model"]).reset_index(drop=True)


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Overall metrics per model, plus MASE and WQL relative to ``naive`` when it ran."""
    summary = aggregate(rows, by=("model",))
    if "naive" in set(summary["model"]):
        base = summary.set_index("model").loc["naive"]
        summary["MASE_vs_naive"] = summary["MASE"] / base["MASE"]
        summary["WQL_vs_naive"] = summary["WQL"] / base["WQL"]
    return summary.sort_values("WQL").reset_index(drop=True)


# -- running -----------------------------------------------------------------------------
def evaluate_windows(
    windows: list[Window], forecasters: Mapping[str, BatchForecaster], config: BacktestConfig
) -> pd.DataFrame:
    """Run every forecaster on the windows and score them (in this process)."""
    if not windows:
        return pd.DataFrame()
    contexts = [w.context for w in windows]
    frames = []
    for name, forecaster in forecasters.items():
        started = time.perf_counter()
        points, forecast_q = forecaster(contexts, config.horizon, config.quantiles)
        log.info("%s: %d windows in %.1f s", name, len(windows), time.perf_counter() - started)
        frames.append(score(windows, name, points, forecast_q, config))
    return pd.concat(frames, ignore_index=True)


def _load(ref: str, settings: Settings | None = None) -> Any:
    """Load a model reference: with settings, any spec serving resolves (``bundled``,
    ``NAME/VERSION``, hub id, directory, ``s3://``); without, what ``from_pretrained`` takes."""
    from chronos import BaseChronosPipeline

    if settings is not None:
        from serving.models import resolve_model

        ref = resolve_model(settings, ref).location
    return BaseChronosPipeline.from_pretrained(ref, device_map="cpu")


def _chunk_task(
    series: dict[str, np.ndarray],
    models: dict[str, str],
    config_dict: dict[str, Any],
    settings: Settings | DetachedSettings | None = None,
) -> pd.DataFrame:
    """One Ray task: load the models, forecast and score a chunk of series.

    Models are resolved inside the task, so on a cluster each node fetches registry or
    ``s3://`` models itself instead of relying on a path of the driver's machine.
    """
    if settings is not None:
        from serving.runtime import attach_secrets

        settings = attach_secrets(settings)
    config = BacktestConfig(**config_dict)
    forecasters: dict[str, BatchForecaster] = {
        n: chronos_forecaster(_load(r, settings), config.batch_size) for n, r in models.items()
    }
    forecasters.update({b: baseline_forecaster(b, config) for b in config.baselines})
    return evaluate_windows(make_windows(series, config), forecasters, config)


def backtest(
    series: Mapping[str, np.ndarray],
    models: Mapping[str, Any],
    config: BacktestConfig | None = None,
    use_ray: bool | None = None,
    settings: Settings | None = None,
) -> BacktestResult:
    """Backtest models and baselines on ``series`` (name -> values).

    Args:
        series: the data, one float array per series, oldest value first.
        models: display name -> a loaded pipeline, or a reference ``from_pretrained`` accepts
            (local directory, hub id, ``s3://`` prefix).
        config: the backtest settings.
        use_ray: force Ray on or off; None decides by ``config.ray_min_series``.
        settings: when given, model references are specs resolved by serving
            (``bundled``, ``NAME/VERSION``, hub id, directory, ``s3://``).

    Returns:
        Scored rows, the per-step table and the summary.
    """
    config = config or BacktestConfig()
    started = time.perf_counter()
    refs = {name: m for name, m in models.items() if isinstance(m, str)}
    if use_ray is None:
        use_ray = bool(config.ray_min_series) and len(series) >= config.ray_min_series and len(refs) == len(models)
    if use_ray:
        if len(refs) != len(models):
            raise ValueError("with Ray, pass models as references (paths or ids), not loaded pipelines")
        rows = _backtest_on_ray(series, refs, config, settings)
    else:
        forecasters: dict[str, BatchForecaster] = {}
        for name, model in models.items():
            pipeline = _load(model, settings) if isinstance(model, str) else model
            forecasters[name] = chronos_forecaster(pipeline, config.batch_size)
        forecasters.update({b: baseline_forecaster(b, config) for b in config.baselines})
        rows = evaluate_windows(make_windows(series, config), forecasters, config)
    if rows.empty:
        raise ValueError(
            f"no backtest windows: every series is shorter than min_context + horizon "
            f"({config.min_context} + {config.horizon})"
        )
    return BacktestResult(
        rows=rows,
        per_step=aggregate(rows),
        summary=summarize(rows),
        config=config,
        models={n: (m if isinstance(m, str) else type(m).__name__) for n, m in models.items()},
        wall_s=time.perf_counter() - started,
        used_ray=use_ray,
    )


def _backtest_on_ray(
    series: Mapping[str, np.ndarray], refs: dict[str, str], config: BacktestConfig, settings: Settings | None
) -> pd.DataFrame:
    import ray

    from serving.runtime import detach_secrets, init_ray

    # joins RAY_ADDRESS, else a local cluster on loopback with token authentication
    init_ray(settings, log_to_driver=False, configure_logging=False)
    task = ray.remote(num_cpus=1)(_chunk_task)
    # task arguments are kept by Ray: the settings go without their secrets
    task_settings = detach_secrets(settings) if settings is not None else None
    names = list(series)
    chunks = [
        {n: np.asarray(series[n]) for n in names[i : i + config.ray_chunk]}
        for i in range(0, len(names), config.ray_chunk)
    ]
    config_dict = asdict(config)
    pending = [task.remote(chunk, refs, config_dict, task_settings) for chunk in chunks]
    frames = []
    from tqdm import tqdm

    with tqdm(total=len(pending), desc="backtest (ray tasks)", unit="task") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            frames.append(ray.get(done[0]))
            bar.update(1)
    return pd.concat(frames, ignore_index=True)


# -- reports -----------------------------------------------------------------------------
def _markdown_table(frame: pd.DataFrame, cols: Sequence[str]) -> str:
    """Rows of ``frame`` as a Markdown table: counts as integers, WQL to 5 places, others to 4."""
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for _, row in frame[list(cols)].iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if c == "n":
                cells.append(str(int(v)))
            elif isinstance(v, float):
                cells.append(f"{v:.4f}" if c != "WQL" else f"{v:.5f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (the form kept in the README)."""
    cols = [c for c in ("model", "MASE", "WQL", "coverage_80", "MASE_vs_naive", "WQL_vs_naive", "n") if c in summary]
    return _markdown_table(summary, cols)


def per_series_markdown(table: pd.DataFrame, model: str | None = None) -> str:
    """The per-series table (:func:`per_series`) as Markdown, for one model or for all."""
    if model is not None:
        table = table[table["model"] == model]
    names = ("series", "model", "MASE", "WQL", "coverage_80", "MASE_vs_naive", "WQL_vs_naive", "n")
    cols = [c for c in names if c in table and not (c == "model" and model is not None)]
    return _markdown_table(table, cols)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def plot_report(result: BacktestResult, series: Mapping[str, np.ndarray] | None = None) -> dict[str, bytes]:
    """PNG plots: MASE, WQL and coverage by horizon step; with ``series``, an example forecast per
    model and the last forecast of every series (``forecasts_by_series.png``); with naive, every
    series' WQL and MASE relative to it (``per_series_vs_naive.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, bytes] = {}
    per_step = result.per_step
    for metric, title in (("MASE", "MASE by horizon step"), ("WQL", "WQL by horizon step")):
        fig, ax = plt.subplots(figsize=(7, 4))
        for model, group in per_step.groupby("model"):
            ax.plot(group["step"], group[metric], marker="o", label=str(model))
        ax.set_xlabel("horizon step")
        ax.set_ylabel(metric)
        ax.set_title(title + " (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend()
        plots[f"{metric.lower()}_by_step.png"] = _png(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for model, group in per_step.groupby("model"):
        ax.plot(group["step"], group["coverage_80"], marker="o", label=str(model))
    ax.axhline(0.8, color="black", linestyle="--", linewidth=1, label="nominal 0.8")
    ax.set_ylim(0, 1)
    ax.set_xlabel("horizon step")
    ax.set_ylabel("coverage of the 80% interval")
    ax.set_title("Calibration by horizon step")
    ax.grid(alpha=0.3)
    ax.legend()
    plots["coverage_by_step.png"] = _png(fig)

    if series:
        rows = result.rows
        name = sorted(series)[0]
        last_origin = int(rows.loc[rows["series"] == name, "origin"].max())
        y = np.asarray(series[name])
        tail = min(len(y), last_origin + result.config.horizon, 4 * result.config.horizon + last_origin) - 0
        start = max(0, last_origin - 3 * result.config.horizon)
        models = list(dict.fromkeys(rows["model"]))
        fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models), 3.2), sharey=True, squeeze=False)
        for ax, model in zip(axes[0], models, strict=True):
            sel = rows[(rows["series"] == name) & (rows["origin"] == last_origin) & (rows["model"] == model)]
            steps = last_origin + sel["step"].to_numpy() - 1
            ax.plot(np.arange(start, tail), y[start:tail], color="black", linewidth=1)
            ax.fill_between(steps, sel["lo80"], sel["hi80"], alpha=0.3, label="80%")
            ax.plot(steps, sel["point"], color="tab:blue", label="forecast")
            ax.set_title(model, fontsize=9)
            ax.tick_params(labelsize=7)
        fig.suptitle(f"{name}: last origin, 80% interval")
        plots["example_forecast.png"] = _png(fig)
        plots["forecasts_by_series.png"] = _plot_forecasts_by_series(result, series)
    if "naive" in set(result.rows["model"]):
        plots["per_series_vs_naive.png"] = _plot_per_series_vs_naive(result.per_series)
    return plots


#: Most series drawn one panel each in ``forecasts_by_series.png`` (the tables have them all).
MAX_SERIES_PANELS = 24


def _plot_per_series_vs_naive(table: pd.DataFrame) -> bytes:
    """Bars of WQL and MASE relative to naive, per series and model (below 1 beats naive)."""
    import matplotlib.pyplot as plt

    others = table[table["model"] != "naive"]
    names = sorted(set(others["series"]))
    models = list(dict.fromkeys(others["model"]))
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 0.45 * len(names) * max(1, len(models))), 6.5), sharex=True)
    width = 0.8 / max(1, len(models))
    x = np.arange(len(names))
    for ax, metric in zip(axes, ("WQL_vs_naive", "MASE_vs_naive"), strict=True):
        for k, model in enumerate(models):
            sel = others[others["model"] == model].set_index("series").reindex(names)
            ax.bar(x + (k - (len(models) - 1) / 2) * width, sel[metric], width, label=str(model))
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_title("Per series, relative to naive (below 1 beats the random walk)")
    axes[0].legend(fontsize=7, ncol=min(4, len(models)))
    axes[1].set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    return _png(fig)


def _plot_forecasts_by_series(result: BacktestResult, series: Mapping[str, np.ndarray]) -> bytes:
    """One panel per series: its last origin's actuals and every model's median and 80% band."""
    import matplotlib.pyplot as plt

    rows = result.rows
    horizon = result.config.horizon
    names = sorted(set(rows["series"]))[:MAX_SERIES_PANELS]
    models = list(dict.fromkeys(rows["model"]))
    ncols = min(4, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False)
    for ax in axes.ravel()[len(names) :]:
        ax.set_visible(False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes.ravel(), names, strict=False):
        y = np.asarray(series[name])
        last_origin = int(rows.loc[rows["series"] == name, "origin"].max())
        start = max(0, last_origin - 4 * horizon)
        end = min(len(y), last_origin + horizon)
        ax.plot(np.arange(start, end), y[start:end], color="black", linewidth=1, label="actual")
        for k, model in enumerate(models):
            sel = rows[(rows["series"] == name) & (rows["origin"] == last_origin) & (rows["model"] == model)]
            steps = last_origin + sel["step"].to_numpy() - 1
            color = colors[k % len(colors)]
            ax.fill_between(steps, sel["lo80"], sel["hi80"], color=color, alpha=0.15)
            ax.plot(steps, sel["point"], color=color, linewidth=1.2, label=str(model))
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    fig.suptitle("Last origin of every series: median and 80% band per model")
    fig.tight_layout()
    return _png(fig)


def write_report(
    lake: Lake,
    name: str,
    result: BacktestResult,
    series: Mapping[str, np.ndarray] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> list[str]:
    """Save the backtest under ``reports/<name>/`` in the lake; returns the written paths.

    Files: ``summary.csv``, ``summary.json``, ``summary.md``, ``per_step.csv``,
    ``per_series.csv`` and ``per_series.md`` (every series, with its ratios to naive),
    ``windows.parquet`` (every scored row), ``report.json`` (config, models, data, timing,
    and ``meta``: for a lake backtest the bars table version read, ``table_versions``, which
    ``--as-of`` takes to reproduce it) and the PNG plots of :func:`plot_report`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    prefix = f"reports/{name}"
    written = [
        lake.write_bytes(f"{prefix}/summary.csv", result.summary.to_csv(index=False).encode()),
        lake.write_bytes(f"{prefix}/summary.json", result.summary.to_json(orient="records", indent=2).encode()),
        lake.write_bytes(f"{prefix}/summary.md", summary_markdown(result.summary).encode()),
        lake.write_bytes(f"{prefix}/per_step.csv", result.per_step.to_csv(index=False).encode()),
        lake.write_bytes(f"{prefix}/per_series.csv", result.per_series.to_csv(index=False).encode()),
        lake.write_bytes(f"{prefix}/per_series.md", per_series_markdown(result.per_series).encode()),
    ]
    windows = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(result.rows, preserve_index=False), windows, compression="zstd")
    written.append(lake.write_bytes(f"{prefix}/windows.parquet", windows.getvalue()))
    for file_name, data in plot_report(result, series).items():
        written.append(lake.write_bytes(f"{prefix}/{file_name}", data))
    report = {
        "name": name,
        "created_at": datetime.now(UTC).isoformat(),
        "config": asdict(result.config),
        "models": result.models,
        "series": sorted(series) if series else sorted(set(result.rows["series"])),
        "windows": int(result.rows.groupby("model").size().iloc[0] / result.config.horizon),
        "wall_s": round(result.wall_s, 2),
        "used_ray": result.used_ray,
        **(dict(meta) if meta else {}),
    }
    written.append(lake.write_bytes(f"{prefix}/report.json", json.dumps(report, indent=2, default=str).encode()))
    return written
