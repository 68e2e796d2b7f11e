"""The forecaster's bookkeeping without a broker: coalescing, safe commit offsets, re-queueing.

Records are built as kafka-python ``ConsumerRecord`` values and fed to the service's record
handler directly; Serve is an unreachable URL, so every request fails the way an outage does.
The full loop against the real broker and Ray Serve is in tests/integration.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

from serving.streaming.client import CircuitBreaker, ServeClient
from serving.streaming.service import ForecasterService
from tickcast.contracts import Bar
from tickcast.errors import ConfigError
from tickcast.lake import Lake, read_forecasts
from tickcast.settings import Settings, load_settings

T0 = datetime(2024, 1, 2, 15, 0, tzinfo=UTC)
M = timedelta(minutes=1)


def settings(tmp_path: Path, **forecaster: object) -> Settings:
    return load_settings(
        lake={"url": f"file://{tmp_path}"},
        serving={"url": "http://127.0.0.1:9"},
        forecaster={"metrics_port": 0, "warm_start": False, "micro_batch_wait_s": 0.0, **forecaster},
    )


def record(partition: int, offset: int, bar: Bar | bytes) -> tuple[TopicPartition, ConsumerRecord]:
    value = bar if isinstance(bar, bytes) else bar.to_json()
    tp = TopicPartition("bars", partition)
    return tp, ConsumerRecord(
        "bars", partition, -1, offset, int(time.time() * 1000), 0, b"k", value, [], None, 1, len(value), -1
    )


def bar(ticker: str, i: int, interval: str = "minute") -> Bar:
    s = T0 + i * M
    return Bar(ticker, interval, s, s + M, 10.0 + i, 11.0 + i, 9.0 + i, 10.5 + i, 5.0)


def make(tmp_path: Path, **forecaster: object) -> ForecasterService:
    s = settings(tmp_path, **forecaster)
    client = ServeClient(s.serving.url, timeout_s=0.5, max_retries=0, breaker=CircuitBreaker(1, 60.0))
    return ForecasterService(s, client=client, lake=Lake(s.lake))


def test_coalescing_keeps_one_entry_per_ticker_and_the_first_uncovered_offset(tmp_path: Path) -> None:
    service = make(tmp_path)
    for i in range(5):
        service._on_record(*record(0, 10 + i, bar("AAPL", i)))
    service._on_record(*record(1, 3, bar("MSFT", 0)))
    assert list(service.pending) == ["AAPL", "MSFT"]
    assert service.pending["AAPL"].start == T0 + 4 * M  # the newest bar
    assert service.stats.coalesced == 4
    # nothing is forecast yet: commit only up to the first bar of each pending ticker
    assert service.safe_offsets() == {("bars", 0): 10, ("bars", 1): 3}
    # stale, invalid and other-interval records advance the offset but add nothing
    service._on_record(*record(1, 4, bar("MSFT", 0)))
    service._on_record(*record(1, 5, b"{not json"))
    service._on_record(*record(1, 6, bar("IBM", 0, interval="day")))
    assert (service.stats.bars_stale, service.stats.bars_invalid, service.stats.bars_other_interval) == (1, 1, 1)
    assert len(service.pending) == 2
    service.pending.clear()
    assert service.safe_offsets() == {("bars", 0): 15, ("bars", 1): 7}
    service.close()


def test_failed_request_requeues_without_losing_the_older_offset(tmp_path: Path) -> None:
    service = make(tmp_path)
    service._on_record(*record(0, 0, bar("AAPL", 0)))
    service._on_record(*record(0, 1, bar("MSFT", 0)))
    service._dispatch()
    assert not service.pending and len(service._in_flight) == 1
    assert service.safe_offsets() == {("bars", 0): 0}  # in flight still blocks the commit
    service._on_record(*record(0, 2, bar("AAPL", 1)))  # a newer bar while the request is out
    service._collect(wait=True)  # Serve is down: the request fails
    assert service.stats.serve_errors == 1
    assert set(service.pending) == {"AAPL", "MSFT"}
    assert service.pending["AAPL"].start == T0 + M  # the newer bar wins ...
    assert service.pending["AAPL"].first_offset == 0  # ... but the commit stays behind the older one
    assert service.client.breaker.state == "open"
    service._dispatch()
    assert not service._in_flight  # the open circuit holds requests back; pending stays bounded
    assert len(service.pending) == 2
    service.close()


def test_pending_is_bounded_by_tickers_whatever_the_backlog(tmp_path: Path) -> None:
    service = make(tmp_path, max_tickers=50, context_length=16)
    offset = 0
    for i in range(40):
        for t in range(100):
            service._on_record(*record(t % 3, offset, bar(f"T{t}", i)))
            offset += 1
    assert len(service.context) == 50
    assert len(service.pending) <= 50
    assert service.context.memory_bytes() == 50 * 16 * 8
    service.close()


def test_settings_beyond_serve_limits_are_rejected(tmp_path: Path) -> None:
    s = load_settings(
        lake={"url": f"file://{tmp_path}"},
        serving={"max_series_per_request": 10},
        forecaster={"micro_batch_max": 11, "metrics_port": 0},
    )
    with pytest.raises(ConfigError, match="MICRO_BATCH_MAX"):
        ForecasterService(s)


def test_failed_lake_write_keeps_the_batch_and_commits_nothing(tmp_path: Path) -> None:
    from tickcast.contracts import Forecast
    from tickcast.errors import StoreUnavailable

    service = make(tmp_path)
    service._on_record(*record(0, 0, bar("AAPL", 0)))
    service.pending.clear()  # as if forecast: the offset is now safe to commit once persisted
    f = Forecast("AAPL", "minute", "m", "1", T0, T0, 1, "close", [1.0], {"0.5": [1.0]})
    service._forecast_buffer.append(f)
    (tmp_path / "forecasts").write_text("a file where the table's folder belongs")
    with pytest.raises(StoreUnavailable):
        service.flush()
    assert service._forecast_buffer == [f]  # kept for the next flush
    assert service.stats.commits == 0 and service.health()[0] is False
    (tmp_path / "forecasts").unlink()
    service.flush()  # no consumer here, so nothing to commit, but the batch lands
    assert not service._forecast_buffer and service.health()[0] is True
    assert read_forecasts(service.lake, "AAPL", "minute")["forecast_id"].to_pylist() == [f.id]
    service.close()


def test_cli_registers_the_forecaster_command() -> None:
    from tickcast.cli import build_parser

    args = build_parser().parse_args(["forecaster", "--timeout", "5", "--max-records", "10", "--no-warm-start"])
    assert (args.command, args.timeout, args.max_records, args.no_warm_start) == ("forecaster", 5.0, 10, True)
    assert callable(args.handler)


def test_rebalance_keeps_pending_of_partitions_that_come_back(tmp_path: Path) -> None:
    service = make(tmp_path)
    service._on_record(*record(0, 5, bar("AAPL", 0)))
    service._on_record(*record(1, 7, bar("MSFT", 0)))
    service._on_revoked([TopicPartition("bars", 0), TopicPartition("bars", 1)])  # not started: nothing to flush
    # an eager rebalance revokes everything; partition 0 comes back, partition 1 goes elsewhere
    service._on_assigned([TopicPartition("bars", 0)])
    assert list(service.pending) == ["AAPL"]
    assert service.safe_offsets() == {("bars", 0): 5}
    service.close()


def test_warm_start_reads_context_pending_forecasts_and_scores_from_the_lake(tmp_path: Path) -> None:
    from serving.streaming.scoring import Scorer
    from tickcast.contracts import Forecast
    from tickcast.lake import write_forecasts, write_scores

    service = make(tmp_path, horizon=3, context_length=8, score_window=8)
    assert service.warm_start() == 0  # an empty lake
    lake = service.lake
    lake.write_bars([bar("AAPL", i) for i in range(12)] + [bar("MSFT", i) for i in range(5)])

    def forecast(i: int) -> Forecast:
        mean = [1.0, 2.0, 3.0]
        return Forecast("AAPL", "minute", "m", "1", T0 + (i + 1) * M, T0 + i * M, 3, "close", mean, {"0.5": mean})

    forecasts = [forecast(i) for i in range(4, 10)]
    write_forecasts(lake, forecasts)
    write_forecasts(lake, forecasts[-2:])  # a replay after a crash
    scorer = Scorer(window=8, max_pending=8)
    scores = []
    for f in forecasts[:3]:
        scorer.add_forecast(f, 10.5)
    for i in range(5, 8):
        scores += scorer.on_bar("AAPL", T0 + i * M, 10.5 + i)
    write_scores(lake, scores)

    assert service.warm_start() == 2
    aapl, msft = service.context.get("AAPL"), service.context.get("MSFT")
    assert aapl is not None and msft is not None
    # AAPL's context ends at its last forecast's bar (9): bars 10 and 11 come again from Kafka
    assert (aapl.last_start, aapl.last_forecast_start) == (T0 + 9 * M, T0 + 9 * M)
    assert list(aapl.window()) == [10.5 + i for i in range(2, 10)]
    assert (msft.last_start, msft.last_forecast_start) == (T0 + 4 * M, None)
    # the forecasts of bars 7, 8 and 9 still wait for actuals, each once
    assert [p.forecast.last_bar_start for p in service.scorer.pending_for("AAPL")] == [T0 + i * M for i in (7, 8, 9)]
    (window,) = service.scorer.ticker_aggregates()
    assert window.steps == len(scores) == 6
    service.close()


def test_latency_is_measured_from_the_kafka_record_timestamp_and_from_the_bar_end(tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    ingest, bar_end = (
        "tickcast_forecaster_ingest_to_forecast_seconds",
        "tickcast_forecaster_bar_end_to_forecast_seconds",
    )
    service = make(tmp_path)
    before = {n: (sample(f"{n}_sum"), sample(f"{n}_count")) for n in (ingest, bar_end)}
    # the bar entered Kafka 1.5 s ago (its record timestamp); it ended years ago (market time)
    sent_before = time.time()
    tp, rec = record(0, 0, bar("AAPL", 0))
    rec = rec._replace(timestamp=int((sent_before - 1.5) * 1000))
    service._on_record(tp, rec)
    ref = service.pending["AAPL"]
    service._acked(ref.end.timestamp(), ref.produced_at, None)  # Kafka acknowledged the forecast
    acked_after = time.time()
    service.close()

    # The observation is bracketed by clocks read around it: at least 1.5 s, and at most 1.5 s
    # plus the time between reading the clock and the ack, plus 1 ms because the record
    # timestamp is whole milliseconds (truncating moves it up to 1 ms earlier).
    (ingest_sum, ingest_count), (end_sum, end_count) = before[ingest], before[bar_end]
    observed = sample(f"{ingest}_sum") - ingest_sum
    assert sample(f"{ingest}_count") - ingest_count == 1
    assert 1.5 <= observed <= 1.5 + (acked_after - sent_before) + 0.001
    # the market-time figure is the bar's age, years here: the reason it is only shown for live sources
    aged = sample(f"{bar_end}_sum") - end_sum
    assert sample(f"{bar_end}_count") - end_count == 1
    assert sent_before - (T0 + M).timestamp() <= aged <= acked_after - (T0 + M).timestamp()
    assert service.latencies[-1] == (pytest.approx(aged), pytest.approx(observed))


def test_ingest_latency_uses_the_forecast_records_kafka_timestamp(tmp_path: Path) -> None:
    """With the acknowledgement's metadata, the figure is the forecast record's Kafka timestamp
    minus the bar record's, exactly: what anyone reading the two topics computes, however late
    the callback runs."""
    from types import SimpleNamespace

    from prometheus_client import REGISTRY

    name = "tickcast_forecaster_ingest_to_forecast_seconds"
    service = make(tmp_path)
    before = REGISTRY.get_sample_value(f"{name}_sum") or 0.0
    tp, rec = record(0, 0, bar("AAPL", 0))
    rec = rec._replace(timestamp=1_700_000_000_000)
    service._on_record(tp, rec)
    ref = service.pending["AAPL"]
    service._acked(ref.end.timestamp(), ref.produced_at, SimpleNamespace(timestamp=1_700_000_000_375))
    service.close()
    # Both timestamps are whole milliseconds; 1e-9 is float rounding of their difference.
    assert (REGISTRY.get_sample_value(f"{name}_sum") or 0.0) - before == pytest.approx(0.375, abs=1e-9)
    assert service.latencies[-1][1] == pytest.approx(0.375, abs=1e-9)


def test_catch_up_forecasts_have_no_ingest_latency(tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    name = "tickcast_forecaster_ingest_to_forecast_seconds_count"
    service = make(tmp_path)
    before = REGISTRY.get_sample_value(name) or 0.0
    service._acked((T0 + M).timestamp(), None, None)  # a bar read from the lake: no Kafka record of it
    service.close()
    assert (REGISTRY.get_sample_value(name) or 0.0) == before
    assert service.latencies[-1][1] is None


def test_calibration_comes_back_from_the_lake_and_shows_in_the_gauges(tmp_path: Path) -> None:
    from dataclasses import replace

    from prometheus_client import REGISTRY

    from tickcast.contracts import Forecast
    from tickcast.lake import write_forecasts

    assert make(tmp_path / "off", calibration=False).calibrator is None
    service = make(tmp_path, horizon=2, context_length=8, calibration_gamma=0.1)
    assert service.calibrator is not None and service.scorer.calibrator is service.calibrator
    lake = service.lake
    lake.write_bars([bar("AAPL", i) for i in range(6)])
    mean = [10.0, 10.0]
    quantiles = {"0.1": [9.0, 9.0], "0.5": mean, "0.9": [11.0, 11.0]}
    older = service.calibrator.calibrate(
        Forecast("AAPL", "minute", "m", "1", T0, T0 + 3 * M, 2, "close", mean, quantiles)
    )
    newer = service.calibrator.calibrate(replace(older, id="", last_bar_start=T0 + 4 * M))
    write_forecasts(lake, [older, replace(newer, calibration_alpha=[0.15, 0.3])])
    service.warm_start()
    # the newest forecast's alpha per step is the state the restarted forecaster draws with
    assert service.calibrator.alpha("AAPL", "m", "1", 1) == 0.15
    assert service.calibrator.alpha("AAPL", "m", "1", 2) == 0.3
    # bar 5 scores step 2 of the older forecast and step 1 of the newer one: 15.5 is outside both bands
    scores = service.scorer.on_bar("AAPL", T0 + 5 * M, 15.5)
    assert sorted((s.forecast_id, s.step) for s in scores) == sorted([(older.id, 2), (newer.id, 1)])
    assert service.calibrator.alpha("AAPL", "m", "1", 1) == pytest.approx(0.15 - 0.1 * 0.8)
    service._export_aggregates(service.scorer.ticker_aggregates(), service.scorer.model_aggregates())

    def gauge(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(f"tickcast_forecaster_{name}", labels)

    assert gauge("live_coverage", model="m", version="1", band="raw") == 0.0
    assert gauge("live_coverage", model="m", version="1", band="calibrated") == 0.0
    assert gauge("calibration_alpha", model="m", version="1") == pytest.approx(
        ((0.15 - 0.08) + (0.3 - 0.08)) / 2  # both keys saw one miss
    )
    service.close()
