"""CLI: ``tickcast produce`` and ``tickcast polygon-server`` (light: heavy imports happen in handlers)."""

from __future__ import annotations

import argparse
from datetime import date
from typing import Any

from tickcast.settings import Settings

SOURCES = ("polygon-rest", "polygon-ws", "replay", "synthetic")
INTERVALS = ("second", "minute", "hour", "day")


def _tickers(text: str) -> tuple[str, ...]:
    return tuple(t.strip().upper() for t in text.split(",") if t.strip())


def _speed(text: str) -> float | None:
    from producer.replay import parse_speed

    try:
        return parse_speed(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float | None:
    if text.strip().lower() in ("max", "0", "inf"):
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("rate must be positive or max")
    return value


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a YYYY-MM-DD date") from None


def register(subparsers: Any) -> None:
    """Add ``produce`` and ``polygon-server`` to the tickcast CLI."""
    p = subparsers.add_parser(
        "produce",
        help="publish bars to Kafka from Polygon (REST backfill or WebSocket), a replay, or a synthetic market",
        description="Publish bars to the bars topic, keyed by ticker. Invalid input goes to the DLQ.",
    )
    p.add_argument("--source", choices=SOURCES, help="where bars come from (default: TICKCAST_PRODUCER__SOURCE)")
    p.add_argument("--tickers", type=_tickers, default=(), help="comma-separated symbols (default: the settings')")
    p.add_argument("--from", dest="start", type=_day, help="first day (UTC), YYYY-MM-DD")
    p.add_argument("--to", dest="end", type=_day, help="last day (UTC), inclusive (backfill default: today)")
    p.add_argument("--interval", choices=INTERVALS, default="minute", help="bar interval (default: minute)")
    p.add_argument("--speed", type=_speed, default=1.0, help="replay speed: 1, 60, ... or max (default: 1)")
    p.add_argument("--file", help="replay this Parquet or CSV file instead of the lake")
    p.add_argument("--rate", type=_rate, default=1000.0, help="synthetic bars a second, or max (default: 1000)")
    p.add_argument("--num-tickers", type=int, default=100, help="synthetic tickers when --tickers is not given")
    p.add_argument("--seed", type=int, default=7, help="synthetic random seed")
    p.add_argument("--max-bars", type=int, help="stop after this many bars")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--open-close", action="store_true", help="backfill: also fetch daily open/close summaries")
    p.add_argument("--fresh", action="store_true", help="backfill: ignore the checkpoint and start over")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--resume",
        action="store_true",
        help="replay: skip bars already in the bars topic (per ticker), so a restarted replay continues",
    )
    p.add_argument(
        "--live-tail",
        type=int,
        metavar="N",
        help="replay: play all but the last N bar times as fast as possible, then pace the rest at --speed",
    )
    p.add_argument("--linger", action="store_true", help="stay up (healthy, metrics served) after the source ends")
    p.set_defaults(handler=_produce)

    s = subparsers.add_parser(
        "polygon-server",
        help="run the local Polygon-protocol server (REST + WebSocket) with optional faults",
        description="A local server speaking Polygon's REST and WebSocket protocols, for tests and offline use.",
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--api-key", action="append", dest="api_keys", help="accepted key (repeatable; default: local)")
    s.add_argument("--tickers", type=_tickers, default=(), help="generated tickers (default: a few large caps)")
    s.add_argument("--data", help="also serve the bars in this Parquet or CSV file")
    s.add_argument("--max-page", type=int, default=50_000, help="most results per page")
    s.add_argument("--ws-max-connections", type=int, default=0, help="concurrent WebSocket connections (0: any)")
    s.add_argument("--rpm-limit", type=int, default=0, help="answer 429 past this many requests a minute (0: off)")
    s.add_argument(
        "--fault", action="append", default=[], metavar="NAME=VALUE", help="a fault, e.g. rate_limit_every=5"
    )
    s.set_defaults(handler=_polygon_server)


def options_from_args(settings: Settings, args: argparse.Namespace) -> Any:
    """The :class:`producer.runner.ProduceOptions` of parsed ``produce`` arguments."""
    from producer.runner import ProduceOptions

    return ProduceOptions(
        source=args.source or settings.producer.source,
        tickers=args.tickers,
        interval=args.interval,
        start=args.start,
        end=args.end,
        speed=args.speed,
        file=args.file,
        rate=args.rate,
        num_tickers=args.num_tickers,
        max_bars=args.max_bars,
        duration=args.duration,
        open_close=args.open_close,
        fresh=args.fresh,
        progress=not args.no_progress,
        seed=args.seed,
        resume=args.resume,
        live_tail=args.live_tail,
        linger=args.linger,
    )


def _quiet_libraries(settings: Settings) -> None:
    """kafka-python logs every connection step and httpx every request at INFO: keep them to
    warnings unless DEBUG is asked for."""
    import logging

    if settings.log_level != "DEBUG":
        for name in ("kafka", "httpx", "httpcore", "websockets"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _produce(settings: Settings, args: argparse.Namespace) -> int:
    from producer.runner import print_summary, produce

    _quiet_libraries(settings)

    print_summary(produce(settings, options_from_args(settings, args)))
    return 0


def _polygon_server(settings: Settings, args: argparse.Namespace) -> int:
    from producer.local_polygon import DEFAULT_API_KEY, DEFAULT_TICKERS, Faults, MarketData, main_serve
    from tickcast.errors import ConfigError
    from tickcast.service import StopFlag

    faults = Faults()
    for item in args.fault:
        name, _, value = item.partition("=")
        try:
            faults.update({name.strip(): value.strip()})
        except ValueError as exc:
            raise ConfigError("--fault", str(exc)) from None
    table = None
    if args.data:
        from producer.replay import read_bars_file

        table = read_bars_file(args.data)
    market = MarketData(args.tickers or DEFAULT_TICKERS, table)
    main_serve(
        args.host,
        args.port,
        market,
        args.api_keys or [DEFAULT_API_KEY],
        faults,
        args.max_page,
        args.ws_max_connections,
        args.rpm_limit,
        StopFlag().install(),
    )
    return 0
