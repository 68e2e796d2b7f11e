"""The polygon-rest backfill against the real broker and the local Polygon server: every bar
exactly once and in order, faults ridden out, bad records in the DLQ, resumable after a
SIGKILL, open/close summaries, clear errors."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from producer_testkit import Topics, by_ticker, end_offsets_total, headers, make_topics, producer_settings, read_topic

from producer.backfill import BackfillPlan
from producer.checkpoint import BackfillCheckpoint
from producer.local_polygon import Faults, LocalPolygonServer, MarketData, is_malformed
from producer.metrics import get_metrics
from producer.open_close import read_open_close
from producer.runner import ProduceOptions, produce
from tickcast.contracts import Bar, to_iso
from tickcast.errors import SourceError
from tickcast.lake import Lake
from tickcast.settings import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TICKERS = ("AAPL", "MSFT", "NVDA")
FIRST, LAST = date(2024, 1, 2), date(2024, 1, 3)
START_MS = int(datetime(2024, 1, 2, tzinfo=UTC).timestamp() * 1000)
END_MS = int(datetime(2024, 1, 4, tzinfo=UTC).timestamp() * 1000) - 1


@pytest.fixture
def server() -> Iterator[LocalPolygonServer]:
    with LocalPolygonServer(market=MarketData(TICKERS), max_page=300) as srv:
        yield srv


@pytest.fixture
def topics(unique_topic: Callable[..., str]) -> Topics:
    return make_topics(unique_topic)


def expected_starts(
    server: LocalPolygonServer, ticker: str, malformed_every: int = 0, span_ms: int = 60_000
) -> list[str]:
    bars = server.market.aggregates(ticker, span_ms, START_MS, END_MS, int(time.time() * 1000))
    return [
        to_iso(datetime.fromtimestamp(b["t"] / 1000, UTC))
        for b in bars
        if not is_malformed(ticker, b["t"], malformed_every)
    ]


def backfill(settings: Settings, tickers: tuple[str, ...] = TICKERS, **kw: Any) -> dict[str, Any]:
    opts = ProduceOptions(source="polygon-rest", tickers=tickers, start=FIRST, end=LAST, progress=False, **kw)
    return produce(settings, opts)


def assert_exactly_once_in_order(
    settings: Settings,
    server: LocalPolygonServer,
    tickers: tuple[str, ...],
    malformed_every: int = 0,
    span_ms: int = 60_000,
) -> None:
    expected = {t: expected_starts(server, t, malformed_every, span_ms) for t in tickers}
    records = read_topic(settings, settings.kafka.topic_bars, expect=sum(map(len, expected.values())))
    got = by_ticker(records)
    assert set(got) == set(tickers)
    for ticker in tickers:
        starts = [v["start"] for v in got[ticker]]
        assert len(starts) == len(set(starts)), f"{ticker}: duplicates"
        assert starts == expected[ticker], f"{ticker}: gaps or disorder"
        assert len({r.partition for r in records if r.key == ticker.encode()}) == 1
        for value in got[ticker][:50]:
            Bar.from_dict(value)  # every record is a valid bar of the contract


def test_multi_page_backfill_lands_every_bar_exactly_once_in_order(
    make_settings: Callable[..., Settings], topics: Topics, server: LocalPolygonServer
) -> None:
    settings = producer_settings(make_settings, topics, server)
    summary = backfill(settings)
    assert summary["sent"] == summary["bars"] == 3 * 2 * 1440 and summary["dlq"] == 0
    assert server.stats.rest_requests >= 3 * 10  # ten pages a ticker
    assert_exactly_once_in_order(settings, server, TICKERS)
    # the finished plan is recorded: running it again publishes nothing
    again = backfill(settings)
    assert again["already_complete"] is True and again["sent"] == 0
    assert end_offsets_total(settings, topics.bars) == 3 * 2 * 1440


def test_429_storms_5xx_and_drops_are_ridden_out_and_malformed_records_go_to_the_dlq(
    make_settings: Callable[..., Settings], topics: Topics, server: LocalPolygonServer
) -> None:
    server.set_faults(
        rate_limit_burst=4, rate_limit_every=5, retry_after_s=0.2, error_every=7, drop_every=11, malformed_every=150
    )
    retries_before = get_metrics().api_retries.labels("429")._value.get()
    settings = producer_settings(make_settings, topics, server, max_retries=10, backoff_max_s=0.3)
    summary = backfill(settings, tickers=("AAPL", "MSFT"))
    statuses = server.stats.rest_by_status
    assert statuses["429"] >= 4 and statuses.get("dropped", 0) >= 1 and statuses.get("503", 0) >= 1
    assert get_metrics().api_retries.labels("429")._value.get() - retries_before >= 4
    bad = {t: 2 * 1440 - len(expected_starts(server, t, 150)) for t in ("AAPL", "MSFT")}
    assert sum(bad.values()) >= 5 and summary["dlq"] == sum(bad.values())
    assert_exactly_once_in_order(settings, server, ("AAPL", "MSFT"), malformed_every=150)
    dlq = read_topic(settings, topics.dlq, expect=sum(bad.values()))
    assert len(dlq) == sum(bad.values())
    for record in dlq:
        h = headers(record)
        assert h["source"] == "polygon-rest" and h["reason"] and h["kind"] in ("malformed", "invalid")
        assert record.key.decode() in ("AAPL", "MSFT")
        assert is_malformed(record.key.decode(), json.loads(record.value)["t"], 150)


def test_a_crash_between_send_and_checkpoint_is_reconciled_from_the_topic(
    make_settings: Callable[..., Settings], topics: Topics, server: LocalPolygonServer
) -> None:
    """Deterministic version of the SIGKILL case: bars published after the last checkpoint."""
    settings = producer_settings(make_settings, topics, server)
    lake = Lake(settings.lake)
    first = backfill(settings, max_bars=500)
    assert first["stopped_early"] and first["sent"] == 500
    plan = BackfillPlan.for_days(TICKERS, "minute", FIRST, LAST)
    path = BackfillCheckpoint.path_for(plan.key(topics.bars))
    saved = lake.read_bytes(path)
    second = backfill(settings, max_bars=1700)
    assert second["resumed"] and second["sent"] == 1700
    lake.write_bytes(path, saved)  # as if the process died before its checkpoints after bar 500
    third = backfill(settings)
    assert third["resumed"] and third["sent"] == 3 * 2 * 1440 - 500 - 1700
    assert_exactly_once_in_order(settings, server, TICKERS)


def _env(settings: Settings) -> dict[str, str]:
    polygon = settings.polygon
    assert polygon.api_key is not None
    return {
        **os.environ,
        "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "TICKCAST_KAFKA__TOPIC_BARS": settings.kafka.topic_bars,
        "TICKCAST_KAFKA__TOPIC_DLQ": settings.kafka.topic_dlq,
        "TICKCAST_LAKE__URL": settings.lake.url,
        "TICKCAST_POLYGON__API_KEY": polygon.api_key.get_secret_value(),
        "TICKCAST_POLYGON__REST_BASE_URL": polygon.rest_base_url,
        "TICKCAST_POLYGON__REQUESTS_PER_MINUTE": str(polygon.requests_per_minute),
        "TICKCAST_POLYGON__BACKOFF_MAX_S": "1",
        "TICKCAST_PRODUCER__METRICS_PORT": "0",
    }


def test_backfill_killed_mid_way_and_restarted_has_no_gaps_and_no_duplicates(
    make_settings: Callable[..., Settings], topics: Topics
) -> None:
    with LocalPolygonServer(market=MarketData(TICKERS), max_page=100, faults=Faults(latency_s=0.03)) as server:
        settings = producer_settings(make_settings, topics, server)
        argv = [
            sys.executable,
            "-m",
            "producer",
            "--source",
            "polygon-rest",
            "--tickers",
            ",".join(TICKERS),
            "--from",
            FIRST.isoformat(),
            "--to",
            LAST.isoformat(),
            "--no-progress",
        ]
        env = _env(settings)
        total = 3 * 2 * 1440
        victim = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while end_offsets_total(settings, topics.bars) < total // 3:
                assert victim.poll() is None, victim.stderr.read().decode() if victim.stderr else ""
                assert time.monotonic() < deadline, "the backfill made no progress"
                time.sleep(0.05)
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait(30)
        published = end_offsets_total(settings, topics.bars)
        assert total // 3 <= published < total  # killed mid-way
        rerun = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        summary = json.loads(rerun.stdout.strip().splitlines()[-1])
        assert summary["resumed"] is True and summary["sent"] == total - published
        assert_exactly_once_in_order(settings, server, TICKERS)


def test_checkpoint_and_open_close_live_in_an_s3_lake(
    make_settings: Callable[..., Settings],
    lake_as: Callable[[str], Settings],
    topics: Topics,
    server: LocalPolygonServer,
) -> None:
    """On MinIO (the S3 path), as the producer workload's MinIO user: the checkpoint survives the
    process, so a re-run resumes there."""
    own = lake_as("producer").lake
    settings = producer_settings(make_settings, topics, server, lake_url=own.url)
    settings = settings.model_copy(update={"lake": own})
    opts = ProduceOptions(
        source="polygon-rest",
        tickers=("AAPL", "MSFT"),
        interval="hour",
        start=FIRST,
        end=LAST,
        open_close=True,
        progress=False,
        max_bars=30,
    )
    first = produce(settings, opts)
    assert first["stopped_early"] and first["sent"] == 30
    lake = Lake(settings.lake)
    plan = BackfillPlan.for_days(("AAPL", "MSFT"), "hour", FIRST, LAST, open_close=True)
    checkpoint = BackfillCheckpoint.load(lake, plan.key(topics.bars))
    assert checkpoint is not None and checkpoint.tickers["AAPL"].bars == 30
    rest = produce(settings, dataclasses.replace(opts, max_bars=None))
    assert rest["resumed"] and rest["sent"] == 2 * 48 - 30 and rest["open_close"] == 4
    assert_exactly_once_in_order(settings, server, ("AAPL", "MSFT"), span_ms=3_600_000)
    table = read_open_close(lake)
    assert table.num_rows == 4 and table["ticker"].to_pylist() == ["AAPL"] * 2 + ["MSFT"] * 2


def test_open_close_summaries_go_to_their_topic_and_lake_table(
    make_settings: Callable[..., Settings], topics: Topics, server: LocalPolygonServer
) -> None:
    settings = producer_settings(make_settings, topics, server)
    opts = ProduceOptions(
        source="polygon-rest",
        tickers=("AAPL",),
        interval="day",
        start=date(2024, 1, 2),
        end=date(2024, 1, 7),
        open_close=True,
        progress=False,
    )
    summary = produce(settings, opts)
    assert summary["bars"] == 4 and summary["open_close"] == 4  # Tue-Fri; the weekend has no session
    records = read_topic(settings, topics.open_close, expect=4)
    values = [json.loads(r.value) for r in records]
    assert sorted(v["date"] for v in values) == ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]
    assert all(
        v["pre_market"] > 0 and v["after_hours"] > 0 and r.key == b"AAPL" for v, r in zip(values, records, strict=True)
    )
    table = read_open_close(Lake(settings.lake), "AAPL")
    assert table["date"].to_pylist() == sorted(v["date"] for v in values)
    assert set(table.column_names) >= {"open", "high", "low", "close", "volume", "pre_market", "after_hours"}


def test_unknown_ticker_and_bad_key_are_clear_errors(
    make_settings: Callable[..., Settings],
    topics: Topics,
    server: LocalPolygonServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = producer_settings(make_settings, topics, server)
    with pytest.raises(SourceError, match="unknown ticker ZZZZ"):
        backfill(settings, tickers=("ZZZZ",))
    caplog.set_level(logging.DEBUG)
    secret = "sk-live-Integration-Secret-77"
    bad = producer_settings(make_settings, topics, server, api_key=secret)
    with pytest.raises(SourceError, match="rejected the API key") as info:
        backfill(bad, tickers=("AAPL",))
    assert secret not in str(info.value) and secret not in caplog.text
