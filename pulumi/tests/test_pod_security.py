"""The pods the program itself creates in the tickcast namespace pass the ``restricted`` Pod
Security profile that namespace enforces, judged by the admission controller's own code.

The chart's pods are checked in tests/helm/test_pod_security.py; the program adds one pod of
its own there, the MSK Serverless topic Job. ``tools/psa-check`` (Go, built by ``make setup``)
runs ``k8s.io/pod-security-admission``'s evaluator over it. A missing binary skips the test
locally and fails it under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import PULUMI_DIR, Deployment

PSA_CHECK = Path(os.environ.get("PSA_CHECK") or PULUMI_DIR.parent / "tools" / "psa-check" / "bin" / "psa-check")


def _psa_check(objects: list[dict]) -> tuple[int, dict]:
    if not (PSA_CHECK.is_file() and os.access(PSA_CHECK, os.X_OK)):
        message = f"tools/psa-check is not built ({PSA_CHECK}): run `make setup` (scripts/build-go-tools.sh)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (CI=true: a missing tool is a failure)")
        pytest.skip(message)
    proc = subprocess.run(
        [str(PSA_CHECK), "-level", "restricted", "-version", "latest"],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_the_topic_job_passes_the_restricted_profile(serverless: Deployment) -> None:
    job = serverless.one("kubernetes:batch/v1:Job")
    manifest = {"apiVersion": "batch/v1", "kind": "Job", "metadata": job.inputs["metadata"], "spec": job.inputs["spec"]}
    status, report = _psa_check([manifest])
    assert report["checked"] == ["Job/tickcast-kafka-topics/template"]
    assert not report["violations"], report["violations"]
    assert status == 0
    # the same Job with its hardening removed is refused: the check has teeth
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    del container["securityContext"]["allowPrivilegeEscalation"]
    status, report = _psa_check([manifest])
    assert status == 1 and {v["reason"] for v in report["violations"]} == {"allowPrivilegeEscalation != false"}
