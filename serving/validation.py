"""Request models of the forecast API and their validation into clear 4xx errors.

The request bodies are parsed with pydantic's JSON parser straight from bytes (several
times faster than ``json.loads`` followed by model validation on large arrays), then the
numbers are checked once with numpy. Every way a client can get a request wrong ends in
an :class:`ApiError` with a 4xx status and a message that says what to change; nothing a
client sends may produce a 5xx.
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.forecaster import ForecastJob
from serving.models import ModelInfo
from tickcast.contracts import INTERVALS, TICKER_RE
from tickcast.settings import ServingSettings

MAX_QUANTILE_LEVELS = 99
MAX_COVARIATES = 16
MAX_NAME_LENGTH = 64
#: Beyond this magnitude float32 arithmetic inside the models overflows.
MAX_ABS_VALUE = 1e30
#: The range a ticker request's ``end`` may take. Bars before 1900 do not exist, and past
#: 2262 a time no longer fits the nanosecond timestamps pandas and Arrow readers use; both
#: bounds sit far from datetime's own limits (years 1 and 9999), where converting an
#: offset time to UTC overflows.
MIN_END = datetime(1900, 1, 1, tzinfo=UTC)
MAX_END = datetime(2262, 1, 1, tzinfo=UTC)
BAR_FIELDS = ("open", "high", "low", "close", "volume", "vwap", "trades")

_STRICT = ConfigDict(extra="forbid")


class ApiError(Exception):
    """An error answered to the client with ``status`` and ``{"detail": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, errors: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.errors = errors

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        """The JSON error body; ``request_id`` names the server log lines of this request."""
        out: dict[str, Any] = {"detail": self.message}
        if self.errors is not None:
            out["errors"] = self.errors
        if request_id is not None:
            out["request_id"] = request_id
        return out


# -- request and response models -------------------------------------------------------------
class ForecastRequest(BaseModel):
    """``POST /v1/forecast``: forecast series given inline."""

    model_config = _STRICT

    series: list[list[float]] = Field(
        ...,
        min_length=1,
        description="One or more series of past values, oldest first; lengths may differ. "
        "Finite numbers only; at most TICKCAST_SERVING__MAX_SERIES_PER_REQUEST series of at most "
        "TICKCAST_SERVING__MAX_SERIES_LENGTH values.",
    )
    horizon: int | None = Field(
        None, description="Steps to forecast, 1 to the model's max_horizon; default TICKCAST_FORECASTER__HORIZON."
    )
    quantile_levels: list[float] | None = Field(
        None, description="Quantile levels in (0, 1), distinct; default TICKCAST_FORECASTER__QUANTILES."
    )
    past_covariates: list[dict[str, list[float]]] | None = Field(
        None,
        description="Optional, one object per series: covariate name -> values aligned with that series "
        '(e.g. {"volume": [...]}); the same names for every series. Used by Chronos-2 models, '
        "ignored by others (see covariates_used in the response).",
    )
    future_covariates: list[dict[str, list[float]]] | None = Field(
        None,
        description="Optional, one object per series: known future values (horizon each) of some past covariates.",
    )
    model: str | None = Field(None, description="Optional: the model id (or id/version) the caller expects.")
    ids: list[str] | None = Field(None, description="Optional labels, one per series, echoed in the response.")


class TickerForecastRequest(BaseModel):
    """``POST /v1/forecast/ticker``: forecast a ticker from its bars in the lake."""

    model_config = _STRICT

    ticker: str = Field(..., description="Exchange symbol, e.g. AAPL or BRK.B.")
    interval: Literal["second", "minute", "hour", "day"] = Field("minute", description="Bar interval.")
    horizon: int | None = Field(None, description="Steps to forecast; default TICKCAST_FORECASTER__HORIZON.")
    quantile_levels: list[float] | None = Field(None, description="Quantile levels in (0, 1).")
    context_length: int | None = Field(
        None, description="Bars of context read from the lake; default TICKCAST_FORECASTER__CONTEXT_LENGTH."
    )
    target: Literal["open", "high", "low", "close", "volume", "vwap", "trades"] | None = Field(
        None, description="Bar field to forecast; default TICKCAST_FORECASTER__TARGET."
    )
    covariates: list[Literal["open", "high", "low", "close", "volume", "vwap", "trades"]] | None = Field(
        None, description='Bar fields used as past covariates (Chronos-2 models only), e.g. ["volume"].'
    )
    end: datetime | None = Field(
        None,
        description="Use only bars that start before this time (ISO-8601 with a UTC offset, between "
        "1900-01-01T00:00:00Z and 2262-01-01T00:00:00Z); default: all.",
    )
    model: str | None = Field(None, description="Optional: the model id (or id/version) the caller expects.")


class SeriesForecast(BaseModel):
    """The forecast of one series."""

    id: str | None = None
    mean: list[float]
    quantiles: dict[str, list[float]]


class ModelSummary(BaseModel):
    """The served model, as echoed in forecast responses."""

    id: str
    version: str
    kind: str
    bundled: bool


class ForecastResponse(BaseModel):
    """Answer of ``POST /v1/forecast``."""

    model: ModelSummary
    horizon: int
    quantile_levels: list[float]
    covariates_used: bool
    forecasts: list[SeriesForecast]


class TickerForecastResponse(BaseModel):
    """Answer of the ticker endpoints: a tickcast Forecast record plus context details."""

    schema_version: int
    id: str
    ticker: str
    interval: str
    model_id: str
    model_version: str
    issued_at: str
    last_bar_start: str
    bar_event_time: str | None = None
    horizon: int
    target: str
    mean: list[float]
    quantiles: dict[str, list[float]]
    context_used: int
    covariates_used: bool
    bundled: bool


class ModelsResponse(BaseModel):
    """Answer of ``GET /v1/models``."""

    models: list[dict[str, Any]]


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: what was wrong and how to fix it, never server internals.

    ``request_id`` (also the ``X-Request-ID`` header) names the server's log lines of the
    request, where the causes of 5xx answers are recorded.
    """

    detail: str
    errors: list[dict[str, Any]] | None = None
    request_id: str | None = None


# -- parsing and checks ----------------------------------------------------------------------
@dataclass(frozen=True)
class Defaults:
    """Server-side defaults and limits the validators apply."""

    horizon: int
    quantile_levels: tuple[float, ...]
    context_length: int
    target: str
    max_series_length: int
    max_series_per_request: int

    @classmethod
    def from_settings(cls, serving: ServingSettings, forecaster: Any) -> Defaults:
        """Take limits from the serving settings and defaults from the forecaster settings."""
        return cls(
            horizon=forecaster.horizon,
            quantile_levels=tuple(forecaster.quantiles),
            context_length=forecaster.context_length,
            target=forecaster.target,
            max_series_length=serving.max_series_length,
            max_series_per_request=serving.max_series_per_request,
        )


def _pydantic_error(exc: ValidationError) -> ApiError:
    errors = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False)[:20]:
        errors.append({"loc": [str(p) for p in err["loc"]], "msg": err["msg"], "type": err["type"]})
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"]) or "body"
    return ApiError(422, f"invalid request: {where}: {first['msg']}", errors=errors)


def parse_body(model: type[BaseModel], body: bytes) -> Any:
    """Parse and type-check a JSON body; 422 on malformed JSON or wrong types."""
    if not body.strip():
        raise ApiError(422, "invalid request: the body is empty; send a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _pydantic_error(exc) from None


def check_json_content_type(content_type: str | None) -> None:
    """415 unless the body is declared as ``application/json`` (parameters such as charset allowed)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        got = repr(content_type[:60]) if content_type else "no Content-Type"
        raise ApiError(
            415,
            f"unsupported body type ({got}): send the JSON body with the header 'Content-Type: application/json'",
        )


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def check_end(end: datetime | None) -> datetime | None:
    """``end`` in UTC; 422 without an offset or outside ``MIN_END..MAX_END``.

    Converting an offset time near datetime's limits to UTC overflows (9999-12-31T23:59:59-01:00
    is in year 10000), so the range is checked on the fields first, with a day of margin.
    """
    if end is None:
        return None
    if end.tzinfo is None or end.utcoffset() is None:
        raise ApiError(422, "end needs a UTC offset, e.g. 2024-01-02T15:30:00Z")
    out_of_range = ApiError(
        422,
        f"end {end.isoformat()[:40]} is outside {_iso(MIN_END)}..{_iso(MAX_END)}: "
        "send a time in that range, or omit end to use the latest bars",
    )
    if not (MIN_END.year - 1 <= end.year <= MAX_END.year + 1):
        raise out_of_range
    utc = end.astimezone(UTC)  # cannot overflow: years 1899..2263 are far from datetime's limits
    if not (MIN_END <= utc <= MAX_END):
        raise out_of_range
    return utc


def check_auth(token: str | None, authorization: str | None) -> None:
    """401 unless ``Authorization: Bearer <token>`` matches (when a token is configured)."""
    if not token:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(
            401,
            "missing or wrong bearer token: send 'Authorization: Bearer <token>' (TICKCAST_SERVING__AUTH_TOKEN)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def check_model(requested: str | None, info: ModelInfo) -> None:
    """404 when the caller names a model other than the one served."""
    if requested is None:
        return
    if requested not in (info.id, f"{info.id}/{info.version}", "default"):
        raise ApiError(
            404,
            f"unknown model {requested[:100]!r}: this endpoint serves {info.id}/{info.version} "
            "(see GET /v1/models); omit 'model' to use it",
        )


def check_horizon(horizon: int | None, info: ModelInfo, defaults: Defaults) -> int:
    """The horizon to use; 422 outside ``1..info.max_horizon``."""
    value = defaults.horizon if horizon is None else horizon
    if value < 1 or value > info.max_horizon:
        raise ApiError(
            422,
            f"horizon {value} is outside 1..{info.max_horizon}, the limit of model {info.id} ({info.kind})",
        )
    return int(value)


def check_levels(levels: list[float] | None, defaults: Defaults) -> tuple[float, ...]:
    """The quantile levels to use; 422 unless 1..99 distinct values strictly inside (0, 1)."""
    if levels is None:
        return defaults.quantile_levels
    if not levels or len(levels) > MAX_QUANTILE_LEVELS:
        raise ApiError(422, f"quantile_levels needs 1 to {MAX_QUANTILE_LEVELS} levels, got {len(levels)}")
    for q in levels:
        if not (math.isfinite(q) and 0.0 < q < 1.0):
            raise ApiError(422, f"quantile level {q} is not strictly between 0 and 1")
    if len(set(levels)) != len(levels):
        raise ApiError(422, "quantile_levels has duplicates")
    return tuple(float(q) for q in levels)


def _finite_array(values: list[float], what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ApiError(422, f"{what} must be a flat list of numbers")
    bad = ~np.isfinite(arr) | (np.abs(arr) > MAX_ABS_VALUE)
    if bad.any():
        i = int(np.argmax(bad))
        raise ApiError(
            422, f"{what}[{i}] is {arr[i]!r}: values must be finite numbers with magnitude below {MAX_ABS_VALUE:g}"
        )
    return arr.astype(np.float32)


def check_series(series: list[list[float]], defaults: Defaults) -> list[np.ndarray]:
    """Series as float32 arrays; 422 for empty, too many, too long or non-finite series."""
    if not series:
        raise ApiError(422, "series is empty: send at least one series")
    if len(series) > defaults.max_series_per_request:
        raise ApiError(
            422,
            f"{len(series)} series in one request; the limit is {defaults.max_series_per_request} "
            "(TICKCAST_SERVING__MAX_SERIES_PER_REQUEST): split the request",
        )
    out = []
    for i, values in enumerate(series):
        if not values:
            raise ApiError(422, f"series[{i}] is empty: each series needs at least one value")
        if len(values) > defaults.max_series_length:
            raise ApiError(
                422,
                f"series[{i}] has {len(values)} values; the limit is {defaults.max_series_length} "
                "(TICKCAST_SERVING__MAX_SERIES_LENGTH): send only the most recent values",
            )
        out.append(_finite_array(values, f"series[{i}]"))
    return out


def _check_names(names: set[str], what: str) -> None:
    if not names:
        raise ApiError(422, f"{what} has an empty object: name at least one covariate or omit {what}")
    if len(names) > MAX_COVARIATES:
        raise ApiError(422, f"{what} names {len(names)} covariates; the limit is {MAX_COVARIATES}")
    for name in names:
        if not name or len(name) > MAX_NAME_LENGTH:
            raise ApiError(422, f"{what}: covariate names must be 1 to {MAX_NAME_LENGTH} characters")


def check_covariates(
    past: list[dict[str, list[float]]] | None,
    future: list[dict[str, list[float]]] | None,
    series: list[np.ndarray],
    horizon: int,
) -> tuple[list[dict[str, np.ndarray]] | None, list[dict[str, np.ndarray]] | None]:
    """Covariates as float32 arrays; 422 when their count, names or lengths do not line up."""
    if future is not None and past is None:
        raise ApiError(422, "future_covariates needs past_covariates with the same names")
    if past is None:
        return None, None
    if len(past) != len(series):
        raise ApiError(422, f"past_covariates has {len(past)} entries for {len(series)} series: send one per series")
    names = set(past[0])
    _check_names(names, "past_covariates")
    past_out = []
    for i, cov in enumerate(past):
        if set(cov) != names:
            raise ApiError(422, f"past_covariates[{i}] names {sorted(cov)}, expected {sorted(names)} as in entry 0")
        item = {}
        for name, values in cov.items():
            if len(values) != len(series[i]):
                raise ApiError(
                    422,
                    f"past_covariates[{i}][{name!r}] has {len(values)} values, series[{i}] has {len(series[i])}",
                )
            item[name] = _finite_array(values, f"past_covariates[{i}][{name!r}]")
        past_out.append(item)
    if future is None:
        return past_out, None
    if len(future) != len(series):
        raise ApiError(422, f"future_covariates has {len(future)} entries for {len(series)} series")
    future_names = set(future[0])
    _check_names(future_names, "future_covariates")
    if not future_names <= names:
        raise ApiError(422, f"future_covariates names {sorted(future_names - names)} that past_covariates lacks")
    future_out = []
    for i, cov in enumerate(future):
        if set(cov) != future_names:
            raise ApiError(422, f"future_covariates[{i}] names {sorted(cov)}, expected {sorted(future_names)}")
        item = {}
        for name, values in cov.items():
            if len(values) != horizon:
                raise ApiError(
                    422, f"future_covariates[{i}][{name!r}] has {len(values)} values; send horizon={horizon}"
                )
            item[name] = _finite_array(values, f"future_covariates[{i}][{name!r}]")
        future_out.append(item)
    return past_out, future_out


def check_ids(ids: list[str] | None, n_series: int) -> list[str] | None:
    """Optional per-series labels; 422 when their count differs from the series'."""
    if ids is None:
        return None
    if len(ids) != n_series:
        raise ApiError(422, f"ids has {len(ids)} entries for {n_series} series: send one per series or none")
    if any(len(i) > 200 for i in ids):
        raise ApiError(422, "ids entries must be at most 200 characters")
    return ids


def forecast_job(req: ForecastRequest, info: ModelInfo, defaults: Defaults) -> ForecastJob:
    """Validate an inline forecast request into a :class:`ForecastJob`."""
    check_model(req.model, info)
    horizon = check_horizon(req.horizon, info, defaults)
    levels = check_levels(req.quantile_levels, defaults)
    series = check_series(req.series, defaults)
    check_ids(req.ids, len(series))
    past, future = check_covariates(req.past_covariates, req.future_covariates, series, horizon)
    return ForecastJob(
        series=series, horizon=horizon, quantile_levels=levels, past_covariates=past, future_covariates=future
    )


@dataclass(frozen=True)
class TickerQuery:
    """A validated ticker forecast request."""

    ticker: str
    interval: str
    horizon: int
    quantile_levels: tuple[float, ...]
    context_length: int
    target: str
    covariates: tuple[str, ...]
    end: datetime | None


def ticker_query(req: TickerForecastRequest, info: ModelInfo, defaults: Defaults) -> TickerQuery:
    """Validate a ticker forecast request."""
    check_model(req.model, info)
    ticker = req.ticker.strip().upper()
    if not TICKER_RE.match(ticker):
        raise ApiError(422, f"ticker {req.ticker[:40]!r} is not a plausible symbol (e.g. AAPL, BRK.B)")
    if req.interval not in INTERVALS:
        raise ApiError(422, f"interval must be one of {', '.join(INTERVALS)}")
    default_context = min(defaults.context_length, defaults.max_series_length)
    context = default_context if req.context_length is None else req.context_length
    if context < 1 or context > defaults.max_series_length:
        raise ApiError(422, f"context_length {context} is outside 1..{defaults.max_series_length}")
    target = req.target or defaults.target
    if target not in BAR_FIELDS:
        raise ApiError(422, f"target {target!r} is not a bar field ({', '.join(BAR_FIELDS)})")
    covariates = tuple(dict.fromkeys(req.covariates or ()))
    if target in covariates:
        raise ApiError(422, f"{target!r} is the target; it cannot also be a covariate")
    end = check_end(req.end)
    return TickerQuery(
        ticker=ticker,
        interval=req.interval,
        horizon=check_horizon(req.horizon, info, defaults),
        quantile_levels=check_levels(req.quantile_levels, defaults),
        context_length=context,
        target=target,
        covariates=covariates,
        end=end,
    )
