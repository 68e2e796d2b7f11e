"""``tickcast dev cluster up|down|status``: the dev Kubernetes cluster (see :mod:`.manager`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tickcast.settings import Settings


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _cluster(settings: Settings) -> Any:
    from tickcast.infra.cluster.manager import DevCluster

    return DevCluster(settings.infra, progress=_progress)


def _print(statuses: list[Any], as_json: bool) -> None:
    from tickcast.infra.cli import render_table

    print(json.dumps([s.to_dict() for s in statuses], indent=2) if as_json else render_table(statuses))


def _up(settings: Settings, args: argparse.Namespace) -> int:
    _print(_cluster(settings).up(args.stack), args.json)
    return 0


def _down(settings: Settings, args: argparse.Namespace) -> int:
    _print(_cluster(settings).down(), args.json)
    return 0


def _status(settings: Settings, args: argparse.Namespace) -> int:
    statuses = _cluster(settings).status()
    _print(statuses, args.json)
    return 0 if all(s.healthy for s in statuses) else 1


def register(sub: Any) -> None:
    """Add ``tickcast dev cluster up|down|status``."""
    dev = sub.add_parser("dev", help="developer tools: the local Kubernetes cluster for the chart")
    dev_inner = dev.add_subparsers(dest="dev_command", metavar="TOOL", required=True)
    parser = dev_inner.add_parser(
        "cluster",
        help="a real Kubernetes control plane with fake nodes shaped like a Pulumi stack's",
        description="kine, kube-apiserver, controller-manager, scheduler, kwok nodes and the KubeRay operator on "
        "127.0.0.1 (ports from TICKCAST_INFRA__CLUSTER_PORT_BASE), state under STATE_DIR/cluster.",
    )
    inner = parser.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    actions = (
        ("up", _up, "build what is missing, start (or reuse) the cluster, shape its nodes like a stack's"),
        ("down", _down, "stop the cluster this state folder started"),
        ("status", _status, "show each process; exit 1 when one is unhealthy"),
    )
    for name, handler, help_text in actions:
        action = inner.add_parser(name, help=help_text, description=help_text)
        if name == "up":
            action.add_argument(
                "--stack", default="dev", choices=("dev", "prod"), help="whose node pools (default dev)"
            )
        action.add_argument("--json", action="store_true", help="print the status as JSON")
        action.set_defaults(handler=handler)
