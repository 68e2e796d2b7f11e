"""The platform's replay: resumes after what the topic holds, and paces only the live tail."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from producer_testkit import Topics, by_ticker, make_topics, producer_settings, read_topic

from producer.runner import ProduceOptions, produce
from tickcast.settings import Settings

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "training" / "data" / "daily_real.parquet"


@pytest.fixture
def topics(unique_topic: Callable[..., str]) -> Topics:
    return make_topics(unique_topic)


def test_a_stopped_replay_resumes_without_gaps_or_duplicates(
    make_settings: Callable[..., Settings], topics: Topics
) -> None:
    settings = producer_settings(make_settings, topics)
    window = {"file": str(SAMPLE), "interval": "day", "speed": None, "resume": True}
    first = produce(settings, ProduceOptions(source="replay", max_bars=301, **window))  # type: ignore[arg-type]
    assert first["sent"] == 301
    second = produce(settings, ProduceOptions(source="replay", **window))  # type: ignore[arg-type]
    third = produce(settings, ProduceOptions(source="replay", **window))  # type: ignore[arg-type]
    assert third["sent"] == 0, "a finished replay resumed must publish nothing"
    total = first["sent"] + second["sent"]
    got = by_ticker(read_topic(settings, topics.bars, expect=total))
    import pyarrow.parquet as pq

    sample = pq.read_table(SAMPLE).to_pandas()
    for ticker, values in got.items():
        starts = [v["start"] for v in values]
        assert len(starts) == len(set(starts)), f"{ticker}: duplicated bars"
        assert starts == sorted(starts)
        assert len(starts) == int((sample["ticker"] == ticker).sum()), f"{ticker}: gaps"


def test_live_tail_plays_history_fast_and_paces_the_tail(
    make_settings: Callable[..., Settings], topics: Topics
) -> None:
    settings = producer_settings(make_settings, topics)
    started = time.monotonic()
    # 3 paced bar times at one trading day per 0.25 s, after ~10k bars as fast as possible
    summary = produce(
        settings,
        ProduceOptions(source="replay", file=str(SAMPLE), interval="day", speed=86400 * 4.0, live_tail=3),
    )
    elapsed = time.monotonic() - started
    assert summary["sent"] == 10062
    assert elapsed >= 0.4, "the tail was not paced"
