"""``tickcast dashboard``: run the Streamlit app.

Streamlit runs as a child process (``python -m streamlit run dashboard/app.py``) with the
address, port and privacy options from the settings; this process forwards SIGTERM and
SIGINT to it and exits with its status, so ``tickcast down`` and Kubernetes stop it cleanly.
On Linux the child also gets SIGTERM if this process is killed outright, so it never outlives it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tickcast.settings import Settings

log = logging.getLogger(__name__)

APP = Path(__file__).resolve().parent / "app.py"


def streamlit_argv(settings: Settings, extra: list[str] | None = None) -> list[str]:
    """The command line that runs the dashboard with ``settings``."""
    d = settings.dashboard
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.port",
        str(d.port),
        "--server.address",
        d.host,
        "--server.fileWatcherType",
        "none",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "viewer",
        *(extra or []),
    ]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when this process dies, even by SIGKILL (Linux prctl)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def run_dashboard(settings: Settings, args: argparse.Namespace) -> int:
    """Start Streamlit and wait for it; a stop signal is passed on and counts as a clean exit."""
    extra = list(getattr(args, "streamlit_args", None) or [])
    if extra[:1] == ["--"]:
        extra = extra[1:]
    argv = streamlit_argv(settings, extra)
    env = {**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    log.info("dashboard on http://%s:%d", settings.dashboard.host, settings.dashboard.port)
    proc = subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    stopping = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopping:
        return 0
    return code


def register(subparsers: Any) -> None:
    """Add ``tickcast dashboard``."""
    parser = subparsers.add_parser(
        "dashboard",
        help="run the Streamlit dashboard",
        description="Run the Streamlit dashboard on TICKCAST_DASHBOARD__HOST:TICKCAST_DASHBOARD__PORT "
        "(live bars and forecasts, forecast quality, pipeline health, exploration).",
    )
    parser.add_argument(
        "streamlit_args",
        nargs=argparse.REMAINDER,
        help="extra Streamlit options after --, e.g. -- --theme.base dark",
    )
    parser.set_defaults(handler=run_dashboard)
