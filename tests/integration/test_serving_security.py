"""The forecast API's hardening, against the real Serve app (Ray, Serve's HTTP proxy, a tiny model).

- the platform's Serve, started the way ``tickcast up`` starts it, requires the local token;
- POST bodies must be declared JSON (415);
- error bodies say what was wrong, never the lake's URL, endpoint or an exception's text,
  which go to the replica's log under the request id the body names;
- request body bytes in flight per replica are bounded: concurrent large uploads past the
  bound get 503 with Retry-After instead of being buffered.

The platform test runs first, before this module starts its own Ray, so the two clusters
never compete for the two cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from conftest import free_port

from serving.tiny_models import build_tiny_model
from tickcast.api_token import TOKEN_FILE
from tickcast.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SMALL_BOLT = {"d_model": 32, "d_ff": 64, "num_layers": 1, "num_heads": 2, "d_kv": 16}
JSON = {"Content-Type": "application/json"}
#: The bound of the bounded app: two ~240 kB bodies fit, a third does not.
MAX_BODY = 300_000
MAX_INFLIGHT = 600_000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("bolt-tiny", tmp_path_factory.mktemp("model") / "bolt", context_length=128, **SMALL_BOLT)


def test_platform_serve_requires_its_local_token(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve started by the platform's own code (Platform.give_api_token + AppService.start, as in
    ``tickcast up``) answers 401 without the token from the state folder, 200 with it; /healthz
    and /metrics stay open. The token is in no log."""
    from tickcast.platform import Platform

    port = free_port()
    env = {
        "TICKCAST_INFRA__STATE_DIR": str(tmp_path / "state"),
        "TICKCAST_LAKE__URL": f"file://{tmp_path / 'lake'}",
        "TICKCAST_SERVING__PORT": str(port),
        "TICKCAST_SERVING__URL": f"http://127.0.0.1:{port}",
        "TICKCAST_SERVING__MODEL": str(tiny),
        "TICKCAST_SERVING__NUM_CPUS": "0.5",
        "TICKCAST_SERVING__TORCH_THREADS": "1",
    }
    for key in [k for k in os.environ if k.startswith("TICKCAST_SERVING__") or k == "RAY_ADDRESS"]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    platform = Platform(load_settings())
    platform.give_api_token()
    serve = platform.apps["serve"]
    token_file = tmp_path / "state" / TOKEN_FILE
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    try:
        serve.start()
        url = f"http://127.0.0.1:{port}"
        body = {"series": [[1.0, 2.0, 3.0] * 10], "horizon": 2}
        denied = httpx.post(f"{url}/v1/forecast", json=body, timeout=60)
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
        wrong = {"Authorization": "Bearer " + "x" * len(token)}
        assert httpx.post(f"{url}/v1/forecast", json=body, headers=wrong, timeout=60).status_code == 401
        assert httpx.get(f"{url}/v1/models", timeout=60).status_code == 401
        right = {"Authorization": f"Bearer {token}"}
        ok = httpx.post(f"{url}/v1/forecast", json=body, headers=right, timeout=60)
        assert ok.status_code == 200, ok.text
        assert httpx.get(f"{url}/v1/models", headers=right, timeout=60).status_code == 200
        # probes and scrapers carry no token
        assert httpx.get(f"{url}/healthz", timeout=60).status_code == 200
        assert httpx.get(f"{url}/metrics", timeout=60).status_code == 200
        # a second start of the platform reuses the token
        again = Platform(load_settings())
        again.give_api_token()
        assert again.apps["serve"].api_token == token
    finally:
        serve.stop()
    logs = [p for p in (tmp_path / "state").rglob("*") if p.is_file() and p.name != TOKEN_FILE]
    assert logs and not [p for p in logs if token in p.read_text(errors="replace")]


