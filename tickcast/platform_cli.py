"""``tickcast up|down|status``: the whole platform on this machine."""

from __future__ import annotations

import argparse
from typing import Any

from tickcast.settings import Settings


def _say(line: str) -> None:
    print(f"tickcast: {line}", flush=True)


def _up(settings: Settings, args: argparse.Namespace) -> int:
    from tickcast.platform import Platform, log_tail, render_status
    from tickcast.service import StopFlag

    platform = Platform(settings, _say)
    stop = StopFlag().install()
    try:
        statuses = platform.up(only=args.only)
        print(render_status(statuses), flush=True)
        for name, url in platform.urls().items():
            print(f"  {name:<13} {url}", flush=True)
        if args.detach:
            _say("running in the background; stop it with `tickcast down`")
            return 0
        _say("running; press Ctrl-C (or run `tickcast down`) to stop")
        dead = platform.watch(stop.is_set)
        if dead is not None:
            _say(f"{dead.name} stopped unexpectedly; last lines of {dead.log_path}:\n{log_tail(dead)}")
            return 1
        return 0
    finally:
        if not args.detach:
            _say("stopping")
            print(render_status(platform.down()), flush=True)


def _down(settings: Settings, args: argparse.Namespace) -> int:
    from tickcast.platform import Platform, render_status

    print(render_status(Platform(settings, _say).down()))
    return 0


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from tickcast.platform import Platform, render_status, status_json

    statuses = Platform(settings, _say).status()
    print(status_json(statuses) if args.json else render_status(statuses))
    return 0 if all(s.healthy for s in statuses if s.enabled) else 1


def register(sub: Any) -> None:
    """Add ``tickcast up``, ``down`` and ``status``."""
    up = sub.add_parser("up", help="start the whole platform (infrastructure, serve, consumer, forecaster, ...)")
    up.add_argument("--detach", action="store_true", help="return once everything is healthy")
    up.add_argument("--only", nargs="+", metavar="SERVICE", help="start only these app services")
    up.set_defaults(handler=_up)
    sub.add_parser("down", help="stop everything `tickcast up` started").set_defaults(handler=_down)
    status = sub.add_parser("status", help="health of every service")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)
