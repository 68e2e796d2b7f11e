"""``tickcast forecaster``: run the streaming forecaster (light module: heavy imports in the handler)."""

from __future__ import annotations

import argparse
from typing import Any

from tickcast.settings import Settings


def register(subparsers: Any) -> None:
    """Add the ``forecaster`` sub-command."""
    parser = subparsers.add_parser(
        "forecaster",
        help="Forecast every ticker of the bar stream via Serve, publish and score the forecasts.",
        description=(
            "Consume bars from Kafka (TICKCAST_KAFKA__TOPIC_BARS), ask Serve (TICKCAST_SERVING__URL) for a "
            "forecast whenever a ticker gets a new bar, publish forecasts to TICKCAST_KAFKA__TOPIC_FORECASTS "
            "and the lake, and score them when their actual bars arrive. Metrics on "
            "TICKCAST_FORECASTER__METRICS_PORT (/metrics, /healthz). Stops cleanly on SIGTERM/SIGINT."
        ),
    )
    parser.add_argument("--max-records", type=int, default=None, help="Stop after this many bar records.")
    parser.add_argument("--timeout", type=float, default=None, help="Stop after this many seconds.")
    parser.add_argument(
        "--no-warm-start",
        action="store_true",
        help="Start with empty contexts instead of loading them from the lake.",
    )
    parser.set_defaults(handler=_run)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from serving.streaming.service import main

    if args.no_warm_start:
        forecaster = settings.forecaster.model_copy(update={"warm_start": False})
        settings = settings.model_copy(update={"forecaster": forecaster})
    return main(settings, max_records=args.max_records, timeout=args.timeout)
