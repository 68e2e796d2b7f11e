"""``python -m consumer``: the sink as a process (what the container runs).

Same options as ``tickcast consume``; settings come from the environment (TICKCAST_*).
Exit status: 0 after a clean stop, 2 for an expected failure (such as the lake being down
longer than TICKCAST_CONSUMER__STORE_OUTAGE_LIMIT_S), 130 on Ctrl-C before startup.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from consumer.cli import add_consume_arguments, consume
from tickcast.cli import configure_logging
from tickcast.errors import TickcastError
from tickcast.settings import load_settings


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, build the settings once, run the sink."""
    parser = argparse.ArgumentParser(prog="python -m consumer", description="The exactly-once Kafka-to-lake sink.")
    add_consume_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        return consume(settings, args)
    except TickcastError as exc:
        print(f"consumer: error: {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
