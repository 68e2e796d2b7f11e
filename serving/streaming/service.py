"""The forecaster service: bars in, forecasts out, every forecast scored when its actuals arrive.

Threads: the consumer thread owns the Kafka consumer (polls, commits) and applies bars;
the dispatcher thread sends micro-batches to Serve and publishes the answers; up to
``max_in_flight`` worker threads only wait on the HTTP calls; lake flushes run on a
background thread. One lock guards the forecasting state, and no thread holds it while
waiting on Kafka or Serve. In order:

1. polls ``bars`` (its own consumer group) and appends each new bar to its ticker's ring
   buffer, scoring pending forecasts whose step starts at that bar;
2. marks the ticker *pending*: a dict ``ticker -> newest bar``, so a ticker whose forecast
   has not gone out yet is coalesced instead of queued (at most one entry per ticker);
3. dispatches pending tickers in micro-batches (``micro_batch_max`` tickers, or whatever
   gathered in ``micro_batch_wait_s``) as one ``POST /v1/forecast`` while the circuit to
   Serve is closed and a request slot is free;
4. publishes each answer as a :class:`~tickcast.contracts.Forecast` to ``forecasts`` (key =
   ticker) and buffers it for the lake;
5. every ``lake_flush_interval_s`` writes the buffered forecasts, scores and a snapshot of
   the score aggregates to the lake, then commits offsets. The committed offset of a partition is the
   first bar whose ticker still waits for a forecast, so a crash redelivers exactly the
   bars that were never covered by a persisted forecast.

A (ticker, last bar) is never forecast twice: the context store remembers the last bar
forecast per ticker, warm-started from the lake's ``forecasts`` table on start-up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tickcast.contracts import Bar, Forecast, Score, now_utc
from tickcast.errors import (
    BrokerUnavailable,
    ConfigError,
    InvalidBar,
    InvalidRecord,
    StoreUnavailable,
    TickcastError,
)
from tickcast.group_watch import MembershipWatch
from tickcast.service import ObservabilityServer, StopFlag
from tickcast.settings import Settings

from .calibration import AdaptiveCalibrator
from .client import CircuitOpen, ForecastBatch, ServeClient, ServeRejected, ServeUnavailable
from .context import ContextStore
from .metrics import metrics
from .scoring import Scorer

log = logging.getLogger(__name__)

#: Stop with an error when the lake stays unwritable this long (nothing is committed meanwhile).
STORE_OUTAGE_LIMIT_S = 300.0
#: How long one consumer poll may block when no records come.
POLL_TIMEOUT_MS = 100
#: Latencies kept in memory for :attr:`ForecasterService.latencies` (benchmarks, tests).
LATENCY_SAMPLES = 200_000


@dataclass(slots=True)
class BarRef:
    """The newest bar of a ticker waiting for a forecast, and the first offset it covers."""

    ticker: str
    start: datetime
    end: datetime
    value: float
    partition: tuple[str, int]
    first_offset: int
    produced_at: float | None  # Kafka record timestamp, epoch seconds
    received_at: float  # monotonic


@dataclass(slots=True)
class _InFlight:
    refs: list[BarRef]
    future: Future[ForecastBatch]
    sent_at: float


@dataclass
class _FlushJob:
    """One lake flush: the batch taken from the buffers and the offsets it lets us commit."""

    service: ForecasterService
    offsets: dict[tuple[str, int], int]
    forecasts: list[Forecast]
    scores: list[Score]
    started: float
    aggregates: list[Any] = field(default_factory=list)
    future: Future[None] | None = None
    error: StoreUnavailable | None = None

    def run(self) -> None:
        """Flush Kafka, then append forecasts, scores and aggregates to the lake (any thread)."""
        from .lakeio import write_aggregates, write_forecasts, write_scores

        service = self.service
        try:
            if service._producer is not None and self.forecasts:
                service._producer.flush(timeout=service.settings.kafka.request_timeout_s)
            # one commit per table: a retry after a failure may append a key again, and
            # readers see each (forecast_id, step) once
            write_forecasts(service.lake, self.forecasts)
            write_scores(service.lake, self.scores)
            if self.aggregates:
                cfg = service.cfg
                write_aggregates(service.lake, self.aggregates, now_utc(), cfg.interval, cfg.score_window)
        except StoreUnavailable as exc:
            self.error = exc


@dataclass
class RunStats:
    """What one :meth:`ForecasterService.run` did."""

    records: int = 0
    bars_new: int = 0
    bars_stale: int = 0
    bars_invalid: int = 0
    bars_other_interval: int = 0
    forecasts: int = 0
    requests: int = 0
    serve_errors: int = 0
    coalesced: int = 0
    duplicates_skipped: int = 0
    scores: int = 0
    flushes: int = 0
    commits: int = 0
    max_pending: int = 0
    max_in_flight_tickers: int = 0
    rejoins: int = 0
    stopped_by: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class ForecasterService:
    """Streaming inference over the bar stream.

    Args:
        settings: the process's settings.
        client: Serve client (default: from settings).
        lake: the lake (default: from settings).
        stop: stop flag (default: a fresh one; :meth:`main` installs signal handlers).
        consumer, producer: Kafka clients (default: from settings), injectable for tests.
    """

    def __init__(
        self,
        settings: Settings,
        client: ServeClient | None = None,
        lake: Any = None,
        stop: StopFlag | None = None,
        consumer: Any = None,
        producer: Any = None,
    ) -> None:
        f = settings.forecaster
        if f.micro_batch_max > settings.serving.max_series_per_request:
            raise ConfigError(
                "TICKCAST_FORECASTER__MICRO_BATCH_MAX",
                f"{f.micro_batch_max} is above Serve's TICKCAST_SERVING__MAX_SERIES_PER_REQUEST "
                f"({settings.serving.max_series_per_request})",
            )
        if f.context_length > settings.serving.max_series_length:
            raise ConfigError(
                "TICKCAST_FORECASTER__CONTEXT_LENGTH",
                f"{f.context_length} is above Serve's TICKCAST_SERVING__MAX_SERIES_LENGTH "
                f"({settings.serving.max_series_length})",
            )
        self.settings = settings
        self.cfg = f
        self.stop = stop or StopFlag()
        self.client = client or ServeClient.from_settings(settings)
        if lake is None:
            from tickcast.lake import Lake

            lake = Lake(settings.lake)
        self.lake = lake
        self._consumer = consumer
        self._producer = producer
        self.context = ContextStore(f.context_length, f.max_tickers)
        #: live band calibration (None when switched off): forecasts are calibrated as they are
        #: published, and every scored step feeds it back
        self.calibrator = (
            AdaptiveCalibrator(f.calibration_coverage, f.calibration_gamma, f.calibration_scope)
            if f.calibration
            else None
        )
        self.scorer = Scorer(f.score_window, max_pending=max(2 * f.horizon, 8), calibrator=self.calibrator)
        self.pending: dict[str, BarRef] = {}
        self._pending_since: float | None = None
        self._in_flight: list[_InFlight] = []
        # One lock for all forecasting state: the consumer thread (records, flushes) and the
        # dispatcher thread (requests, answers) take turns; the HTTP calls run outside it.
        self._cond = threading.Condition(threading.RLock())
        self._dispatching = False
        self._force = False
        self._fatal: BaseException | None = None
        self._rebalance_stuck = 0
        self._in_flight_tickers: set[str] = set()
        self._pool = ThreadPoolExecutor(f.max_in_flight, thread_name_prefix="serve")
        self._flush_pool = ThreadPoolExecutor(1, thread_name_prefix="flush")
        self._flush_job: _FlushJob | None = None
        self._forecast_buffer: list[Forecast] = []
        self._score_buffer: list[Score] = []
        self._positions: dict[tuple[str, int], int] = {}  # next offset after the last processed record
        self._last_flush = time.monotonic()
        self._store_down_since: float | None = None
        self._observability: ObservabilityServer | None = None
        self._started = False
        self.stats = RunStats()
        self._admin: Any = None
        # kafka-python's default session timeout is 10 s: a member normally holds its
        # partitions well within 30 s of joining (see tickcast.group_watch).
        self._watch = MembershipWatch(
            self._describe_group,
            self._topic_partitions,
            settings.kafka.topic_bars,
            grace_s=30.0,
            check_interval_s=10.0,
            rebalance_limit_s=120.0,
        )
        #: (bar_end_to_forecast_s, ingest_to_forecast_s) per published forecast, filled by Kafka's
        #: ack thread; the second is None for catch-up forecasts of bars read from the lake.
        self.latencies: deque[tuple[float, float | None]] = deque(maxlen=LATENCY_SAMPLES)
        self.m = metrics()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ForecasterService:
        """Warm-start from the lake, connect to Kafka and start the metrics server."""
        if self._started:
            return self
        from tickcast.kafka import ensure_topics, make_consumer, make_producer

        if self.cfg.warm_start:
            self.warm_start()
        ensure_topics(self.settings.kafka, [self.settings.kafka.topic_forecasts])
        if self._producer is None:
            self._producer = make_producer(self.settings.kafka)
        if self._consumer is None:
            self._consumer = make_consumer(self.settings.kafka, self.cfg.group_id)
        self._subscribe()
        if self.cfg.metrics_port:
            self._observability = ObservabilityServer(
                self.cfg.metrics_port, self.health, host=self.settings.metrics_host
            ).start()
        self._started = True
        log.info(
            "forecaster started: group %s, %s -> %s, %d tickers warm",
            self.cfg.group_id,
            self.settings.kafka.topic_bars,
            self.settings.kafka.topic_forecasts,
            len(self.context),
        )
        return self

    def _subscribe(self) -> None:
        self._consumer.subscribe([self.settings.kafka.topic_bars], listener=_rebalance_listener(self))
        # Fetch metadata once subscribed, before the first poll joins the group: the first
        # assignment then sees the topic's partitions. Otherwise kafka-python re-joins right
        # after the first join, and it can lose that re-join's result when a poll ends
        # mid-way (see _commit).
        self._consumer.topics()

    def _describe_group(self) -> Any:
        from tickcast.kafka import make_admin

        if self._admin is None:
            self._admin = make_admin(self.settings.kafka)
        return self._admin.describe_groups([self.cfg.group_id])[self.cfg.group_id]

    def _topic_partitions(self) -> set[int]:
        return set(self._consumer.partitions_for_topic(self.settings.kafka.topic_bars) or ())

    def _rejoin(self, reason: str) -> None:
        """Replace a consumer that fell out of its group without noticing; it holds no partition."""
        from tickcast.kafka import make_consumer

        log.warning("forecaster: %s; replacing the Kafka consumer to rejoin group %s", reason, self.cfg.group_id)
        self.stats.rejoins += 1
        self.m.rejoins.inc()
        try:
            self._consumer.close(autocommit=False)
        except Exception as exc:
            log.warning("closing the stale consumer: %s", exc)
        self._consumer = make_consumer(self.settings.kafka, self.cfg.group_id)
        self._subscribe()
        self._watch.reset()

    def close(self) -> None:
        """Finish in-flight requests, write the lake batch, commit, close clients in order."""
        if not self._started:
            for pool in (self._pool, self._flush_pool):
                pool.shutdown(wait=False)
            self.client.close()
            return
        self._started = False
        try:
            self._collect(wait=True)
            try:
                self.flush()
            except StoreUnavailable as exc:
                log.error("final lake write failed, offsets not committed: %s", exc.one_line())
        finally:
            for pool in (self._pool, self._flush_pool):
                pool.shutdown(wait=True)
            if self._producer is not None:
                self._producer.flush(timeout=self.settings.kafka.request_timeout_s)
                self._producer.close(timeout=self.settings.kafka.request_timeout_s)
            if self._consumer is not None:
                self._consumer.close(autocommit=False)
            if self._admin is not None:
                self._admin.close()
            self.client.close()
            if self._observability is not None:
                self._observability.stop()
            log.info("forecaster stopped")

    def __enter__(self) -> ForecasterService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``/healthz``: healthy unless the lake has been unwritable; Serve trouble shows as degraded."""
        breaker = self.client.breaker.state
        details = {
            "serve": "ok" if breaker == "closed" else breaker,
            "tickers": len(self.context),
            "pending": len(self.pending),
            "in_flight": sum(len(i.refs) for i in self._in_flight),
            "lake": "ok" if self._store_down_since is None else "failing",
        }
        return self._store_down_since is None, details

    # -- warm start --------------------------------------------------------------------------
    def warm_start(self) -> int:
        """Load per-ticker context, pending forecasts and score windows from the lake.

        Three reads, each of every ticker at once: the newest forecasts, the newest scores,
        and the last ``context_length`` bars up to each ticker's last forecast (see
        :mod:`.lakeio` for how far back they look).
        """
        from tickcast.lake import latest_bars

        from .lakeio import recent_forecasts, recent_scores, warm_lookback

        interval, target, horizon = self.cfg.interval, self.cfg.target, self.cfg.horizon
        t0 = time.monotonic()
        lookback = warm_lookback(interval, horizon, self.cfg.score_window)
        lasts, pending = recent_forecasts(self.lake, interval, horizon, lookback)
        tickers = sorted(set(self.lake.bar_tickers(interval)) | set(lasts))
        if not tickers:
            return 0
        until = {t: last + timedelta(microseconds=1) for t, last in lasts.items()}
        contexts = latest_bars(self.lake, interval, tickers, self.cfg.context_length, until, ["start", "end", target])
        windows = recent_scores(self.lake, interval, self.cfg.score_window, lookback)
        results = [(t, contexts.get(t), lasts.get(t), pending.get(t, []), windows.get(t, [])) for t in tickers]

        def recency(item: tuple[str, Any, datetime | None, list[Forecast], list[Score]]) -> datetime:
            _, bars, last, _, _ = item
            newest = bars.column("start")[-1].as_py() if bars is not None and bars.num_rows else None
            return max([t for t in (newest, last) if t is not None], default=datetime.min.replace(tzinfo=UTC))

        results.sort(key=recency)
        results = results[-self.cfg.max_tickers :]  # the most recently active tickers win the cap
        for ticker, bars, last, forecasts, scores in results:
            by_start: dict[datetime, float] = {}
            if bars is not None:
                bars = bars.filter(pc.is_valid(bars[target]))  # a nullable target (vwap) may have gaps
            if bars is not None and bars.num_rows:
                values = bars[target].to_numpy(zero_copy_only=False).astype(np.float64)
                last_bar = (bars["start"][-1].as_py(), bars["end"][-1].as_py())
                self.context.load_window(ticker, values, last_bar, last)
                if forecasts:  # the actuals at the pending forecasts' last bars, for their naive errors
                    origins = pa.array([f.last_bar_start for f in forecasts], bars.schema.field("start").type)
                    at = bars.filter(pc.is_in(bars["start"], value_set=origins))
                    by_start = dict(zip(at["start"].to_pylist(), at[target].to_pylist(), strict=True))
            else:
                self.context.load(ticker, [], [], [], last)
            for forecast in forecasts:
                last_actual = by_start.get(forecast.last_bar_start)
                if last_actual is not None:
                    self.scorer.add_forecast(forecast, float(last_actual), skip_until=last)
            self.scorer.load_scores(scores)
            if self.calibrator is not None:
                # the newest forecast's alpha per step is the state after every score before it
                self.calibrator.restore(forecasts)
        self.context.pop_evicted()
        log.info(
            "warm start: %d tickers, %d pending forecasts from the lake in %.1f s",
            len(self.context),
            self.scorer.pending_forecasts(),
            time.monotonic() - t0,
        )
        return len(self.context)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, max_records: int | None = None, timeout: float | None = None) -> RunStats:
        """Run until stopped, ``timeout`` seconds passed, or ``max_records`` bars were consumed
        and every forecast they asked for was published; then flush the lake and commit.

        May be called again to continue. Returns a copy of :attr:`stats`, which counts over
        every run of this service.
        """
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        first = self.stats.records  # stats accumulate over runs; max_records counts this run's
        dispatcher = threading.Thread(target=self._dispatcher, name="forecaster-dispatch", daemon=True)
        self._dispatching = True
        dispatcher.start()
        try:
            while True:
                if self._fatal is not None:
                    fatal, self._fatal = self._fatal, None
                    raise fatal
                if self.stop.is_set():
                    self.stats.stopped_by = "stop"
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    self.stats.stopped_by = "timeout"
                    break
                done_reading = max_records is not None and self.stats.records - first >= max_records
                if done_reading:
                    with self._cond:
                        if not self.pending and not self._in_flight:
                            self.stats.stopped_by = "max_records"
                            break
                        self._force = True  # nothing more will come: send what is pending now
                        self._cond.notify_all()
                        self._cond.wait(0.05)
                    continue
                limit = 5000 if max_records is None else min(5000, max_records - (self.stats.records - first))
                # A steady poll timeout: answers from Serve are handled by the dispatcher thread,
                # so the consumer never needs tiny timeouts (kafka-python can lose a group
                # re-join that a very short poll interrupts).
                records = self._consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=limit)
                reason = self._watch.check(assigned=bool(self._consumer.assignment()))
                if reason is not None:
                    self._rejoin(reason)
                with self._cond:
                    for tp, batch in records.items():
                        for record in batch:
                            self._on_record(tp, record)
                    if self.pending:
                        self._cond.notify_all()
                    self._maybe_flush()
                    self._update_gauges()
        finally:
            with self._cond:
                self._dispatching = False
                self._force = False
                self._cond.notify_all()
            dispatcher.join()
        try:
            self.flush()
        except StoreUnavailable as exc:
            log.error("lake write failed at the end of the run; kept for the next flush: %s", exc.one_line())
        self._update_gauges()
        return replace(self.stats)

    def _dispatcher(self) -> None:
        """The dispatcher thread: publishes Serve's answers and sends the next micro-batches."""
        with self._cond:
            try:
                while self._dispatching:
                    self._collect(wait=False)
                    self._dispatch(force=self._force)
                    self._update_gauges()
                    self._cond.wait(self._wake_in())
            except BaseException as exc:  # handed to the consumer thread, which raises it
                self._fatal = exc

    def _wake_in(self) -> float:
        """How long the dispatcher may sleep (an answer or a new bar wakes it earlier)."""
        if self.pending and len(self._in_flight) < self.cfg.max_in_flight:
            if not self.client.breaker.available():
                return max(0.01, self.client.breaker.retry_in())
            if self._pending_since is not None:
                return max(0.001, self._pending_since + self.cfg.micro_batch_wait_s - time.monotonic())
        return 0.5

    def _notify(self, _future: Any = None) -> None:
        with self._cond:
            self._cond.notify_all()

    def _on_record(self, tp: Any, record: Any) -> None:
        self.stats.records += 1
        key = (tp.topic, tp.partition)
        self._positions[key] = record.offset + 1
        try:
            bar = Bar.from_json(record.value)
        except (InvalidRecord, InvalidBar) as exc:
            # the producer validates and dead-letters; a bad record here is skipped, loudly
            self.stats.bars_invalid += 1
            self.m.bars.labels("invalid").inc()
            log.warning("skipping record %s[%d]@%d: %s", tp.topic, tp.partition, record.offset, exc.one_line())
            return
        if bar.interval != self.cfg.interval:
            self.stats.bars_other_interval += 1
            self.m.bars.labels("other_interval").inc()
            return
        value = getattr(bar, self.cfg.target)
        if value is None:
            self.stats.bars_invalid += 1
            self.m.bars.labels("invalid").inc()
            return
        if not self.context.append(bar.ticker, bar.start, bar.end, float(value)):
            self.stats.bars_stale += 1
            self.m.bars.labels("stale").inc()
            self._catch_up(bar.ticker, key, record.offset)
            return
        self.stats.bars_new += 1
        self.m.bars.labels("new").inc()
        for evicted in self.context.pop_evicted():
            self.pending.pop(evicted, None)
            self.scorer.drop_ticker(evicted)
            self.scorer.drop_windows(evicted)
            if self.calibrator is not None:
                self.calibrator.drop_ticker(evicted)
        scores = self.scorer.on_bar(bar.ticker, bar.start, float(value))
        if scores:
            self._score_buffer.extend(scores)
        if not self.context.needs_forecast(bar.ticker):
            self.stats.duplicates_skipped += 1
            self.m.duplicates_skipped.inc()
            return
        produced = record.timestamp / 1000.0 if record.timestamp and record.timestamp > 0 else None
        ref = BarRef(bar.ticker, bar.start, bar.end, float(value), key, record.offset, produced, time.monotonic())
        old = self.pending.get(bar.ticker)
        if old is not None:
            ref.first_offset = old.first_offset  # the older bar is covered by this forecast, not yet committed
            self.stats.coalesced += 1
            self.m.coalesced.inc()
        elif not self.pending:
            self._pending_since = ref.received_at
        self.pending[bar.ticker] = ref
        self.stats.max_pending = max(self.stats.max_pending, len(self.pending))

    def _catch_up(self, ticker: str, partition: tuple[str, int], offset: int) -> None:
        """A bar the context already holds (warm-started from bars the sink wrote) whose
        newest bar was never forecast: forecast the newest bar, once."""
        entry = self.context.get(ticker)
        if (
            entry is None
            or ticker in self.pending
            or ticker in self._in_flight_tickers
            or not self.context.needs_forecast(ticker)
        ):
            return
        assert entry.last_start is not None and entry.last_end is not None
        value = entry.last_value()
        if value is None:
            return
        ref = BarRef(ticker, entry.last_start, entry.last_end, value, partition, offset, None, time.monotonic())
        if not self.pending:
            self._pending_since = ref.received_at
        self.pending[ticker] = ref

    def _dispatch(self, force: bool = False) -> None:
        """Send micro-batches of pending tickers while request slots are free and Serve is up."""
        while self.pending and len(self._in_flight) < self.cfg.max_in_flight:
            now = time.monotonic()
            full = len(self.pending) >= self.cfg.micro_batch_max
            waited = self._pending_since is not None and now - self._pending_since >= self.cfg.micro_batch_wait_s
            if not (full or waited or force):
                return
            if not self.client.breaker.available():
                return
            refs: list[BarRef] = []
            series = []
            for ticker in list(self.pending)[: self.cfg.micro_batch_max]:
                ref = self.pending.pop(ticker)
                window = self.context.window(ticker)
                if window is None or len(window) == 0:
                    continue
                refs.append(ref)
                series.append((ticker, window))
            self._pending_since = now if self.pending else None
            if not refs:
                continue
            future = self._pool.submit(self.client.forecast_each, series, self.cfg.horizon, self.cfg.quantiles)
            future.add_done_callback(self._notify)
            self._in_flight.append(_InFlight(refs, future, now))
            self._in_flight_tickers.update(r.ticker for r in refs)
            self.stats.requests += 1
            self.stats.max_in_flight_tickers = max(
                self.stats.max_in_flight_tickers, sum(len(i.refs) for i in self._in_flight)
            )

    def _collect(self, wait: bool) -> None:
        """Handle finished requests: publish forecasts, or put the tickers back on failure."""
        remaining = []
        for item in self._in_flight:
            if not wait and not item.future.done():
                remaining.append(item)
                continue
            self._in_flight_tickers.difference_update(r.ticker for r in item.refs)
            try:
                batch = item.future.result()
            except CircuitOpen as exc:
                self._failed(item, "circuit_open", exc)
                continue
            except ServeUnavailable as exc:
                self._failed(item, "unavailable", exc)
                continue
            except ServeRejected as exc:
                # a request Serve will never accept: drop these bars rather than loop on them
                self.stats.serve_errors += 1
                self.m.serve_errors.labels("rejected").inc()
                log.error("Serve rejected a batch of %d tickers; dropping it: %s", len(item.refs), exc.one_line())
                continue
            self.m.serve_request.observe(time.monotonic() - item.sent_at)
            self._publish(item.refs, batch)
        self._in_flight = remaining

    def _failed(self, item: _InFlight, kind: str, exc: TickcastError) -> None:
        self.stats.serve_errors += 1
        self.m.serve_errors.labels(kind).inc()
        log.warning("forecast request for %d tickers failed: %s", len(item.refs), exc.one_line())
        for ref in item.refs:
            if ref.ticker not in self.context:
                continue  # evicted meanwhile
            newer = self.pending.get(ref.ticker)
            if newer is None:
                self.pending[ref.ticker] = ref
            else:
                newer.first_offset = min(newer.first_offset, ref.first_offset)
        if self.pending and self._pending_since is None:
            self._pending_since = time.monotonic()

    def _publish(self, refs: list[BarRef], batch: ForecastBatch) -> None:
        from kafka.errors import KafkaError

        issued = now_utc()
        topic = self.settings.kafka.topic_forecasts
        for ref, answer in zip(refs, batch.forecasts, strict=True):
            if answer is None:
                # Serve refused this one series (it was isolated by splitting the batch)
                self.stats.serve_errors += 1
                self.m.serve_errors.labels("rejected").inc()
                log.error("Serve rejected the context of %s at %s; skipping that bar", ref.ticker, ref.start)
                continue
            try:
                forecast = Forecast(
                    ticker=ref.ticker,
                    interval=self.cfg.interval,
                    model_id=batch.model_id,
                    model_version=batch.model_version,
                    issued_at=issued,
                    last_bar_start=ref.start,
                    bar_event_time=ref.end,
                    horizon=self.cfg.horizon,
                    target=self.cfg.target,
                    mean=answer.mean,
                    quantiles=answer.quantiles,
                )
            except InvalidRecord as exc:
                self.stats.serve_errors += 1
                self.m.serve_errors.labels("invalid").inc()
                log.error("Serve's forecast for %s is unusable: %s", ref.ticker, exc.one_line())
                continue
            entry = self.context.get(ref.ticker)
            if entry is not None and entry.last_forecast_start is not None and ref.start <= entry.last_forecast_start:
                # a forecast for this bar (or a newer one) is already out: never publish a duplicate
                self.stats.duplicates_skipped += 1
                self.m.duplicates_skipped.inc()
                continue
            self.context.mark_forecast(ref.ticker, ref.start)
            if self.calibrator is not None:
                forecast = self.calibrator.calibrate(forecast)
            try:
                future = self._producer.send(topic, key=ref.ticker.encode(), value=forecast.to_json())
            except KafkaError as exc:
                # nothing after the last commit is lost: a restart redelivers those bars
                raise BrokerUnavailable(
                    f"could not publish to {topic}: {type(exc).__name__}: {exc}",
                    "check the broker (TICKCAST_KAFKA__BOOTSTRAP_SERVERS) and restart the forecaster",
                ) from exc
            future.add_callback(self._acked, ref.end.timestamp(), ref.produced_at)
            future.add_errback(_publish_failed, forecast.id, ref.ticker)
            self._forecast_buffer.append(forecast)
            self.scorer.add_forecast(forecast, ref.value)
            self.stats.forecasts += 1

    def _acked(self, bar_end: float, produced_at: float | None, metadata: Any) -> None:
        """Record a forecast's latencies once Kafka acknowledged it on the forecasts topic
        (acks=all), so any consumer of that topic can read it. The lake has it up to
        ``lake_flush_interval_s`` later.

        Two figures, in seconds:

        - ingest to forecast, by Kafka's own timestamps: the forecast record's timestamp
          (``metadata.timestamp``: CreateTime, set by this process's client when it sent the
          forecast, or the broker's append time on a LogAppendTime topic) minus the bar
          record's (CreateTime, set by the producer's client when it sent the bar). Anyone can
          check it against the two topics; the acknowledgement itself follows within the
          producer's linger (20 ms) and a round trip, but this callback can run much later on a
          busy machine, which would add the callback's delay, not the platform's. Clamped at 0
          (only clock skew between hosts makes it negative). Absent for catch-up forecasts of
          bars read from the lake (no record of theirs was consumed);
        - bar end to forecast: from the bar's end (start + interval, market time) to now; for
          live sources, what a trader waits after the bar closes. A replay of old bars makes
          it their age, so the dashboard shows it only for live sources.

        Runs on the producer's I/O thread: histograms and deque appends are thread-safe.
        """
        now = time.time()
        self.m.forecasts_published.inc()
        self.m.bar_end_to_forecast.observe(now - bar_end)
        stamp = getattr(metadata, "timestamp", None)
        published = stamp / 1000 if isinstance(stamp, int) and stamp > 0 else now
        ingest = None if produced_at is None else max(0.0, published - produced_at)
        if ingest is not None:
            self.m.ingest_to_forecast.observe(ingest)
        self.latencies.append((now - bar_end, ingest))

    # -- lake and commits --------------------------------------------------------------------
    def safe_offsets(self) -> dict[tuple[str, int], int]:
        """Per partition, the offset up to which every bar is covered by a produced forecast."""
        safe = dict(self._positions)
        refs = list(self.pending.values()) + [r for i in self._in_flight for r in i.refs]
        for ref in refs:
            if ref.partition in safe:
                safe[ref.partition] = min(safe[ref.partition], ref.first_offset)
        return safe

    def flush(self) -> None:
        """Publish (flush Kafka), write forecasts, scores and aggregates to the lake, then commit;
        in this thread, after any background flush has finished.

        Raises:
            StoreUnavailable: when the lake write fails; nothing is committed then, and the
                batch stays buffered for the next flush.
        """
        self._finish_flush(wait=True)
        job = self._begin_flush()
        try:
            job.run()
        finally:
            self._end_flush(job)
        if job.error is not None:
            raise job.error

    def _maybe_flush(self) -> None:
        """The loop's periodic flush: lake writes run on a background thread, so a flush of
        thousands of files never stalls forecasting; the commit follows on this thread."""
        if self._flush_job is not None:
            self._finish_flush(wait=False)
        elif time.monotonic() - self._last_flush >= self.cfg.lake_flush_interval_s:
            job = self._begin_flush()
            job.future = self._flush_pool.submit(job.run)
            self._flush_job = job

    def _begin_flush(self) -> _FlushJob:
        """Snapshot the commit offsets and take the buffers: everything the offsets cover is in them."""
        self._last_flush = time.monotonic()
        job = _FlushJob(
            service=self,
            offsets=self.safe_offsets(),
            forecasts=self._forecast_buffer,
            scores=self._score_buffer,
            started=self._last_flush,
        )
        self._forecast_buffer, self._score_buffer = [], []
        changed = self.scorer.ticker_aggregates(only_changed=True)
        if changed:
            # each score_aggregates file is a full snapshot (readers take the newest one);
            # gauges only need the ones that moved
            models = self.scorer.model_aggregates()
            job.aggregates = self.scorer.ticker_aggregates() + models
            self._export_aggregates(changed, models)
        return job

    def _finish_flush(self, wait: bool) -> None:
        job = self._flush_job
        if job is None or job.future is None or (not wait and not job.future.done()):
            return
        self._flush_job = None
        try:
            job.future.result()
        finally:
            self._end_flush(job)

    def _end_flush(self, job: _FlushJob) -> None:
        """Commit after a good flush; put the batch back after a failed one."""
        if job.error is not None:
            self._forecast_buffer = job.forecasts + self._forecast_buffer
            self._score_buffer = job.scores + self._score_buffer
            now = time.monotonic()
            self._store_down_since = self._store_down_since or now
            log.warning("lake write failed (will retry, nothing committed): %s", job.error.one_line())
            if now - self._store_down_since > STORE_OUTAGE_LIMIT_S:
                raise job.error
            return
        self._store_down_since = None
        self._commit(job.offsets)
        self.stats.flushes += 1
        self.stats.scores += len(job.scores)
        self.m.scores_written.inc(len(job.scores))
        self.m.lake_flush.observe(time.monotonic() - job.started)

    def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        if not offsets or self._consumer is None:
            return
        from kafka.structs import OffsetAndMetadata, TopicPartition

        assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        commit = {
            TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items() if (t, p) in assigned
        }
        if not commit:
            return
        from kafka.errors import KafkaError, RebalanceInProgressError

        try:
            self._consumer.commit(commit)
        except KafkaError as exc:
            # e.g. a rebalance in progress: the next flush commits (offsets only move forward),
            # and whatever a new owner re-reads meanwhile is deduplicated by the lake warm start
            log.warning("offset commit failed, retried at the next flush: %s", exc)
            self._rebalance_stuck = self._rebalance_stuck + 1 if isinstance(exc, RebalanceInProgressError) else 0
            if self._rebalance_stuck >= 2:
                # kafka-python 3.0 can lose the result of a re-join when a poll times out between
                # JoinGroup and SyncGroup; the member then stays "rebalancing" and gets no records.
                # Leaving and joining again recovers it.
                log.warning("consumer stuck in a rebalance; leaving and re-joining the group")
                self._rebalance_stuck = 0
                self._consumer.unsubscribe()
                self._subscribe()
            return
        self._rebalance_stuck = 0
        self.stats.commits += 1

    def _export_aggregates(self, tickers: list[Any], models: list[Any]) -> None:
        def put(gauge: Any, labels: tuple[str, ...], value: float | None) -> None:
            if value is not None:
                gauge.labels(*labels).set(value)

        for agg in models:
            labels: tuple[str, ...] = (agg.model_id, agg.model_version)
            put(self.m.mase, labels, agg.mase)
            put(self.m.wql, labels, agg.wql)
            put(self.m.coverage, labels, agg.coverage_80)
            put(self.m.live_coverage, (*labels, "raw"), agg.coverage_80)
            put(self.m.live_coverage, (*labels, "calibrated"), agg.calibrated_coverage)
            put(self.m.calibrated_wql, labels, agg.calibrated_wql)
        if self.calibrator is not None:
            for (model_id, version), alpha in self.calibrator.mean_alpha().items():
                self.m.calibration_alpha.labels(model_id, version).set(alpha)
        if self.cfg.ticker_metrics:
            for agg in tickers:
                labels = (agg.ticker, agg.model_id, agg.model_version)
                put(self.m.ticker_mase, labels, agg.mase)
                put(self.m.ticker_wql, labels, agg.wql)
                put(self.m.ticker_coverage, labels, agg.coverage_80)
                put(self.m.ticker_calibrated_coverage, labels, agg.calibrated_coverage)

    def _update_gauges(self) -> None:
        self.m.tickers.set(len(self.context))
        self.m.pending.set(len(self.pending))
        self.m.in_flight.set(sum(len(i.refs) for i in self._in_flight))
        self.m.pending_scores.set(self.scorer.pending_forecasts())
        self.m.circuit_open.set(0 if self.client.breaker.state == "closed" else 1)

    def _on_revoked(self, revoked: list[Any]) -> None:
        """Partitions are being revoked. Nothing blocking happens here: kafka-python calls this
        on its I/O thread in the middle of the group protocol (a blocking commit there fails,
        and slow work stalls the rebalance). The pending state is kept until the new
        assignment is known (:meth:`_on_assigned`); offsets stay at the last periodic commit."""
        log.info("%d partitions of %s revoked", len(revoked), self.settings.kafka.topic_bars)

    def _on_assigned(self, assigned: list[Any]) -> None:
        """After a rebalance: forget the bars of partitions that went elsewhere. Partitions
        that came back keep their pending tickers (an eager rebalance revokes everything,
        even when the same partitions return, and the consumer need not redeliver)."""
        keep = {(tp.topic, tp.partition) for tp in assigned}
        with self._cond:  # kafka-python's I/O thread; the dispatcher may be running
            for ticker in [t for t, ref in self.pending.items() if ref.partition not in keep]:
                del self.pending[ticker]
            for key in [k for k in self._positions if k not in keep]:
                del self._positions[key]
        log.info("assigned %d partitions of %s", len(assigned), self.settings.kafka.topic_bars)


def _publish_failed(forecast_id: str, ticker: str, exc: Exception) -> None:
    # the producer retries until delivery.timeout; this forecast is still in the lake
    log.error("forecast %s of %s was not delivered to Kafka: %s", forecast_id, ticker, exc)


def _rebalance_listener(service: ForecasterService) -> Any:
    """A kafka-python rebalance listener keeping the pending state consistent across rebalances."""
    from kafka import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        def on_partitions_revoked(self, revoked: Any) -> None:
            if revoked:
                service._on_revoked(list(revoked))

        def on_partitions_assigned(self, assigned: Any) -> None:
            service._on_assigned(list(assigned))

    return Listener()


def main(settings: Settings, max_records: int | None = None, timeout: float | None = None) -> int:
    """Run the forecaster until SIGTERM/SIGINT (the ``tickcast forecaster`` command)."""
    stop = StopFlag().install()
    service = ForecasterService(settings, stop=stop)
    try:
        stats = service.run(max_records=max_records, timeout=timeout)
    finally:
        service.close()
    log.info("forecaster: %d records, %d forecasts, %d scores", stats.records, stats.forecasts, stats.scores)
    return 0
