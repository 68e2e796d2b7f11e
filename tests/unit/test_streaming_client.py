"""The Serve client: retries with back-off, the circuit breaker, error classification.

The HTTP side runs against a small stdlib server that answers with programmed status codes,
so the retry and breaker paths are exercised over real sockets without Ray.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from serving.streaming.client import (
    CircuitBreaker,
    CircuitOpen,
    ServeClient,
    ServeRejected,
    ServeUnavailable,
    build_request,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_recovers() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, reset_s=1.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow() and not breaker.available()
    assert breaker.retry_in() == pytest.approx(1.0)
    clock.now = 1.0
    assert breaker.available()
    assert breaker.allow()  # the one trial
    assert not breaker.allow() and not breaker.available()  # only one at a time
    breaker.failure()  # trial failed: pause doubles
    assert breaker.retry_in() == pytest.approx(2.0)
    for _ in range(5):
        clock.now += breaker.retry_in()
        assert breaker.allow()
        breaker.failure()
    assert breaker.retry_in() == pytest.approx(8.0)  # capped at 8x
    clock.now += 8.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    assert breaker.state == "closed"  # the count starts over


class Stub:
    """A programmable HTTP server: each request pops the next status code."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.requests: list[dict[str, Any]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                code = stub.codes.pop(0) if stub.codes else 200
                if any(666.0 in series for series in body["series"]):
                    code = 422  # a series this server refuses
                if code == 200:
                    h, levels = body["horizon"], body["quantile_levels"]
                    payload = {
                        "model": {"id": "stub", "version": "1", "kind": "bolt", "bundled": False},
                        "horizon": h,
                        "quantile_levels": levels,
                        "covariates_used": False,
                        "forecasts": [
                            {"id": i, "mean": [s[-1]] * h, "quantiles": {str(q): [s[-1]] * h for q in levels}}
                            for i, s in zip(body["ids"], body["series"], strict=True)
                        ],
                    }
                    data = json.dumps(payload).encode()
                else:
                    data = json.dumps({"detail": f"status {code}"}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub()
    yield server
    server.server.shutdown()
    server.server.server_close()


SERIES = [("AAPL", np.array([1.0, 2.0, 3.0])), ("MSFT", np.array([5.0]))]


def test_forecast_round_trip_with_auth(stub: Stub) -> None:
    client = ServeClient(stub.url, timeout_s=2, auth_token="s3cret")
    batch = client.forecast(SERIES, 2, (0.1, 0.5, 0.9))
    assert (batch.model_id, batch.model_version) == ("stub", "1")
    assert [(f.id, f.mean) for f in batch.forecasts] == [("AAPL", [3.0, 3.0]), ("MSFT", [5.0, 5.0])]
    assert stub.requests[0]["auth"] == "Bearer s3cret"
    assert stub.requests[0]["body"] == build_request(SERIES, 2, (0.1, 0.5, 0.9))
    # the body is what serving.validation.ForecastRequest accepts
    from serving.validation import ForecastRequest

    request = ForecastRequest.model_validate(stub.requests[0]["body"])
    assert request.series == [[1.0, 2.0, 3.0], [5.0]] and request.ids == ["AAPL", "MSFT"]
    client.close()


def test_transient_errors_are_retried(stub: Stub) -> None:
    client = ServeClient(stub.url, timeout_s=2, max_retries=2, backoff_s=0.01)
    stub.codes = [503, 429]
    assert len(client.forecast(SERIES, 1, (0.5,)).forecasts) == 2
    assert len(stub.requests) == 3
    assert client.breaker.state == "closed"


def test_rejections_are_not_retried_and_do_not_open_the_circuit(stub: Stub) -> None:
    client = ServeClient(stub.url, timeout_s=2, max_retries=3, breaker=CircuitBreaker(1, 10.0))
    stub.codes = [422]
    with pytest.raises(ServeRejected, match="422"):
        client.forecast(SERIES, 1, (0.5,))
    assert len(stub.requests) == 1
    assert client.breaker.state == "closed"


def test_outage_opens_the_circuit_then_fails_fast(stub: Stub) -> None:
    client = ServeClient(stub.url, timeout_s=2, max_retries=1, backoff_s=0.01, breaker=CircuitBreaker(2, 60.0))
    stub.codes = [500] * 4
    for _ in range(2):
        with pytest.raises(ServeUnavailable, match="500"):
            client.forecast(SERIES, 1, (0.5,))
    assert len(stub.requests) == 4
    with pytest.raises(CircuitOpen):
        client.forecast(SERIES, 1, (0.5,))
    assert len(stub.requests) == 4  # not even attempted


def test_unreachable_server_is_unavailable() -> None:
    client = ServeClient("http://127.0.0.1:9", timeout_s=0.5, max_retries=0)
    with pytest.raises(ServeUnavailable, match="unreachable"):
        client.forecast(SERIES, 1, (0.5,))
    assert not client.healthy()


def test_forecast_each_isolates_the_series_serve_refuses(stub: Stub) -> None:
    client = ServeClient(stub.url, timeout_s=2)
    series = [(f"T{i}", np.array([1.0, 666.0 if i in (2, 5) else float(i)])) for i in range(8)]
    batch = client.forecast_each(series, 1, (0.5,))
    assert [f is None for f in batch.forecasts] == [i in (2, 5) for i in range(8)]
    assert [f.id for f in batch.forecasts if f is not None] == ["T0", "T1", "T3", "T4", "T6", "T7"]
    assert len(stub.requests) < 16  # halving, not one request per series
    with pytest.raises(ServeRejected):
        client.forecast_each(series[2:3], 1, (0.5,))