# -- the hardened app --------------------------------------------------------------------------
@dataclass
class Hardened:
    url: str  # bounded in-flight bytes; its lake is on MinIO with wrong keys
    odd_url: str  # its lake's bars table has a foreign schema
    settings: Settings


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory, infra: Any, tiny: Path) -> Iterator[Hardened]:
    import ray
    from deltalake import write_deltalake
    from ray import serve

    from serving.app import make_app
    from tickcast.lake import Lake

    root = tmp_path_factory.mktemp("security")
    serving = {
        "model": str(tiny),
        "torch_threads": 1,
        "num_cpus": 0.5,
        "max_body_bytes": MAX_BODY,
        "max_inflight_bytes": MAX_INFLIGHT,
        "max_series_length": 4096,
    }
    # A lake on the test MinIO whose keys MinIO refuses: every read is a store error.
    bad_keys = {
        **infra.settings.lake.model_dump(),
        "url": "s3://tickcast-security-test/lake",
        "s3_secret_access_key": "wrong-secret-key",
    }
    settings = load_settings(lake=bad_keys, infra={"cache_dir": str(root / "cache")}, serving=serving)
    # A file lake whose bars table was written by something else: reading it fails inside delta-rs.
    odd = load_settings(lake={"url": f"file://{root / 'odd-lake'}"}, serving=serving)
    write_deltalake(Lake(odd.lake).table_uri("bars"), pa.table({"ticker": ["AAPL"], "x": [1]}))
    port = free_port()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024 * 1024,
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run_many(
            [
                serve.RunTarget(make_app(settings), name="bounded", route_prefix="/"),
                serve.RunTarget(make_app(odd), name="odd", route_prefix="/odd"),
            ]
        )
        url = f"http://127.0.0.1:{port}"
        yield Hardened(url, f"{url}/odd", settings)
    finally:
        serve.shutdown()
        ray.shutdown()


def _ray_logs_mentioning(needle: str, timeout_s: float = 20.0) -> list[Path]:
    """Ray's session log files (replica logs, worker stdout/stderr) that contain ``needle``."""
    import ray

    logs_dir = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    deadline = time.monotonic() + timeout_s
    while True:  # log lines reach the files asynchronously
        found = [p for p in logs_dir.rglob("*") if p.is_file() and needle in p.read_text(errors="replace")]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_post_without_json_content_type_is_415(hardened: Hardened) -> None:
    body = json.dumps({"series": [[1.0, 2.0, 3.0]], "horizon": 2}).encode()
    for headers in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}):
        for path in ("/v1/forecast", "/v1/forecast/ticker"):
            response = httpx.post(f"{hardened.url}{path}", content=body, headers=headers, timeout=60)
            assert response.status_code == 415, (path, headers, response.text)
            assert "Content-Type: application/json" in response.json()["detail"]
    declared = {"Content-Type": "application/json; charset=utf-8"}
    assert httpx.post(f"{hardened.url}/v1/forecast", content=body, headers=declared, timeout=60).status_code == 200


def test_store_errors_name_no_internals_and_are_logged_by_request_id(hardened: Hardened) -> None:
    lake = hardened.settings.lake
    internals = ["tickcast-security-test", "s3://", str(lake.s3_endpoint_url), "127.0.0.1", "Access", "Signature"]
    rid = f"sec-{uuid.uuid4().hex}"
    response = httpx.post(
        f"{hardened.url}/v1/forecast/ticker",
        json={"ticker": "AAPL", "horizon": 2},
        headers={"X-Request-ID": rid},
        timeout=120,
    )
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["request_id"] == rid and "retry" in body["detail"]
    assert not [word for word in internals if word in response.text], response.text
    # the cause, with the lake's URL, is in the replica's log under that id
    logged = _ray_logs_mentioning(rid)
    assert logged and any("tickcast-security-test" in p.read_text(errors="replace") for p in logged)
    # the dashboard's client shows the request id an operator looks for, and nothing internal
    from dashboard.serve_api import ServeUnavailable, forecast_ticker

    client = hardened.settings.model_copy(
        update={"serving": hardened.settings.serving.model_copy(update={"url": hardened.url})}
    )
    with pytest.raises(ServeUnavailable) as err:
        forecast_ticker(client, "AAPL", "minute", 2)
    assert "HTTP 503" in err.value.message and "(request id " in err.value.message
    assert "tickcast-security-test" not in err.value.message


