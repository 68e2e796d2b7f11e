"""The chart installed for real (``helm install``, ``helm upgrade``, ``helm uninstall`` with the
pinned Helm CLI) into the dev cluster: a real API server, admission, scheduler, controllers and
KubeRay operator; fake nodes (kwok) shaped like the Pulumi stacks' node pools.

Each case is one release in its own namespace enforcing Pod Security ``restricted`` (the labels
the Pulumi program puts on its namespace):

- ``default@dev``: the chart's default values on the dev stack's nodes;
- ``pulumi-dev@dev`` and ``pulumi-prod@prod``: the values the Pulumi program passes for that
  stack (``app.chart_values``, run by the program's own interpreter) on that stack's nodes, with
  the Secrets the program creates beside the release.

What this cannot show (kwok runs no containers and there is no CNI): that the images start, that
Ray serves, that NetworkPolicies are enforced. It shows what the control plane decides: admission,
CRD validation and defaulting, the operator's reading of the RayService, placement by requests,
selectors and taints, rollouts, Jobs from CronJobs, Service and policy selection, clean uninstall.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from k8s.conftest import (
    Release,
    create_namespace,
    create_secrets,
    pulumi_chart,
    wait_for,
)
from tickcast.infra.cluster import DevCluster
from tickcast.infra.cluster.manager import STACK_LABEL, load_eks_facts

EKS_FACTS = load_eks_facts()
COMPONENT = "app.kubernetes.io/component"
GPU = "nvidia.com/gpu"
#: (values, stack whose nodes the cluster gets).
CASES = {"default@dev": ("default", "dev"), "pulumi-dev@dev": ("pulumi", "dev"), "pulumi-prod@prod": ("pulumi", "prod")}


@pytest.fixture(scope="module", params=list(CASES))
def release(
    request: pytest.FixtureRequest, cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    """The chart installed for one case; uninstalled (if a test has not) and its namespace deleted after."""
    values_kind, stack = CASES[request.param]
    pulumi = pulumi_chart(stack)
    namespace = request.param.replace("@", "-at-")
    cluster.set_nodes(stack)
    create_namespace(cluster, namespace, pulumi["namespace_labels"])
    values: dict[str, Any] = {}
    beside: tuple[str, ...] = ()
    if values_kind == "pulumi":
        values = pulumi["values"]
        create_secrets(cluster, namespace, pulumi["secrets"])
        beside = tuple(pulumi["secrets"])
    rel = Release(cluster, namespace, values, tmp_path_factory.mktemp(namespace) / "values.yaml", beside)
    rel.install()
    try:
        yield rel
    finally:
        rel.helm("uninstall", "tickcast", "--wait", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=true")


def _pods(release: Release) -> list[dict[str, Any]]:
    return release.get("pods")


def _ray_pod_count(release: Release) -> int:
    """Pods the RayService's cluster should have: the head and each group's replicas."""
    service = release.get("rayservices")[0]
    return 1 + sum(g.get("replicas", 0) for g in service["spec"]["rayClusterConfig"].get("workerGroupSpecs", []))


def _all_placed(release: Release) -> list[dict[str, Any]] | None:
    """The pods, once the operator has made every Ray pod and each pod is Running or Succeeded
    (kwok), else None."""
    pods = _pods(release)
    ray = [p for p in pods if "ray.io/cluster" in p["metadata"].get("labels", {})]
    if len(ray) < _ray_pod_count(release):
        return None
    return pods if all(p["status"].get("phase") in ("Running", "Succeeded") for p in pods) else None


def _pending_report(release: Release) -> str:
    lines = []
    for pod in _pods(release):
        if pod["status"].get("phase") not in ("Running", "Succeeded"):
            reasons = [c.get("message", "") for c in pod["status"].get("conditions", []) if c["status"] != "True"]
            lines.append(f"{pod['metadata']['name']}: {pod['status'].get('phase')} {reasons}")
    return "; ".join(lines)


def _ray_cluster(release: Release) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        clusters = release.get("rayclusters")
        owned = [
            c for c in clusters if any(o["kind"] == "RayService" for o in c["metadata"].get("ownerReferences", []))
        ]
        return owned[0] if owned else None

    return wait_for("the KubeRay operator to create a RayCluster for the RayService", find)


def _selector(match_labels: dict[str, str], expressions: list[dict[str, Any]]) -> str:
    """A label selector's kubectl form."""
    parts = [f"{k}={v}" for k, v in sorted(match_labels.items())]
    for e in expressions:
        op = {"In": "in", "NotIn": "notin"}.get(e["operator"])
        if op:
            parts.append(f"{e['key']} {op} ({','.join(e['values'])})")
        else:
            parts.append(e["key"] if e["operator"] == "Exists" else f"!{e['key']}")
    return ",".join(parts)


