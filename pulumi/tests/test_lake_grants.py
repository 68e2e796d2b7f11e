"""The lake grants, enforced: each role's S3 statements on MinIO, under real delta-rs operations.

The mock tests (``test_iam.py``) check the policy documents key by key; this one checks that the
documents are *enough and no more* for what tickcast really does. For every workload, the S3
statements of its role (``iam.policy_document``) become the session policy of temporary MinIO
credentials, and ``lake_grants_probe.py`` (run with the project's environment) reads, writes
and vacuums every Delta table, optimizes (maintenance), and reads and writes every blob prefix
with them, as IRSA credentials would. Each outcome must be what ``LAKE_ACCESS`` says: allowed
operations succeed (a table write includes delta-rs's clean-up of expired log entries, which
deletes under ``_delta_log/``), the rest are denied.

Needs the project's virtualenv (``../.venv``, ``make setup``) and its test MinIO (started here
when it is not running, and stopped again); skipped without them, failed under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import PULUMI_DIR
from lake_grants_probe import BLOBS  # standard library only at import time
from tickcast_infra.iam import WORKLOADS, ResourceArns, policy_document
from tickcast_infra.lake_access import LAKE_ACCESS, LAKE_TABLES, expected_outcomes

PROJECT_PYTHON = PULUMI_DIR.parent / ".venv" / "bin" / "python"
PROBE = Path(__file__).with_name("lake_grants_probe.py")
PREFIX = "lake"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: The order the roles run in: maintenance last, since its vacuum deletes what the others must fail to.
ORDER = sorted(LAKE_ACCESS, key=lambda w: (w == "maintenance", w))


def _probe(*args: str, timeout: float = 300) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TICKCAST_"))}
    env.update(HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", AWS_EC2_METADATA_DISABLED="true")
    proc = subprocess.run(
        [str(PROJECT_PYTHON), str(PROBE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PULUMI_DIR.parent,
        env=env,
    )
    assert proc.returncode == 0, f"{PROBE.name} {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing prerequisite is a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def minio_lake() -> Any:
    """(endpoint, bucket) of a fresh bucket on the test MinIO, with every table and blob in it."""
    if not PROJECT_PYTHON.exists():
        _unavailable(f"the project's virtualenv {PROJECT_PYTHON} is missing: run `make setup`")
    bucket = f"tc-grants-{uuid.uuid4().hex[:10]}"
    ready = _probe("setup", "--bucket", bucket, "--prefix", PREFIX)
    if "skip" in ready:
        _unavailable(ready["skip"])
    yield ready["endpoint"], bucket
    _probe("cleanup", "--bucket", bucket, *(["--stop-minio"] if ready["started_minio"] else []))


def _session_policy(workload: str, bucket: str) -> str:
    """The S3 part of the workload's real policy document, for this bucket."""
    arns = ResourceArns(
        bucket_arn=f"arn:aws:s3:::{bucket}",
        lake_prefix=PREFIX,
        lake_kms_key_arn="arn:aws:kms:us-east-1:000000000000:key/probe",
        kafka_cluster_arn="arn:aws:kafka:us-east-1:000000000000:cluster/probe/uuid",
    )
    document = policy_document(WORKLOADS[workload], arns)
    statements = [s for s in document["Statement"] if all(a.startswith("s3:") for a in s["Action"])]
    return json.dumps({"Version": document["Version"], "Statement": statements})


def test_each_role_can_do_exactly_what_lake_access_grants(minio_lake: Any, tmp_path: Path) -> None:
    endpoint, bucket = minio_lake
    mismatches = []
    for workload in ORDER:
        policy = tmp_path / f"{workload}.json"
        policy.write_text(_session_policy(workload, bucket))
        args = ("--bucket", bucket, "--prefix", PREFIX, "--endpoint", endpoint, "--workload", workload)
        got = _probe("run", *args, "--policy", str(policy))
        want = expected_outcomes(workload, list(BLOBS))
        assert set(got) == set(want), (workload, sorted(set(got) ^ set(want)))
        mismatches += [f"{workload}: {op}: got {got[op]}, want {want[op]}" for op in want if got[op] != want[op]]
    assert not mismatches, "\n".join(mismatches)


def test_expected_outcomes_follow_the_mapping() -> None:
    """The expectation itself: the consumer may only write bars; maintenance may vacuum everything."""
    blobs = ["models/x/1/config.json", "_state/producer/a.json", "_state/other/b.json"]
    consumer = expected_outcomes("consumer", blobs)
    assert [op for op, v in consumer.items() if v == "ok"] == ["check", "read bars", "write bars"]
    producer = expected_outcomes("producer", blobs)
    assert producer["write _state/producer/a.json"] == "ok" and producer["write _state/other/b.json"] == "denied"
    maintenance = expected_outcomes("maintenance", blobs)
    assert all(maintenance[f"vacuum {t}"] == "ok" for t in LAKE_TABLES)
    assert all(v == "denied" for op, v in maintenance.items() if op.endswith(".json"))
