"""Replay and synthetic sources into the real broker; the metrics endpoint; delivery failures
that surface instead of vanishing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from producer_testkit import Topics, by_ticker, headers, make_topics, producer_settings, read_topic

from producer.runner import ProduceOptions, produce
from producer.sink import BarPublisher
from tickcast.contracts import Bar, to_iso
from tickcast.errors import BrokerUnavailable
from tickcast.lake import Lake
from tickcast.service import StopFlag
from tickcast.settings import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


@pytest.fixture
def topics(unique_topic: Callable[..., str]) -> Topics:
    return make_topics(unique_topic)


def _bars(ticker: str, day: int, n: int) -> list[Bar]:
    start = T0 + timedelta(days=day)
    out = []
    for i in range(n):
        s = start + timedelta(minutes=i)
        p = 50.0 + i * 0.1
        out.append(
            Bar(ticker, "minute", s, s + timedelta(minutes=1), p, p + 0.2, p - 0.2, p + 0.1, 100.0 + i, p, 3, "sample")
        )
    return out


def test_replay_from_the_lake_keeps_per_ticker_order_and_dead_letters_bad_rows(
    make_settings: Callable[..., Settings], topics: Topics
) -> None:
    settings = producer_settings(make_settings, topics)
    lake = Lake(settings.lake)
    bars = [b for day in (0, 1) for t in ("AAPL", "MSFT", "BRK.B") for b in _bars(t, day, 40)]
    broken = Bar("MSFT", "minute", T0 + timedelta(hours=3), T0 + timedelta(hours=3, minutes=1), 10, 9, 11, 10, 5)
    lake.write_bars([*bars, broken])
    summary = produce(settings, ProduceOptions(source="replay", speed=None))
    assert summary["sent"] == 240 and summary["dlq"] == 1
    got = by_ticker(read_topic(settings, topics.bars, expect=240))
    for ticker in ("AAPL", "MSFT", "BRK.B"):
        starts = [v["start"] for v in got[ticker]]
        assert starts == [to_iso(b.start) for b in bars if b.ticker == ticker]
        assert {v["source"] for v in got[ticker]} == {"sample"}
    (dead,) = read_topic(settings, topics.dlq, expect=1)
    assert headers(dead)["source"] == "replay" and "prices out of order" in headers(dead)["reason"]


def test_replay_of_a_csv_file_at_60x(make_settings: Callable[..., Settings], topics: Topics, tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    lines = ["ticker,timestamp,open,high,low,close,volume"]
    lines += [f"SPY,{to_iso(T0 + timedelta(seconds=15 * i))},470,471,469,470.5,{1000 + i}" for i in range(5)]
    path.write_text("\n".join(lines) + "\n")
    settings = producer_settings(make_settings, topics)
    started = time.monotonic()
    summary = produce(settings, ProduceOptions(source="replay", file=str(path), interval="minute", speed=60.0))
    elapsed = time.monotonic() - started
    assert summary["sent"] == 5
    assert elapsed >= 0.9  # 60 s of market time at 60x: about a second of wall time
    values = [json.loads(r.value) for r in read_topic(settings, topics.bars, expect=5)]
    assert sorted(v["volume"] for v in values) == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_synthetic_producer_serves_metrics_and_health(make_settings: Callable[..., Settings], topics: Topics) -> None:
    port = _free_port()
    settings = producer_settings(make_settings, topics).model_copy(
        update={"producer": make_settings().producer.model_copy(update={"metrics_port": port})}
    )
    stop = StopFlag()
    result: dict[str, Any] = {}
    opts = ProduceOptions(source="synthetic", num_tickers=25, rate=2000.0, duration=30.0)
    runner = threading.Thread(target=lambda: result.update(produce(settings, opts, stop)), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        metrics = ""
        while time.monotonic() < deadline:
            try:
                metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                metrics = ""
            if 'tickcast_producer_bars_out_total{source="synthetic"}' in metrics:
                break
            time.sleep(0.2)
        assert 'tickcast_producer_bars_out_total{source="synthetic"}' in metrics
        assert "tickcast_producer_lag_seconds" in metrics and "tickcast_producer_bars_in_total" in metrics
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
        assert health["ok"] is True and health["source"] == "synthetic"
    finally:
        stop.set()
        runner.join(30)
    assert result["sent"] > 0 and result["dlq"] == 0
    records = read_topic(settings, topics.bars, expect=result["sent"])
    assert len(records) == result["sent"]
    per = by_ticker(records)
    assert len(per) == 25
    for values in per.values():
        starts = [v["start"] for v in values]
        assert starts == sorted(starts)
        Bar.from_dict(values[-1])


def test_cli_synthetic_run_prints_a_summary(make_settings: Callable[..., Settings], topics: Topics) -> None:
    settings = producer_settings(make_settings, topics)
    env = {
        "PATH": "/usr/bin:/bin",
        # the test broker's login (SASL on the policy-enforced broker), as the fixtures set it
        **{k: v for k, v in os.environ.items() if k.startswith(("TICKCAST_KAFKA__SASL_", "TICKCAST_KAFKA__SECURITY_"))},
        "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "TICKCAST_KAFKA__TOPIC_BARS": topics.bars,
        "TICKCAST_KAFKA__TOPIC_DLQ": topics.dlq,
        "TICKCAST_PRODUCER__METRICS_PORT": "0",
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tickcast",
            "produce",
            "--source",
            "synthetic",
            "--num-tickers",
            "7",
            "--rate",
            "max",
            "--max-bars",
            "700",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["sent"] == 700 and summary["source"] == "synthetic"
    assert len(read_topic(settings, topics.bars, expect=700)) == 700


def test_delivery_failures_surface(make_settings: Callable[..., Settings], unique_topic: Callable[..., str]) -> None:
    small = unique_topic("small", partitions=1, config={"max.message.bytes": "2048"})
    topics = Topics(small, unique_topic("dlq"), unique_topic("oc"))
    settings = producer_settings(make_settings, topics)
    publisher = BarPublisher(settings.kafka, settings.producer, "test")
    try:
        publisher.send_encoded("AAPL", os.urandom(8000), time.time())  # incompressible
        with pytest.raises(BrokerUnavailable, match="did not acknowledge"):
            publisher.flush(timeout=30)
        with pytest.raises(BrokerUnavailable):  # the failure sticks: nothing more is sent
            publisher.send_encoded("AAPL", b"{}", time.time())
    finally:
        publisher.client.close(timeout=5)