def _names(items: list[dict[str, Any]]) -> set[str]:
    return {i["metadata"]["name"] for i in items}


# --------------------------------------------------------------------------------------------
# Admission and the operator


def test_every_object_is_admitted_in_a_restricted_namespace(release: Release) -> None:
    ns = release.cluster.get_json("namespace", release.namespace)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    manifest = release.manifest()
    assert len(manifest) > 10, "the release installed suspiciously few objects"
    for doc in manifest:
        kind, name = doc["kind"], doc["metadata"]["name"]
        got = release.cluster.get_json(kind, name, f"--namespace={release.namespace}")
        assert got["metadata"]["name"] == name, f"{kind}/{name} was not stored"


def test_rayservice_becomes_a_raycluster_with_the_intended_pods(release: Release) -> None:
    service = release.cluster.get_json("rayservice", f"--namespace={release.namespace}")["items"][0]
    spec = service["spec"]["rayClusterConfig"]
    group = spec["workerGroupSpecs"][0]
    ray_cluster = _ray_cluster(release)
    name = ray_cluster["metadata"]["name"]

    def ray_pods() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        pods = release.get("pods", f"--selector=ray.io/cluster={name}")
        heads = [p for p in pods if p["metadata"]["labels"].get("ray.io/node-type") == "head"]
        workers = [p for p in pods if p["metadata"]["labels"].get("ray.io/node-type") == "worker"]
        return (heads, workers) if len(heads) == 1 and len(workers) == group["replicas"] else None

    heads, workers = wait_for(f"1 head and {group['replicas']} worker pods of {name}", ray_pods)
    intended = group["template"]["spec"]["containers"][0]["resources"]
    assert intended["limits"][GPU] == 1, "the chart asks one GPU per worker"
    for pod in workers:
        ray = pod["spec"]["containers"][0]
        # The operator may add nothing to what the chart asks, and drop nothing; the API server
        # defaults an extended resource's request (the GPU) to its limit.
        assert ray["resources"]["requests"] == {**intended["requests"], GPU: "1"}
        assert ray["resources"]["limits"] == {k: str(v) for k, v in intended["limits"].items()}
        tolerations = pod["spec"].get("tolerations", [])
        assert any(t.get("key") == GPU and t.get("effect") == "NoSchedule" for t in tolerations), tolerations
    auth = spec.get("authOptions")
    assert auth and auth["mode"] == "token", "the chart enables Ray token auth"
    for pod in heads + workers:
        env = {e["name"]: e for e in pod["spec"]["containers"][0].get("env", [])}
        assert env["RAY_AUTH_MODE"]["value"] == "token", f"{pod['metadata']['name']} lacks RAY_AUTH_MODE=token"
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        if auth.get("secretName"):
            assert ref["name"] == auth["secretName"]
        # The Secret exists (the operator's own, or the one named): the token reaches the pods.
        secret = release.cluster.get_json("secret", ref["name"], f"--namespace={release.namespace}")
        assert ref["key"] in secret["data"]


# --------------------------------------------------------------------------------------------
# Placement


