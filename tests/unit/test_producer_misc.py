"""Checkpoints, key redaction, open/close parsing, the CLI wiring and the DLQ sender's back-off,
bounds and truncation (no broker needed: a failing stand-in client)."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from producer import open_close as oc
from producer.backfill import BackfillPlan
from producer.checkpoint import BackfillCheckpoint, TickerProgress, plan_key
from producer.cli import options_from_args
from producer.redaction import install_log_scrubber, redact
from tickcast.cli import build_parser
from tickcast.errors import BrokerUnavailable, InvalidBar, InvalidRecord
from tickcast.lake import Lake
from tickcast.settings import LakeSettings, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_checkpoint_round_trip_in_the_lake(tmp_path: Path) -> None:
    lake = Lake(LakeSettings(url=f"file://{tmp_path}"))
    cp = BackfillCheckpoint("abc", {"tickers": ["AAPL"]}, baseline={0: 5, 2: 9})
    cp.ticker("AAPL").last_t = 1704153600000
    cp.ticker("MSFT").done = True
    cp.save(lake)
    assert lake.exists("_state/producer/backfill-abc.json")
    loaded = BackfillCheckpoint.load(lake, "abc")
    assert loaded is not None and loaded.baseline == {0: 5, 2: 9}
    assert loaded.tickers["AAPL"] == TickerProgress(last_t=1704153600000)
    assert loaded.tickers["MSFT"].done and loaded.updated_at
    assert BackfillCheckpoint.load(lake, "other") is None


def test_plan_key_is_stable_and_sensitive() -> None:
    a = BackfillPlan.for_days(("MSFT", "AAPL"), "minute", date(2024, 1, 2), date(2024, 1, 3))
    b = BackfillPlan.for_days(("AAPL", "MSFT"), "minute", date(2024, 1, 2), date(2024, 1, 3))
    assert a.key("bars") == b.key("bars")  # ticker order does not matter
    assert a.key("bars") != a.key("other")
    assert a.key("bars") != BackfillPlan.for_days(("AAPL",), "minute", date(2024, 1, 2), date(2024, 1, 3)).key("bars")
    assert (
        a.start == datetime(2024, 1, 2, tzinfo=UTC)
        and a.end_ms == int(datetime(2024, 1, 4, tzinfo=UTC).timestamp() * 1000) - 1
    )
    assert plan_key(x=1) == plan_key(x=1) != plan_key(x=2)


def test_redact_masks_keys_query_params_and_bearer_tokens() -> None:
    text = "GET /v2/aggs?cursor=x&apiKey=abc123&limit=5 Authorization: Bearer tok.en-1 secretvalue"
    out = redact(text, "secretvalue")
    assert "abc123" not in out and "tok.en-1" not in out and "secretvalue" not in out
    assert "apiKey=***" in out and "limit=5" in out


def test_log_scrubber_rewrites_messages_args_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    secret = "Zq-scrub-me-42"
    install_log_scrubber(secret)
    log = logging.getLogger("tickcast.test.scrub")
    caplog.set_level(logging.DEBUG)
    log.info("url %s", f"http://x/?k={secret}")
    try:
        raise RuntimeError(f"boom {secret}")
    except RuntimeError:
        log.exception("failed")
    assert secret not in caplog.text
    for record in caplog.records:
        assert secret not in record.getMessage() and secret not in (record.exc_text or "")


def test_open_close_parse_and_lake_table(tmp_path: Path) -> None:
    body = {
        "status": "OK",
        "from": "2024-01-02",
        "symbol": "AAPL",
        "open": 10.0,
        "high": 11.0,
        "low": 9.5,
        "close": 10.5,
        "volume": 1000,
        "preMarket": 9.9,
        "afterHours": 10.6,
    }
    row = oc.parse_open_close(body, "AAPL", date(2024, 1, 2))
    assert row["pre_market"] == 9.9 and row["after_hours"] == 10.6 and row["date"] == "2024-01-02"
    assert b'"schema_version":1' in oc.to_record(row)
    lake = Lake(LakeSettings(url=f"file://{tmp_path}"))
    first = oc.write_open_close(lake, [row])
    assert first is not None and oc.write_open_close(lake, []) is None
    corrected = {**row, "close": 10.4}
    again = oc.write_open_close(lake, [corrected, oc.parse_open_close(body, "MSFT", date(2024, 1, 2))])
    assert again is not None and again > first  # a re-run replaces the day (MERGE on ticker, date)
    table = oc.read_open_close(lake)
    assert table.num_rows == 2 and table["ticker"].to_pylist() == ["AAPL", "MSFT"]
    assert table["close"].to_pylist() == [10.4, 10.5] and "period" not in table.column_names
    assert oc.read_open_close(lake, "AAPL")["date"].to_pylist() == ["2024-01-02"]
    assert oc.read_open_close(lake, "AAPL", as_of=first)["close"].to_pylist() == [10.5]  # time travel
    with pytest.raises(InvalidRecord):
        oc.parse_open_close({**body, "open": None}, "AAPL", date(2024, 1, 2))
    with pytest.raises(InvalidBar):
        oc.parse_open_close({**body, "low": 12.0}, "AAPL", date(2024, 1, 2))
    no_extended = oc.parse_open_close(
        {k: v for k, v in body.items() if k not in ("preMarket", "afterHours")}, "AAPL", date(2024, 1, 2)
    )
    assert no_extended["pre_market"] is None


def test_cli_arguments_become_options() -> None:
    parser = build_parser()
    args = parser.parse_args(
        [
            "produce",
            "--source",
            "replay",
            "--tickers",
            "aapl, msft",
            "--from",
            "2024-01-02",
            "--speed",
            "max",
            "--max-bars",
            "10",
        ]
    )
    opts = options_from_args(load_settings(), args)
    assert opts.source == "replay" and opts.tickers == ("AAPL", "MSFT") and opts.speed is None
    assert opts.start == date(2024, 1, 2) and opts.max_bars == 10
    with pytest.raises(SystemExit):
        parser.parse_args(["produce", "--from", "2024-13-40"])


def test_python_dash_m_producer_and_polygon_server_help() -> None:
    out = subprocess.run([sys.executable, "-m", "producer", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "--source" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "tickcast", "polygon-server", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0 and "--fault" in out.stdout


def test_missing_api_key_fails_fast_with_one_line() -> None:
    """Checked before any connection: no broker is needed to learn the key is missing."""
    out = subprocess.run(
        [sys.executable, "-m", "producer", "--source", "polygon-rest", "--tickers", "AAPL", "--from", "2024-01-02"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"},
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("tickcast: error: setting TICKCAST_POLYGON__API_KEY")


class _BrokenClient:
    """A DLQ Kafka client whose every send fails at once, until ``healed``; counts the calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.times: list[float] = []
        self.healed = False
        self.sent: list[bytes] = []

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]) -> Any:
        self.calls += 1
        self.times.append(time.monotonic())
        if not self.healed:
            raise RuntimeError("topic not writable")
        self.sent.append(value)
        return _Done()

    def close(self, timeout: float | None = None) -> None:
        pass


