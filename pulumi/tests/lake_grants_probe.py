"""Run real tickcast lake operations on MinIO under one workload's IAM statements (a helper).

Run with the *project's* environment (``.venv/bin/python``: tickcast, deltalake, boto3), not
Pulumi's; ``test_lake_grants.py`` drives it:

- ``setup``: make sure the test MinIO runs (the project's test infrastructure, port 19000),
  create a bucket with every lake table holding a row, a file that vacuum may delete, and
  commits older than a 1-second log retention (so every later commit also runs delta-rs's
  expired-log clean-up, as a table does after 7 days), plus one blob under each prefix.
- ``run``: take temporary credentials from MinIO's STS (``AssumeRole`` with the workload's S3
  statements as the session policy: the session may do exactly what the statements allow),
  put them in the environment as IRSA would, and try every operation: read, write and vacuum
  each table, optimize (maintenance), read and write each blob prefix. Prints one JSON object,
  operation -> ``ok``, ``denied`` or ``error: ...``.
- ``cleanup``: delete the bucket; stop MinIO if ``setup`` started it.

One process per workload: delta-rs copies credentials from its storage options into the
process environment, so a process must never switch identities.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BLOBS = (
    "models/probe/1/config.json",
    "reports/probe/report.json",
    "_state/producer/probe.json",
    "_state/other/probe.json",
)
DENIED = ("accessdenied", "access denied", "access_denied", "lacked the necessary privileges", "forbidden", " 403")


def _test_infra() -> tuple[Any, Any]:
    """(InfraManager, Settings) of the project's test infrastructure (tests/conftest.py)."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from tickcast.infra.manager import InfraManager
    from tickcast.settings import load_settings

    import conftest  # the project's tests/conftest.py: TEST_INFRA and its settings overrides

    infra = {**conftest.TEST_INFRA, "minio_enabled": True}
    settings = load_settings(**conftest.infra_overrides(infra))
    return InfraManager(settings), settings


def _root_clients(endpoint: str) -> tuple[Any, Any]:
    import boto3
    from botocore.config import Config
    from tickcast.settings import InfraSettings

    infra = InfraSettings()
    kwargs = {
        "endpoint_url": endpoint,
        "aws_access_key_id": infra.minio_root_user,
        "aws_secret_access_key": infra.minio_root_password.get_secret_value(),
        "region_name": "us-east-1",
        "config": Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2}),
    }
    return boto3.client("s3", **kwargs), boto3.client("sts", **kwargs)


def _lake(endpoint: str, bucket: str, prefix: str, root: bool) -> Any:
    from tickcast.lake import Lake
    from tickcast.settings import InfraSettings, LakeSettings

    infra = InfraSettings()
    keys: dict[str, Any] = {}
    if root:
        keys = {
            "s3_access_key_id": infra.minio_root_user,
            "s3_secret_access_key": infra.minio_root_password.get_secret_value(),
        }
    return Lake(LakeSettings(url=f"s3://{bucket}/{prefix}", s3_endpoint_url=endpoint, s3_region="us-east-1", **keys))


def sample_row(spec: Any) -> Any:
    """One row of a table, built from its Arrow schema (values only need the right types)."""
    import pyarrow as pa

    when = datetime(2024, 3, 4, 15, 0, tzinfo=UTC)
    by_name: dict[str, Any] = {
        "ticker": "PROBE",
        "interval": "minute",
        "period": "2024-03-04",
        "date": "2024-03-04",
        "forecast_id": "probe-forecast",
    }
    columns = []
    for field in spec.schema:
        typ = field.type
        if field.name in by_name and pa.types.is_string(typ):
            value: Any = by_name[field.name]
        elif pa.types.is_timestamp(typ):
            value = datetime.now(UTC) if field.name == spec.revision else when
        elif pa.types.is_string(typ):
            value = "probe"
        elif pa.types.is_floating(typ):
            value = 1.0
        elif pa.types.is_integer(typ):
            value = 1
        elif pa.types.is_boolean(typ):
            value = True
        elif pa.types.is_list(typ):
            value = [0.5]
        else:
            raise TypeError(f"table {spec.name}: no sample value for {field.name} ({typ})")
        columns.append(pa.array([value], typ))
    return pa.Table.from_arrays(columns, schema=spec.schema)


