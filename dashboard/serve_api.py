"""The forecast page's client of the Serve HTTP API (``POST /v1/forecast/ticker``).

Failures become :class:`ServeUnavailable` (nothing answered, or 5xx) or
:class:`ForecastRejected` (a 4xx: the request must change), each with the API's own
message, so the page can show them without a traceback.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from dashboard.health import auth_headers
from tickcast.contracts import from_iso
from tickcast.errors import TickcastError
from tickcast.settings import Settings

FORECAST_TIMEOUT_S = 60.0  # a first request on a CPU replica may pay for warm-up


class ServeUnavailable(TickcastError):
    """Serve did not answer, or answered 5xx."""


class ForecastRejected(TickcastError):
    """Serve answered 4xx: the message says what to change."""


def forecast_ticker(
    settings: Settings,
    ticker: str,
    interval: str,
    horizon: int,
    model: str | None = None,
    quantile_levels: list[float] | None = None,
    context_length: int | None = None,
) -> dict[str, Any]:
    """Ask Serve for a forecast of ``ticker`` from its bars in the lake; returns the response body."""
    import httpx

    body: dict[str, Any] = {"ticker": ticker, "interval": interval, "horizon": int(horizon)}
    if model:
        body["model"] = model
    if quantile_levels:
        body["quantile_levels"] = [float(q) for q in quantile_levels]
    if context_length:
        body["context_length"] = int(context_length)
    url = f"{settings.serving.url.rstrip('/')}/v1/forecast/ticker"
    try:
        response = httpx.post(url, json=body, headers=auth_headers(settings), timeout=FORECAST_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise ServeUnavailable(
            f"Serve is not reachable at {settings.serving.url} ({type(exc).__name__})",
            "start it with `tickcast serve` (or `tickcast up`), or set TICKCAST_SERVING__URL",
        ) from None
    try:
        payload = response.json()
    except json.JSONDecodeError:
        payload = {"detail": response.text[:300]}
    detail = str(payload.get("detail", "")) if isinstance(payload, dict) else ""
    # Serve logs a failure's cause under its request id; the id lets an operator find it.
    rid = payload.get("request_id") if isinstance(payload, dict) else None
    if rid:
        detail += f" (request id {str(rid)[:64]})"
    if response.status_code >= 500:
        raise ServeUnavailable(f"Serve answered HTTP {response.status_code}: {detail}", "retry shortly")
    if response.status_code >= 400:
        raise ForecastRejected(f"Serve rejected the request (HTTP {response.status_code}): {detail}")
    if not isinstance(payload, dict) or "mean" not in payload:
        raise ServeUnavailable("Serve answered without a forecast", "check the Serve logs")
    return payload


def forecast_table(payload: dict[str, Any]) -> pd.DataFrame:
    """A forecast response as one row per step: ``step``, ``step_start``, ``mean``, one column
    per quantile level (``q0.1`` ...), plus ``p10``/``p50``/``p90`` when those levels are there."""
    from tickcast.contracts import INTERVALS

    horizon = int(payload["horizon"])
    last = from_iso(payload["last_bar_start"])
    delta = INTERVALS[payload["interval"]]
    df = pd.DataFrame(
        {
            "step": range(1, horizon + 1),
            "step_start": pd.to_datetime([last + delta * (i + 1) for i in range(horizon)], utc=True),
            "mean": payload["mean"],
        }
    )
    levels = sorted(payload.get("quantiles", {}), key=float)
    for level in levels:
        df[f"q{float(level):g}"] = payload["quantiles"][level]
    for name, level in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9)):
        match = [lv for lv in levels if abs(float(lv) - level) < 1e-9]
        df[name] = payload["quantiles"][match[0]] if match else float("nan")
    df["p50"] = df["p50"].fillna(df["mean"])
    df["last_bar_start"] = pd.Timestamp(last)
    df.insert(0, "ticker", payload.get("ticker"))
    df["model"] = f"{payload.get('model_id')}/{payload.get('model_version')}"
    return df