def test_every_pod_is_placed_and_gpu_nodes_hold_only_gpu_pods(release: Release) -> None:
    _ray_cluster(release)
    pods = wait_for(
        "every pod Running on a node that fits it",
        lambda: _all_placed(release),
        explain=lambda: _pending_report(release),
    )
    nodes = {n["metadata"]["name"]: n for n in release.cluster.get_json("nodes", f"--selector={STACK_LABEL}")["items"]}
    pool = EKS_FACTS.NODE_POOL_LABEL
    for pod in pods:
        node = nodes[pod["spec"]["nodeName"]]
        wants_gpu = any(GPU in c.get("resources", {}).get("limits", {}) for c in pod["spec"]["containers"])
        on_gpu = node["metadata"]["labels"][pool] == "gpu"
        assert wants_gpu == on_gpu, (
            f"{pod['metadata']['name']} (GPU: {wants_gpu}) landed on {node['metadata']['name']} (pool "
            f"{node['metadata']['labels'][pool]})"
        )


def test_nothing_is_pending_for_lack_of_a_node(release: Release) -> None:
    wait_for("no pod Pending", lambda: _all_placed(release), explain=lambda: _pending_report(release))
    assert not _pending_report(release)


# --------------------------------------------------------------------------------------------
# Controllers: rollouts, upgrades, CronJobs


def _deployment_hashes(release: Release) -> dict[str, str]:
    """Deployment -> the pod-template hash of its newest ReplicaSet, once the rollout is done."""
    for d in release.get("deployments"):
        release.cluster.kubectl(
            "rollout",
            "status",
            f"deployment/{d['metadata']['name']}",
            f"--namespace={release.namespace}",
            "--timeout=120s",
        )
    hashes = {}
    for rs in release.get("replicasets"):
        owner = rs["metadata"]["ownerReferences"][0]["name"]
        if rs["spec"].get("replicas", 0) > 0:
            hashes[owner] = rs["metadata"]["labels"]["pod-template-hash"]
    return hashes


def test_deployments_roll_out(release: Release) -> None:
    deployments = release.get("deployments")
    assert deployments
    hashes = _deployment_hashes(release)
    for d in release.get("deployments"):
        assert d["status"].get("availableReplicas") == d["spec"]["replicas"], d["metadata"]["name"]
    assert set(hashes) == _names(deployments)


def _config_consumers(manifest: list[dict[str, Any]]) -> set[str]:
    """Deployments whose pods read the release's ConfigMap (envFrom or a volume)."""
    config_maps = {d["metadata"]["name"] for d in manifest if d["kind"] == "ConfigMap"}
    out = set()
    for d in manifest:
        if d["kind"] != "Deployment":
            continue
        text = json.dumps(d["spec"]["template"]["spec"])
        if any(f'"{name}"' in text for name in config_maps):
            out.add(d["metadata"]["name"])
    return out


def test_upgrade_rolls_what_it_should_and_nothing_else(release: Release) -> None:
    before = _deployment_hashes(release)
    consumers = _config_consumers(release.manifest())
    assert consumers, "no Deployment reads the ConfigMap"
    # A config change: every reader of the ConfigMap rolls (checksum/config), nothing else.
    release.install(upgrade=True, extra={"config": {"log_level": "DEBUG"}})
    after = _deployment_hashes(release)
    rolled = {name for name in before if after[name] != before[name]}
    assert rolled == consumers
    # A change to one component (an extra pod annotation of the producer) rolls only that one.
    producer = next(n for n in after if n.endswith("-producer") or n == "producer")
    release.install(
        upgrade=True, extra={"config": {"log_level": "DEBUG"}, "producer": {"podAnnotations": {"k8s-test": "1"}}}
    )
    again = _deployment_hashes(release)
    assert {name for name in after if again[name] != after[name]} == {producer}


def test_a_triggered_cronjob_creates_a_job_whose_pod_is_placed(release: Release) -> None:
    cronjobs = _names(release.get("cronjobs"))
    compaction = [c for c in cronjobs if "optimize" in c]
    assert compaction, f"no compaction (lake optimize) CronJob among {sorted(cronjobs)}"
    for name in sorted(cronjobs):
        job = f"{name[:40]}-test"
        release.cluster.kubectl("create", "job", job, f"--from=cronjob/{name}", f"--namespace={release.namespace}")

        def done(job: str = job) -> bool:
            status = release.cluster.get_json("job", job, f"--namespace={release.namespace}")["status"]
            return status.get("succeeded", 0) >= 1

        # kwok completes a Job's pod once it runs: success means admitted, scheduled and run.
        wait_for(f"Job {job} from CronJob {name} to succeed", done, explain=lambda: _pending_report(release))


