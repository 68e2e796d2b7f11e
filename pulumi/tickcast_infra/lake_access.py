"""Who may touch what in the lake: the one source of every workload's S3 grants.

The lake (``s3://BUCKET/PREFIX``) holds Delta Lake tables and blobs:

- a table is the folder ``<table>/``: its Parquet data files (``<table>/<partition>=.../*.parquet``)
  and its log (``<table>/_delta_log/``: commit JSON, checkpoints, ``_last_checkpoint``);
- blobs live under the prefixes ``models/`` (model registry), ``reports/`` (backtests) and
  ``_state/`` (service state, e.g. ``_state/producer/``).

:data:`LAKE_ACCESS` says, per workload, which tables and blob prefixes it reads, writes or
maintains; :func:`s3_statements` turns one workload's entry into IAM statements. What a level
allows, in S3 actions on ``<lake>/<path>/*`` (data files and ``_delta_log/`` alike):

- ``read``: GetObject.
- ``write``: GetObject, PutObject and AbortMultipartUpload. A Delta commit is one PutObject of
  ``_delta_log/<version>.json`` with ``If-None-Match: *`` (S3 conditional writes; no DynamoDB
  lock table, no temporary file, no rename); appends, merges and optimize only *add* objects
  (the files they replace are marked removed in the log). One delete remains: after a commit,
  delta-rs removes commit files older than the table's ``delta.logRetentionDuration`` (7 days)
  that a checkpoint supersedes, and a write whose clean-up is refused fails *after* its commit
  landed. So a table writer may also DeleteObject under ``<table>/_delta_log/`` (never a data
  file).
- ``maintain`` (tables only): ``write`` plus DeleteObject on the whole table: ``tickcast lake
  vacuum`` deletes data files no version within the retention references. Only the
  maintenance CronJob has it.

Every workload with lake access may also list the bucket (ListBucket, GetBucketLocation on
the bucket ARN, no prefix condition): S3 answers a GET of a missing key with 404 only to a
caller allowed to list, 403 otherwise, and delta-rs reads ``_delta_log/_last_checkpoint``,
absent until a table's first checkpoint, expecting 404. Listing shows key names, never data.

Plain Python (standard library only) on purpose: ``tests/helm/test_chart.py`` loads this file
with the project's environment and checks :data:`LAKE_TABLES` and :data:`LAKE_BLOB_PREFIXES`
against ``tickcast.lake.specs``; ``pulumi/tests/test_lake_grants.py`` runs real delta-rs
operations on MinIO under exactly these statements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

Access = Literal["read", "write", "maintain"]

LAKE_TABLES: Final = ("bars", "open_close", "forecasts", "scores", "score_aggregates")
"""The Delta tables, ``tickcast.lake.specs.TABLES`` (a test keeps them equal)."""

LAKE_BLOB_PREFIXES: Final = ("models", "reports", "_state")
"""The blob prefixes, ``tickcast.lake.specs.BLOB_PREFIXES`` (a test keeps them equal)."""

DELTA_LOG: Final = "_delta_log"
"""A table's log folder."""

LAKE_ACCESS: Final[dict[str, dict[str, Access]]] = {
    # The sink: Kafka bars -> the bars table (MERGE commits carrying the Kafka positions, and
    # bin-packing of its own small files). Nobody else writes bars.
    "consumer": {"bars": "write"},
    # Daily open/close rows, its backfill checkpoints, and the bars a resumed replay reads.
    "producer": {"open_close": "write", "_state/producer": "write", "bars": "read"},
    # The streaming forecaster: context from bars, its forecasts, scores and score aggregates
    # (read back to warm-start).
    "forecaster": {"bars": "read", "forecasts": "write", "scores": "write", "score_aggregates": "write"},
    # Ray Serve, and `tickcast batch-forecast` on its Ray cluster: models and context in,
    # batch forecasts out.
    "serving": {"bars": "read", "models": "read", "forecasts": "write"},
    # Streamlit: reads everything it shows, writes nothing.
    # No open_close and no models: it shows no open/close data and asks Serve for its models over HTTP.
    "dashboard": {
        "bars": "read",
        "forecasts": "read",
        "scores": "read",
        "score_aggregates": "read",
        "reports": "read",
    },
    # Ray batch jobs (the backtest CronJob, the fine-tune RayJob): bars in, reports and models out.
    "batch": {"bars": "read", "reports": "write", "models": "write"},
    # The CronJobs running `tickcast lake optimize` and `tickcast lake vacuum` on every table.
    "maintenance": {table: "maintain" for table in LAKE_TABLES},
}
"""Workload -> {table or blob prefix (``models``, ``_state/producer``): access level}."""

READ_ACTIONS: Final = ("s3:GetObject",)
WRITE_ACTIONS: Final = ("s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload")
LIST_ACTIONS: Final = ("s3:ListBucket", "s3:GetBucketLocation")
DELETE_ACTIONS: Final = ("s3:DeleteObject",)


