"""The ``tickcast`` command line.

Each area registers its own sub-commands from a light module (no heavy imports at module
level), listed in :data:`COMMAND_MODULES`. Expected failures (:class:`TickcastError`) print
one line and exit 2; anything else keeps its traceback because it is a bug.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from tickcast.errors import TickcastError
from tickcast.settings import Settings, load_settings

#: Modules that expose ``register(subparsers) -> None``. A module that is missing (an
#: optional deployable not installed) is skipped, so a slim install still has a CLI.
COMMAND_MODULES: tuple[str, ...] = (
    "tickcast.config_cli",
    "tickcast.infra.cli",
    "tickcast.platform_cli",
    "tickcast.lake_cli",
    "producer.cli",
    "consumer.cli",
    "serving.cli",
    "serving.streaming.cli",
    "dashboard.cli",
    "training.cli",
)

Handler = Callable[[Settings, argparse.Namespace], int | None]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(prog="tickcast", description="Near-real-time forecasting of market bars.")
    # Identifies a process started by `tickcast up` (its pid file records this marker).
    parser.add_argument("--instance", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.register(sub)
    return parser


def configure_logging(level: str) -> None:
    """Plain, greppable log lines on stderr."""
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tickcast`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        result = handler(settings, args)
    except TickcastError as exc:
        print(f"tickcast: error: {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
