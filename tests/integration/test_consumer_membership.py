"""A sink that falls out of its consumer group without noticing is replaced (tickcast.group_watch).

Under heavy load kafka-python 3.0 was seen dropped from its group for missed heartbeats and
never rejoining: it polled forever with no partitions while nobody consumed the topic
(``bench/sink.py``, load about 10 on 2 cores). That state cannot be produced on demand, so the
first test puts the client in it directly: its coordinator never (re)joins, exactly the
outward behaviour seen. The second shows what the watch must not touch: a standby member of a
group with more members than partitions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from test_consumer_sink import assert_exact, bar_values, produce, sink_settings

import consumer.sink as sink_module
from consumer.sink import Sink
from tickcast.service import StopFlag
from tickcast.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def fast_watch(sink: Sink) -> Sink:
    """Ask the broker after 5 s without partitions, then every second (defaults: 30 s and 10 s).

    5 s: a member that has just (re)joined must show in the group before the broker is asked,
    also on a loaded machine (a join registers in well under a second when idle).
    """
    sink._watch.grace_s = 5.0
    sink._watch.check_interval_s = 1.0
    return sink


def test_a_consumer_that_never_rejoins_is_replaced_and_the_topic_drains(
    settings: Settings, unique_topic: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    topic, dlq = unique_topic("bars", partitions=2), unique_topic("dlq", partitions=1)
    s = sink_settings(settings, topic, dlq, session_timeout_s=6.0)
    produce(s, topic, bar_values(500))
    made: list[Any] = []
    real_make_consumer = sink_module.make_consumer

    def first_one_never_joins(*args: Any, **kwargs: Any) -> Any:
        consumer = real_make_consumer(*args, **kwargs)
        if not made:
            # The failure seen under load: the client polls but its group join never completes.
            consumer._coordinator.ensure_active_group = lambda timeout_ms=None: False
        made.append(consumer)
        return consumer

    monkeypatch.setattr(sink_module, "make_consumer", first_one_never_joins)
    sink = fast_watch(Sink(s))
    stats = sink.run(max_records=500, timeout=90)

    assert len(made) == 2 and stats.rejoins == 1
    assert stats.committed == 500
    assert_exact(s, 500)
    view = sink._watch.last_view
    assert view is not None and view.state in ("Empty", "Stable", "Dead") and view.owned == frozenset()


def test_a_standby_member_of_a_group_with_more_members_than_partitions_is_left_alone(
    settings: Settings, unique_topic: Callable[..., str]
) -> None:
    topic, dlq = unique_topic("bars", partitions=1), unique_topic("dlq", partitions=1)
    s = sink_settings(settings, topic, dlq, session_timeout_s=6.0)
    produce(s, topic, bar_values(200))
    stops = [StopFlag(), StopFlag()]
    sinks = [fast_watch(Sink(s, stop=stop)) for stop in stops]
    errors: list[BaseException] = []

    def run(sink: Sink) -> None:
        try:
            sink.run(timeout=60)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(sink,), daemon=True) for sink in sinks]
    for thread in threads:
        thread.start()
    # Long enough for the idle member to be checked several times (grace 5 s, every 1 s).
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        idle = [sink for sink in sinks if sink._running and not sink._parts]
        if idle and idle[0]._watch.last_view is not None and sum(x.stats.committed for x in sinks) >= 200:
            checked_at = time.monotonic()
            while time.monotonic() - checked_at < 6:
                time.sleep(0.5)
            break
        time.sleep(0.5)
    for stop in stops:
        stop.set()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert sum(sink.stats.committed for sink in sinks) == 200
    assert [sink.stats.rejoins for sink in sinks] == [0, 0]
    standby = [sink for sink in sinks if sink._watch.last_view is not None]
    assert standby and all(sink._watch.last_view.owned == frozenset({0}) for sink in standby)  # type: ignore[union-attr]
    assert_exact(s, 200)
