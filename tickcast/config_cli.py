"""``tickcast config``: show the effective settings and render the reference."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tickcast.settings import Settings, reference_markdown


def _docs(settings: Settings, args: argparse.Namespace) -> int:
    print(reference_markdown())
    return 0


def _show(settings: Settings, args: argparse.Namespace) -> int:
    # SecretStr fields dump as '**********', so this never prints a secret.
    data: dict[str, Any] = json.loads(settings.model_dump_json())
    print(json.dumps(data, indent=2, default=str))
    return 0


def register(sub: Any) -> None:
    """Add ``tickcast config docs|show``."""
    parser = sub.add_parser("config", help="settings: show the effective values or the reference")
    inner = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    inner.add_parser("docs", help="print the configuration reference (Markdown)").set_defaults(handler=_docs)
    inner.add_parser("show", help="print the effective settings, secrets masked").set_defaults(handler=_show)
