"""The Helm chart in helm/tickcast, rendered by Helm's own engine and checked offline.

- Helm (its Go SDK, embedded by the ``helm-python-sdk`` package) renders the chart for the
  default, production and minimal values, and ``helm lint --strict`` passes.
- Every core object validates strictly against the Kubernetes JSON schemas of the target EKS
  version (``kubernetes-validate``); Ray pod templates do too, as PodTemplates.
- RayService and RayJob validate against KubeRay v1.7.0's CRD schemas, read from
  ``../shared/kuberay-crds/v1.7.0/`` beside the repository (never copied into it), with unknown
  fields rejected as the API server's strict field validation does.
- values.schema.json rejects bad values with a message naming the value.
- checkov reports no failed check over everything rendered (Ray pod templates included, as
  Pods), and every skip carries a reason.
- The chart's configuration keys are exactly the settings classes' (``tickcast.settings``).

Tools that are missing skip their tests locally and fail them under ``CI=true``.
Run ``python tests/helm/test_chart.py --write-readme`` to regenerate helm/README.md's values table.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, UnionType
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "tickcast"
README = REPO_ROOT / "helm" / "README.md"
KUBERAY_CRDS = REPO_ROOT.parent / "shared" / "kuberay-crds" / "v1.7.0"
#: The names the Pulumi program reads back from the release it installs (plain Python).
PULUMI_CHART_NAMES = REPO_ROOT / "pulumi" / "tickcast_infra" / "chart_names.py"
#: What EKS gives (Kubernetes version, node shapes, pod sizes): plain Python, loaded without Pulumi.
PULUMI_EKS_FACTS = REPO_ROOT / "pulumi" / "tickcast_infra" / "eks_facts.py"


def _load_plain(path: Path, name: str) -> ModuleType:
    """A plain-Python module of the Pulumi program, loaded on its own (no Pulumi, no package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EKS_FACTS = _load_plain(PULUMI_EKS_FACTS, "pulumi_eks_facts")
#: The EKS version the chart targets: the Pulumi program's one setting (kubernetes-validate
#: ships schemas up to 1.37).
KUBE_VERSION = f"{EKS_FACTS.KUBERNETES_VERSION}.0"
RELEASE = "tickcast"
NAMESPACE = "tickcast"
VALUE_SETS = {
    "default": None,
    "production": CHART / "ci" / "production-values.yaml",
    "minimal": CHART / "ci" / "minimal-values.yaml",
}
#: Settings groups the chart does not configure: ``infra`` is the local Kafka/MinIO runner and
#: ``platform`` the local supervisor (Kubernetes restarts pods itself).
LOCAL_ONLY_GROUPS = {"infra", "platform"}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(what: str, fix: str) -> None:
    message = f"{what} is not available: {fix}"
    if IN_CI:
        pytest.fail(message + " (CI=true: a missing tool is a failure)")
    pytest.skip(message)


def _require(module: str, fix: str) -> ModuleType:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        _missing(f"Python module {module}", fix)
        raise  # unreachable: _missing raises


DEV_FIX = "pip install -e '.[dev]'"
Rendered = dict[str, list[dict[str, Any]]]


# --------------------------------------------------------------------------------------------
# Rendering


def _values(name: str) -> dict[str, Any]:
    path = VALUE_SETS[name]
    return {} if path is None else yaml.safe_load(path.read_text()) or {}


@pytest.fixture(scope="module")
def helm() -> Any:
    return _require("helm_python", DEV_FIX)


@pytest.fixture(scope="module")
def chart(helm: Any) -> Iterator[Any]:
    with helm.Chart.load(str(CHART)) as loaded:
        yield loaded


def _render(chart: Any, values: dict[str, Any] | None = None) -> dict[str, str]:
    return chart.render(values=values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def _docs(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@pytest.fixture(scope="module")
def rendered(chart: Any) -> Rendered:
    """Every value set rendered once: name -> objects."""
    return {name: _docs(_render(chart, _values(name))) for name in VALUE_SETS}


def _one(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def _kinds(docs: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in docs:
        counts[d["kind"]] = counts.get(d["kind"], 0) + 1
    return counts


def _ray_pod_templates(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(role, pod template) of a RayService or RayJob: head, each worker group, the submitter."""
    spec = doc["spec"]
    cluster = spec.get("rayClusterConfig") or spec.get("rayClusterSpec")
    templates = [("head", cluster["headGroupSpec"]["template"])]
    templates += [(g["groupName"], g["template"]) for g in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in spec:
        templates.append(("submitter", spec["submitterPodTemplate"]))
    return templates


def _pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(label, pod metadata, pod spec) of every pod the objects would create."""
    pods = []
    for d in docs:
        kind, name = d["kind"], d["metadata"]["name"]
        if kind == "Deployment":
            t = d["spec"]["template"]
            pods.append((f"{kind}/{name}", t["metadata"], t["spec"]))
        elif kind == "CronJob":
            t = d["spec"]["jobTemplate"]["spec"]["template"]
            pods.append((f"{kind}/{name}", t["metadata"], t["spec"]))
        elif d["apiVersion"].startswith("ray.io/"):
            for role, t in _ray_pod_templates(d):
                pods.append((f"{kind}/{name}/{role}", t["metadata"], t["spec"]))
    return pods


# --------------------------------------------------------------------------------------------
# Helm: render and lint


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint_strict_is_clean(helm: Any, name: str) -> None:
    report = helm.lint(str(CHART), _values(name), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error; 1 is info
    assert not problems and not report["errors"], json.dumps(report, indent=2)


def test_default_render_has_every_workload(rendered: Rendered) -> None:
    kinds = _kinds(rendered["default"])
    assert kinds["Deployment"] == 4  # producer, consumer, forecaster, dashboard
    for kind in (
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "Service",
        "RayService",
        "CronJob",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ):
        assert kinds.get(kind), f"default values render no {kind}: {kinds}"
    assert "Ingress" not in kinds and "RayJob" not in kinds


def test_production_render_adds_ingress_finetune_and_existing_secret(rendered: Rendered) -> None:
    docs = rendered["production"]
    kinds = _kinds(docs)
    assert kinds.get("Ingress") == 1 and kinds.get("RayJob") == 1
    assert "Secret" not in kinds, "with secrets.existingSecret the chart must not render its own Secret"
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for _, _, spec in _pod_specs(docs)
        for c in spec["containers"]
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {"tickcast-secrets"}


def test_minimal_render_is_small(rendered: Rendered) -> None:
    kinds = _kinds(rendered["minimal"])
    for kind in ("Ingress", "RayJob", "CronJob", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"):
        assert kind not in kinds, f"minimal values should not render {kind}"
    rayservice = _one(rendered["minimal"], "RayService")
    worker = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert "nvidia.com/gpu" not in worker["containers"][0]["resources"]["limits"]
    assert "tolerations" not in worker


# --------------------------------------------------------------------------------------------
# Kubernetes schemas (strict: unknown fields are errors)


@pytest.fixture(scope="module")
def kubernetes_validate() -> Any:
    return _require("kubernetes_validate", DEV_FIX)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_core_objects_validate_against_kubernetes_schemas(
    kubernetes_validate: Any, rendered: Rendered, name: str
) -> None:
    errors = []
    core = [d for d in rendered[name] if not d["apiVersion"].startswith("ray.io/")]
    assert core
    for doc in core:
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(exc.message)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_ray_pod_templates_validate_as_kubernetes_pod_templates(
    kubernetes_validate: Any, rendered: Rendered, name: str
) -> None:
    errors = []
    for doc in (d for d in rendered[name] if d["apiVersion"].startswith("ray.io/")):
        for role, template in _ray_pod_templates(doc):
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role}, "template": template}
            try:
                kubernetes_validate.validate(wrapped, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{doc['kind']}/{role}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not errors, "\n".join(errors)


# --------------------------------------------------------------------------------------------
# KubeRay CRDs


def _strict(node: Any) -> Any:
    """A CRD's OpenAPI v3 schema as strict JSON Schema.

    Objects with declared properties reject unknown fields (what the API server does with
    strict field validation; without it, it prunes them silently), int-or-string and
    nullable are spelled out, and Kubernetes-only keywords are dropped.
    """
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _crd_validator(kind: str) -> Any:
    jsonschema = _require("jsonschema", DEV_FIX)
    if not KUBERAY_CRDS.is_dir():
        _missing(f"the KubeRay v1.7.0 CRDs folder {KUBERAY_CRDS}", "it lives in shared/ beside the repository")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are megabytes
    crd = yaml.load((KUBERAY_CRDS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=loader)
    assert crd["spec"]["names"]["kind"] == kind
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    assert version["served"] and version["storage"], f"{kind} v1 is not the served storage version"
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


@pytest.fixture(scope="module")
def crd_validators() -> dict[str, Any]:
    return {kind: _crd_validator(kind) for kind in ("RayService", "RayJob")}


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_ray_objects_validate_against_kuberay_crds(
    crd_validators: dict[str, Any], rendered: Rendered, name: str
) -> None:
    ray_docs = [d for d in rendered[name] if d["apiVersion"].startswith("ray.io/")]
    assert any(d["kind"] == "RayService" for d in ray_docs)
    errors = []
    for doc in ray_docs:
        assert doc["apiVersion"] == "ray.io/v1"
        for err in crd_validators[doc["kind"]].iter_errors(doc):
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, err.path))}: {err.message}")
    assert not errors, "\n".join(errors[:20])


def test_crd_strictness_catches_a_typo(crd_validators: dict[str, Any], rendered: Rendered) -> None:
    rayservice = copy.deepcopy(_one(rendered["default"], "RayService"))
    rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    errors = list(crd_validators["RayService"].iter_errors(rayservice))
    assert errors and "maxReplica" in errors[0].message


def test_rayservice_has_cpu_head_and_autoscaled_gpu_workers(rendered: Rendered) -> None:
    values = _values("default")
    cluster = _one(rendered["default"], "RayService")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (group,) = cluster["workerGroupSpecs"]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert group["minReplicas"] >= 1 and group["maxReplicas"] > group["minReplicas"]
    worker = group["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]
    assert worker["nodeSelector"]
    assert values == {}  # defaults only


def test_serve_config(rendered: Rendered) -> None:
    for name in VALUE_SETS:
        rayservice = _one(rendered[name], "RayService")
        serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
        configmap = _one(rendered[name], "ConfigMap")["data"]
        (app,) = serve["applications"]
        assert app["import_path"] == "serving.app:build_app"
        assert serve["http_options"]["port"] == int(configmap["TICKCAST_SERVING__PORT"])
        assert configmap["TICKCAST_SERVING__URL"] == (
            f"http://{rayservice['metadata']['name']}-serve-svc.{NAMESPACE}.svc:{serve['http_options']['port']}"
        )
    schema = _require("ray.serve.schema", DEV_FIX + " (ray[serve] comes with the serving extra)")
    for name in VALUE_SETS:
        serve = yaml.safe_load(_one(rendered[name], "RayService")["spec"]["serveConfigV2"])
        schema.ServeDeploySchema.model_validate(serve)


# --------------------------------------------------------------------------------------------
# Security and operations defaults


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_secure_pod_defaults(rendered: Rendered, name: str) -> None:
    pods = _pod_specs(rendered[name])
    assert pods
    for label, _, spec in pods:
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] >= 10000, label
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", label
        # no container gets an API token automatically (the autoscaler mounts its own: below)
        assert spec["automountServiceAccountToken"] is False, label
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, label
            assert sc["allowPrivilegeEscalation"] is False, label
            assert sc["capabilities"]["drop"] == ["ALL"], label
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", label
            assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"], label
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{label}: /tmp must be an emptyDir"
            assert ":latest" not in c["image"], label


AUTOSCALER_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.mark.parametrize("name", ["default", "production"])
def test_only_the_ray_autoscaler_holds_a_kubernetes_api_token(rendered: Rendered, name: str) -> None:
    """The finding: the Ray head automounted its ServiceAccount token into every container, so
    Serve replicas and any code submitted to Ray could call the Kubernetes API as the autoscaler.
    Now the token is a projected volume that only the autoscaler sidecar (autoscalerOptions)
    mounts; KubeRay builds that container from those options."""
    for doc in (d for d in rendered[name] if d["apiVersion"].startswith("ray.io/")):
        cluster = doc["spec"].get("rayClusterConfig") or doc["spec"]["rayClusterSpec"]
        autoscaling = cluster.get("enableInTreeAutoscaling", False)
        for role, template in _ray_pod_templates(doc):
            spec = template["spec"]
            assert spec["automountServiceAccountToken"] is False, role
            token_volumes = [v["name"] for v in spec["volumes"] if "projected" in v]
            for container in spec["containers"]:
                mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
                assert AUTOSCALER_TOKEN_PATH not in mounts, f"{doc['kind']}/{role}/{container['name']}"
                assert not {m["name"] for m in container.get("volumeMounts", [])} & set(token_volumes)
            if role == "head" and autoscaling:
                (volume,) = [v for v in spec["volumes"] if "projected" in v]
                sources = volume["projected"]["sources"]
                assert {"serviceAccountToken", "configMap", "downwardAPI"} == {k for src in sources for k in src}
                mounts = cluster["autoscalerOptions"]["volumeMounts"]
                token = next(m for m in mounts if m["mountPath"] == AUTOSCALER_TOKEN_PATH)
                assert token["name"] == volume["name"] and token["readOnly"] is True
            else:
                assert not token_volumes, f"{doc['kind']}/{role} has no autoscaler, so no token"


def test_services_have_probes_on_their_health_endpoints(rendered: Rendered) -> None:
    paths = {"producer": "/healthz", "consumer": "/healthz", "forecaster": "/healthz", "dashboard": "/_stcore/health"}
    configmap = _one(rendered["default"], "ConfigMap")["data"]
    ports = {
        "producer": configmap["TICKCAST_PRODUCER__METRICS_PORT"],
        "consumer": configmap["TICKCAST_CONSUMER__METRICS_PORT"],
        "forecaster": configmap["TICKCAST_FORECASTER__METRICS_PORT"],
        "dashboard": configmap["TICKCAST_DASHBOARD__PORT"],
    }
    for component, path in paths.items():
        deployment = _one(rendered["default"], "Deployment", f"-{component}")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["tickcast"]
        assert (
            container["args"][0]
            == {"dashboard": "dashboard", "forecaster": "forecaster", "producer": "produce", "consumer": "consume"}[
                component
            ]
        )
        port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            assert get["path"] == path
            assert str(port_names[get["port"]]) == ports[component]


#: Values section -> the workload its pods run as (the suffix of its ServiceAccount's default name).
SERVICE_ACCOUNT_SECTIONS = {
    "producer": "producer",
    "consumer": "consumer",
    "forecaster": "forecaster",
    "dashboard": "dashboard",
    "rayService": "serving",
    "jobs": "batch",
    "maintenance": "maintenance",
}


def _section_of(pod_label: str) -> str:
    """The values section whose ServiceAccount a pod (a ``_pod_specs`` label) runs as."""
    kind, name = pod_label.split("/")[:2]
    if kind == "Deployment":
        return name.rsplit("-", 1)[1]
    if kind == "CronJob" and name.startswith(f"{RELEASE}-lake-"):
        return "maintenance"  # lake optimize and vacuum
    return "rayService" if kind == "RayService" else "jobs"  # CronJob backtest, RayJob fine-tune


def _accounts(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}


def test_each_workload_runs_as_its_own_serviceaccount_with_its_own_irsa_role(rendered: Rendered) -> None:
    docs = rendered["production"]
    values = _values("production")
    accounts = _accounts(docs)
    assert len(accounts) == len(SERVICE_ACCOUNT_SECTIONS)
    used: dict[str, str] = {}
    for label, _, spec in _pod_specs(docs):
        section = _section_of(label)
        name = spec["serviceAccountName"]
        assert name == f"{RELEASE}-{SERVICE_ACCOUNT_SECTIONS[section]}", label
        assert used.setdefault(section, name) == name, f"{label}: pods of one workload share one ServiceAccount"
        role = values[section]["serviceAccount"]["roleArn"]
        assert accounts[name]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role, label
    assert set(used) == set(SERVICE_ACCOUNT_SECTIONS)
    roles = {a["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] for a in accounts.values()}
    assert len(roles) == len(SERVICE_ACCOUNT_SECTIONS)
    for account in accounts.values():
        assert account["automountServiceAccountToken"] is False


def test_serviceaccount_defaults_existing_accounts_and_disabled_workloads(chart: Any) -> None:
    shared = "arn:aws:iam::123456789012:role/tickcast-shared"
    docs = _docs(
        _render(
            chart,
            {
                "serviceAccount": {"roleArn": shared, "annotations": {"team": "markets"}},
                "producer": {"serviceAccount": {"create": False, "name": "feed-writer"}},
                "consumer": {"serviceAccount": {"roleArn": "arn:aws:iam::123456789012:role/sink"}},
                "forecaster": {"enabled": False},
            },
        )
    )
    accounts = _accounts(docs)
    # the producer uses an existing account; the disabled forecaster gets none
    assert set(accounts) == {f"{RELEASE}-{w}" for w in ("consumer", "dashboard", "serving", "batch", "maintenance")}
    for name, account in accounts.items():
        annotations = account["metadata"]["annotations"]
        expected = "arn:aws:iam::123456789012:role/sink" if name.endswith("-consumer") else shared
        assert annotations == {"eks.amazonaws.com/role-arn": expected, "team": "markets"}, name
    producer = _one(docs, "Deployment", "-producer")["spec"]["template"]["spec"]
    assert producer["serviceAccountName"] == "feed-writer"
    default_accounts = _accounts(_docs(_render(chart)))
    assert all("annotations" not in a["metadata"] for a in default_accounts.values())


def _pulumi_chart_names() -> ModuleType:
    """pulumi/tickcast_infra/chart_names.py: plain Python, loaded without Pulumi or its package."""
    spec = importlib.util.spec_from_file_location("pulumi_chart_names", PULUMI_CHART_NAMES)
    assert spec and spec.loader, PULUMI_CHART_NAMES
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("explicit_names", [True, False], ids=["pulumi-values", "chart-defaults"])
def test_chart_renders_the_names_pulumi_relies_on(chart: Any, explicit_names: bool) -> None:
    """The release Pulumi installs renders the names pulumi/tickcast_infra/chart_names.py reads back.

    Pulumi reads the dashboard Ingress (dashboardUrl) and derives the Serve Service
    (serveEndpoint) by name, and trusts each IRSA role to one ServiceAccount name. The values
    have the shape of pulumi/tickcast_infra/app.py's chart_values(); the chart's default
    ServiceAccount names must match too, so leaving them out would not break IRSA.
    """
    names = _pulumi_chart_names()
    assert set(names.CHART_WORKLOADS.items()) == set(SERVICE_ACCOUNT_SECTIONS.items())
    roles = {w: f"arn:aws:iam::123456789012:role/tickcast-dev-{w}" for w in names.CHART_WORKLOADS.values()}
    values: dict[str, Any] = {
        section: {
            "serviceAccount": {"create": True, "roleArn": roles[workload]}
            | ({"name": names.service_account_name(workload)} if explicit_names else {}),
        }
        for section, workload in names.CHART_WORKLOADS.items()
    }
    values["config"] = {
        "kafka": {
            "bootstrap_servers": "b-1.tickcast-dev.abc123.c2.kafka.us-east-1.amazonaws.com:9098",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "OAUTHBEARER",
            "sasl_username": "",
            "aws_region": "us-east-1",
        },
        "lake": {"url": "s3://tickcast-dev-lake/tickcast", "s3_region": "us-east-1"},
    }
    values["secrets"] = {"existingSecret": "tickcast-pulumi-secrets"}
    values["dashboard"]["ingress"] = EXPOSED_DASHBOARD | {
        "scheme": "internet-facing",
        "inboundCidrs": ["198.18.7.0/24"],
    }
    values["servingAuth"] = {"required": True, "secretName": "tickcast-serving-token"}
    values["rayService"]["auth"] = {"enabled": True, "secretName": "tickcast-ray-auth"}
    values["jobs"]["finetune"] = {"enabled": True}
    docs = _docs(chart.render(values=values, name=names.RELEASE_NAME, namespace=NAMESPACE, is_install=True))

    assert _one(docs, "Ingress")["metadata"]["name"] == names.DASHBOARD_INGRESS_NAME
    rayservice = _one(docs, "RayService")
    assert rayservice["metadata"]["name"] == names.RAY_SERVICE_NAME
    # KubeRay names the Serve Service <rayservice>-serve-svc; the chart's clients use it too
    assert f"{rayservice['metadata']['name']}-serve-svc" == names.SERVE_SERVICE_NAME
    configmap = _one(docs, "ConfigMap")["data"]
    assert configmap["TICKCAST_SERVING__URL"] == names.serve_endpoint(NAMESPACE)
    assert int(configmap["TICKCAST_SERVING__PORT"]) == names.SERVE_PORT
    assert configmap["TICKCAST_KAFKA__AWS_REGION"] == "us-east-1"

    accounts = _accounts(docs)
    expected = {names.service_account_name(w): roles[w] for w in names.CHART_WORKLOADS.values()}
    assert {n: a["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] for n, a in accounts.items()} == expected
    for label, _, spec in _pod_specs(docs):
        workload = names.CHART_WORKLOADS[_section_of(label)]
        assert spec["serviceAccountName"] == names.service_account_name(workload), label


#: An exposed dashboard as Pulumi passes it (pulumi/tickcast_infra/app.py DashboardIngress): HTTPS
#: and OIDC sign-in at the ALB.
EXPOSED_DASHBOARD: dict[str, Any] = {
    "enabled": True,
    "className": "alb",
    "scheme": "internal",
    "host": "tickcast.markets.acme-trading.net",
    "certificateArn": "arn:aws:acm:us-east-1:210987654321:certificate/3f1c2b8e-5d4a-4c1e-9a7b-2e6f0d9c8b71",
    "oidc": {
        "issuer": "https://login.acme-trading.net/oauth2/default",
        "authorizationEndpoint": "https://login.acme-trading.net/oauth2/default/v1/authorize",
        "tokenEndpoint": "https://login.acme-trading.net/oauth2/default/v1/token",
        "userInfoEndpoint": "https://login.acme-trading.net/oauth2/default/v1/userinfo",
        "secretName": "tickcast-dashboard-oidc",
    },
}


def test_consumer_hpa_owns_the_replica_count(rendered: Rendered) -> None:
    hpa = _one(rendered["production"], "HorizontalPodAutoscaler")
    deployment = _one(rendered["production"], "Deployment", "-consumer")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"], "the HPA owns replicas: the Deployment must not set them"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    minimal = _one(rendered["minimal"], "Deployment", "-consumer")
    assert minimal["spec"]["replicas"] == 1


def test_producer_never_overlaps_itself(rendered: Rendered) -> None:
    deployment = _one(rendered["default"], "Deployment", "-producer")
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert deployment["spec"]["replicas"] == 1


def test_pdbs_select_their_pods(rendered: Rendered) -> None:
    docs = rendered["production"]
    pods = _pod_specs(docs)
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert len(pdbs) == 5  # producer, consumer, forecaster, dashboard, ray workers
    for pdb in pdbs:
        selector = pdb["spec"]["selector"]["matchLabels"]
        matched = [label for label, meta, _ in pods if selector.items() <= meta["labels"].items()]
        assert matched, f"PodDisruptionBudget {pdb['metadata']['name']} selects no pod"
        if "ray-worker" in pdb["metadata"]["name"]:
            # pods owned by a RayCluster (no scale subresource) support only an integer minAvailable
            assert isinstance(pdb["spec"]["minAvailable"], int) and "maxUnavailable" not in pdb["spec"]
    # with one minimum worker a minAvailable=1 budget would block every drain: not rendered
    default_pdbs = [d["metadata"]["name"] for d in rendered["default"] if d["kind"] == "PodDisruptionBudget"]
    assert not [name for name in default_pdbs if "ray-worker" in name]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        value = labels.get(expr["key"])
        if expr["operator"] == "In" and value not in expr["values"]:
            return False
        if expr["operator"] == "Exists" and value is None:
            return False
    return True


def test_network_policies(rendered: Rendered) -> None:
    docs = rendered["production"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deny = next(p for p in policies if p["metadata"]["name"].endswith("-default-deny"))
    assert deny["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in deny["spec"]
    for label, meta, _ in _pod_specs(docs):
        assert _selects(deny["spec"]["podSelector"], meta["labels"]), f"{label} is not covered by the default deny"
    serving = next(p for p in policies if p["metadata"]["name"].endswith("-serving"))
    callers = [r for r in serving["spec"]["ingress"] if r.get("ports") and r["ports"][0]["port"] == 8000]
    forecaster_labels = _one(docs, "Deployment", "-forecaster")["spec"]["template"]["metadata"]["labels"]
    peers = [peer["podSelector"] for r in callers for peer in r["from"] if "podSelector" in peer]
    assert any(_selects(peer, forecaster_labels) for peer in peers)
    producer_labels = _one(docs, "Deployment", "-producer")["spec"]["template"]["metadata"]["labels"]
    assert not any(_selects(peer, producer_labels) for peer in peers), "the producer has no business calling Serve"


def test_config_or_secret_change_rolls_every_pod(chart: Any) -> None:
    def annotations(values: dict[str, Any]) -> dict[str, dict[str, str]]:
        return {label: meta["annotations"] for label, meta, _ in _pod_specs(_docs(_render(chart, values)))}

    # an explicit API token: otherwise the chart generates a random one per render
    token = {"secrets": {"serving": {"auth_token": "t" * 43}}}
    base = annotations(token)
    config = annotations({**token, "config": {"forecaster": {"horizon": 9}}})
    secret = annotations({"secrets": {"serving": {"auth_token": "t" * 43}, "polygon": {"api_key": "k"}}})
    for label, ann in base.items():
        assert ann["checksum/config"] != config[label]["checksum/config"], label
        assert ann["checksum/config"] == secret[label]["checksum/config"], label
        assert ann["checksum/secret"] != secret[label]["checksum/secret"], label


def test_ingress_is_an_alb(rendered: Rendered) -> None:
    ingress = _one(rendered["production"], "Ingress")
    values = _values("production")["dashboard"]["ingress"]
    annotations = ingress["metadata"]["annotations"]
    assert ingress["spec"]["ingressClassName"] == "alb"
    assert annotations["alb.ingress.kubernetes.io/scheme"] == "internal"
    assert annotations["alb.ingress.kubernetes.io/target-type"] == "ip"
    assert annotations["alb.ingress.kubernetes.io/certificate-arn"] == values["certificateArn"]
    assert annotations["alb.ingress.kubernetes.io/healthcheck-path"] == "/_stcore/health"
    assert "stickiness.enabled=true" in annotations["alb.ingress.kubernetes.io/target-group-attributes"]
    assert annotations["alb.ingress.kubernetes.io/group.name"] == "tickcast"
    # HTTPS only: HTTP answers with a redirect
    assert json.loads(annotations["alb.ingress.kubernetes.io/listen-ports"]) == [{"HTTP": 80}, {"HTTPS": 443}]
    assert annotations["alb.ingress.kubernetes.io/ssl-redirect"] == "443"
    # the ALB signs users in with the OIDC provider before any request reaches a pod
    assert annotations["alb.ingress.kubernetes.io/auth-type"] == "oidc"
    assert annotations["alb.ingress.kubernetes.io/auth-on-unauthenticated-request"] == "authenticate"
    oidc = json.loads(annotations["alb.ingress.kubernetes.io/auth-idp-oidc"])
    assert oidc == {
        "issuer": values["oidc"]["issuer"],
        "authorizationEndpoint": values["oidc"]["authorizationEndpoint"],
        "tokenEndpoint": values["oidc"]["tokenEndpoint"],
        "userInfoEndpoint": values["oidc"]["userInfoEndpoint"],
        "secretName": values["oidc"]["secretName"],
    }
    assert annotations["alb.ingress.kubernetes.io/inbound-cidrs"] == "10.0.0.0/8"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == _one(rendered["production"], "Service", "-dashboard")["metadata"]["name"]


# --------------------------------------------------------------------------------------------
# Locked down: Ray token auth, Ray control ports, the forecast API's token, the dashboard


def test_ray_clusters_require_a_token(rendered: Rendered, chart: Any) -> None:
    """KubeRay authOptions mode token on the Serve cluster and the fine-tune cluster: the
    dashboard, job API, GCS and Ray RPCs refuse calls without the token."""
    default = _one(rendered["default"], "RayService")["spec"]["rayClusterConfig"]
    assert default["authOptions"] == {"mode": "token"}, "KubeRay generates a Secret per cluster"
    production = rendered["production"]
    for doc in (_one(production, "RayService"), _one(production, "RayJob")):
        cluster = doc["spec"].get("rayClusterConfig") or doc["spec"]["rayClusterSpec"]
        assert cluster["authOptions"] == {"mode": "token", "secretName": "tickcast-ray-auth"}, doc["kind"]
    off = _one(_docs(_render(chart, {"rayService": {"auth": {"enabled": False}}})), "RayService")
    assert "authOptions" not in off["spec"]["rayClusterConfig"]


def _peer_admits(peer: dict[str, Any], labels: dict[str, str], namespace: str) -> bool:
    """Whether a NetworkPolicy ``from`` peer of a policy in NAMESPACE admits a pod (labels, namespace)."""
    if "ipBlock" in peer:
        return True  # an address range admits anything routed from it
    namespace_selector = peer.get("namespaceSelector")
    if namespace_selector is None:
        in_namespace = namespace == NAMESPACE
    else:
        in_namespace = _selects(namespace_selector, {"kubernetes.io/metadata.name": namespace})
    return in_namespace and _selects(peer.get("podSelector", {}), labels)


def _admitted(
    policies: list[dict[str, Any]], target: dict[str, str], port: int, labels: dict[str, str], ns: str
) -> bool:
    """Whether the policies let a pod (labels, namespace ns) reach ``port`` of a target pod: some
    policy selecting the target has a rule with that port (or all ports) and an admitting peer."""
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], target)]
    assert selecting, "no policy selects the target: everything would be admitted"
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            if "from" not in rule or any(_peer_admits(peer, labels, ns) for peer in rule["from"]):
                return True
    return False


#: The Ray head's control ports: GCS, the dashboard and job API, the Ray client.
RAY_CONTROL_PORTS = (6379, 8265, 10001)


@pytest.mark.parametrize("name", ["default", "production"])
def test_ray_control_ports_admit_only_ray_pods_and_the_kuberay_operator(rendered: Rendered, name: str) -> None:
    """The finding: the Ray head's job API (8265) ran code with the serving role and secrets for
    any pod that could reach it. Now GCS, the job API and the client port admit the Ray pods and
    the KubeRay operator's pods, nobody else: not the forecaster, not the dashboard (they call
    Serve on 8000), not another pod in the operator's namespace."""
    docs = rendered[name]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    labels = {label: meta["labels"] for label, meta, _ in _pod_specs(docs)}
    head = labels["RayService/tickcast-serving/head"]
    worker = next(v for k, v in labels.items() if k.startswith("RayService/") and not k.endswith("/head"))
    operator_ns = _values(name).get("networkPolicy", {}).get("kuberayOperatorNamespace", "kuberay-operator")
    operator = {"app.kubernetes.io/name": "kuberay-operator", "app.kubernetes.io/component": "kuberay-operator"}
    for port in RAY_CONTROL_PORTS:
        assert _admitted(policies, head, port, worker, NAMESPACE), port
        assert _admitted(policies, head, port, head, NAMESPACE), port
    for port in (8265, 52365):
        assert _admitted(policies, head, port, operator, operator_ns), port
    outsiders = {
        "forecaster": (labels["Deployment/tickcast-forecaster"], NAMESPACE),
        "dashboard": (labels["Deployment/tickcast-dashboard"], NAMESPACE),
        "producer": (labels["Deployment/tickcast-producer"], NAMESPACE),
        "another pod in the operator's namespace": ({"app": "debug-shell"}, operator_ns),
        "the operator's labels in another namespace": (operator, "default"),
        "a monitoring pod": ({"app": "prometheus"}, "monitoring"),
    }
    for who, (peer, namespace) in outsiders.items():
        for port in RAY_CONTROL_PORTS:
            assert not _admitted(policies, head, port, peer, namespace), f"{who} reaches the head on {port}"
    # the forecaster and dashboard still reach Serve
    assert _admitted(policies, head, 8000, labels["Deployment/tickcast-forecaster"], NAMESPACE)


def _token_refs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod label -> its TICKCAST_SERVING__AUTH_TOKEN secretKeyRef."""
    refs = {}
    for label, _, spec in _pod_specs(docs):
        for c in spec["containers"]:
            for e in c.get("env", []):
                if e["name"] == "TICKCAST_SERVING__AUTH_TOKEN":
                    refs[label] = e["valueFrom"]["secretKeyRef"]
    return refs


def test_the_forecast_api_requires_a_token_by_default(rendered: Rendered, chart: Any) -> None:
    """Serve, the forecaster and the dashboard read the token from one Secret, and a pod whose
    Secret lacks it does not start (optional: false) instead of serving without authentication."""
    docs = rendered["default"]
    refs = _token_refs(docs)
    assert {label.split("/")[1] for label in refs} == {"tickcast-serving", "tickcast-forecaster", "tickcast-dashboard"}
    assert {(r["name"], r["optional"]) for r in refs.values()} == {("tickcast-secrets", False)}
    # no token given: the chart generates one (kept on upgrades through lookup)
    generated = base64.b64decode(_one(docs, "Secret")["data"]["TICKCAST_SERVING__AUTH_TOKEN"]).decode()
    assert len(generated) == 48 and generated.isalnum()
    other = base64.b64decode(_one(_docs(_render(chart)), "Secret")["data"]["TICKCAST_SERVING__AUTH_TOKEN"]).decode()
    assert other != generated, "a fresh install gets a fresh random token"
    # a given token is used as is
    given = _one(_docs(_render(chart, {"secrets": {"serving": {"auth_token": "k" * 43}}})), "Secret")
    assert base64.b64decode(given["data"]["TICKCAST_SERVING__AUTH_TOKEN"]).decode() == "k" * 43
    # Pulumi's shape: the token lives in its own Secret
    pulumi = _docs(
        _render(
            chart,
            {
                "secrets": {"existingSecret": "tickcast-pulumi-secrets"},
                "servingAuth": {"secretName": "tickcast-serving-token"},
            },
        )
    )
    assert {(r["name"], r["optional"]) for r in _token_refs(pulumi).values()} == {("tickcast-serving-token", False)}
    assert not [d for d in pulumi if d["kind"] == "Secret"]
    # turned off: optional again, nothing generated
    off = _docs(_render(chart, {"servingAuth": {"required": False}}))
    assert {r["optional"] for r in _token_refs(off).values()} == {True}
    assert "TICKCAST_SERVING__AUTH_TOKEN" not in (_one(off, "Secret").get("data") or {})


def test_the_dashboard_is_cluster_internal_by_default(rendered: Rendered) -> None:
    docs = rendered["default"]
    assert not [d for d in docs if d["kind"] == "Ingress"]
    assert _one(docs, "Service", "-dashboard")["spec"]["type"] == "ClusterIP"


@pytest.mark.parametrize(
    ("ingress", "expected"),
    [
        ({"enabled": True}, "/dashboard/ingress/certificateArn"),
        ({**EXPOSED_DASHBOARD, "certificateArn": ""}, "/dashboard/ingress/certificateArn"),
        (
            {**EXPOSED_DASHBOARD, "oidc": {**EXPOSED_DASHBOARD["oidc"], "secretName": ""}},
            "/dashboard/ingress/oidc/secretName",
        ),
        (
            {**EXPOSED_DASHBOARD, "oidc": {**EXPOSED_DASHBOARD["oidc"], "issuer": "http://idp"}},
            "/dashboard/ingress/oidc/issuer",
        ),
        ({**EXPOSED_DASHBOARD, "scheme": "internet-facing"}, "/dashboard/ingress/inboundCidrs"),
    ],
)
def test_an_exposed_dashboard_without_tls_oidc_or_cidrs_is_refused(
    helm: Any, chart: Any, ingress: dict[str, Any], expected: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        _render(chart, {"dashboard": {"ingress": ingress}})
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"dashboard": {"service": {"type": "LoadBalancer"}}}, "/dashboard/service/type"),
        ({"dashboard": {"service": {"type": "NodePort"}}}, "/dashboard/service/type"),
    ],
)
def test_the_dashboard_service_cannot_bypass_the_ingress(
    helm: Any, chart: Any, values: dict[str, Any], expected: str
) -> None:
    """A LoadBalancer or NodePort Service would expose the dashboard without TLS or sign-in."""
    with pytest.raises(helm.HelmValuesError) as caught:
        _render(chart, values)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    "annotation",
    [
        "alb.ingress.kubernetes.io/auth-type",
        "alb.ingress.kubernetes.io/inbound-cidrs",
        "alb.ingress.kubernetes.io/listen-ports",
    ],
)
def test_ingress_annotations_cannot_override_tls_or_sign_in(helm: Any, chart: Any, annotation: str) -> None:
    ingress = {**EXPOSED_DASHBOARD, "annotations": {annotation: "none"}}
    with pytest.raises(helm.HelmError, match=re.escape(f"dashboard.ingress.annotations sets {annotation}")):
        _render(chart, {"dashboard": {"ingress": ingress}})


def test_an_internet_facing_dashboard_admits_only_its_cidrs(chart: Any) -> None:
    ingress = {**EXPOSED_DASHBOARD, "scheme": "internet-facing", "inboundCidrs": ["198.18.7.0/24", "198.18.9.0/24"]}
    annotations = _one(_docs(_render(chart, {"dashboard": {"ingress": ingress}})), "Ingress")["metadata"]["annotations"]
    assert annotations["alb.ingress.kubernetes.io/scheme"] == "internet-facing"
    assert annotations["alb.ingress.kubernetes.io/inbound-cidrs"] == "198.18.7.0/24,198.18.9.0/24"
    assert annotations["alb.ingress.kubernetes.io/auth-type"] == "oidc"


# --------------------------------------------------------------------------------------------
# Values schema: bad values are rejected, with a message that names them


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"producer": {"replicaCount": 2}}, ["/producer/replicaCount", "maximum"]),
        ({"consumer": {"replicas": 3}}, ["/consumer", "'replicas' not allowed"]),
        ({"config": {"kafka": {"security_protocol": "TLS"}}}, ["/config/kafka/security_protocol", "SASL_SSL"]),
        ({"config": {"lake": {"url": "file:///data/lake"}}}, ["/config/lake/url", "s3://"]),
        ({"config": {"kafka": {"bootstrap_servers": "b-1:9096, b-2:9096"}}}, ["/config/kafka/bootstrap_servers"]),
        ({"config": {"forecaster": {"horizon": 0}}}, ["/config/forecaster/horizon", "minimum"]),
        ({"config": {"forecaster": {"quantiles": [0.5, 1.5]}}}, ["/config/forecaster/quantiles/1"]),
        ({"config": {"serving": {"num_replicas": "many"}}}, ["/config/serving/num_replicas"]),
        ({"config": {"serving": {"typo_setting": 1}}}, ["/config/serving", "'typo_setting' not allowed"]),
        ({"secrets": {"polygon": {"apikey": "x"}}}, ["/secrets/polygon", "'apikey' not allowed"]),
        ({"rayService": {"workerGroup": {"gpus": -1}}}, ["/rayService/workerGroup/gpus", "minimum"]),
        ({"rayService": {"head": {"rayStartParams": {"num-cpus": 0}}}}, ["/rayService/head/rayStartParams/num-cpus"]),
        ({"rayService": {"upgradeStrategy": "Rolling"}}, ["/rayService/upgradeStrategy", "NewCluster"]),
        ({"dashboard": {"ingress": {"scheme": "public"}}}, ["/dashboard/ingress/scheme", "internet-facing"]),
        ({"serviceAccount": {"roleArn": "tickcast-role"}}, ["/serviceAccount/roleArn"]),
        ({"serviceAccount": {"create": False}}, ["/serviceAccount", "'create' not allowed"]),
        ({"producer": {"serviceAccount": {"roleArn": "producer"}}}, ["/producer/serviceAccount/roleArn"]),
        ({"jobs": {"serviceAccount": {"name": "Batch_Jobs"}}}, ["/jobs/serviceAccount/name"]),
        ({"rayService": {"serviceAccount": {"role": "x"}}}, ["/rayService/serviceAccount", "'role' not allowed"]),
        ({"producer": {"image": {"digest": "latest"}}}, ["/producer/image/digest"]),
        ({"image": {"pullPolicy": "Sometimes"}}, ["/image/pullPolicy", "IfNotPresent"]),
        ({"jobs": {"finetune": {"runId": "Run_1"}}}, ["/jobs/finetune/runId"]),
    ],
)
def test_values_schema_rejects_bad_values(helm: Any, chart: Any, values: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        _render(chart, values)
    message = str(caught.value)
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"consumer": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}, "consumer.autoscaling.minReplicas (5)"),
        ({"rayService": {"workerGroup": {"gpus": 0}}}, "num_gpus is 1 but rayService.workerGroup.gpus is 0"),
        ({"rayService": {"workerGroup": {"replicas": 9}}}, "rayService.workerGroup.replicas (9) must lie within"),
        ({"rayService": {"enabled": False}}, "need config.serving.url"),
        ({"producer": {"serviceAccount": {"create": False}}}, "producer.serviceAccount.name is required"),
        (
            {"consumer": {"serviceAccount": {"name": "shared"}}, "dashboard": {"serviceAccount": {"name": "shared"}}},
            'consumer.serviceAccount and dashboard.serviceAccount both create the ServiceAccount "shared"',
        ),
        (
            {"config": {"kafka": {"security_protocol": "SSL", "sasl_mechanism": "OAUTHBEARER"}}},
            "OAUTHBEARER (Amazon MSK IAM) needs config.kafka.security_protocol SASL_SSL",
        ),
    ],
)
def test_cross_value_checks_fail_with_a_fix(helm: Any, chart: Any, values: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm.HelmError) as caught:
        _render(chart, values)
    assert expected in str(caught.value)


# --------------------------------------------------------------------------------------------
# The chart's configuration keys are the settings classes'


def _settings_fields() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(plain, secret) fields per group the chart configures; group None is top-level."""
    settings = _require("tickcast.settings", DEV_FIX)
    pydantic = _require("pydantic", DEV_FIX)
    plain: dict[str, dict[str, Any]] = {}
    secret: dict[str, dict[str, Any]] = {}
    top = {n: f for n, f in settings.Settings.model_fields.items() if n not in settings.GROUPS}
    plain["_top"] = top
    for group, model in settings.GROUPS.items():
        if group in LOCAL_ONLY_GROUPS:
            continue
        for name, field in model.model_fields.items():
            is_secret = pydantic.SecretStr in (field.annotation, *typing.get_args(field.annotation))
            (secret if is_secret else plain).setdefault(group, {})[name] = field
    return plain, secret


def _chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def test_values_cover_exactly_the_settings() -> None:
    plain, secret = _settings_fields()
    config = _chart_values()["config"]
    secrets = _chart_values()["secrets"]
    problems = []
    for group, fields in plain.items():
        top = {k for k, v in config.items() if not isinstance(v, dict)}
        have = top if group == "_top" else set(config.get(group, {}))
        for name in fields.keys() - have:
            where = "config" if group == "_top" else f"config.{group}"
            problems.append(f"missing {where}.{name}: {fields[name].description} (default {fields[name].default!r})")
        for name in have - fields.keys():
            problems.append(f"config.{'' if group == '_top' else group + '.'}{name} is not a setting")
    for group in set(config) - set(plain) - {k for k, v in config.items() if not isinstance(v, dict)}:
        problems.append(f"config.{group} is not a settings group the chart configures")
    for group, fields in secret.items():
        have = set(secrets.get(group, {}))
        problems += [f"missing secrets.{group}.{n}: {fields[n].description}" for n in fields.keys() - have]
        problems += [f"secrets.{group}.{n} is not a secret setting" for n in have - fields.keys()]
    extra_groups = {g for g, v in secrets.items() if isinstance(v, dict)} - set(secret)
    problems += [f"secrets.{g} has no secret settings" for g in extra_groups]
    assert not problems, (
        "helm/tickcast/values.yaml and values.schema.json must follow tickcast/settings.py:\n  " + "\n  ".join(problems)
    )


def _literal_values(annotation: Any) -> list[Any] | None:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, UnionType):
        for arg in args:
            found = _literal_values(arg)
            if found is not None:
                return found
        return None
    if typing.get_origin(annotation) is typing.Literal:
        return list(args)
    return None


def test_values_schema_follows_the_settings() -> None:
    plain, secret = _settings_fields()
    schema = json.loads((CHART / "values.schema.json").read_text())
    config = schema["properties"]["config"]["properties"]
    problems = []
    for group, fields in plain.items():
        top = {k: v for k, v in config.items() if "properties" not in v}
        props = top if group == "_top" else config[group]["properties"]
        if group != "_top":
            assert config[group]["additionalProperties"] is False
        if set(props) != set(fields):
            problems.append(f"config.{group}: schema keys {sorted(set(props) ^ set(fields))} differ from the settings")
        for name, field in fields.items():
            prop = props.get(name)
            if prop is None:
                continue
            literal = _literal_values(field.annotation)
            if literal is not None:
                enum: list[Any] = prop.get("enum") or next(
                    (a["enum"] for a in prop.get("anyOf", []) if "enum" in a), []
                )
                if set(literal) - set(enum) or set(enum) - set(literal) - {""}:
                    problems.append(f"config.{group}.{name}: enum {enum} vs settings {literal}")
            for meta in field.metadata:
                for attr, key in (("ge", "minimum"), ("gt", "exclusiveMinimum"), ("le", "maximum")):
                    bound = getattr(meta, attr, None)
                    if bound is None:
                        continue
                    schema_bound = prop.get(key)
                    if schema_bound is None or (schema_bound < bound if key != "maximum" else schema_bound > bound):
                        problems.append(f"config.{group}.{name}: schema {key}={schema_bound}, the setting's is {bound}")
    secrets = schema["properties"]["secrets"]["properties"]
    for group, fields in secret.items():
        if set(secrets[group]["properties"]) != set(fields):
            problems.append(f"secrets.{group}: schema keys differ from the settings' secret fields {sorted(fields)}")
    assert not problems, "\n".join(problems)


def _all_secrets_set() -> dict[str, Any]:
    _, secret = _settings_fields()
    return {"secrets": {group: {name: f"test-{group}-{name}" for name in fields} for group, fields in secret.items()}}


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rendered_keys_are_settings_and_load(
    chart: Any, monkeypatch: pytest.MonkeyPatch, rendered: Rendered, name: str
) -> None:
    """Every TICKCAST_* key the chart renders is a setting, and the settings load from them."""
    settings = _require("tickcast.settings", DEV_FIX)
    valid = set(settings.all_env_names())
    values = _values(name)
    if not values.get("secrets", {}).get("existingSecret"):
        values = {**values, "secrets": {**values.get("secrets", {}), **_all_secrets_set()["secrets"]}}
    docs = _docs(_render(chart, values))
    env: dict[str, str] = dict(_one(docs, "ConfigMap")["data"])
    secret_docs = [d for d in docs if d["kind"] == "Secret"]
    for doc in secret_docs:
        env.update({k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()})
    referenced = {
        e["name"]
        for _, _, spec in _pod_specs(docs)
        for c in spec["containers"]
        for e in c.get("env", [])
        if e["name"].startswith("TICKCAST_")
    }
    unknown = sorted((set(env) | referenced) - valid)
    assert not unknown, f"rendered keys that are not settings: {unknown}"
    assert all(k.startswith("TICKCAST_") for k in env)
    if secret_docs:
        _, secret = _settings_fields()
        expected = {settings.env_name(g, n) for g, fields in secret.items() for n in fields}
        assert set(secret_docs[0]["data"]) == expected
    for key in [k for k in os.environ if k.startswith("TICKCAST_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    loaded = settings.load_settings()
    assert loaded.kafka.bootstrap_servers == env["TICKCAST_KAFKA__BOOTSTRAP_SERVERS"]
    assert loaded.lake.url == env["TICKCAST_LAKE__URL"]
    assert loaded.serving.url == env["TICKCAST_SERVING__URL"]
    assert list(loaded.forecaster.quantiles) == json.loads(env["TICKCAST_FORECASTER__QUANTILES"])
    if "TICKCAST_POLYGON__API_KEY" in env:
        assert loaded.polygon.api_key.get_secret_value() == env["TICKCAST_POLYGON__API_KEY"]


def test_pods_get_only_the_secrets_they_use(chart: Any) -> None:
    docs = _docs(_render(chart, _all_secrets_set()))
    lake_keys = {"TICKCAST_LAKE__S3_ACCESS_KEY_ID", "TICKCAST_LAKE__S3_SECRET_ACCESS_KEY"}
    wanted = {
        # the producer writes the open_close table and its backfill checkpoints under _state/producer/
        "Deployment/tickcast-producer": {"TICKCAST_POLYGON__API_KEY", "TICKCAST_KAFKA__SASL_PASSWORD", *lake_keys},
        "Deployment/tickcast-dashboard": {"TICKCAST_KAFKA__SASL_PASSWORD", "TICKCAST_SERVING__AUTH_TOKEN", *lake_keys},
        "CronJob/tickcast-lake-optimize": lake_keys,
        "CronJob/tickcast-lake-vacuum": lake_keys,
    }
    seen = set()
    for label, _, spec in _pod_specs(docs):
        env = [e for c in spec["containers"] for e in c.get("env", [])]
        names = {e["name"] for e in env if "secretKeyRef" in e.get("valueFrom", {})}
        seen.add(label)
        if label in wanted:
            assert names == wanted[label], label
        if not label.startswith("Deployment/tickcast-producer"):
            assert "TICKCAST_POLYGON__API_KEY" not in names, f"{label} does not need the Polygon key"
    assert set(wanted) <= seen, f"not rendered: {sorted(set(wanted) - seen)}"


# --------------------------------------------------------------------------------------------
# Lake maintenance: optimize and vacuum of the Delta tables, as their own ServiceAccount

#: pulumi/tickcast_infra/lake_access.py: which workload may touch which table (plain Python).
PULUMI_LAKE_ACCESS = REPO_ROOT / "pulumi" / "tickcast_infra" / "lake_access.py"


def _maintenance_jobs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Task (optimize, vacuum) -> its CronJob."""
    prefix = f"{RELEASE}-lake-"
    return {
        d["metadata"]["name"].removeprefix(prefix): d
        for d in docs
        if d["kind"] == "CronJob" and d["metadata"]["name"].startswith(prefix)
    }


def _container(cronjob: dict[str, Any]) -> dict[str, Any]:
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return container


def test_maintenance_cronjobs_run_lake_optimize_and_vacuum(rendered: Rendered) -> None:
    values = _chart_values()["maintenance"]
    jobs = _maintenance_jobs(rendered["default"])
    assert set(jobs) == {"optimize", "vacuum"}
    assert _container(jobs["optimize"])["args"] == ["lake", "optimize"]
    assert _container(jobs["vacuum"])["args"] == ["lake", "vacuum", "--retention-hours", "168"]
    assert values["vacuum"]["retentionHours"] == 168, "the default keeps 7 days of time travel"
    for task, job in jobs.items():
        spec = job["spec"]
        assert spec["schedule"] == values[task]["schedule"] and spec["timeZone"] == values["timeZone"]
        assert spec["concurrencyPolicy"] == "Forbid", "two optimize runs would fight over the same partitions"
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == f"{RELEASE}-maintenance"
        container = _container(job)
        assert container["command"] == ["tickcast"]
        assert container["image"].startswith("tickcast-consumer:"), "the slim image has the `tickcast lake` commands"
        assert not any("KAFKA" in e["name"] for e in container.get("env", [])), "maintenance needs no Kafka"
    # optimize first, then vacuum deletes the files it replaced (once they leave the retention)
    hours = {task: int(values[task]["schedule"].split()[1]) for task in ("optimize", "vacuum")}
    assert hours["optimize"] < hours["vacuum"]
    production = _maintenance_jobs(rendered["production"])
    assert set(production) == {"optimize", "vacuum"}
    assert production["optimize"]["spec"]["timeZone"] == "America/New_York"


def test_maintenance_arguments_are_commands_of_the_tickcast_cli(rendered: Rendered) -> None:
    """What the CronJobs run parses with the real ``tickcast`` parser into the lake commands."""
    cli = _require("tickcast.cli", DEV_FIX)
    lake_cli = _require("tickcast.lake_cli", DEV_FIX)
    parser = cli.build_parser()
    for name in ("default", "production"):
        for task, job in _maintenance_jobs(rendered[name]).items():
            args = parser.parse_args(_container(job)["args"])
            assert args.lake_command == task, (name, task)
            assert args.handler is getattr(lake_cli, f"_{task}"), (name, task)
            assert args.table is None, "every table by default"
            if task == "vacuum":
                assert args.retention_hours == 168 and not args.dry_run


def test_maintenance_can_be_tuned_and_turned_off(chart: Any) -> None:
    values = {
        "maintenance": {
            "optimize": {"enabled": False},
            "vacuum": {"schedule": "@weekly", "retentionHours": 336, "args": ["--table", "bars"]},
        }
    }
    docs = _docs(_render(chart, values))
    jobs = _maintenance_jobs(docs)
    assert set(jobs) == {"vacuum"}
    assert _container(jobs["vacuum"])["args"] == ["lake", "vacuum", "--retention-hours", "336", "--table", "bars"]
    assert jobs["vacuum"]["spec"]["schedule"] == "@weekly"
    off = _docs(_render(chart, {"maintenance": {"optimize": {"enabled": False}, "vacuum": {"enabled": False}}}))
    assert not _maintenance_jobs(off)
    assert f"{RELEASE}-maintenance" not in _accounts(off), "no ServiceAccount without a maintenance job"


def test_values_schema_rejects_bad_maintenance_values(chart: Any) -> None:
    for bad in (
        {"maintenance": {"vacuum": {"retentionHours": 0}}},
        {"maintenance": {"optimize": {"schedule": "daily"}}},
        {"maintenance": {"compaction": {"enabled": True}}},
    ):
        with pytest.raises(Exception, match="maintenance"):
            _render(chart, bad)


def _lake_access() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pulumi_lake_access", PULUMI_LAKE_ACCESS)
    assert spec and spec.loader, PULUMI_LAKE_ACCESS
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pulumi_lake_grants_know_every_table_and_blob_prefix() -> None:
    """The IAM grants (pulumi/tickcast_infra/lake_access.py) name exactly tickcast.lake's tables."""
    specs = _require("tickcast.lake.specs", DEV_FIX)
    access = _lake_access()
    assert set(access.LAKE_TABLES) == set(specs.TABLES), "a table the IAM roles do not know (or a stale one)"
    assert set(access.LAKE_BLOB_PREFIXES) == set(specs.BLOB_PREFIXES)
    workloads = access.LAKE_ACCESS
    assert workloads["maintenance"] == {t: "maintain" for t in specs.TABLES}
    for table in specs.TABLES:
        assert any(a.get(table) == "write" for a in workloads.values()), f"nobody writes {table}"
    assert [w for w, a in workloads.items() if a.get("bars") in ("write", "maintain")] == ["consumer", "maintenance"]
    # every workload the chart runs has an entry, and the chart runs every workload that has one
    assert set(workloads) <= set(SERVICE_ACCOUNT_SECTIONS.values())


# --------------------------------------------------------------------------------------------
# checkov: once per session over everything rendered


def _checkov_binary() -> str | None:
    for candidate in (
        os.environ.get("CHECKOV"),
        str(REPO_ROOT / ".venv-tools" / "bin" / "checkov"),
        shutil.which("checkov"),
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def checkov_report(rendered: Rendered, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    checkov = _checkov_binary()
    if checkov is None:
        _missing("checkov", "run scripts/setup-chart-tools.sh (it installs checkov into .venv-tools)")
        raise AssertionError  # unreachable: _missing raises
    out = tmp_path_factory.mktemp("manifests")
    for name, docs in rendered.items():
        pods = []
        # checkov does not look inside custom resources: hand it the Ray pods as Pods.
        for doc in (d for d in docs if d["apiVersion"].startswith("ray.io/")):
            for role, template in _ray_pod_templates(doc):
                meta = copy.deepcopy(template["metadata"])
                meta.update(name=f"{doc['metadata']['name']}-{role}", namespace=doc["metadata"]["namespace"])
                pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]})
        (out / f"{name}.yaml").write_text(yaml.safe_dump_all(docs + pods, sort_keys=False))
    proc = subprocess.run(
        [checkov, "--directory", str(out), "--framework", "kubernetes", "--skip-download", "--compact", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    assert proc.stdout.strip(), f"checkov printed nothing (rc {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["check_type"] == "kubernetes"
    return report


def test_checkov_finds_no_failed_check(checkov_report: dict[str, Any]) -> None:
    summary = checkov_report["summary"]
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for c in checkov_report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 500 and summary["resource_count"] > 50, summary


def test_checkov_skips_are_justified(checkov_report: dict[str, Any]) -> None:
    skipped = checkov_report["results"].get("skipped_checks", [])
    assert skipped
    unjustified = [
        f"{c['check_id']} on {c['resource']}"
        for c in skipped
        if len(c["check_result"].get("suppress_comment") or "") < 30
        or c["check_result"]["suppress_comment"] == "No comment provided"
    ]
    assert not unjustified, unjustified
    # no CKV_K8S_38 (automounted ServiceAccount token): no pod automounts one any more
    allowed = {"CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_43"}
    assert {c["check_id"] for c in skipped} <= allowed


# --------------------------------------------------------------------------------------------
# Documentation: every value documented, the README table generated from values.yaml

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/\"]+):(?P<rest>.*)$")
TABLE_BEGIN = "<!-- values-table:begin (generated: python tests/helm/test_chart.py --write-readme) -->"
TABLE_END = "<!-- values-table:end -->"


def _documented_values() -> tuple[list[tuple[str, str, str]], list[str]]:
    """(path, default, description) of every documented value, and undocumented leaf paths.

    A key is documented by a ``# --`` comment right above it (continued by further ``#``
    lines); a documented key is a row even when its default is a map or list. An
    undocumented key must be a map whose keys are all documented.
    """
    lines = (CHART / "values.yaml").read_text().splitlines()
    values = _chart_values()
    rows: list[tuple[str, str, str]] = []
    undocumented: list[str] = []
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    documented_prefixes: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and comment:
            comment.append(stripped[1:].strip())
            continue
        match = _KEY.match(line)
        if not match or stripped.startswith("-"):
            comment = []
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([p for _, p in stack] + [match["key"]])
        stack.append((indent, match["key"]))
        inside_documented = any(path.startswith(p + ".") for p in documented_prefixes)
        if comment and not inside_documented:
            node: Any = values
            for part in path.split("."):
                node = node[part]
            default = json.dumps(node, separators=(",", ":"))
            rows.append((path, default, " ".join(comment)))
            documented_prefixes.append(path)
        elif not inside_documented and match["rest"].strip() not in ("",):
            undocumented.append(path)
        comment = []
    return rows, undocumented


def values_table() -> str:
    rows, _ = _documented_values()
    out = ["| value | default | description |", "| --- | --- | --- |"]
    for path, default, description in rows:
        shown = (default if len(default) <= 60 else default[:57] + "...").replace("|", "\\|")
        text = description.replace("|", "\\|")
        out.append(f"| `{path}` | `{shown}` | {text} |")
    return "\n".join(out)


def test_every_value_is_documented() -> None:
    rows, undocumented = _documented_values()
    assert not undocumented, f"values without a `# --` comment: {undocumented}"
    assert len(rows) > 100


def test_readme_values_table_is_current() -> None:
    text = README.read_text()
    assert TABLE_BEGIN in text and TABLE_END in text, "helm/README.md lost its values-table markers"
    current = text.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].strip()
    assert current == values_table(), "stale: run python tests/helm/test_chart.py --write-readme"


def _write_readme() -> None:
    text = README.read_text()
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    README.write_text(f"{head}{TABLE_BEGIN}\n\n{values_table()}\n\n{TABLE_END}{tail}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-readme"]:
        _write_readme()
    else:
        print(values_table())


# --------------------------------------------------------------------------------------------
# Pods fit the nodes of each Pulumi stack

PULUMI_STACKS = ("dev", "prod")
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def _milli_cpu(quantity: str | int | float) -> int:
    text = str(quantity)
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


def _mib(quantity: str | int | float) -> float:
    text = str(quantity)
    for suffix, factor in _UNITS.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor / 2**20
    return float(text) / 2**20


def _pod_requests(spec: dict[str, Any]) -> tuple[int, float]:
    """(CPU millicores, memory MiB) the scheduler reserves for a pod: the sum of its containers,
    or its largest init container if that is more (Kubernetes' effective request)."""

    def requests(container: dict[str, Any]) -> tuple[int, float]:
        resources = container.get("resources", {})
        # a limit without a request makes the request equal the limit
        found = {**resources.get("limits", {}), **resources.get("requests", {})}
        return _milli_cpu(found.get("cpu", 0)), _mib(found.get("memory", 0))

    containers = [requests(c) for c in spec["containers"]]
    inits = [requests(c) for c in spec.get("initContainers", [])]
    cpu = max([sum(c for c, _ in containers), *(c for c, _ in inits)])
    memory = max([sum(m for _, m in containers), *(m for _, m in inits)])
    return cpu, memory


def _pool_of(spec: dict[str, Any]) -> str:
    selector = spec.get("nodeSelector", {})
    wants_gpu = any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in spec["containers"])
    return "gpu" if wants_gpu or selector.get("tickcast.io/node-pool") == "gpu" else "cpu"


def _stack_types(stack: str) -> dict[str, list[str]]:
    config = yaml.safe_load((REPO_ROOT / "pulumi" / f"Pulumi.{stack}.yaml").read_text())["config"]
    return {"cpu": config["tickcast:cpuInstanceTypes"], "gpu": config["tickcast:gpuInstanceTypes"]}


def _stack_values(types: dict[str, list[str]], sized: bool = True) -> dict[str, Any]:
    """The values pulumi/tickcast_infra/app.py passes that decide placement and size (its
    chart_values() with eks_facts.chart_resources()), with the fine-tune RayJob enabled so its
    pods are checked too."""
    values: dict[str, Any] = {
        "rayService": {
            "head": {"nodeSelector": {"tickcast.io/node-pool": "cpu"}},
            "workerGroup": {
                "nodeSelector": {"tickcast.io/node-pool": "gpu"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
        },
        "jobs": {"finetune": {"enabled": True}},
    }
    if sized:
        resources = EKS_FACTS.chart_resources(types["cpu"], types["gpu"])
        values["rayService"]["workerGroup"].update(resources["rayService"]["workerGroup"])
        values["jobs"]["backtest"] = resources["jobs"]["backtest"]
        values["jobs"]["finetune"].update(resources["jobs"]["finetune"])
    return values


def _misfits(docs: list[dict[str, Any]], types: dict[str, list[str]]) -> list[str]:
    room = {pool: EKS_FACTS.pod_room(types[pool]) for pool in ("cpu", "gpu")}
    misfits = []
    for label, _, spec in _pod_specs(docs):
        pool = _pool_of(spec)
        cpu, memory = _pod_requests(spec)
        room_cpu, room_memory = room[pool]
        if cpu > room_cpu or memory > room_memory:
            misfits.append(
                f"{label} asks for {cpu}m CPU and {memory:.0f}Mi but a {pool} node ({types[pool]}) "
                f"has room for {room_cpu}m and {room_memory}Mi"
            )
    return misfits


@pytest.mark.parametrize("stack", PULUMI_STACKS)
def test_every_pod_fits_a_node_of_its_pool_in_each_stack(chart: Any, stack: str) -> None:
    """Each pod Pulumi's release renders fits an empty node (less DaemonSets) of the smallest
    instance type of its pool, computed as EKS computes allocatable (eks_facts.allocatable)."""
    types = _stack_types(stack)
    docs = _docs(_render(chart, _stack_values(types)))
    pods = _pod_specs(docs)
    assert {_pool_of(spec) for _, _, spec in pods} == {"cpu", "gpu"}
    assert len(pods) >= 8, [label for label, _, _ in pods]
    assert not _misfits(docs, types)


def test_the_fit_check_catches_the_old_dev_gpu_worker(chart: Any) -> None:
    """The finding: a 4 CPU / 16Gi worker (the chart's old default) never fits a g5.xlarge, and a
    2 CPU / 8Gi backtest never fits an m6i.large; the check must say so."""
    types = _stack_types("dev")
    values = _stack_values(types, sized=False)
    values["rayService"]["workerGroup"]["resources"] = {
        "requests": {"cpu": "4", "memory": "16Gi"},
        "limits": {"cpu": "8", "memory": "24Gi"},
    }
    values["jobs"]["backtest"] = {"resources": {"requests": {"cpu": "2", "memory": "8Gi"}}}
    misfits = _misfits(_docs(_render(chart, values)), types)
    assert any("RayService/tickcast-serving/gpu asks for 4000m" in m for m in misfits), misfits
    assert any("CronJob/tickcast-backtest asks for 2000m" in m for m in misfits), misfits


def test_chart_defaults_fit_the_smallest_supported_nodes(chart: Any) -> None:
    """Without Pulumi's sizing the chart still fits a 4-vCPU/16 GiB GPU node and a 2-vCPU/8 GiB
    CPU node (the dev shapes)."""
    types = {"cpu": ["m6i.large"], "gpu": ["g5.xlarge", "g4dn.xlarge"]}
    assert not _misfits(_docs(_render(chart, _stack_values(types, sized=False))), types)


def test_allocatable_follows_the_eks_formula() -> None:
    """g5.xlarge: 4 vCPU -> 4000 - (60 + 10 + 5 + 5) = 3920m; 16 GiB less 7.5% = 15155Mi, less
    kube-reserved 255 + 11 x 58 pods = 893Mi and eviction 100Mi = 14162Mi (about 13.8 GiB)."""
    assert EKS_FACTS.allocatable("g5.xlarge") == (3920, 14162)
    assert EKS_FACTS.allocatable("m6i.large") == (1930, 6903)
    assert EKS_FACTS.kube_reserved_cpu_milli(8) == 90
