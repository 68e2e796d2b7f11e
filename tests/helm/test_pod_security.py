"""Every pod the chart renders passes the ``restricted`` Pod Security Standard, as the API
server's own Pod Security admission code judges it.

The Pulumi program labels the release's namespace ``pod-security.kubernetes.io/enforce:
restricted``, so a pod that breaks the profile is refused at admission. The judge here is not
a check of ours: ``tools/psa-check`` (Go, built by ``make setup``) runs
``k8s.io/pod-security-admission``'s policy evaluator (``policy.NewEvaluator(policy.
DefaultChecks())``, level restricted, version latest) over the pod templates of the rendered
manifests: Deployments, CronJobs and the KubeRay head, worker and submitter templates, the
head with the autoscaler sidecar KubeRay injects. A missing binary skips these tests locally
and fails them under ``CI=true``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_chart import (
    DEV_FIX,
    REPO_ROOT,
    VALUE_SETS,
    _docs,
    _missing,
    _pod_specs,
    _render,
    _require,
    _stack_types,
    _stack_values,
    _values,
)

CHART = REPO_ROOT / "helm" / "tickcast"
PSA_CHECK = REPO_ROOT / "tools" / "psa-check" / "bin" / "psa-check"
#: What the Pulumi program writes on the namespace (pulumi/tickcast_infra/app.py): the level
#: every pod must pass.
LEVEL = "restricted"


def _binary() -> Path:
    path = Path(os.environ.get("PSA_CHECK") or PSA_CHECK)
    if not (path.is_file() and os.access(path, os.X_OK)):
        _missing(f"tools/psa-check ({path})", "run `make setup` (scripts/build-go-tools.sh builds it with Go)")
    return path


def psa_check(docs: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """Run tools/psa-check over ``docs`` (fed as a YAML stream): (exit status, its JSON report)."""
    proc = subprocess.run(
        [str(_binary()), "-level", LEVEL, "-version", "latest"],
        input=yaml.safe_dump_all(docs, sort_keys=False),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode in (0, 1), f"psa-check failed (rc {proc.returncode}): {proc.stderr}"
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    helm = _require("helm_python", DEV_FIX)
    with helm.Chart.load(str(CHART)) as loaded:
        yield loaded


def _renders(chart: Any) -> dict[str, list[dict[str, Any]]]:
    """The default and production values, the minimal ones, and each Pulumi stack's shape of
    values with the fine-tune RayJob on (its head, workers and submitter are checked too)."""
    renders = {name: _docs(_render(chart, _values(name))) for name in VALUE_SETS}
    for stack in ("dev", "prod"):
        renders[f"pulumi-{stack}"] = _docs(_render(chart, _stack_values(_stack_types(stack))))
    return renders


@pytest.fixture(scope="module")
def renders(chart: Any) -> dict[str, list[dict[str, Any]]]:
    return _renders(chart)


@pytest.mark.parametrize("name", [*VALUE_SETS, "pulumi-dev", "pulumi-prod"])
def test_every_rendered_pod_passes_the_restricted_profile(renders: dict[str, Any], name: str) -> None:
    docs = renders[name]
    status, report = psa_check(docs)
    assert report["level"] == LEVEL and report["version"] == "latest"
    assert not report["violations"], "\n".join(
        f"{v['object']}/{v['role']}: {v['message']}" for v in report["violations"]
    )
    assert status == 0
    # the tool saw every pod the chart would create, no fewer: _pod_specs labels a Deployment's
    # or CronJob's pod KIND/NAME and a Ray pod KIND/NAME/ROLE; psa-check calls the former's role
    # "template".
    checked = {label.removesuffix("/template") for label in report["checked"]}
    assert checked == {label for label, _, _ in _pod_specs(docs)}
    assert len(report["checked"]) >= 6  # minimal: four services and a Ray head and worker


def test_a_privileged_container_is_reported() -> None:
    """The negative case: the evaluator refuses what the admission controller refuses."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "escape"},
        "spec": {"containers": [{"name": "shell", "image": "busybox", "securityContext": {"privileged": True}}]},
    }
    status, report = psa_check([pod])
    assert status == 1
    reasons = {v["reason"] for v in report["violations"] if v["object"] == "Pod/escape"}
    assert "privileged" in reasons, report
    assert any(
        'container "shell" must not set securityContext.privileged=true' in v["detail"] for v in report["violations"]
    )


def test_a_chart_regression_is_reported(chart: Any) -> None:
    """A value that weakens the chart's pods (privilege escalation allowed, a root user) fails
    the check, Ray pods included: the test guards the chart, not only a hand-made pod."""
    values = {
        "containerSecurityContext": {"allowPrivilegeEscalation": True},
        "rayService": {"podSecurityContext": {"runAsNonRoot": False, "runAsUser": 0}},
    }
    status, report = psa_check(_docs(_render(chart, values)))
    assert status == 1
    by_pod: dict[str, set[str]] = {}
    for v in report["violations"]:
        by_pod.setdefault(f"{v['object']}/{v['role']}", set()).add(v["reason"])
    assert "allowPrivilegeEscalation != false" in by_pod["Deployment/tickcast-producer/template"]
    assert "runAsUser=0" in by_pod["RayService/tickcast-serving/head"], by_pod


def test_the_kuberay_autoscaler_sidecar_is_checked(renders: dict[str, Any]) -> None:
    """KubeRay adds the autoscaler container to the head with autoscalerOptions' securityContext:
    without one (KubeRay's default) the head pod would be refused at admission."""
    rayservice = copy.deepcopy(next(d for d in renders["default"] if d["kind"] == "RayService"))
    assert rayservice["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    status, _ = psa_check([rayservice])
    assert status == 0
    del rayservice["spec"]["rayClusterConfig"]["autoscalerOptions"]["securityContext"]
    status, report = psa_check([rayservice])
    assert status == 1
    details = [v["detail"] for v in report["violations"] if v["role"] == "head"]
    assert details and all('"autoscaler"' in d for d in details), report
