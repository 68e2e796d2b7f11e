"""Request validation: every client mistake becomes a clear 4xx ApiError."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from serving.models import ModelInfo
from serving.validation import (
    ApiError,
    Defaults,
    ForecastRequest,
    TickerForecastRequest,
    check_auth,
    check_end,
    check_json_content_type,
    forecast_job,
    parse_body,
    ticker_query,
)

INFO = ModelInfo(
    id="tiny",
    version="1",
    kind="bolt",
    source="local",
    location="/x",
    context_length=2048,
    max_horizon=64,
    quantiles=(0.1, 0.5, 0.9),
    supports_covariates=False,
    bundled=False,
    label="test",
    parameters=1,
    device="cpu",
    dtype="float32",
)
DEFAULTS = Defaults(
    horizon=8,
    quantile_levels=(0.1, 0.5, 0.9),
    context_length=512,
    target="close",
    max_series_length=100,
    max_series_per_request=4,
)


def job(body: dict[str, Any] | bytes) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return forecast_job(parse_body(ForecastRequest, raw), INFO, DEFAULTS)


def status_of(body: dict[str, Any] | bytes) -> int:
    with pytest.raises(ApiError) as err:
        job(body)
    assert err.value.message and 400 <= err.value.status < 500
    return err.value.status


def test_valid_request_becomes_a_job_with_defaults() -> None:
    j = job({"series": [[1, 2, 3], [4.5, 5.5]]})
    assert j.horizon == 8 and j.quantile_levels == (0.1, 0.5, 0.9)
    assert [s.dtype for s in j.series] == [np.float32, np.float32] and j.size == 2
    j = job({"series": [[1, 2, 3]], "horizon": 64, "quantile_levels": [0.05, 0.5], "model": "tiny/1", "ids": ["a"]})
    assert j.horizon == 64 and j.quantile_levels == (0.05, 0.5)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"series": []}, 422, "series"),
        ({"series": [[]]}, 422, "series[0] is empty"),
        ({"series": [[1.0] * 101]}, 422, "MAX_SERIES_LENGTH"),
        ({"series": [[1.0]] * 5}, 422, "MAX_SERIES_PER_REQUEST"),
        ({"series": [[1.0, 1e31]]}, 422, "series[0][1]"),
        ({"series": [[1.0]], "horizon": 0}, 422, "horizon 0"),
        ({"series": [[1.0]], "horizon": 65}, 422, "limit of model tiny"),
        ({"series": [[1.0]], "quantile_levels": []}, 422, "1 to 99"),
        ({"series": [[1.0]], "quantile_levels": [0.0]}, 422, "strictly between"),
        ({"series": [[1.0]], "quantile_levels": [0.5, 0.5]}, 422, "duplicates"),
        ({"series": [[1.0]], "model": "other"}, 404, "unknown model"),
        ({"series": [[1.0]], "ids": ["a", "b"]}, 422, "ids"),
        ({"series": [["x"]]}, 422, "series.0.0"),
        ({"series": [[1.0]], "colour": "red"}, 422, "colour"),
        ({"series": [[1.0, 2.0]], "past_covariates": [{"v": [1.0]}]}, 422, "has 1 values"),
        ({"series": [[1.0], [2.0]], "past_covariates": [{"v": [1.0]}]}, 422, "one per series"),
        ({"series": [[1.0], [2.0]], "past_covariates": [{"v": [1.0]}, {"w": [2.0]}]}, 422, "expected ['v']"),
        ({"series": [[1.0]], "past_covariates": [{}]}, 422, "empty object"),
        ({"series": [[1.0]], "future_covariates": [{"v": [1.0]}]}, 422, "needs past_covariates"),
        (
            {"series": [[1.0]], "horizon": 2, "past_covariates": [{"v": [1.0]}], "future_covariates": [{"v": [1.0]}]},
            422,
            "horizon=2",
        ),
        (
            {"series": [[1.0]], "past_covariates": [{"v": [1.0]}], "future_covariates": [{"w": [1.0] * 8}]},
            422,
            "lacks",
        ),
    ],
)
def test_bad_requests_are_4xx_with_a_reason(body: dict[str, Any], status: int, needle: str) -> None:
    with pytest.raises(ApiError) as err:
        job(body)
    assert err.value.status == status
    assert needle in json.dumps(err.value.body()), err.value.body()


@pytest.mark.parametrize("raw", [b"", b"{", b"[1, 2]", b'{"series": [[1, NaN]]}', b'{"series": [[Infinity]]}', b"\xff"])
def test_malformed_or_non_finite_bodies_are_422(raw: bytes) -> None:
    assert status_of(raw) == 422


def test_covariates_come_back_as_float32_arrays() -> None:
    j = job(
        {
            "series": [[1.0, 2.0, 3.0]],
            "horizon": 2,
            "past_covariates": [{"volume": [10, 20, 30]}],
            "future_covariates": [{"volume": [40, 50]}],
        }
    )
    assert j.past_covariates is not None and j.future_covariates is not None
    assert j.past_covariates[0]["volume"].tolist() == [10.0, 20.0, 30.0]
    assert j.group_key(INFO.quantiles) != job({"series": [[1.0, 2.0, 3.0]], "horizon": 2}).group_key(INFO.quantiles)


def test_bearer_token_auth() -> None:
    check_auth(None, None)  # no token configured: open
    check_auth("s3cret", "Bearer s3cret")
    check_auth("s3cret", "bearer s3cret")
    for header in (None, "", "Bearer wrong", "Basic s3cret", "s3cret"):
        with pytest.raises(ApiError) as err:
            check_auth("s3cret", header)
        assert err.value.status == 401 and err.value.headers["WWW-Authenticate"] == "Bearer"
        assert "s3cret" not in err.value.message


def test_ticker_query_defaults_and_errors() -> None:
    q = ticker_query(TickerForecastRequest(ticker="brk.b"), INFO, DEFAULTS)
    # the default context (512) is capped by the longest accepted series (100)
    assert (q.ticker, q.interval, q.horizon, q.context_length, q.target) == ("BRK.B", "minute", 8, 100, "close")
    bad: list[tuple[dict[str, Any], str]] = [
        ({"ticker": "not a ticker"}, "plausible symbol"),
        ({"ticker": "AAPL", "context_length": 0}, "context_length"),
        ({"ticker": "AAPL", "context_length": 101}, "context_length"),
        ({"ticker": "AAPL", "horizon": 99}, "horizon"),
        ({"ticker": "AAPL", "covariates": ["close"]}, "target"),
        ({"ticker": "AAPL", "end": "2024-01-02T10:00:00"}, "UTC offset"),
    ]
    for body, needle in bad:
        with pytest.raises(ApiError) as err:
            ticker_query(parse_body(TickerForecastRequest, json.dumps(body).encode()), INFO, DEFAULTS)
        assert err.value.status == 422 and needle in err.value.message
    with pytest.raises(ApiError) as err:
        parse_body(TickerForecastRequest, b'{"ticker": "AAPL", "interval": "week"}')
    assert err.value.status == 422


@pytest.mark.parametrize(
    "end",
    [
        "9999-12-31T23:59:59-01:00",  # the reported 500: UTC is in year 10000
        "9999-12-31T23:59:59.999999Z",
        "9999-01-01T00:00:00+23:59",
        "0001-01-01T00:00:00+01:00",  # UTC is before year 1
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00-23:59",
        "1899-12-31T23:59:59Z",
        "2262-01-01T00:00:01Z",
        "2261-12-31T23:00:00-01:01",  # in range by its fields, 2262-01-01T00:01 in UTC
        "5000-06-15T12:00:00+05:30",
    ],
)
def test_end_outside_the_supported_range_is_422_with_the_range(end: str) -> None:
    req = parse_body(TickerForecastRequest, json.dumps({"ticker": "AAPL", "end": end}).encode())
    with pytest.raises(ApiError) as err:
        ticker_query(req, INFO, DEFAULTS)
    assert err.value.status == 422
    assert "1900-01-01T00:00:00Z..2262-01-01T00:00:00Z" in err.value.message and "omit end" in err.value.message


@pytest.mark.parametrize(
    "end",
    [
        '"2024-01-01T00:00:00+24:00"',  # offsets of a day or more do not parse
        '"2024-01-01T00:00:00+99:99"',
        '"2024-13-01T00:00:00Z"',
        '"10000-01-01T00:00:00Z"',
        "1e20",  # a unix time past year 9999
        '"not a time"',
    ],
)
def test_unparseable_ends_are_422(end: str) -> None:
    with pytest.raises(ApiError) as err:
        parse_body(TickerForecastRequest, f'{{"ticker": "AAPL", "end": {end}}}'.encode())
    assert err.value.status == 422 and "end" in err.value.message


def test_end_in_range_comes_back_in_utc() -> None:
    req = parse_body(TickerForecastRequest, b'{"ticker": "AAPL", "end": "2024-01-02T10:00:00-05:00"}')
    assert ticker_query(req, INFO, DEFAULTS).end == datetime(2024, 1, 2, 15, tzinfo=UTC)
    assert check_end(datetime(1900, 1, 1, tzinfo=UTC)) == datetime(1900, 1, 1, tzinfo=UTC)  # bounds included
    assert check_end(datetime(2262, 1, 1, tzinfo=UTC)) == datetime(2262, 1, 1, tzinfo=UTC)
    assert check_end(None) is None


def test_post_bodies_must_be_declared_json() -> None:
    for ok in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
        check_json_content_type(ok)
    for bad in (
        None,
        "",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonx",
        "multipart/form-data",
    ):
        with pytest.raises(ApiError) as err:
            check_json_content_type(bad)
        assert err.value.status == 415 and "Content-Type: application/json" in err.value.message


def test_error_bodies_carry_the_request_id() -> None:
    err = ApiError(503, "the lake could not be read")
    assert err.body("abc123") == {"detail": "the lake could not be read", "request_id": "abc123"}
    assert err.body() == {"detail": "the lake could not be read"}