def test_unexpected_errors_are_a_json_500_without_the_exception_text(hardened: Hardened) -> None:
    response = httpx.post(f"{hardened.odd_url}/v1/forecast/ticker", json={"ticker": "AAPL"}, timeout=120)
    assert response.status_code == 500, response.text
    body = response.json()  # JSON, not the framework's plain-text page
    rid = body["request_id"]
    assert rid and response.headers["x-request-id"] == rid and "request_id" in body["detail"]
    for internal in ("partition", "KeyError", "schema", "odd-lake", "Traceback"):
        assert internal not in response.text
    assert _ray_logs_mentioning(rid)


def test_a_request_id_that_is_not_an_id_is_replaced(hardened: Hardened) -> None:
    """A client's X-Request-ID goes into logs only when it looks like an id (no forged log lines)."""
    forged = "x\r\n[ERROR] forged log line"
    response = httpx.post(
        f"{hardened.url}/v1/forecast",
        content=b"not json",
        headers={**JSON, "X-Request-ID": forged.replace("\r\n", " ")},
        timeout=60,
    )
    assert response.status_code == 422
    assert response.json()["request_id"] != forged.replace("\r\n", " ")
    assert len(response.json()["request_id"]) == 32


def _inflight(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("tickcast_serving_inflight_bytes "):
            return float(line.split()[1])
    raise AssertionError("no tickcast_serving_inflight_bytes metric")


def test_request_bytes_in_flight_are_bounded_per_replica(hardened: Hardened) -> None:
    """Two uploads that declare ~240 kB and then stall hold their bytes; a third is turned away
    at once with 503 + Retry-After (not buffered), and succeeds once the first two finished."""
    series = [[round(1.0 + i * 0.001, 3)] * 850 for i in range(40)]  # ~240 kB of JSON
    body = json.dumps({"series": series, "horizon": 2}).encode()
    assert 2 * len(body) <= MAX_INFLIGHT < 3 * len(body) and len(body) <= MAX_BODY
    url = hardened.url

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, httpx.Response, float, float]:
        release = asyncio.Event()

        async def stalled() -> AsyncIterator[bytes]:
            yield body[:1000]
            await release.wait()
            yield body[1000:]

        headers = {**JSON, "Content-Length": str(len(body))}
        async with httpx.AsyncClient(timeout=120) as client:
            slow = [
                asyncio.create_task(client.post(f"{url}/v1/forecast", content=stalled(), headers=headers))
                for _ in range(2)
            ]
            deadline = time.monotonic() + 60
            while (held := await asyncio.to_thread(_inflight, url)) < 2 * len(body):
                assert time.monotonic() < deadline, f"the stalled uploads hold {held} bytes"
                await asyncio.sleep(0.2)
            started = time.monotonic()
            rejected = await client.post(f"{url}/v1/forecast", content=body, headers=JSON)
            took = time.monotonic() - started
            release.set()
            finished = list(await asyncio.gather(*slow))
            after = await asyncio.to_thread(_inflight, url)
            accepted = await client.post(f"{url}/v1/forecast", content=body, headers=JSON)
            return finished, rejected, accepted, took, after

    finished, rejected, accepted, took, after = asyncio.run(scenario())
    assert rejected.status_code == 503, rejected.text
    assert rejected.headers["retry-after"] == "1" and "TICKCAST_SERVING__MAX_INFLIGHT_BYTES" in rejected.text
    assert took < 10, f"the over-bound request waited {took:.1f} s instead of being turned away"
    assert [r.status_code for r in finished] == [200, 200], [r.text[:200] for r in finished]
    assert after == 0
    assert accepted.status_code == 200, accepted.text
