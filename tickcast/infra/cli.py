"""``tickcast infra install|up|down|status``: the local Kafka and MinIO."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tickcast.infra.base import ServiceStatus
from tickcast.settings import Settings


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _manager(settings: Settings) -> Any:
    from tickcast.infra.manager import InfraManager

    return InfraManager(settings, progress=_progress)


def render_table(statuses: list[ServiceStatus]) -> str:
    """A small fixed-width table of service states."""
    header = ("SERVICE", "STATE", "PID", "ADDRESS", "LOG")
    rows = [header]
    for s in statuses:
        if not s.enabled and not s.running:
            state = "disabled"
        elif s.healthy:
            state = "healthy" if s.managed else "healthy (external)"
        elif s.running:
            state = "UNHEALTHY"
        else:
            state = "stopped"
        rows.append((s.name, state, str(s.pid or "-"), s.address, s.log_path if s.managed else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _print_status(statuses: list[ServiceStatus], as_json: bool) -> None:
    if as_json:
        print(json.dumps([s.to_dict() for s in statuses], indent=2))
    else:
        print(render_table(statuses))


def _install(settings: Settings, args: argparse.Namespace) -> int:
    _manager(settings).install(args.services or None)
    return 0


def _up(settings: Settings, args: argparse.Namespace) -> int:
    statuses = _manager(settings).up(args.services or None)
    _print_status(statuses, args.json)
    return 0


def _down(settings: Settings, args: argparse.Namespace) -> int:
    statuses = _manager(settings).down(args.services or None)
    _print_status(statuses, args.json)
    return 0


def _status(settings: Settings, args: argparse.Namespace) -> int:
    statuses = _manager(settings).status()
    _print_status(statuses, args.json)
    # Non-zero when an enabled service is not healthy, so scripts can gate on it.
    return 0 if all(s.healthy for s in statuses if s.enabled) else 1


def register(sub: Any) -> None:
    """Add ``tickcast infra install|up|down|status``."""
    parser = sub.add_parser(
        "infra",
        help="the local Kafka broker and MinIO: install, start, stop, status",
        description="Run a real single-node Kafka (KRaft) and MinIO on 127.0.0.1, "
        "with state under TICKCAST_INFRA__STATE_DIR.",
    )
    inner = parser.add_subparsers(dest="infra_command", metavar="ACTION", required=True)
    actions = (
        ("install", _install, "resolve Kafka's jars and build MinIO into the cache (one time)"),
        ("up", _up, "install what is missing, start (or reuse) the services, wait until healthy"),
        ("down", _down, "stop the services this state folder started"),
        ("status", _status, "show each service; exit 1 when an enabled one is unhealthy"),
    )
    for name, handler, help_text in actions:
        action = inner.add_parser(name, help=help_text, description=help_text)
        if name != "status":
            action.add_argument("services", nargs="*", metavar="SERVICE", help="kafka and/or minio (default: all)")
        if name != "install":
            action.add_argument("--json", action="store_true", help="print the status as JSON")
        action.set_defaults(handler=handler, services=[])
