"""``tickcast lake``: optimize, vacuum, migrate and inspect the lake's Delta tables (light imports)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from tickcast.errors import TickcastError
from tickcast.settings import Settings


def parse_as_of(text: str | None) -> int | datetime | None:
    """``--as-of``: a table version (an integer) or an ISO-8601 time with a UTC offset."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TickcastError(
            f"--as-of {text!r} is neither a table version nor an ISO-8601 time",
            "use e.g. --as-of 12 or --as-of 2024-03-04T15:00:00Z",
        ) from None
    if when.tzinfo is None:
        raise TickcastError(f"--as-of {text!r} has no UTC offset", "add Z or +00:00")
    return when


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _optimize(settings: Settings, args: argparse.Namespace) -> int:
    from tickcast.lake import Lake
    from tickcast.lake.maintenance import optimize, resolve_tables

    lake = Lake(settings.lake)
    reports = []
    for spec in resolve_tables(args.table):
        report = optimize(lake, spec, target_size=args.target_mb * 1024 * 1024, min_files=args.min_files)
        print(
            f"{spec.name}: {report.files_before} -> {report.files_after} files, "
            f"{report.bytes_before} -> {report.bytes_after} bytes, {report.rows_before} -> {report.rows_after} rows",
            file=sys.stderr,
        )
        reports.append(report.to_dict())
    _print(reports)
    return 1 if any(r["partitions_skipped"] for r in reports) else 0


def _vacuum(settings: Settings, args: argparse.Namespace) -> int:
    from tickcast.lake import Lake
    from tickcast.lake.maintenance import resolve_tables, vacuum

    lake = Lake(settings.lake)
    _print([vacuum(lake, spec, args.retention_hours, args.dry_run).to_dict() for spec in resolve_tables(args.table)])
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from tickcast.lake import Lake
    from tickcast.lake.migrate import migrate

    source = Lake(settings.lake.model_copy(update={"url": args.source}))
    destination = Lake(settings.lake)
    report = migrate(
        source, destination, delete_source=args.delete_source, progress=lambda line: print(line, file=sys.stderr)
    )
    _print(report.to_dict())
    return 0


def _history(settings: Settings, args: argparse.Namespace) -> int:
    from tickcast.lake import Lake
    from tickcast.lake.maintenance import resolve_tables
    from tickcast.lake.tables import history

    lake = Lake(settings.lake)
    _print({spec.name: history(lake, spec, args.limit) for spec in resolve_tables(args.table)})
    return 0


def _stats(settings: Settings, args: argparse.Namespace) -> int:
    from tickcast.lake import Lake
    from tickcast.lake.maintenance import file_stats, resolve_tables
    from tickcast.lake.migrate import needs_migration
    from tickcast.lake.tables import table_version

    lake = Lake(settings.lake)
    out: dict[str, Any] = {}
    for spec in resolve_tables(args.table):
        files, size, rows = file_stats(lake, spec)
        out[spec.name] = {"version": table_version(lake, spec), "files": files, "bytes": size, "rows": rows}
    pending = needs_migration(lake)
    if pending:
        out["needs_migration"] = pending
    _print(out)
    return 0


def register(subparsers: Any) -> None:
    """Add ``lake optimize|vacuum|migrate|history|stats`` to the ``tickcast`` command."""
    lake = subparsers.add_parser(
        "lake",
        help="maintain the lake's Delta tables (optimize, vacuum, migrate, history, stats)",
        description="Maintain the lake's Delta tables. Safe next to running writers: every change is "
        "one Delta commit, and readers never see a row twice or miss one.",
    )
    sub = lake.add_subparsers(dest="lake_command", required=True, metavar="COMMAND")

    def tables_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--table", action="append", help="only this table (repeatable; default: all)")

    p = sub.add_parser(
        "optimize",
        help="compact each partition into sorted files of the target size, one row per key",
        description="Rewrite every partition with at least --min-files files as files of about --target-mb "
        "MB, sorted by ticker and time, keeping the latest revision of each key. Exit 1 when a "
        "partition was skipped because writers kept committing to it (run it again later).",
    )
    tables_option(p)
    p.add_argument("--target-mb", type=int, default=256, help="target file size in MB (default 256)")
    p.add_argument("--min-files", type=int, default=2, help="rewrite partitions with at least this many files")
    p.set_defaults(handler=_optimize)

    p = sub.add_parser(
        "vacuum",
        help="delete files no longer referenced (keeps --retention-hours of time travel)",
        description="Delete data files that no table version younger than the retention references. "
        "Time travel (--as-of) works within the retention, which defaults to 7 days.",
    )
    tables_option(p)
    p.add_argument("--retention-hours", type=int, default=168, help="time travel kept, in hours (default 168)")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    p.set_defaults(handler=_vacuum)

    p = sub.add_parser(
        "migrate",
        help="convert a lake in the earlier Hive-partitioned Parquet layout into Delta tables",
        description="Read every table of the lake at --from in the earlier layout and write it into the "
        "Delta tables of TICKCAST_LAKE__URL (may be the same lake), one row per key.",
    )
    p.add_argument("--from", dest="source", required=True, help="lake URL in the earlier layout (file:// or s3://)")
    p.add_argument("--delete-source", action="store_true", help="delete the old files once converted")
    p.set_defaults(handler=_migrate)

    p = sub.add_parser("history", help="the commits of each table (versions for --as-of)")
    tables_option(p)
    p.add_argument("--limit", type=int, default=20, help="newest commits per table (default 20)")
    p.set_defaults(handler=_history)

    p = sub.add_parser("stats", help="version, data files, bytes and rows of each table")
    tables_option(p)
    p.set_defaults(handler=_stats)
