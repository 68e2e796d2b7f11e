"""The dev Kubernetes cluster for tests/k8s: one per test session, real control plane, fake nodes.

``cluster`` starts (or reuses) :class:`~tickcast.infra.cluster.DevCluster`: kine, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok and the KubeRay operator on 127.0.0.1, built by
``scripts/build-go-tools.sh`` (``make setup``) into ``~/.cache/tickcast/go-tools``. A session that
started it stops it at the end (unless ``TICKCAST_TEST_KEEP_INFRA=1``).

Overrides (environment): ``TICKCAST_TEST_K8S_DIR`` (state folder), ``TICKCAST_TEST_K8S_PORT_BASE``
(8 ports from there), ``TICKCAST_TEST_PULUMI_PYTHON`` (the Pulumi program's interpreter, default
``pulumi/.venv/bin/python``, which computes the values the Pulumi stacks pass to the chart).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tickcast.infra.cluster import DevCluster
from tickcast.settings import InfraSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "tickcast"
PULUMI_DIR = REPO_ROOT / "pulumi"
STATE_DIR = Path(os.environ.get("TICKCAST_TEST_K8S_DIR", str(REPO_ROOT / ".tickcast" / "test-k8s")))
PORT_BASE = int(os.environ.get("TICKCAST_TEST_K8S_PORT_BASE", "16540"))
PULUMI_PYTHON = Path(os.environ.get("TICKCAST_TEST_PULUMI_PYTHON", str(PULUMI_DIR / ".venv" / "bin" / "python")))
KEEP = os.environ.get("TICKCAST_TEST_KEEP_INFRA", "") not in ("", "0", "false")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
RELEASE = "tickcast"

#: How long pods may take to be scheduled and marked Running by kwok, and controllers to act: the
#: control plane answers in well under a second; 120 s leaves room for a loaded 2-core machine.
SETTLE_S = 120.0


def _missing(what: str, fix: str) -> None:
    message = f"{what} is not available: {fix}"
    if IN_CI:
        pytest.fail(message + " (CI=true: a missing tool is a failure)")
    pytest.skip(message)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def cluster() -> Iterator[DevCluster]:
    """The dev cluster with the dev stack's nodes."""
    dev = DevCluster(InfraSettings(state_dir=STATE_DIR, cluster_port_base=PORT_BASE), progress=_progress)
    if dev.tools.missing():
        _missing(
            f"the dev cluster's Go programs ({', '.join(dev.tools.missing())})",
            "run scripts/build-go-tools.sh (make setup does)",
        )
    was_running = any(s.managed for s in dev.status())
    dev.up("dev")
    try:
        yield dev
    finally:
        if not was_running and not KEEP:
            dev.down()


def pulumi_chart(stack: str) -> dict[str, Any]:
    """What the Pulumi program passes for ``stack``: values, Secrets, namespace labels
    (``pulumi_chart_values.py`` run by the program's own interpreter)."""
    if not PULUMI_PYTHON.is_file():
        _missing(f"the Pulumi program's interpreter {PULUMI_PYTHON}", "run pulumi/setup.sh (make setup does)")
    done = subprocess.run(
        [str(PULUMI_PYTHON), str(Path(__file__).with_name("pulumi_chart_values.py")), stack],
        cwd=PULUMI_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"pulumi_chart_values.py {stack} failed: {done.stderr[-3000:]}"
    return json.loads(done.stdout)


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout_s: float = SETTLE_S,
    interval_s: float = 1.0,
    explain: Callable[[], str] | None = None,
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` (and ``explain()``, the
    cluster's side of the story) after ``timeout_s``.

    Not a retry of a flaky test: the controllers act asynchronously, and this is how long the
    test lets them take before calling the cluster wrong.
    """
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    detail = explain() if explain else f"last seen: {last!r}"
    pytest.fail(f"{what} (after {timeout_s:.0f} s; {detail})")


@dataclass
class Release:
    """One installed release of the chart in its own namespace."""

    cluster: DevCluster
    namespace: str
    values: dict[str, Any]
    values_file: Path
    beside: tuple[str, ...] = ()
    """Secrets created beside the release (as the Pulumi program does), not by the chart."""

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.helm(*args, f"--namespace={self.namespace}", check=check)

    def install(self, *, upgrade: bool = False, extra: dict[str, Any] | None = None) -> None:
        """``helm install`` (or ``upgrade``) with the release's values, plus ``extra`` on top."""
        self.values_file.write_text(yaml.safe_dump(_merged(self.values, extra or {})))
        self.helm("upgrade" if upgrade else "install", RELEASE, str(CHART), f"--values={self.values_file}")

    def manifest(self) -> list[dict[str, Any]]:
        """The objects Helm installed (``helm get manifest``)."""
        text = self.helm("get", "manifest", RELEASE).stdout
        return [d for d in yaml.safe_load_all(text) if d]

    def get(self, *args: str) -> list[dict[str, Any]]:
        """``kubectl get ARGS`` in the namespace: the items."""
        return self.cluster.get_json(*args, f"--namespace={self.namespace}")["items"]


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def create_namespace(cluster: DevCluster, name: str, labels: dict[str, str]) -> None:
    """A namespace with ``labels`` (Pod Security ``restricted``), once its ``default`` service
    account exists (pods are refused before the controller-manager makes it)."""
    cluster.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=true")
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    cluster.kubectl("create", "--filename=-", input=json.dumps(manifest))
    wait_for(
        f"the default service account of namespace {name}",
        lambda: cluster.kubectl("get", "serviceaccount", "default", f"--namespace={name}", check=False).returncode == 0,
        timeout_s=60,
    )


def create_secrets(cluster: DevCluster, namespace: str, secrets: dict[str, list[str]]) -> None:
    """The Secrets the Pulumi program creates beside the release, each key a random token."""
    import secrets as token_source

    for name, keys in secrets.items():
        manifest = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": {key: token_source.token_urlsafe(24) for key in keys},
        }
        # On stdin, never on a command line.
        cluster.kubectl("create", "--filename=-", input=json.dumps(manifest))
