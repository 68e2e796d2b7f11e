"""The streaming forecaster end to end: real Kafka, real Ray Serve (the serving app with a tiny
random-weight Bolt model), real lake on disk.

- replayed bars produce forecasts for every ticker, on Kafka and in the lake;
- forecasts are scored once their actual bars arrive, and the scores match an independent
  recomputation from the lake (DuckDB over the files of the forecasts, scores and bars
  tables' current versions, as delta-rs lists them: no tickcast code);
- a restart (even a fresh consumer group replaying everything) duplicates nothing;
- with Serve stopped mid-stream the forecaster coalesces (pending <= tickers, memory
  bounded), and catches up by itself once Serve is back.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from conftest import build_micro_bolt, free_port
from deltalake import DeltaTable

from serving.streaming.service import ForecasterService
from tickcast.contracts import Bar, Forecast, quantile_loss
from tickcast.lake import FORECASTS, Lake, read_forecasts, tables
from tickcast.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

T0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
M = timedelta(minutes=1)
CTX, H = 32, 3


@dataclass
class ServeHandle:
    """The serving app on a private Ray instance, which tests can stop and start again."""

    url: str
    settings: Settings

    def stop(self) -> None:
        from ray import serve

        from serving.app import APP_NAME

        serve.delete(APP_NAME)

    def start(self) -> None:
        from ray import serve

        from serving.app import APP_NAME, make_app

        serve.run(make_app(self.settings), name=APP_NAME, route_prefix="/")


@pytest.fixture(scope="module")
def serve_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeHandle]:
    """Ray Serve running serving.app with a tiny random-weight Bolt model (module-scoped)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    model = build_micro_bolt(tmp_path_factory.mktemp("model") / "bolt-micro")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = load_settings(
        serving={"model": str(model), "device": "cpu", "torch_threads": 1, "num_cpus": 0.5, "port": port, "url": url}
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        handle = ServeHandle(url, settings)
        handle.start()
        yield handle
    finally:
        serve.shutdown()
        ray.shutdown()


def make_bars(tickers: list[str], first: int, count: int) -> list[Bar]:
    """Deterministic random-walk minute bars, bar ``i`` of a ticker starting at T0 + i minutes."""
    out = []
    for k, ticker in enumerate(tickers):
        rng = np.random.default_rng(k)
        closes = 100.0 + k * 10 + np.cumsum(rng.normal(0, 0.5, first + count))
        for i in range(first, first + count):
            c = float(closes[i])
            out.append(Bar(ticker, "minute", T0 + i * M, T0 + (i + 1) * M, c, c + 0.3, c - 0.3, c, 100.0 + i))
    return out


def produce(settings: Settings, bars: list[Bar]) -> None:
    from tickcast.kafka import make_producer

    producer = make_producer(settings.kafka)
    for bar in sorted(bars, key=lambda b: b.start):
        producer.send(settings.kafka.topic_bars, key=bar.ticker.encode(), value=bar.to_json())
    producer.flush()
    producer.close()


def forecaster_settings(
    make_settings: Callable[..., Settings], serve: ServeHandle, bars: str, fc: str, **extra: Any
) -> Settings:
    return make_settings(
        **extra,
        kafka={"topic_bars": bars, "topic_forecasts": fc},
        serving={"url": serve.url},
        forecaster={
            "group_id": f"fc-{uuid.uuid4().hex[:8]}",
            "context_length": CTX,
            "horizon": H,
            "micro_batch_wait_s": 0.05,
            "lake_flush_interval_s": 1.0,
            "metrics_port": 0,
            "request_timeout_s": 5.0,
            "max_retries": 1,
            "breaker_failures": 2,
            "breaker_reset_s": 0.5,
        },
    )


def read_kafka_forecasts(settings: Settings) -> list[Forecast]:
    from tickcast.kafka import make_consumer

    consumer = make_consumer(settings.kafka, None, consumer_timeout_ms=3000)
    consumer.subscribe([settings.kafka.topic_forecasts])
    out = [Forecast.from_json(record.value) for record in consumer]
    consumer.close()
    return out


def sql(lake_dir: Path, query: str) -> list[tuple[Any, ...]]:
    """Run DuckDB over the data files of each table's current version (no tickcast code involved;
    every row the files hold, so a key written twice would show twice)."""
    con = duckdb.connect()
    for table in ("bars", "forecasts", "scores", "score_aggregates"):
        if DeltaTable.is_deltatable(str(lake_dir / table)):
            files = DeltaTable(str(lake_dir / table)).file_uris()
            if files:
                con.execute(f"create view {table} as select * from read_parquet({files!r})")
    return con.execute(query).fetchall()


def check_scores_against_the_lake(lake_dir: Path) -> int:
    """Recompute every score from the forecasts and bars tables and compare; returns the number checked."""
    rows = sql(
        lake_dir,
        """
        select s.forecast_id, s.step, s.ticker, s.actual, s.abs_error, s.quantile_loss, s.covered_80,
               s.naive_abs_error, b.close, lb.close, f.quantile_levels, f.quantile_values, f.p10, f.p50, f.p90
        from scores s
        join forecasts f on f.forecast_id = s.forecast_id and f.step = s.step and f.step_start = s.target_start
        join bars b on b.ticker = s.ticker and b.start = s.target_start
        join bars lb on lb.ticker = s.ticker and lb.start = f.last_bar_start
        """,
    )
    (n_scores,) = sql(lake_dir, "select count(*) from scores")[0]
    assert len(rows) == n_scores > 0, "every score joins to its forecast step and its actual bar"
    for _fid, _step, _t, actual, abs_err, ql, covered, naive, close, last_close, levels, values, p10, p50, p90 in rows:
        assert actual == pytest.approx(close)
        assert abs_err == pytest.approx(abs(close - p50))
        expect_ql = sum(quantile_loss(close, q, v) for q, v in zip(levels, values, strict=True)) / len(levels)
        assert ql == pytest.approx(expect_ql)
        assert covered == (p10 <= close <= p90)
        assert naive == pytest.approx(abs(close - last_close))
    # completeness: every forecast step whose bar is in the lake was scored, exactly once
    expected = set(
        sql(
            lake_dir,
            "select f.forecast_id, f.step from forecasts f "
            "join bars b on b.ticker = f.ticker and b.start = f.step_start",
        )
    )
    scored = sql(lake_dir, "select forecast_id, step from scores")
    assert len(scored) == len(set(scored)), "no step is scored twice"
    assert set(scored) == expected
    return len(rows)


def check_calibration_against_the_lake(lake_dir: Path, gamma: float, coverage: float) -> int:
    """The raw and calibrated bands are both stored, and the calibrated band follows ACI.

    Recomputed from the lake alone: every forecast step has its raw quantiles and a
    calibrated band; every score says whether the actual fell inside each; and each step's
    ``calibration_alpha`` equals the target plus ``gamma * (alpha - err)`` summed over that
    ticker's and step's calibrated scores whose bar came before the forecast (each bar is
    scored before its own forecast is drawn). Returns the forecast steps checked.
    """
    rows = sql(
        lake_dir,
        """
        select s.forecast_id, s.step, b.close, f.p10, f.p90, f.calibrated_lower, f.calibrated_upper,
               s.covered_80, s.calibrated_covered, s.calibrated_lower, s.calibrated_upper, s.calibrated_quantile_loss,
               f.quantile_levels, f.quantile_values
        from scores s
        join forecasts f on f.forecast_id = s.forecast_id and f.step = s.step
        join bars b on b.ticker = s.ticker and b.start = s.target_start
        """,
    )
    assert rows
    for _fid, _step, close, p10, p90, lo, hi, covered, cal_covered, s_lo, s_hi, cal_ql, levels, values in rows:
        assert lo is not None and hi is not None and (s_lo, s_hi) == (lo, hi)
        assert covered == (p10 <= close <= p90) and cal_covered == (lo <= close <= hi)
        swapped = [lo if q == 0.1 else hi if q == 0.9 else v for q, v in zip(levels, values, strict=True)]
        expect = sum(quantile_loss(close, q, v) for q, v in zip(levels, swapped, strict=True)) / len(levels)
        assert cal_ql == pytest.approx(expect)
    forecasts = sql(
        lake_dir,
        "select ticker, step, last_bar_start, calibration_alpha, calibrated_coverage from forecasts "
        "order by ticker, step, last_bar_start",
    )
    scores = sql(lake_dir, "select ticker, step, target_start, calibrated_covered from scores")
    alpha = 1 - coverage
    for ticker, step, last_bar, got, nominal in forecasts:
        assert nominal == pytest.approx(coverage)
        seen = [c for t, h, start, c in scores if t == ticker and h == step and start <= last_bar]
        assert got == pytest.approx(alpha + gamma * sum(alpha - (0.0 if c else 1.0) for c in seen))
    return len(forecasts)


def check_aggregates_against_the_scores(lake_dir: Path) -> None:
    latest = sql(
        lake_dir,
        """
        select ticker, steps, mase, wql, coverage_80 from score_aggregates
        where scope = 'ticker'
        qualify row_number() over (partition by ticker order by computed_at desc) = 1
        """,
    )
    assert latest
    for ticker, steps, mase, wql, coverage in latest:
        ((n, abs_sum, naive_sum, ql_sum, act_sum, cov),) = sql(
            lake_dir,
            f"""select count(*), sum(abs_error), sum(naive_abs_error), sum(quantile_loss), sum(abs(actual)),
                       avg(covered_80::int)
                from scores where ticker = '{ticker}'""",
        )
        assert steps == n  # the window (256) holds every score of these short runs
        assert mase == pytest.approx(abs_sum / naive_sum)
        assert wql == pytest.approx(ql_sum / act_sum)
        assert coverage == pytest.approx(cov)


def test_replay_forecasts_scores_and_restart_without_duplicates(
    serve_app: ServeHandle, make_settings: Callable[..., Settings], unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    from prometheus_client import REGISTRY

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    ingest = "tickcast_forecaster_ingest_to_forecast_seconds"
    bar_end = "tickcast_forecaster_bar_end_to_forecast_seconds"
    ingest_before = (sample(f"{ingest}_sum"), sample(f"{ingest}_count"))
    bar_end_count_before = sample(f"{bar_end}_count")
    test_started = time.time()
    tickers = ["AAPL", "MSFT", "NVDA", "AMZN", "META"]
    settings = forecaster_settings(make_settings, serve_app, unique_topic("bars"), unique_topic("fc"))
    lake = Lake(settings.lake)
    lake_dir = tmp_path / "lake"
    history, rounds = 20, 4

    # 1. a replayed history: the sink would have written it to the lake as well
    bars = make_bars(tickers, 0, history)
    lake.write_bars(bars)
    produce(settings, bars)
    service = ForecasterService(settings)
    stats = service.run(max_records=len(bars), timeout=60)
    # the context was warm-started from the lake, so the replay only asks for the newest bar
    assert stats.bars_stale == len(bars) and stats.forecasts == len(tickers)
    assert {t for t in tickers if service.context.get(t).last_forecast_start == T0 + (history - 1) * M} == set(tickers)  # type: ignore[union-attr]

    # 2. live rounds: one bar per ticker, each scored against the forecasts before it
    for r in range(rounds):
        fresh = make_bars(tickers, history + r, 1)
        lake.write_bars(fresh)
        produce(settings, fresh)
        before = service.stats.forecasts
        stats = service.run(max_records=len(tickers), timeout=30)
        assert stats.forecasts - before == len(tickers), stats
    service.close()
    first_run = service.stats
    assert first_run.scores > 0 and first_run.serve_errors == 0

    # 3. restart with a fresh group: every bar is redelivered, nothing is forecast twice
    replay = forecaster_settings(make_settings, serve_app, settings.kafka.topic_bars, settings.kafka.topic_forecasts)
    again = ForecasterService(replay)
    again.run(max_records=len(tickers) * (history + rounds), timeout=60)
    assert again.stats.forecasts == 0
    assert again.stats.duplicates_skipped + again.stats.bars_stale == len(tickers) * (history + rounds)
    # the forecasts still waiting for actuals came back from the lake
    # (those issued at the last H bars: bars 21, 22 and 23 each have steps after bar 23)
    assert again.scorer.pending_forecasts() == len(tickers) * H
    fresh = make_bars(tickers, history + rounds, 1)
    lake.write_bars(fresh)
    produce(replay, fresh)
    again.run(max_records=len(tickers), timeout=30)
    assert again.stats.forecasts == len(tickers)
    assert again.stats.scores == len(tickers) * H  # one step of each pending forecast
    again.close()

    # 4. the original group resumes from its committed offsets: only the last round is new to it
    resumed = ForecasterService(settings)
    resumed.run(max_records=len(tickers), timeout=30)
    assert resumed.stats.records == len(tickers) and resumed.stats.forecasts == 0
    resumed.close()

    # Kafka: forecasts for every ticker, one per (ticker, last bar)
    published = read_kafka_forecasts(settings)
    assert {f.ticker for f in published} == set(tickers)
    assert len({f.id for f in published}) == len(published) == first_run.forecasts + len(tickers)
    assert all(f.bar_event_time == f.last_bar_start + M for f in published)
    # the lake holds the same forecasts, each once
    rows = sql(lake_dir, "select forecast_id, count(*) from forecasts group by forecast_id")
    assert {fid for fid, _ in rows} == {f.id for f in published}
    assert all(n == H for _, n in rows)
    checked = check_scores_against_the_lake(lake_dir)
    assert checked >= len(tickers) * (H * (rounds - 1))
    check_aggregates_against_the_scores(lake_dir)
    # live calibration (on by default): raw and calibrated bands stored, the band follows ACI
    cfg = settings.forecaster
    assert cfg.calibration
    assert (
        check_calibration_against_the_lake(lake_dir, cfg.calibration_gamma, cfg.calibration_coverage)
        == len(published) * H
    )
    assert all(f.calibrated and f.calibrated_lower is not None for f in published)
    # the alphas moved: some step was scored, and its calibrated band differs from the raw one
    assert any(a != pytest.approx(1 - cfg.calibration_coverage) for f in published for a in f.calibration_alpha or [])

    # Latency: every bar of this test entered Kafka after it started, so each ingest-to-forecast
    # latency lies between 0 and the test's wall time (market-time latency would be years: T0 is 2024)
    wall = time.time() - test_started
    assert sample(f"{bar_end}_count") - bar_end_count_before == len(published)
    # the catch-up forecasts of bars read from the lake have no Kafka record of theirs
    ingest_count = sample(f"{ingest}_count") - ingest_before[1]
    ingest_sum = sample(f"{ingest}_sum") - ingest_before[0]
    assert len(published) - len(tickers) <= ingest_count <= len(published)
    assert 0 < ingest_sum <= ingest_count * wall
    assert len(service.latencies) == first_run.forecasts
    for latencies in (service.latencies, again.latencies):
        for aged, latency in latencies:
            assert aged > 86_400  # from the bar's end: the age of these 2024 bars, not the platform's latency
            assert latency is None or 0 <= latency <= wall


def test_serve_outage_coalesces_then_catches_up(
    serve_app: ServeHandle,
    make_settings: Callable[..., Settings],
    lake_as: Callable[[str], Settings],
    unique_topic: Callable[..., str],
    kafka_admin: Any,
) -> None:
    tickers = ["AAA", "BBB", "CCC", "DDD"]
    n = len(tickers)
    # this one keeps its lake on MinIO (S3), as the forecaster workload's own MinIO user
    own = lake_as("forecaster").lake
    lake = {"url": own.url, "s3_access_key_id": own.s3_access_key_id, "s3_secret_access_key": own.s3_secret_access_key}
    settings = forecaster_settings(make_settings, serve_app, unique_topic("bars"), unique_topic("fc"), lake=lake)
    produce(settings, make_bars(tickers, 0, 10))
    service = ForecasterService(settings)
    service.run(max_records=n * 10, timeout=60)
    assert service.stats.forecasts >= n

    def bounded() -> None:
        assert len(service.pending) <= n
        assert service.context.memory_bytes() == n * CTX * 8
        assert service.scorer.pending_forecasts() <= n * service.scorer.max_pending
        assert service.scorer.window_count() <= n
        assert not service._forecast_buffer and not service._score_buffer  # flushed by run()

    serve_app.stop()
    try:
        before = service.stats.forecasts
        next_bar = 10
        for _ in range(3):  # a few live rounds while Serve is down
            produce(settings, make_bars(tickers, next_bar, 1))
            next_bar += 1
            service.run(max_records=n, timeout=1.0)
            bounded()
        # a burst of backlog: 40 bars per ticker pile up, yet one entry per ticker is pending
        produce(settings, make_bars(tickers, next_bar, 40))
        next_bar += 40
        service.run(max_records=n * 40, timeout=3)
        bounded()
        assert len(service.pending) == n
        assert service.stats.forecasts == before
        assert service.stats.serve_errors >= 1
        assert service.stats.coalesced >= n * 40
        assert service.client.breaker.state != "closed"
        assert service.health()[1]["serve"] != "ok"
    finally:
        serve_app.start()

    t0 = time.monotonic()
    service.run(max_records=0, timeout=90)  # nothing new to read: run until caught up
    caught_up_s = time.monotonic() - t0
    assert not service.pending and not service._in_flight, f"not caught up after {caught_up_s:.1f} s"
    assert service.stats.forecasts - before == n  # one forecast per ticker, for its newest bar
    for ticker in tickers:
        assert service.context.get(ticker).last_forecast_start == T0 + (next_bar - 1) * M  # type: ignore[union-attr]
    bounded()
    service.close()

    # everything consumed is covered by persisted forecasts, so everything is committed
    group = settings.forecaster.group_id
    committed = kafka_admin.list_group_offsets({group: None})[group]
    assert sum(meta.offset for tp, meta in committed.items() if tp.topic == settings.kafka.topic_bars) == n * next_bar
    lake = Lake(settings.lake)
    table = read_forecasts(lake, None, "minute")
    latest: dict[str, datetime] = {}
    for row in table.select(["ticker", "last_bar_start"]).to_pylist():
        latest[row["ticker"]] = max(latest.get(row["ticker"], row["last_bar_start"]), row["last_bar_start"])
    assert latest == {t: T0 + (next_bar - 1) * M for t in tickers}
    # every row the table's files hold (no dedupe on read): no forecast was written twice
    ids = tables.scan(lake, FORECASTS, columns=["forecast_id"], unique=False).column("forecast_id").to_pylist()
    assert len(ids) == H * len(set(ids)), "no forecast twice"