# --------------------------------------------------------------------------------------------
# Selection: Services and NetworkPolicies


def test_services_select_the_pods_they_mean(release: Release) -> None:
    services = [d for d in release.manifest() if d["kind"] == "Service"]
    assert services
    for svc in services:
        name, selector = svc["metadata"]["name"], svc["spec"]["selector"]

        def endpoints(name: str = name) -> set[str]:
            slices = release.get("endpointslices", f"--selector=kubernetes.io/service-name={name}")
            return {e["targetRef"]["name"] for s in slices for e in s.get("endpoints") or [] if e.get("targetRef")}

        targets = wait_for(f"endpoints of Service {name}", endpoints)
        pods = {p["metadata"]["name"]: p for p in _pods(release)}
        for pod in targets:
            assert pods[pod]["metadata"]["labels"][COMPONENT] == selector[COMPONENT], (name, pod)


#: NetworkPolicy name suffix -> the components its podSelector must cover exactly (None: every pod
#: of the release).
POLICY_COMPONENTS: dict[str, set[str] | None] = {
    "default-deny": None,
    "metrics": None,
    "dashboard": {"dashboard"},
    "serving": {"ray-head", "ray-worker"},
}


def test_network_policies_are_accepted_and_select_the_pods_they_mean(release: Release) -> None:
    policies = [d for d in release.manifest() if d["kind"] == "NetworkPolicy"]
    assert policies
    running = {p["metadata"]["name"]: p for p in _pods(release) if p["status"].get("phase") == "Running"}
    for policy in policies:
        name = policy["metadata"]["name"]
        stored = release.cluster.get_json("networkpolicy", name, f"--namespace={release.namespace}")
        sel = stored["spec"]["podSelector"]
        chosen = release.get(
            "pods", f"--selector={_selector(sel.get('matchLabels', {}), sel.get('matchExpressions', []))}"
        )
        chosen_running = _names(chosen) & set(running)
        suffix = next((s for s in POLICY_COMPONENTS if name.endswith(s)), None)
        if suffix is None:
            continue  # e.g. the fine-tune job's policy: its pods exist only while the job runs
        assert chosen_running, f"NetworkPolicy {name} selects no pod"
        expected = POLICY_COMPONENTS[suffix]
        if expected is None:
            assert chosen_running == set(running), f"{name} misses {set(running) - chosen_running}"
        else:
            want = {p for p, pod in running.items() if pod["metadata"]["labels"].get(COMPONENT) in expected}
            assert chosen_running == want, name
        for rule in stored["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    ps = peer["podSelector"]
                    peers = release.get(
                        "pods", f"--selector={_selector(ps.get('matchLabels', {}), ps.get('matchExpressions', []))}"
                    )
                    assert peers, f"NetworkPolicy {name} admits traffic from a podSelector that matches no pod: {ps}"


# --------------------------------------------------------------------------------------------
# Uninstall (last: it removes the release)


def test_uninstall_leaves_nothing_behind(release: Release) -> None:
    kinds = sorted(
        {d["kind"].lower() for d in release.manifest()}
        | {"pods", "replicasets", "jobs", "rayclusters", "endpointslices"}
    )
    release.helm("uninstall", "tickcast", "--wait")

    def leftovers() -> list[str]:
        found = []
        for kind in kinds:
            for item in release.get(kind):
                meta = item["metadata"]
                # The namespace's own: its default ServiceAccount and the cluster CA ConfigMap.
                if (kind, meta["name"]) in {("serviceaccount", "default"), ("configmap", "kube-root-ca.crt")}:
                    continue
                if kind == "secret" and meta["name"] in release.beside:
                    continue  # created beside the release (by the Pulumi program), not by the chart
                found.append(f"{kind}/{meta['name']}")
        return found

    wait_for(f"nothing left after helm uninstall ({leftovers()})", lambda: not leftovers())
