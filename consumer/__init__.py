"""Kafka to lake: the exactly-once sink into the Delta ``bars`` table (``tickcast consume``).

See :mod:`consumer.sink` for why every bar lands exactly once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from consumer.sink import Sink, SinkStats, serve

__all__ = ["Sink", "SinkStats", "serve"]


def __getattr__(name: str) -> Any:
    # Lazy: `tickcast --help` imports consumer.cli, which must not pull in pyarrow and kafka.
    if name in ("Sink", "SinkStats", "serve"):
        from consumer import sink

        return getattr(sink, name)
    raise AttributeError(name)
