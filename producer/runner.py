"""``tickcast produce``: build the chosen source and the Kafka publisher, run, shut down in order.

Lifecycle: topics ensured, metrics served on ``producer.metrics_port``, SIGTERM/SIGINT set a
stop flag (the source finishes its current bar or page), then the publisher is flushed
and closed, so every bar handed to Kafka is acknowledged or the command fails.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from tickcast.errors import ConfigError
from tickcast.settings import Settings

log = logging.getLogger(__name__)

SOURCES = ("polygon-rest", "polygon-ws", "replay", "synthetic")


@dataclass(frozen=True)
class ProduceOptions:
    """Everything ``tickcast produce`` takes on the command line (None: use the settings/default)."""

    source: str
    tickers: tuple[str, ...] = ()
    interval: str = "minute"
    start: date | None = None
    end: date | None = None
    speed: float | None = 1.0
    file: str | None = None
    rate: float | None = 1000.0
    num_tickers: int = 100
    max_bars: int | None = None
    duration: float | None = None
    open_close: bool = False
    fresh: bool = False
    progress: bool = True
    seed: int = 7
    channels: tuple[str, ...] = field(default_factory=tuple)
    resume: bool = False
    live_tail: int | None = None
    linger: bool = False


def _range(opts: ProduceOptions) -> tuple[datetime | None, datetime | None]:
    start = datetime(opts.start.year, opts.start.month, opts.start.day, tzinfo=UTC) if opts.start else None
    end = datetime(opts.end.year, opts.end.month, opts.end.day, tzinfo=UTC) + timedelta(days=1) if opts.end else None
    return start, end


def produce(settings: Settings, opts: ProduceOptions, stop: Any = None) -> dict[str, Any]:
    """Run one producer to completion (or stop); returns a summary of what it did."""
    from producer.sink import BarPublisher
    from tickcast.kafka import ensure_topics
    from tickcast.service import ObservabilityServer, StopFlag

    preflight(settings, opts)
    if stop is None:
        stop = StopFlag().install()
    topics = [settings.kafka.topic_bars, settings.kafka.topic_dlq]
    if opts.source == "polygon-rest" and opts.open_close:
        topics.append(settings.kafka.topic_open_close)
    ensure_topics(settings.kafka, topics)

    publisher = BarPublisher(settings.kafka, settings.producer, opts.source)
    observability = ObservabilityServer(
        settings.producer.metrics_port, health_check(publisher, stop, opts.source), host=settings.metrics_host
    ).start()
    try:
        with publisher:
            result = _dispatch(settings, opts, publisher, stop)
        if opts.linger and not stop.is_set():
            # The platform keeps a finished replay up (healthy, metrics served) until it is stopped,
            # so a source running out of data is not mistaken for a crash.
            log.info("source finished; lingering until stopped")
            while not stop.wait(1.0):
                pass
    finally:
        observability.stop()
    summary = asdict(result) if is_dataclass(result) and not isinstance(result, type) else dict(result)
    summary = {"source": opts.source, "sent": publisher.sent, "dlq": publisher.rejected, **summary}
    return summary


def health_check(publisher: Any, stop: Any, source: str) -> Callable[[], tuple[bool, dict[str, Any]]]:
    """The producer's ``/healthz``: unhealthy when stopping or when the DLQ has kept failing
    past ``producer.dlq_unhealthy_after_s``."""

    def check() -> tuple[bool, dict[str, Any]]:
        dlq_ok, details = publisher.health()
        ok = dlq_ok and not stop.is_set()
        return ok, {"source": source, "sent": publisher.sent, "rejected": publisher.rejected, **details}

    return check


def preflight(settings: Settings, opts: ProduceOptions) -> None:
    """Check what needs no connection (key, tickers, dates, file) before touching Kafka.

    Raises:
        ConfigError: naming the option or setting to fix.
    """
    if opts.source not in SOURCES:
        raise ConfigError("--source", f"{opts.source!r} is not one of {', '.join(SOURCES)}")
    tickers = opts.tickers or tuple(settings.producer.tickers)
    if opts.source.startswith("polygon-"):
        key = settings.polygon.api_key
        if key is None or not key.get_secret_value():
            raise ConfigError(
                "TICKCAST_POLYGON__API_KEY",
                "is not set; the Polygon sources need an API key",
                "set TICKCAST_POLYGON__API_KEY (or point TICKCAST_POLYGON__REST_BASE_URL at "
                "`tickcast polygon-server` and use its key)",
            )
    if opts.source == "polygon-rest":
        if not tickers:
            raise ConfigError(
                "--tickers", "a backfill needs tickers", "pass --tickers AAPL,MSFT or set TICKCAST_PRODUCER__TICKERS"
            )
        if opts.start is None:
            raise ConfigError("--from", "a backfill needs a start date", "pass --from YYYY-MM-DD")
        if opts.end is not None and opts.end < opts.start:
            raise ConfigError("--to", f"{opts.end} is before --from {opts.start}")
    if opts.source == "polygon-ws" and opts.interval not in ("second", "minute"):
        raise ConfigError("--interval", "the WebSocket feed has second (A) and minute (AM) bars only")
    if opts.source == "replay" and opts.file and not Path(opts.file).exists():
        raise ConfigError("--file", f"{opts.file} does not exist", "pass an existing Parquet or CSV file")


def _dispatch(settings: Settings, opts: ProduceOptions, publisher: Any, stop: Any) -> Any:
    start, end = _range(opts)
    tickers = opts.tickers or tuple(settings.producer.tickers)
    if opts.source == "synthetic":
        from producer.synthetic import SyntheticMarket, run_synthetic, ticker_names

        market = SyntheticMarket(tickers or ticker_names(opts.num_tickers), opts.interval, opts.start, opts.seed)
        return run_synthetic(market, publisher, opts.rate, opts.max_bars, opts.duration, stop)
    if opts.source == "replay":
        from producer.replay import Replay, file_batches, lake_batches

        if opts.file:
            batches = file_batches(opts.file, opts.interval, tickers, start, end)
        else:
            from tickcast.lake import Lake

            batches = lake_batches(Lake(settings.lake), opts.interval, tickers, start, end)
        if opts.resume or opts.live_tail:
            from producer.replay import resumable_batches

            batches = resumable_batches(settings.kafka, batches, opts.resume, opts.live_tail)
        return Replay(publisher, opts.speed, stop).run(batches, opts.max_bars, opts.duration)

    from producer.polygon_rest import PolygonRest

    if opts.source == "polygon-rest":
        from producer.backfill import Backfill, BackfillPlan
        from tickcast.lake import Lake

        assert opts.start is not None  # checked by preflight
        last = opts.end or datetime.now(UTC).date()
        plan = BackfillPlan.for_days(tickers, opts.interval, opts.start, last, opts.open_close)
        with PolygonRest(settings.polygon, stop=stop) as rest:
            backfill = Backfill(settings, plan, publisher, rest, Lake(settings.lake), stop, opts.progress, opts.fresh)
            return backfill.run(opts.max_bars)

    from producer.polygon_ws import PolygonStream

    channels = opts.channels or (("A",) if opts.interval == "second" else ("AM",))
    with PolygonRest(settings.polygon, stop=stop) as rest:
        stream = PolygonStream(settings.polygon, publisher, tickers, channels, rest, stop)
        return stream.run(opts.max_bars, opts.duration)


def print_summary(summary: dict[str, Any]) -> None:
    """One JSON line on stdout: what the run did (scripts and tests read it)."""
    print(json.dumps(summary, default=str), file=sys.stdout, flush=True)
