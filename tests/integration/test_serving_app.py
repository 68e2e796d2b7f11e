"""The Serve app for real: Ray, Serve's HTTP proxy, tiny random-weight Chronos checkpoints.

Ray starts once for this module (2 CPUs, small object store); two apps are deployed, the
open one at ``/`` and one requiring a bearer token at ``/secured``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import schemathesis
from deltalake import DeltaTable
from forecast_reference import assert_forecasts_close, reference_quantiles
from hypothesis import HealthCheck
from hypothesis import settings as hsettings

from serving.tiny_models import build_tiny_model
from tickcast.contracts import Bar
from tickcast.lake import BARS, FORECASTS, Lake, read_forecasts, tables
from tickcast.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SMALL_BOLT = {"d_model": 64, "d_ff": 256, "num_layers": 2, "num_heads": 2, "d_kv": 32}
TOKEN = "test-token-not-secret"
JSON = {"Content-Type": "application/json"}
#: Schemathesis examples per operation and generation mode. 40 keeps CI near a minute on two
#: cores; TICKCAST_TEST_FUZZ_EXAMPLES=120 runs the 1,000+ case campaign (6 operations x 2 modes).
FUZZ_EXAMPLES = int(os.environ.get("TICKCAST_TEST_FUZZ_EXAMPLES", "40"))


@dataclass
class Served:
    url: str
    secured_url: str
    settings: Settings
    bolt: Path
    chronos2: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _minute_bars(ticker: str, closes: np.ndarray, t0: datetime, gap_after: int | None = None) -> list[Bar]:
    """One minute bar per close from ``t0`` on (a day later from bar ``gap_after`` on)."""
    bars = []
    for i, c in enumerate(closes):
        gap = timedelta(days=1) if gap_after is not None and i >= gap_after else timedelta()
        start = t0 + timedelta(minutes=i) + gap
        end = start + timedelta(minutes=1)
        bars.append(Bar(ticker, "minute", start, end, c, c + 1, c - 1, c, 1000.0 + i, source="t"))
    return bars


def _write_bars(lake: Lake) -> None:
    """AAPL and MSFT: 600 minute bars each over two days (two partitions), one commit per ticker."""
    t0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
    rng = np.random.default_rng(7)
    for ticker in ("AAPL", "MSFT"):
        lake.write_bars(_minute_bars(ticker, 100 + rng.standard_normal(600).cumsum(), t0, gap_after=300))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, infra: Any) -> Iterator[Served]:
    import ray
    from ray import serve

    from serving.app import APP_NAME, make_app

    root = tmp_path_factory.mktemp("serving")
    bolt = build_tiny_model("bolt-tiny", root / "bolt", context_length=512, **SMALL_BOLT)
    chronos2 = build_tiny_model("chronos2-tiny", root / "chronos2", context_length=512, max_horizon=64)
    # the lake is a local folder; the S3 endpoint and keys of the test MinIO serve s3:// model specs
    lake_settings = infra.settings.lake.model_copy(update={"url": f"file://{root / 'lake'}"})
    settings = load_settings(
        lake=lake_settings.model_dump(),
        infra={"cache_dir": str(root / "cache")},
        serving={
            "model": str(bolt),
            "torch_threads": 1,
            "num_cpus": 0.5,
            "max_batch_size": 64,
            "batch_wait_timeout_s": 0.002,
            "max_series_length": 4096,
            "max_body_bytes": 300_000,
        },
        forecaster={"horizon": 8, "context_length": 256},
    )
    _write_bars(Lake(settings.lake))
    port = _free_port()
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
                serve.RunTarget(make_app(settings), name=APP_NAME, route_prefix="/"),
                serve.RunTarget(make_app(settings, {"auth_token": TOKEN}), name="secured", route_prefix="/secured"),
            ]
        )
        url = f"http://127.0.0.1:{port}"
        yield Served(url, f"{url}/secured", settings, bolt, chronos2)
    finally:
        serve.shutdown()
        ray.shutdown()


def _series(seed: int, lengths: list[int]) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [(100 + rng.standard_normal(n).cumsum()).round(3).tolist() for n in lengths]


def _check_against_pipeline(
    served: Served,
    path: Path,
    series: list[list[float]],
    horizon: int,
    levels: list[float],
    q: np.ndarray | None,
    m: np.ndarray | None,
    past_covariates: list[dict[str, Any]] | None = None,
) -> None:
    """Served quantiles ``q`` and mean ``m`` equal the raw pipeline's, run in this process with
    the replica's thread count (see forecast_reference for why that matters)."""
    q_ref, m_ref, limit = reference_quantiles(
        path,
        series,
        horizon,
        levels,
        threads=served.settings.serving.torch_threads,
        past_covariates=past_covariates,
    )
    if q is not None:
        assert_forecasts_close(q, q_ref, series, limit)
    if m is not None:
        assert_forecasts_close(m, m_ref, series, limit)


