"""The ``tickcast`` command line.

Each area registers its own sub-commands from a light module (no heavy imports at module
level), listed in :data:`COMMAND_MODULES`. Expected failures (:class:`TickcastError`) print
one line and exit 2; anything else keeps its traceback because it is a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from tickcast.errors import TickcastError
from tickcast.settings import Settings, load_settings

#: Modules that expose ``register(subparsers) -> None``. A module that is missing (an
#: optional deployable not installed) is skipped, so a slim install still has a CLI.
COMMAND_MODULES: tuple[str, ...] = (
    "tickcast.config_cli",
    "tickcast.infra.cli",
    "tickcast.infra.cluster.cli",
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


#: Top-level names of tickcast's own loggers; every other logger is a third party's.
OWN_LOGGERS: tuple[str, ...] = ("tickcast", "producer", "consumer", "serving", "dashboard", "training", "__main__")

#: Commands a person runs in a terminal and watches, whose console should show tickcast's
#: own lines: their third-party INFO lines go to :func:`cli_log_path` instead. The service
#: commands (``consume``, ``produce``, ...) are left out on purpose: under ``tickcast up``
#: their console is their log file, and in a pod it is the pod's log (on a read-only disk).
CONSOLE_COMMANDS: frozenset[str] = frozenset({"up", "down", "status", "infra", "dev"})

#: Log lines: plain and greppable.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Marks the handlers configure_logging installed, so a second call replaces only those.
_OURS = "_tickcast_handler"

# Rotate the CLI log past this size when it is next opened, as the services' logs are.
_CLI_LOG_ROTATE_BYTES = 32 * 1024 * 1024


def cli_log_path(settings: Settings) -> Path:
    """``<state_dir>/logs/tickcast-cli.log``: third-party log lines of the console commands."""
    return settings.infra.state_dir.expanduser().resolve() / "logs" / "tickcast-cli.log"


def is_own_logger(name: str) -> bool:
    """Whether the logger ``name`` belongs to tickcast (see :data:`OWN_LOGGERS`)."""
    return name.split(".", 1)[0] in OWN_LOGGERS


class _OwnOrWarning(logging.Filter):
    """Pass tickcast's records at any level, a third party's from WARNING up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or is_own_logger(record.name)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record.

    A handler holding the stream it was given keeps writing to it after it is replaced or
    closed (pytest's capture, a redirect), which ends in "--- Logging error ---" noise.
    """

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always the current sys.stderr


class _CliLogHandler(logging.FileHandler):
    """Appends to the CLI log, creating its folder (and rotating it) only when a line comes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, mode="a", encoding="utf-8", delay=True)

    def _open(self) -> io.TextIOWrapper:
        path = Path(self.baseFilename)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size > _CLI_LOG_ROTATE_BYTES:
                path.replace(path.with_name(path.name + ".1"))
        return super()._open()


def configure_logging(level: str, *, third_party_log: Path | None = None) -> None:
    """Log lines on stderr at ``level``; with ``third_party_log``, a quiet console.

    Without ``third_party_log`` every logger's records from ``level`` up go to stderr: right
    for a service, whose stderr is its log (a file under ``tickcast up``, the pod log on
    Kubernetes). With it, the console keeps tickcast's own records but only WARNING and up of
    third parties (kafka-python, urllib3, botocore, ...), and the file gets every record from
    ``level`` up, so a person watching ``tickcast up`` reads tickcast's lines, not the broker
    client's chatter. Calling it again replaces what an earlier call installed.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(LOG_FORMAT)
    console = _StderrHandler()
    handlers: list[logging.Handler] = [console]
    if third_party_log is not None:
        console.addFilter(_OwnOrWarning())
        handlers.append(_CliLogHandler(third_party_log))
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _OURS, True)
        root.addHandler(handler)
    root.setLevel(getattr(logging, level, logging.INFO))


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
        # A service under `tickcast up` (--instance) logs everything: its console is its log.
        quiet = args.command in CONSOLE_COMMANDS and args.instance is None
        configure_logging(settings.log_level, third_party_log=cli_log_path(settings) if quiet else None)
        result = handler(settings, args)
    except TickcastError as exc:
        print(f"tickcast: error: {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