def is_table(path: str) -> bool:
    """Whether a :data:`LAKE_ACCESS` key names a table (else a blob prefix or a folder in one)."""
    return path in LAKE_TABLES


def check_access(access: Mapping[str, Access]) -> None:
    """Raise ValueError for a key that is neither a table nor under a blob prefix, or a bad level."""
    for path, level in access.items():
        if is_table(path):
            if level not in ("read", "write", "maintain"):
                raise ValueError(f"lake access {path!r}: {level!r} is not read, write or maintain")
        elif path.split("/", 1)[0] in LAKE_BLOB_PREFIXES and not path.endswith("/"):
            if level not in ("read", "write"):
                raise ValueError(f"lake access {path!r}: blobs are read or written, not {level!r}")
        else:
            raise ValueError(
                f"lake access {path!r} is neither a table ({', '.join(LAKE_TABLES)}) "
                f"nor under a blob prefix ({', '.join(LAKE_BLOB_PREFIXES)})"
            )


def uses_lake(access: Mapping[str, Access]) -> bool:
    """Whether a workload touches the lake at all."""
    return bool(access)


def writes_lake(access: Mapping[str, Access]) -> bool:
    """Whether a workload writes anything (it then encrypts with the lake's KMS key)."""
    return any(level != "read" for level in access.values())


def blob_level(access: Mapping[str, Access], path: str) -> Access | None:
    """The grant level covering the blob folder ``path`` (the longest granted prefix), if any."""
    covering = [key for key in access if path == key or path.startswith(key + "/")]
    return access[max(covering, key=len)] if covering else None


def expected_outcomes(workload: str, blobs: Sequence[str]) -> dict[str, str]:
    """What ``LAKE_ACCESS[workload]`` allows, operation by operation: ``ok`` or ``denied``.

    The meaning of the levels, as a real policy engine must enforce them (MinIO locally, IAM
    on AWS; both grant tests compare what the engine did with this): ``read`` reads a table or
    blob; ``write`` also appends and commits; ``maintain`` also vacuums (deletes data files),
    and the maintenance workload optimizes every table it maintains.
    """

    def outcome(allowed: bool) -> str:
        return "ok" if allowed else "denied"

    access = LAKE_ACCESS[workload]
    out = {"check": outcome(bool(access))}
    for table in LAKE_TABLES:
        level = access.get(table)
        out[f"read {table}"] = outcome(level is not None)
        out[f"write {table}"] = outcome(level in ("write", "maintain"))
        out[f"vacuum {table}"] = outcome(level == "maintain")
        if workload == "maintenance":
            out[f"optimize {table}"] = "ok"
    for blob in blobs:
        level = blob_level(access, blob.rsplit("/", 1)[0])
        out[f"read {blob}"] = outcome(level is not None)
        out[f"write {blob}"] = outcome(level == "write")
    return out


def s3_statements(access: Mapping[str, Access], bucket_arn: str, lake_prefix: str) -> list[dict[str, Any]]:
    """The IAM statements granting ``access`` in the lake at ``s3://<bucket>/<lake_prefix>``.

    Sids: ``LakeList`` (the bucket), ``LakeRead`` and ``LakeWrite`` (objects under each path),
    ``LakeLogCleanup`` (``_delta_log/`` of written tables), ``LakeVacuum`` (maintained tables).
    Resources are sorted so the documents are stable.
    """
    check_access(access)
    if not access:
        return []
    root = f"{bucket_arn}/{lake_prefix.strip('/')}" if lake_prefix.strip("/") else bucket_arn

    def objects(paths: list[str], suffix: str = "*") -> list[str]:
        return sorted(f"{root}/{path}/{suffix}" for path in paths)

    read = [p for p, level in access.items() if level == "read"]
    write = [p for p, level in access.items() if level in ("write", "maintain")]
    log_cleanup = [p for p, level in access.items() if level == "write" and is_table(p)]
    vacuum = [p for p, level in access.items() if level == "maintain"]
    statements: list[dict[str, Any]] = [
        {"Sid": "LakeList", "Effect": "Allow", "Action": list(LIST_ACTIONS), "Resource": [bucket_arn]}
    ]
    for sid, actions, resources in (
        ("LakeRead", READ_ACTIONS, objects(read)),
        ("LakeWrite", WRITE_ACTIONS, objects(write)),
        ("LakeLogCleanup", DELETE_ACTIONS, objects(log_cleanup, f"{DELTA_LOG}/*")),
        ("LakeVacuum", DELETE_ACTIONS, objects(vacuum)),
    ):
        if resources:
            statements.append({"Sid": sid, "Effect": "Allow", "Action": list(actions), "Resource": resources})
    return statements


for _workload, _access in LAKE_ACCESS.items():
    check_access(_access)
