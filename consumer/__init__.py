"""Kafka to lake: the exactly-once Parquet sink (``tickcast consume``) and compaction (``tickcast compact``).

See :mod:`consumer.sink` for why every bar lands exactly once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from consumer.compact import CompactionResult, compact
    from consumer.sink import Sink, SinkStats, serve

__all__ = ["CompactionResult", "Sink", "SinkStats", "compact", "serve"]


def __getattr__(name: str) -> Any:
    # Lazy: `tickcast --help` imports consumer.cli, which must not pull in pyarrow and kafka.
    if name in ("Sink", "SinkStats", "serve"):
        from consumer import sink

        return getattr(sink, name)
    if name in ("CompactionResult", "compact"):
        from consumer import compact as module

        return getattr(module, name)
    raise AttributeError(name)