class _Done:
    def get(self, timeout: float | None = None) -> None:
        return None


def _dead_letters(client: _BrokenClient, unhealthy_after_s: float = 0.3) -> Any:
    from producer.metrics import get_metrics
    from producer.sink import DeadLetters
    from tickcast.settings import KafkaSettings, ProducerSettings

    producer = ProducerSettings(dlq_max_bytes=8192, dlq_unhealthy_after_s=unhealthy_after_s)
    return DeadLetters(KafkaSettings(), producer, "dlq", get_metrics(), client=client, backoff_max_s=0.4)


def test_dead_letters_back_off_bound_their_queue_and_never_drop_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    import producer.sink as sink

    monkeypatch.setattr(sink, "DLQ_MAX_QUEUED", 5)
    client = _BrokenClient()
    dlq = _dead_letters(client)
    try:
        with dlq._cond:  # (reentrant) the sender thread takes nothing until all eight are queued
            for i in range(8):
                dlq.put(str(i).encode(), b"AAPL", [("reason", b"r")])
        assert dlq.dropped == 3  # the three oldest made room; counted and logged
        deadline = time.monotonic() + 20
        while client.calls < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        ok, details = dlq.health()
        assert not ok and details["dlq_waiting"] == 5 and "topic not writable" in details["dlq_error"]
        # each failed round waits 0.2-0.4 s (full jitter under the 0.4 s cap) before the next: a
        # sender that spun would call again at once
        gaps = [b - a for a, b in zip(client.times, client.times[1:], strict=False)]
        assert len(gaps) >= 3 and min(gaps) >= 0.2, gaps
        client.healed = True
        # wait_idle does not wait on a failing DLQ (the bars' flush must not): poll for the next
        # round, at most 0.4 s away, which delivers the queue in order
        deadline = time.monotonic() + 10
        while dlq.health()[1]["dlq_waiting"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.sent == [b"3", b"4", b"5", b"6", b"7"]
        assert dlq.health()[0]
    finally:
        with contextlib.suppress(BrokerUnavailable):  # a failed assertion must not leave it retrying
            dlq.close(timeout=0.5)


def test_dead_letters_truncate_to_the_budget_and_fail_loudly_at_close() -> None:
    from producer.sink import DLQ_FRAMING_BYTES

    client = _BrokenClient()
    dlq = _dead_letters(client, unhealthy_after_s=60)
    dlq.put(b"x" * 100_000, None, [("reason", b"r")])
    assert dlq.health()[0]  # failing, not for long
    with pytest.raises(BrokerUnavailable, match="1 rejected record"):
        dlq.close(timeout=0.5)
    client = _BrokenClient()
    client.healed = True
    dlq = _dead_letters(client)
    dlq.put(b"x" * 100_000, None, [("reason", b"r")])
    dlq.close(timeout=5)
    assert client.sent == [b"x" * (8192 - DLQ_FRAMING_BYTES)]
