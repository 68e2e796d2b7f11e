"""Deliberately broken variants of the chart's objects, refused by the cluster itself (the API
server's Pod Security admission, the KubeRay CRD's structural schema, the scheduler), not by any
check of ours. Each test first shows the unbroken object passes the same gate, so the refusal is
the broken part's doing.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from k8s.conftest import CHART, RELEASE, Release, create_namespace, pulumi_chart, wait_for
from tickcast.infra.cluster import DevCluster

NAMESPACE = "refused"


@pytest.fixture(scope="module")
def namespace(cluster: DevCluster) -> Iterator[str]:
    """A namespace labelled like the Pulumi program's (Pod Security ``restricted``), dev nodes."""
    cluster.set_nodes("dev")
    create_namespace(cluster, NAMESPACE, pulumi_chart("dev")["namespace_labels"])
    yield NAMESPACE
    cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true")


@pytest.fixture(scope="module")
def rendered(cluster: DevCluster, namespace: str) -> list[dict[str, Any]]:
    """The chart's objects with its default values (``helm template`` of the pinned Helm CLI)."""
    text = cluster.helm("template", RELEASE, str(CHART), f"--namespace={namespace}").stdout
    return [d for d in yaml.safe_load_all(text) if d]


def _one(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, [d["metadata"]["name"] for d in found]
    return copy.deepcopy(found[0])


def _create(cluster: DevCluster, obj: dict[str, Any], *flags: str) -> tuple[int, str]:
    done = cluster.kubectl("create", "--filename=-", *flags, input=json.dumps(obj), check=False)
    return done.returncode, done.stderr


def test_a_privileged_container_is_refused_by_pod_security_admission(
    cluster: DevCluster, namespace: str, rendered: list[dict[str, Any]]
) -> None:
    template = _one(rendered, "Deployment", "-producer")["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "producer-as-is", "namespace": namespace, "labels": template["metadata"]["labels"]},
        "spec": {**template["spec"], "serviceAccountName": "default"},
    }
    code, err = _create(cluster, pod, "--dry-run=server")
    assert code == 0, f"the chart's own producer pod is refused: {err}"
    broken = copy.deepcopy(pod)
    broken["metadata"]["name"] = "producer-privileged"
    security = broken["spec"]["containers"][0]["securityContext"]
    security.pop("allowPrivilegeEscalation", None)  # else the API's validation refuses first
    security["privileged"] = True
    code, err = _create(cluster, broken)
    assert code != 0, "a privileged container was admitted into a restricted namespace"
    assert 'violates PodSecurity "restricted' in err and "privileged" in err, err


def test_a_rayservice_with_an_unknown_field_is_refused_by_the_crd_schema(
    cluster: DevCluster, namespace: str, rendered: list[dict[str, Any]]
) -> None:
    service = _one(rendered, "RayService")
    code, err = _create(cluster, service, "--dry-run=server", "--validate=strict")
    assert code == 0, f"the chart's own RayService is refused: {err}"
    broken = copy.deepcopy(service)
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["replicasTypo"] = 1
    code, err = _create(cluster, broken, "--dry-run=server", "--validate=strict")
    assert code != 0, "the API server accepted a RayService field KubeRay's CRD does not define"
    assert 'unknown field "spec.rayClusterConfig.headGroupSpec.replicasTypo"' in err, err
    # A wrong type is refused whatever the client asks (no strict validation needed).
    broken = copy.deepcopy(service)
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    code, err = _create(cluster, broken, "--dry-run=server", "--validate=false")
    assert code != 0 and "replicas" in err, err


def test_a_gpu_worker_without_its_toleration_stays_pending(
    cluster: DevCluster, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    release = Release(cluster, namespace, {}, tmp_path_factory.mktemp("refused") / "values.yaml")
    release.install(extra={"rayService": {"workerGroup": {"tolerations": []}}})
    try:

        def unschedulable() -> dict[str, Any] | None:
            workers = release.get("pods", "--selector=ray.io/node-type=worker")
            for pod in workers:
                for cond in pod["status"].get("conditions", []):
                    if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                        return pod
            return None

        pod = wait_for("the scheduler to find no node for the untolerating GPU worker", unschedulable)
        message = next(c["message"] for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
        # The GPU nodes carry the taint the worker no longer tolerates; the CPU nodes lack the GPU
        # (and the worker's node selector): nothing fits.
        gpu_nodes = cluster.get_json("nodes", "--selector=tickcast.io/node-pool=gpu")["items"]
        assert gpu_nodes and all(
            any(t["key"] == "nvidia.com/gpu" for t in n["spec"].get("taints", [])) for n in gpu_nodes
        )
        assert f"{len(gpu_nodes)} node(s) had untolerated taint" in message, message
        assert pod["status"]["phase"] == "Pending"
        head = release.get("pods", "--selector=ray.io/node-type=head")
        assert head and head[0]["spec"].get("nodeName"), "the head (no GPU, no taint to tolerate) was placed"
    finally:
        release.helm("uninstall", RELEASE, "--wait", check=False)
