"""``tickcast consume``: the sink's command line (light imports only)."""

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


def register(subparsers: Any) -> None:
    """Add ``consume`` to the ``tickcast`` command."""
    parser = subparsers.add_parser(
        "consume",
        help="run the exactly-once Kafka-to-lake sink (the Delta bars table)",
        description="Consume bars from Kafka into the lake's Delta bars table, exactly once. "
        "SIGTERM/SIGINT flush, commit and stop. Exit 2 when the lake stays down past "
        "TICKCAST_CONSUMER__STORE_OUTAGE_LIMIT_S.",
    )
    add_consume_arguments(parser)
    parser.set_defaults(handler=consume)
