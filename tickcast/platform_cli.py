"""``tickcast up|down|status``: the whole platform on this machine."""

from __future__ import annotations

import argparse
from typing import Any

from tickcast.settings import Settings


def _say(line: str) -> None:
    print(f"tickcast: {line}", flush=True)


def _up(settings: Settings, args: argparse.Namespace) -> int:
    from tickcast.platform import Platform, log_tail, record_up_pid, render_status, running_up_pid
    from tickcast.restarts import read_restarts
    from tickcast.service import StopFlag
    from tickcast.supervisor import CrashLoop

    platform = Platform(settings, _say)
    state_dir = platform.infra.state_dir
    other = running_up_pid(state_dir)
    if other is not None:
        _say(f"`tickcast up` already runs for {state_dir} (pid {other}); `tickcast status` shows it")
        return 1
    stop = StopFlag().install()
    pid_file = None if args.detach else record_up_pid(state_dir)
    try:
        statuses = platform.up(only=args.only, stop=stop.is_set)
        if stop.is_set():
            return 0
        print(render_status(statuses), flush=True)
        for name, url in platform.urls().items():
            print(f"  {name:<13} {url}", flush=True)
        if args.detach:
            _say("running in the background, not supervised; stop it with `tickcast down`")
            return 0
        _say("running; a crashed service is restarted; press Ctrl-C (or run `tickcast down`) to stop")
        supervisor = platform.supervisor()
        try:
            supervisor.run(stop.is_set)
        except CrashLoop as exc:
            _say(f"stopping everything: {exc.one_line()}")
            print(f"last lines of {exc.log_path}:\n{log_tail(exc.log_path)}", flush=True)
            return 1
        return 0
    finally:
        if not args.detach:
            _say("stopping")
            print(render_status(platform.down(), read_restarts(state_dir)), flush=True)
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)


def _down(settings: Settings, args: argparse.Namespace) -> int:
    from tickcast.platform import Platform, render_status

    platform = Platform(settings, _say)
    platform.stop_up()  # a supervising `up` stops everything itself and exits 0
    print(render_status(platform.down()))
    return 0


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from tickcast.platform import Platform, render_status, status_json
    from tickcast.restarts import read_restarts

    platform = Platform(settings, _say)
    statuses = platform.status()
    restarts = read_restarts(platform.infra.state_dir)
    print(status_json(statuses, restarts) if args.json else render_status(statuses, restarts))
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