def _write(lake: Any, spec: Any) -> None:
    from tickcast.lake import tables

    row = sample_row(spec)
    if spec.key:
        tables.upsert(lake, spec, row)  # the same key again: rewrites the file (a vacuum candidate)
    else:
        tables.append(lake, spec, row)


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Start MinIO if needed; create the bucket, the tables, garbage, expired log entries, blobs."""
    manager, settings = _test_infra()
    started = False
    if not manager.service("minio").probe():
        try:
            started = manager.start_service("minio") == "started"
        except Exception as exc:  # not installed, port taken, ...
            return {"skip": f"the test MinIO is not running and could not be started: {exc}"}
    endpoint = settings.lake.s3_endpoint_url
    s3, _ = _root_clients(endpoint)
    s3.create_bucket(Bucket=args.bucket)

    from tickcast.lake import TABLES, tables
    from tickcast.lake.maintenance import optimize

    lake = _lake(endpoint, args.bucket, args.prefix, root=True)
    for spec in TABLES.values():
        _write(lake, spec)
        _write(lake, spec)
        if not spec.key:
            optimize(lake, spec)  # two files -> one: the two are vacuum candidates
        table = tables.open_table(lake, spec)
        assert table is not None
        # As after 7 days of a real table: commits older than the log retention, superseded by a
        # checkpoint, which the next writer's commit removes (a checkpoint at every commit).
        table.alter.set_table_properties(
            {"delta.logRetentionDuration": "interval 1 seconds", "delta.checkpointInterval": "1"}
        )
        _write(lake, spec)
    for blob in BLOBS:
        lake.write_bytes(blob, b"{}")
    time.sleep(1.5)  # every commit so far is now past the 1-second log retention
    return {"endpoint": endpoint, "started_minio": started}


def _outcome(action: Callable[[], Any]) -> str:
    try:
        action()
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        if any(marker in text.lower() for marker in DENIED):
            return "denied"
        return "error: " + " ".join(text.split())[:400]
    return "ok"


def run(args: argparse.Namespace) -> dict[str, str]:
    """Every operation as the workload whose statements are in ``args.policy``."""
    policy = Path(args.policy).read_text()
    _, sts = _root_clients(args.endpoint)
    credentials = sts.assume_role(
        RoleArn="arn:aws:iam::000000000000:role/tickcast-probe",
        RoleSessionName=f"tickcast-{args.workload}",
        Policy=policy,
        DurationSeconds=900,
    )["Credentials"]
    # What IRSA leaves a pod with: temporary credentials in the SDKs' default chain, no static keys.
    for name in list(os.environ):
        if name.startswith(("AWS_", "TICKCAST_LAKE__")):
            del os.environ[name]
    os.environ.update(
        AWS_ACCESS_KEY_ID=credentials["AccessKeyId"],
        AWS_SECRET_ACCESS_KEY=credentials["SecretAccessKey"],
        AWS_SESSION_TOKEN=credentials["SessionToken"],
        AWS_EC2_METADATA_DISABLED="true",
    )

    from tickcast.lake import TABLES, tables
    from tickcast.lake.maintenance import optimize, vacuum

    lake = _lake(args.endpoint, args.bucket, args.prefix, root=False)
    results: dict[str, str] = {"check": _outcome(lake.check)}
    for name, spec in TABLES.items():
        results[f"read {name}"] = _outcome(lambda spec=spec: tables.scan(lake, spec))
    for name, spec in TABLES.items():
        results[f"write {name}"] = _outcome(lambda spec=spec: _write(lake, spec))
    if args.workload == "maintenance":
        for name, spec in TABLES.items():
            results[f"optimize {name}"] = _outcome(lambda spec=spec: optimize(lake, spec, min_files=1))
    for name, spec in TABLES.items():
        results[f"vacuum {name}"] = _outcome(lambda spec=spec: _vacuum_deleting(lake, spec, vacuum))
    for blob in BLOBS:
        results[f"read {blob}"] = _outcome(lambda blob=blob: lake.read_bytes(blob))
        results[f"write {blob}"] = _outcome(lambda blob=blob: lake.write_bytes(blob, b"{}"))
    return results


def _vacuum_deleting(lake: Any, spec: Any, vacuum: Callable[..., Any]) -> None:
    """Vacuum with no retention; it must find files to delete (else the probe proves nothing)."""
    report = vacuum(lake, spec, retention_hours=0)
    if not report.deleted_files:
        raise AssertionError(f"vacuum of {spec.name} found nothing to delete: the probe's setup left no garbage")


def cleanup(args: argparse.Namespace) -> dict[str, Any]:
    """Delete the bucket; stop MinIO when ``setup`` started it."""
    manager, settings = _test_infra()
    if manager.service("minio").probe():
        s3, _ = _root_clients(settings.lake.s3_endpoint_url)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=args.bucket, Delete={"Objects": keys})
        s3.delete_bucket(Bucket=args.bucket)
    if args.stop_minio:
        manager.down(["minio"])
    return {"cleaned": args.bucket}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("setup", "run", "cleanup"):
        p = sub.add_parser(name)
        p.add_argument("--bucket", required=True)
        p.add_argument("--prefix", default="lake")
        if name == "run":
            p.add_argument("--endpoint", required=True)
            p.add_argument("--workload", required=True)
            p.add_argument("--policy", required=True, help="file with the session policy document (JSON)")
        if name == "cleanup":
            p.add_argument("--stop-minio", action="store_true")
    args = parser.parse_args()
    handler = {"setup": setup, "run": run, "cleanup": cleanup}[args.command]
    print(json.dumps(handler(args)))


if __name__ == "__main__":
    main()