def _as_arrays(body: dict[str, Any], levels: list[float]) -> tuple[np.ndarray, np.ndarray]:
    q = np.array([[f["quantiles"][repr(lv)] for lv in levels] for f in body["forecasts"]]).transpose(0, 2, 1)
    m = np.array([f["mean"] for f in body["forecasts"]])
    return q, m


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_http_forecasts_equal_the_in_process_pipeline(served: Served) -> None:
    series = _series(1, [12, 150, 700])  # 700 > the model's 512 context: trimmed the same way
    levels = [0.1, 0.5, 0.9]
    response = httpx.post(
        f"{served.url}/v1/forecast",
        json={"series": series, "horizon": 12, "quantile_levels": levels, "ids": ["a", "b", "c"]},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["kind"] == "bolt" and body["model"]["bundled"] is False
    assert [f["id"] for f in body["forecasts"]] == ["a", "b", "c"] and body["horizon"] == 12
    q, m = _as_arrays(body, levels)
    _check_against_pipeline(served, served.bolt, series, 12, levels, q, m)


def test_concurrent_single_series_requests_are_batched(served: Served) -> None:
    calls_before = _metric(served.url, "tickcast_serving_batch_requests_count")
    requests_before = _metric(served.url, "tickcast_serving_batch_requests_sum")
    series = _series(2, [300] * 48)

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *(client.post(f"{served.url}/v1/forecast", json={"series": [s], "horizon": 8}) for s in series)
            )

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 48
    calls = _metric(served.url, "tickcast_serving_batch_requests_count") - calls_before
    merged = _metric(served.url, "tickcast_serving_batch_requests_sum") - requests_before
    assert merged == 48
    assert calls < 48 / 2, f"{calls} model calls for 48 concurrent requests: not batched"
    assert _metric(served.url, "tickcast_serving_batch_requests_max") > 1
    # batching does not change the numbers beyond float32 reordering (the batches differ)
    q = np.stack([_as_arrays(r.json(), [0.1, 0.5, 0.9])[0][0] for r in responses])
    _check_against_pipeline(served, served.bolt, series, 8, [0.1, 0.5, 0.9], q, None)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"series": []}', 422),
        (b'{"series": [[]]}', 422),
        (b'{"series": [[1.0, NaN, 2.0]]}', 422),
        (b'{"series": [[1.0, Infinity]]}', 422),
        (b'{"series": [[1.0]], "horizon": 65}', 422),
        (b'{"series": [[1.0]], "horizon": 0}', 422),
        (b'{"series": [[1.0]], "model": "someone-else"}', 404),
        (b'{"series": [[1.0]], "extra": 1}', 422),
        (b"not json", 422),
        (b"", 422),
        (json.dumps({"series": [[1.0] * 4097]}).encode(), 422),
        (json.dumps({"series": [[1.5] * 3000] * 40}).encode(), 413),
    ],
)
def test_bad_input_gets_4xx(served: Served, body: bytes, status: int) -> None:
    response = httpx.post(f"{served.url}/v1/forecast", content=body, headers=JSON, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["detail"] and response.json()["request_id"] == response.headers["x-request-id"]


def test_ticker_forecast_reads_context_from_the_lake(served: Served) -> None:
    response = httpx.post(
        f"{served.url}/v1/forecast/ticker",
        json={"ticker": "AAPL", "interval": "minute", "horizon": 4, "context_length": 100},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    forecast = response.json()
    lake = Lake(served.settings.lake)
    bars = lake.read_bars("AAPL", "minute")
    assert forecast["last_bar_start"] == bars["start"][-1].as_py().isoformat().replace("+00:00", "Z")
    assert forecast["context_used"] == 100 and forecast["model_id"] == "bolt" and forecast["horizon"] == 4
    closes = bars["close"].to_pylist()[-100:]
    _check_against_pipeline(served, served.bolt, [closes], 4, [0.1, 0.5, 0.9], None, np.array([forecast["mean"]]))
    got = httpx.get(f"{served.url}/v1/forecast/MSFT", params={"horizon": 3}, timeout=60)
    assert got.status_code == 200 and got.json()["ticker"] == "MSFT" and len(got.json()["mean"]) == 3
    assert httpx.get(f"{served.url}/v1/forecast/ZZZZ", timeout=30).status_code == 404
    assert httpx.get(f"{served.url}/v1/forecast/not%20a%20ticker", timeout=30).status_code == 422


def test_models_health_and_metrics(served: Served) -> None:
    models = httpx.get(f"{served.url}/v1/models", timeout=30).json()["models"]
    assert len(models) == 1 and models[0]["kind"] == "bolt" and models[0]["bundled"] is False
    assert models[0]["max_horizon"] == 64 and "random weights" in models[0]["label"]
    assert httpx.get(f"{served.url}/healthz", timeout=30).json()["ok"] is True
    text = httpx.get(f"{served.url}/metrics", timeout=30).text
    assert "tickcast_serving_requests_total" in text and "tickcast_serving_inference_seconds_bucket" in text


def test_bearer_token(served: Served) -> None:
    body = {"series": [[1.0, 2.0, 3.0]], "horizon": 2}
    assert httpx.post(f"{served.secured_url}/v1/forecast", json=body, timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(f"{served.secured_url}/v1/forecast", json=body, headers=wrong, timeout=30).status_code == 401
    right = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(f"{served.secured_url}/v1/forecast", json=body, headers=right, timeout=30).status_code == 200
    assert httpx.get(f"{served.secured_url}/v1/models", timeout=30).status_code == 401
    assert httpx.get(f"{served.secured_url}/healthz", timeout=30).status_code == 200  # probes need no token


def test_fuzzing_the_openapi_finds_no_server_error(served: Served) -> None:
    """Schemathesis cases (valid and invalid by the schema) for every operation: never a 5xx."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    def answered(status: int) -> float:
        return _metric(served.url, f'tickcast_serving_requests_total{{endpoint="forecast",status="{status}"}}')

    before = {status: answered(status) for status in (200, 422)}
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/forecast", "/v1/forecast/ticker", "/v1/models", "/healthz"}
    statuses: dict[int, int] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hsettings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                response = case.call_and_validate(
                    base_url=served.url, checks=[not_a_server_error, response_schema_conformance], timeout=60
                )
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

            try:
                check()
            except Unsatisfiable:
                # nothing to make invalid (an operation without parameters or body)
                assert mode is GenerationMode.NEGATIVE, operation.path
    # the fuzzer reached the model with valid requests and was turned away with invalid ones
    assert all(answered(status) > before[status] for status in (200, 422))
    print(f"schemathesis: {sum(statuses.values())} cases, statuses {dict(sorted(statuses.items()))}")
    assert max(statuses) < 500


#: The reported overflow, its mirror image at year 1, and the range's own edges.
_DATE_EDGES = [
    "9999-12-31T23:59:59-01:00",
    "9999-12-31T23:59:59.999999-23:59",
    "0001-01-01T00:00:00+01:00",
    "0001-01-01T00:00:00+23:59",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "1900-01-01T00:00:00Z",
    "2262-01-01T00:00:00Z",
    "2262-01-01T00:00:00-00:01",
]


def test_fuzzing_end_dates_finds_no_server_error(served: Served) -> None:
    """Any aware time from year 1 to 9999 with any offset a client can send: 422 outside the
    documented range, an answer (200, or 404 before the first bar) inside it, never a 5xx."""
    from datetime import timezone

    from hypothesis import example, given
    from hypothesis import strategies as st

    from serving.validation import MAX_END, MIN_END

    offsets = st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59))
    times = st.datetimes(timezones=offsets.map(lambda d: timezone(timedelta(minutes=d // timedelta(minutes=1)))))
    seen: dict[int, int] = {}

    @hsettings(max_examples=2 * FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None)
    @given(end=times.map(lambda t: t.isoformat()))
    def check(end: str) -> None:
        body = {"ticker": "AAPL", "horizon": 2, "context_length": 16, "end": end}
        response = httpx.post(f"{served.url}/v1/forecast/ticker", json=body, timeout=60)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        when = datetime.fromisoformat(end)
        fields_in_range = MIN_END.year - 1 <= when.year <= MAX_END.year + 1
        inside = fields_in_range and MIN_END <= when.astimezone(UTC) <= MAX_END
        if inside:
            assert response.status_code in (200, 404), (end, response.text)
        else:
            assert response.status_code == 422, (end, response.text)
            assert "omit end" in response.json()["detail"]

    for edge in _DATE_EDGES:
        check = example(end=edge)(check)
    check()
    print(f"end-date fuzzing: {sum(seen.values())} cases, statuses {dict(sorted(seen.items()))}")
    assert seen.get(422) and (seen.get(200) or seen.get(404)), seen


def test_batch_forecast_writes_the_lake_idempotently(served: Served) -> None:
    from serving.batch import batch_forecast

    settings = served.settings
    lake = Lake(settings.lake)
    args = dict(horizon=4, context_length=120, model=str(served.bolt), actors=1, progress=False)
    report = batch_forecast(settings, ["AAPL", "MSFT", "NOPE"], **args)
    assert (report.tickers, report.forecast, report.skipped, report.failed) == (3, 2, ["NOPE"], {})
    assert (report.rows, report.bars_version, report.as_of) == (8, tables.table_version(lake, BARS), None)
    rows = read_forecasts(lake, "AAPL", "minute")
    assert rows.num_rows == 4 and rows["model_id"][0].as_py() == "bolt"
    closes = lake.read_bars("AAPL", "minute")["close"].to_pylist()[-120:]
    mean = np.array([rows["mean"].to_pylist()])
    _check_against_pipeline(served, served.bolt, [closes], 4, [0.1, 0.5, 0.9], None, mean)
    # one commit, which records the bars table version its contexts were read from
    commit = DeltaTable(lake.table_uri("forecasts")).history(1)[0]
    assert commit["version"] == report.forecasts_version and commit["bars_version"] == str(report.bars_version)

    again = batch_forecast(settings, ["AAPL", "MSFT"], **args)  # same run again: rows replaced, not added
    assert again.forecasts_version == report.forecasts_version + 1 and again.bars_version == report.bars_version
    assert read_forecasts(lake, "AAPL", "minute").num_rows == 4
    assert tables.scan(lake, FORECASTS, unique=False).num_rows == 8  # the files hold each row once too


def test_batch_forecast_as_of_an_old_bars_version_reproduces_it(served: Served, capsys: Any) -> None:
    from serving.batch import batch_forecast
    from tickcast.cli import build_parser

    settings = served.settings
    lake = Lake(settings.lake)
    t0 = datetime(2024, 3, 6, 14, 30, tzinfo=UTC)
    closes = 50 + np.random.default_rng(11).standard_normal(200).cumsum()
    version = lake.write_bars(_minute_bars("TT", closes[:150], t0))
    args = dict(horizon=4, context_length=120, model=str(served.bolt), actors=1, progress=False)
    first = batch_forecast(settings, ["TT"], **args)
    assert first.bars_version == version
    before = read_forecasts(lake, "TT", "minute")
    assert before.num_rows == 4

    later = lake.write_bars(_minute_bars("TT", closes[150:], t0 + timedelta(minutes=150)))  # new bars arrive
    latest = batch_forecast(settings, ["TT"], **args)
    assert latest.bars_version == later and read_forecasts(lake, "TT", "minute").num_rows == 8

    # the CLI with --as-of the first run's version: the same forecast, value for value
    cli = ["batch-forecast", "--tickers", "TT", "--as-of", str(version), "--horizon", "4", "--context-length", "120"]
    parsed = build_parser().parse_args([*cli, "--model", str(served.bolt), "--actors", "1", "--no-progress"])
    capsys.readouterr()
    assert parsed.handler(settings, parsed) == 0
    replay = json.loads(capsys.readouterr().out)
    assert (replay["bars_version"], replay["as_of"], replay["forecast"]) == (version, str(version), 1)

    def check_reproduced(previous: pa.Table) -> pa.Table:
        rows = read_forecasts(lake, "TT", "minute")
        assert rows.num_rows == 8  # the replay replaced its forecast's rows: same ids, not new ones
        again = rows.filter(pc.is_in(rows["forecast_id"], value_set=before["forecast_id"]))
        assert min(again["issued_at"].to_pylist()) > max(previous["issued_at"].to_pylist())  # rewritten ...
        for column in ("forecast_id", "last_bar_start", "step", "mean", "p10", "p50", "p90", "quantile_values"):
            assert again[column].to_pylist() == before[column].to_pylist(), column  # ... with the same values
        return again

    replayed = check_reproduced(before)
    # as of a time (the commit time of that version): the same table version
    (commit,) = [c for c in DeltaTable(lake.table_uri("bars")).history() if c["version"] == version]
    when = datetime.fromtimestamp(commit["timestamp"] / 1000, tz=UTC)
    by_time = batch_forecast(settings, ["TT"], as_of=when, **args)
    assert (by_time.bars_version, by_time.as_of) == (version, when.isoformat())
    check_reproduced(replayed)


def test_model_swap_without_downtime_then_from_minio(served: Served, s3_settings: Settings) -> None:
    """reconfigure() swaps models in place while requests keep succeeding; then a model from MinIO."""
    from ray import serve

    from serving.app import APP_NAME, make_app

    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                r = client.post(f"{served.url}/v1/forecast", json={"series": [[1.0, 2.0, 3.0] * 20], "horizon": 4})
                statuses.append(r.status_code)

    def swap(model: str) -> None:
        settings = served.settings.model_copy(
            update={"serving": served.settings.serving.model_copy(update={"model": model})}
        )
        serve.run(make_app(settings), name=APP_NAME, route_prefix="/")

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        time.sleep(1.0)
        swap(str(served.chronos2))
        deadline = time.monotonic() + 60
        while httpx.get(f"{served.url}/v1/models", timeout=30).json()["models"][0]["kind"] != "chronos2":
            assert time.monotonic() < deadline, "model swap did not finish"
            time.sleep(0.5)
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert statuses and set(statuses) == {200}, f"requests failed during the swap: {set(statuses)}"

    # Chronos-2 takes covariates: volume as a past covariate, equal to the in-process pipeline
    series = _series(3, [64, 100])
    volume = [np.linspace(1, 2, len(s)).round(3).tolist() for s in series]
    body = {"series": series, "horizon": 5, "past_covariates": [{"volume": v} for v in volume]}
    response = httpx.post(f"{served.url}/v1/forecast", json=body, timeout=60).json()
    assert response["covariates_used"] is True and response["model"]["kind"] == "chronos2"
    q, _ = _as_arrays(response, [0.1, 0.5, 0.9])
    covariates = [{"volume": v} for v in volume]
    _check_against_pipeline(served, served.chronos2, series, 5, [0.1, 0.5, 0.9], q, None, covariates)

    # a checkpoint uploaded to the MinIO lake's registry, loaded by the replica from s3://
    lake = Lake(s3_settings.lake)
    for path in sorted(served.bolt.iterdir()):
        lake.write_bytes(f"models/tiny/1/{path.name}", path.read_bytes())
    swap(lake.uri("models/tiny/1"))
    info = httpx.get(f"{served.url}/v1/models", timeout=30).json()["models"][0]
    assert (info["id"], info["version"], info["source"], info["kind"]) == ("tiny", "1", "registry", "bolt")
    series = _series(4, [80])
    out = httpx.post(f"{served.url}/v1/forecast", json={"series": series, "horizon": 6}, timeout=60).json()
    _check_against_pipeline(served, served.bolt, series, 6, [0.1, 0.5, 0.9], _as_arrays(out, [0.1, 0.5, 0.9])[0], None)
    swap(str(served.bolt))
