"""The polygon-rest source: a resumable, rate-limited backfill of many tickers.

For each ticker in turn, pages of aggregates are fetched oldest first and published in
order; after each page the producer flushes and checkpoints (see
:mod:`producer.checkpoint`). Malformed records and bars that break the contract go to the
DLQ. A ticker with no bars at all in the range is looked up; if Polygon does not know
it, the backfill stops with a :class:`~tickcast.errors.SourceError` naming it. With
``open_close`` the daily open/close summary of every weekday in the range follows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from producer import open_close as oc
from producer.checkpoint import BackfillCheckpoint, TopicTail, plan_key
from producer.metrics import get_metrics
from producer.polygon_rest import PolygonRest, agg_to_bar, to_ms
from producer.sink import BarPublisher
from tickcast.errors import InvalidBar, InvalidRecord, SourceError
from tickcast.lake import Lake
from tickcast.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "polygon-rest"


def day_range(first: date, last: date) -> list[date]:
    """Every calendar day from ``first`` to ``last`` inclusive."""
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


@dataclass(frozen=True)
class BackfillPlan:
    """What to backfill: ``tickers`` at ``interval`` for bars starting in ``[start, end)``."""

    tickers: tuple[str, ...]
    interval: str
    start: datetime
    end: datetime
    open_close: bool = False

    @classmethod
    def for_days(
        cls, tickers: tuple[str, ...], interval: str, first: date, last: date, open_close: bool = False
    ) -> BackfillPlan:
        """The plan covering whole UTC days ``first`` to ``last`` inclusive."""
        start = datetime(first.year, first.month, first.day, tzinfo=UTC)
        end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
        return cls(tickers, interval, start, end, open_close)

    @property
    def start_ms(self) -> int:
        """First millisecond of the range."""
        return to_ms(self.start)

    @property
    def end_ms(self) -> int:
        """Last millisecond of the range (Polygon's ``to`` is inclusive)."""
        return to_ms(self.end) - 1

    def key(self, topic: str) -> str:
        """The checkpoint identity of this plan when publishing to ``topic``."""
        return plan_key(
            tickers=sorted(self.tickers),
            interval=self.interval,
            start=self.start_ms,
            end=self.end_ms,
            open_close=self.open_close,
            topic=topic,
        )


@dataclass
class BackfillResult:
    """What a backfill run did."""

    bars: int = 0
    rejected: int = 0
    open_close: int = 0
    resumed: bool = False
    already_complete: bool = False
    stopped_early: bool = False
    checkpoint: str = ""


class Backfill:
    """Runs one :class:`BackfillPlan` to completion (or ``max_bars``, or a stop).

    Args:
        settings: the process settings.
        plan: what to fetch.
        publisher: where bars go (its topic is the checkpointed topic).
        rest: the Polygon REST client.
        lake: where the checkpoint and the open_close table live.
        stop: a StopFlag-like object (``is_set()``); the run finishes its page and returns.
        progress: show a tqdm progress bar on stderr.
        fresh: ignore an existing checkpoint and start over.
    """

    def __init__(
        self,
        settings: Settings,
        plan: BackfillPlan,
        publisher: BarPublisher,
        rest: PolygonRest,
        lake: Lake,
        stop: Any = None,
        progress: bool = True,
        fresh: bool = False,
    ) -> None:
        self.settings = settings
        self.plan = plan
        self.publisher = publisher
        self.rest = rest
        self.lake = lake
        self.stop = stop
        self.progress = progress
        self.fresh = fresh
        self.metrics = get_metrics()
        self.key = plan.key(publisher.topic)

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def run(self, max_bars: int | None = None) -> BackfillResult:
        """Backfill until done, ``max_bars`` valid bars were published, or a stop was asked."""
        from tqdm import tqdm

        result = BackfillResult(checkpoint=BackfillCheckpoint.path_for(self.key))
        tail = TopicTail(self.settings.kafka, self.publisher.topic)
        try:
            cp = None if self.fresh else BackfillCheckpoint.load(self.lake, self.key)
            if cp is not None and cp.complete:
                log.info("backfill %s is already complete (%s); pass --fresh to run it again", self.key, cp.path)
                result.already_complete = True
                return result
            if cp is None:
                cp = BackfillCheckpoint(self.key, self._plan_doc(), baseline=tail.end_offsets())
                cp.save(self.lake)
            else:
                result.resumed = True
                self._reconcile(cp, tail)
            bar = tqdm(
                total=len(self.plan.tickers),
                unit="ticker",
                desc=f"backfill {self.plan.interval}",
                disable=not self.progress,
                dynamic_ncols=True,
            )
            try:
                bar.update(sum(self._fraction(cp, t) for t in self.plan.tickers))
                for ticker in self.plan.tickers:
                    self._bars(ticker, cp, tail, result, max_bars, bar)
                    if result.stopped_early:
                        return result
                    if self.plan.open_close:
                        self._open_close(ticker, cp, tail, result)
                        if result.stopped_early:
                            return result
            finally:
                bar.close()
            cp.complete = True
            cp.baseline = tail.end_offsets()
            cp.save(self.lake)
            log.info(
                "backfill complete: %d bars, %d rejected, %d open/close",
                result.bars,
                result.rejected,
                result.open_close,
            )
            return result
        finally:
            tail.close()

    def _plan_doc(self) -> dict[str, Any]:
        return {
            "tickers": sorted(self.plan.tickers),
            "interval": self.plan.interval,
            "start": self.plan.start.isoformat(),
            "end": self.plan.end.isoformat(),
            "open_close": self.plan.open_close,
            "topic": self.publisher.topic,
        }

    def _fraction(self, cp: BackfillCheckpoint, ticker: str) -> float:
        progress = cp.tickers.get(ticker)
        if progress is None:
            return 0.0
        if progress.done:
            return 1.0
        if progress.last_t is None:
            return 0.0
        span = self.plan.end_ms - self.plan.start_ms
        return min(1.0, max(0.0, (progress.last_t - self.plan.start_ms) / span)) if span > 0 else 1.0

    def _reconcile(self, cp: BackfillCheckpoint, tail: TopicTail) -> None:
        """Move each ticker's cursor past bars a crashed run published after its last checkpoint."""
        newest = tail.newest_bars(
            cp.baseline, set(self.plan.tickers), self.plan.interval, SOURCE, self.plan.start_ms, self.plan.end_ms
        )
        for ticker, t in newest.items():
            progress = cp.ticker(ticker)
            if progress.last_t is None or t > progress.last_t:
                log.info(
                    "%s: the topic already holds bars up to t=%d past the checkpoint; resuming after them", ticker, t
                )
                progress.last_t = t
        cp.baseline = tail.end_offsets()
        cp.save(self.lake)

    def _checkpoint(self, cp: BackfillCheckpoint, tail: TopicTail) -> None:
        self.publisher.flush()
        cp.baseline = tail.end_offsets()
        cp.save(self.lake)

    def _bars(
        self,
        ticker: str,
        cp: BackfillCheckpoint,
        tail: TopicTail,
        result: BackfillResult,
        max_bars: int | None,
        bar: Any,
    ) -> None:
        progress = cp.ticker(ticker)
        if progress.done:
            return
        interval = self.plan.interval
        source_metrics = self.metrics.source(SOURCE)
        start_ms = self.plan.start_ms if progress.last_t is None else progress.last_t + 1
        if start_ms > self.plan.end_ms:
            progress.done = True
            cp.save(self.lake)
            return
        seen_any = progress.last_t is not None
        shown = self._fraction(cp, ticker)

        def show() -> None:
            nonlocal shown
            now = self._fraction(cp, ticker)
            bar.update(now - shown)
            shown = now
            bar.set_postfix(ticker=ticker, bars=result.bars, rejected=result.rejected, refresh=False)

        for page in self.rest.aggregate_pages(ticker, interval, start_ms, self.plan.end_ms):
            source_metrics.bars_in.inc(len(page.results))
            for raw in page.results:
                seen_any = True
                try:
                    parsed = agg_to_bar(raw, ticker, interval, SOURCE)
                except InvalidRecord as exc:
                    self.publisher.reject(raw, exc.reason, key=ticker, kind="malformed")
                    result.rejected += 1
                    continue
                t = int(raw["t"])
                if progress.last_t is not None and t <= progress.last_t:
                    continue  # already published (overlap after a resume, or a repeated record)
                if t < self.plan.start_ms or t > self.plan.end_ms:
                    self.publisher.reject(raw, f"t={t} outside the requested range", key=ticker)
                    result.rejected += 1
                    continue
                try:
                    parsed.validate()
                except InvalidBar as exc:
                    self.publisher.reject(raw, exc.reason, key=ticker)
                    result.rejected += 1
                    progress.last_t = t
                    continue
                self.publisher.send_encoded(ticker, parsed.to_json(), parsed.end.timestamp())
                progress.last_t = t
                progress.bars += 1
                result.bars += 1
                if (max_bars is not None and result.bars >= max_bars) or self._stopping():
                    result.stopped_early = True
                    self._checkpoint(cp, tail)
                    return
            self._checkpoint(cp, tail)
            show()
            self.metrics.backfill_progress.set(
                sum(self._fraction(cp, t) for t in self.plan.tickers) / max(1, len(self.plan.tickers))
            )
            if self._stopping():
                result.stopped_early = True
                return
        if not seen_any and not self.rest.ticker_exists(ticker):
            raise SourceError(
                f"unknown ticker {ticker}: Polygon has no such symbol",
                "check the symbol's spelling (class shares use a dot, e.g. BRK.B) in --tickers or "
                "TICKCAST_PRODUCER__TICKERS",
            )
        if not seen_any:
            log.warning("%s: no %s bars between %s and %s", ticker, interval, self.plan.start, self.plan.end)
        progress.done = True
        self._checkpoint(cp, tail)
        show()

    def _open_close(self, ticker: str, cp: BackfillCheckpoint, tail: TopicTail, result: BackfillResult) -> None:
        progress = cp.ticker(ticker)
        if progress.open_close_done:
            return
        topic = self.settings.kafka.topic_open_close
        first = self.plan.start.date()
        last = (self.plan.end - timedelta(microseconds=1)).date()
        done_until = progress.open_close_last
        for day in day_range(first, last):
            if day.weekday() >= 5 or (done_until and day.isoformat() <= done_until):
                continue  # markets are closed at weekends; Polygon answers 404 anyway
            if self._stopping():
                result.stopped_early = True
                return
            body = self.rest.open_close(ticker, day)
            if body is not None:
                try:
                    row = oc.parse_open_close(body, ticker, day)
                except (InvalidRecord, InvalidBar) as exc:
                    kind = "malformed" if isinstance(exc, InvalidRecord) else "invalid"
                    self.publisher.reject(body, exc.reason, key=ticker, kind=kind)
                    result.rejected += 1
                else:
                    self.publisher.send_record(topic, ticker, oc.to_record(row))
                    oc.write_open_close(self.lake, [row])
                    self.metrics.open_close_out.inc()
                    result.open_close += 1
            progress.open_close_last = day.isoformat()
            self._checkpoint(cp, tail)
        progress.open_close_done = True
        self._checkpoint(cp, tail)
