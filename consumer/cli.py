"""``tickcast consume`` and ``tickcast compact``: the sink's command line (light imports only)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tickcast.settings import Settings


def add_consume_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tickcast consume`` (shared with ``python -m consumer``)."""
    parser.add_argument("--max-records", type=int, default=None, help="stop after consuming this many records")
    parser.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--group", default=None, help="consumer group (default: TICKCAST_CONSUMER__GROUP_ID)")
    parser.add_argument("--topic", default=None, help="topic to consume (default: TICKCAST_KAFKA__TOPIC_BARS)")


def consume(settings: Settings, args: argparse.Namespace) -> int:
    """Run the sink until a signal (or the limits) stop it; print its counters as JSON."""
    from consumer.sink import serve

    stats = serve(settings, max_records=args.max_records, timeout=args.timeout, group_id=args.group, topic=args.topic)
    print(json.dumps(stats.to_dict()))
    return 0


def compact_command(settings: Settings, args: argparse.Namespace) -> int:
    """Merge small files per partition folder; print what was done as JSON."""
    from consumer.compact import compact
    from tickcast.lake import Lake

    def progress(line: str) -> None:
        if not args.quiet:
            print(line)

    result = compact(
        Lake(settings.lake),
        table=args.table,
        tickers=args.ticker,
        intervals=args.interval,
        dates=args.date,
        min_files=args.min_files,
        dry_run=args.dry_run,
        progress=progress,
    )
    summary: dict[str, Any] = result.to_dict()
    if not args.dry_run:
        summary.pop("merges")
    print(json.dumps(summary))
    return 0


def register(subparsers: Any) -> None:
    """Add ``consume`` and ``compact`` to the ``tickcast`` command."""
    parser = subparsers.add_parser(
        "consume",
        help="run the exactly-once Kafka-to-lake Parquet sink",
        description="Consume bars from Kafka into Parquet files in the lake, exactly once. "
        "SIGTERM/SIGINT flush, commit and stop. Exit 2 when the lake stays down past "
        "TICKCAST_CONSUMER__STORE_OUTAGE_LIMIT_S.",
    )
    add_consume_arguments(parser)
    parser.set_defaults(handler=consume)

    parser = subparsers.add_parser(
        "compact",
        help="merge the small files of each lake partition without changing their content",
        description="Merge the committed small Parquet files of each interval/ticker/date folder into one "
        "file with the same rows (sorted by start, then Kafka partition and offset). Safe next to a running "
        "sink; run one compaction at a time.",
    )
    parser.add_argument("--table", default="bars", choices=["bars"], help="table to compact")
    parser.add_argument("--ticker", action="append", help="only this ticker (repeatable)")
    parser.add_argument("--interval", action="append", help="only this interval (repeatable)")
    parser.add_argument("--date", action="append", help="only this UTC date, YYYY-MM-DD (repeatable)")
    parser.add_argument("--min-files", type=int, default=2, help="merge folders with at least this many files")
    parser.add_argument("--dry-run", action="store_true", help="show what would be merged, change nothing")
    parser.add_argument("--quiet", action="store_true", help="print only the JSON summary")
    parser.set_defaults(handler=compact_command)
