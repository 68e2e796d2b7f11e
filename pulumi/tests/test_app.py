"""The tickcast release: chart values wired from the created resources; stack outputs."""

from __future__ import annotations

import json
import runpy
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pulumi
import pytest
import yaml

from conftest import (
    NAMED_PROD,
    PULUMI_DIR,
    Deployment,
    RecordingMocks,
    install_mocks,
    is_secret_value,
    plain_strings,
    run_program,
    stack_file_config,
    unwrap,
    with_secret,
)
from tickcast_infra.app import (
    CHART_COMPONENTS,
    DASHBOARD_OIDC_SECRET,
    RAY_AUTH_SECRET,
    SERVING_TOKEN_SECRET,
    ChartInputs,
    DashboardIngress,
    _ingress_url,
    chart_values,
)
from tickcast_infra.chart_names import (
    CHART_WORKLOADS,
    RELEASE_NAME,
    SERVE_SERVICE_NAME,
    service_account_name,
)
from tickcast_infra.eks_facts import chart_resources, pod_room
from tickcast_infra.iam import WORKLOADS


def _values(deployment: Deployment) -> dict:
    return deployment.one("kubernetes:helm.sh/v3:Release", "tickcast").inputs["values"]


def test_release_installs_the_local_chart(deployment: Deployment) -> None:
    release = deployment.one("kubernetes:helm.sh/v3:Release", "tickcast").inputs
    assert release["chart"] == "../helm/tickcast"
    assert release["name"] == RELEASE_NAME == "tickcast"
    assert release["namespace"] == deployment.one("kubernetes:core/v1:Namespace").inputs["metadata"]["name"]


def test_lake_and_kafka_values_come_from_the_created_resources(deployment: Deployment) -> None:
    values = _values(deployment)
    bucket = deployment.one("aws:s3/bucket:Bucket").outputs["bucket"]
    assert values["config"]["lake"] == {"url": f"s3://{bucket}/tickcast", "s3_region": deployment.config["aws:region"]}
    msk_type = (
        "aws:msk/serverlessCluster:ServerlessCluster" if deployment.stack == "serverless" else "aws:msk/cluster:Cluster"
    )
    kafka = values["config"]["kafka"]
    assert kafka["bootstrap_servers"] == deployment.one(msk_type).outputs["bootstrapBrokersSaslIam"]
    assert (kafka["security_protocol"], kafka["sasl_mechanism"], kafka["sasl_username"]) == (
        "SASL_SSL",
        "OAUTHBEARER",
        "",
    )
    # the MSK IAM token provider signs for the cluster's region
    assert kafka["aws_region"] == deployment.config["aws:region"]


def test_each_component_gets_its_own_role_and_image(deployment: Deployment) -> None:
    values = _values(deployment)
    repos = {
        r.inputs["name"].rsplit("/", 1)[1]: r.outputs["repositoryUrl"]
        for r in deployment.of_type("aws:ecr/repository:Repository")
    }
    for section, (image, workload) in CHART_COMPONENTS.items():
        account = values[section]["serviceAccount"]
        role = deployment.one("aws:iam/role:Role", workload)
        assert account == {"create": True, "name": service_account_name(workload), "roleArn": role.outputs["arn"]}
        assert account["name"] == f"tickcast-{workload}"
        if image is not None:
            digest = deployment.outputs["imageDigests"][image]
            assert values[section]["image"] == {"repository": repos[image], "digest": digest}
            assert digest.startswith("sha256:")
    assert values["image"] == {"tag": deployment.config.get("tickcast:imageTag", "0.1.0")}
    assert len({values[s]["serviceAccount"]["roleArn"] for s in CHART_COMPONENTS}) == len(CHART_COMPONENTS)


def test_ray_worker_group_follows_the_gpu_config(deployment: Deployment) -> None:
    workers = _values(deployment)["rayService"]["workerGroup"]
    config = deployment.config
    assert workers["maxReplicas"] == config["tickcast:gpuMaxSize"]
    assert workers["minReplicas"] == config["tickcast:gpuMinSize"]
    assert workers["replicas"] == config["tickcast:gpuDesiredSize"]
    head = _values(deployment)["rayService"]["head"]["nodeSelector"]
    cpu = deployment.one("aws:eks/nodeGroup:NodeGroup", "cluster-cpu").inputs["labels"]
    assert all(cpu[k] == v for k, v in head.items())


def test_big_pods_are_sized_from_the_stacks_instance_types(deployment: Deployment) -> None:
    """One source: eks_facts.chart_resources() for the stack's types (tests/helm checks the fit)."""
    values = _values(deployment)
    expected = chart_resources(
        deployment.config["tickcast:cpuInstanceTypes"], deployment.config["tickcast:gpuInstanceTypes"]
    )
    assert values["rayService"]["workerGroup"]["resources"] == expected["rayService"]["workerGroup"]["resources"]
    assert values["jobs"]["backtest"]["resources"] == expected["jobs"]["backtest"]["resources"]
    assert values["jobs"]["finetune"]["worker"]["resources"] == expected["jobs"]["finetune"]["worker"]["resources"]


def test_dev_gpu_worker_fits_the_smallest_dev_gpu_node(dev: Deployment) -> None:
    """The finding: 4 CPU / 16Gi never fits a g5.xlarge (about 3.9 CPU and 14 GiB for pods)."""
    requests = _values(dev)["rayService"]["workerGroup"]["resources"]["requests"]
    cpu, memory = int(requests["cpu"].removesuffix("m")), int(requests["memory"].removesuffix("Mi"))
    room_cpu, room_memory = pod_room(["g5.xlarge"])
    assert cpu <= room_cpu < 4000 and memory <= room_memory < 16 * 1024


def test_network_policy_knows_where_kuberay_runs(deployment: Deployment) -> None:
    kuberay = deployment.one("kubernetes:helm.sh/v3:Release", "kuberay-operator").inputs["namespace"]
    assert _values(deployment)["networkPolicy"]["kuberayOperatorNamespace"] == kuberay


def test_the_dashboard_is_cluster_internal_by_default(dev: Deployment, prod: Deployment) -> None:
    """Neither shipped stack exposes the dashboard: no Ingress, no load balancer, a ClusterIP."""
    for deployment in (dev, prod):
        assert _values(deployment)["dashboard"]["ingress"] == {"enabled": False}
        assert not deployment.of_type("kubernetes:networking.k8s.io/v1:Ingress")
        assert "port-forward svc/tickcast-dashboard" in deployment.outputs["dashboardUrl"]
        assert not [s for s in deployment.of_type("kubernetes:core/v1:Secret") if s.name.endswith("dashboard-oidc")]


def test_an_exposed_dashboard_is_https_only_with_oidc_sign_in(named_prod: Deployment) -> None:
    ingress = _values(named_prod)["dashboard"]["ingress"]
    config = named_prod.config
    assert ingress["enabled"] is True and ingress["scheme"] == "internal"
    assert ingress["certificateArn"] == config["tickcast:dashboardCertificateArn"]
    assert ingress["oidc"] == {
        "issuer": config["tickcast:dashboardOidcIssuer"],
        "authorizationEndpoint": config["tickcast:dashboardOidcAuthorizationEndpoint"],
        "tokenEndpoint": config["tickcast:dashboardOidcTokenEndpoint"],
        "userInfoEndpoint": config["tickcast:dashboardOidcUserInfoEndpoint"],
        "secretName": DASHBOARD_OIDC_SECRET,
    }
    assert ingress["inboundCidrs"] == [], "internal: the VPC; only internet-facing names CIDRs"
    # the OIDC client reaches the load balancer controller as a Secret; its secret stays a secret
    client = named_prod.one("kubernetes:core/v1:Secret", "tickcast-dashboard-oidc")
    assert client.inputs["metadata"]["name"] == DASHBOARD_OIDC_SECRET
    assert is_secret_value(client.inputs["stringData"])
    assert unwrap(client.inputs["stringData"]) == {
        "clientID": config["tickcast:dashboardOidcClientId"],
        "clientSecret": config["tickcast:dashboardOidcClientSecret"],
    }
    assert config["tickcast:dashboardOidcClientSecret"] not in plain_strings(client.inputs)
    release = named_prod.one("kubernetes:helm.sh/v3:Release", "tickcast")
    assert client.urn in named_prod.waits_for(release)


def test_an_internet_facing_dashboard_admits_only_the_named_cidrs() -> None:
    config = with_secret({**stack_file_config("prod"), **NAMED_PROD})
    config["tickcast:dashboardScheme"] = "internet-facing"
    config["tickcast:dashboardAllowedCidrs"] = ["198.18.40.0/24"]
    ingress = _values(run_program("public-dashboard", config))["dashboard"]["ingress"]
    assert ingress["scheme"] == "internet-facing" and ingress["inboundCidrs"] == ["198.18.40.0/24"]


def test_a_hosted_zone_gets_the_dashboard_a_dns_record_through_external_dns(named_prod: Deployment) -> None:
    host = named_prod.config["tickcast:dashboardHost"]
    zone = named_prod.config["tickcast:dashboardHostedZoneId"]
    ingress = _values(named_prod)["dashboard"]["ingress"]
    assert (
        ingress["host"] == host and ingress["certificateArn"] == named_prod.config["tickcast:dashboardCertificateArn"]
    )
    assert named_prod.outputs["dashboardUrl"] == f"https://{host}"
    dns = named_prod.one("kubernetes:helm.sh/v3:Release", "external-dns").inputs["values"]
    assert dns["domainFilters"] == [host] and dns["zoneIdFilters"] == [zone]
    assert dns["sources"] == ["ingress"] and dns["policy"] == "upsert-only"
    policy = json.loads(named_prod.one("aws:iam/rolePolicy:RolePolicy", "external-dns").inputs["policy"])
    (change,) = [s for s in policy["Statement"] if s["Action"] == "route53:ChangeResourceRecordSets"]
    assert change["Resource"] == f"arn:aws:route53:::hostedzone/{zone}"


def test_no_hosted_zone_no_external_dns(deployment: Deployment) -> None:
    assert not [r for r in deployment.of_type("kubernetes:helm.sh/v3:Release") if r.name == "external-dns"]


def test_stack_outputs(deployment: Deployment) -> None:
    outputs = deployment.outputs
    for key in ("kubeconfig", "dashboardUrl", "serveEndpoint", "bucketName", "bootstrapServers"):
        assert outputs[key], key
    namespace = deployment.config.get("tickcast:namespace", "tickcast")
    assert outputs["serveEndpoint"] == f"http://{SERVE_SERVICE_NAME}.{namespace}.svc:8000"
    assert SERVE_SERVICE_NAME == "tickcast-serving-serve-svc"


def test_every_chart_workload_has_a_role_and_every_role_a_chart_section() -> None:
    """chart_names.CHART_WORKLOADS (what tests/helm checks the chart against) matches iam.WORKLOADS."""
    assert set(CHART_WORKLOADS.values()) == set(WORKLOADS)
    assert {section: workload for section, (_, workload) in CHART_COMPONENTS.items()} == CHART_WORKLOADS


def test_release_waits_for_images_addons_topics_and_secret(deployment: Deployment) -> None:
    release = deployment.one("kubernetes:helm.sh/v3:Release", "tickcast")
    waits = deployment.waits_for(release)
    images = deployment.of_type("docker-build:index:Image")
    assert len(images) == 5
    for dependency in [
        *images,
        deployment.one("kubernetes:helm.sh/v3:Release", "kuberay-operator"),
        deployment.one("kubernetes:helm.sh/v3:Release", "aws-load-balancer-controller"),
        deployment.one("kubernetes:core/v1:Secret", "tickcast-secrets"),
        *deployment.of_type("aws:msk/topic:Topic"),
    ]:
        assert dependency.urn in waits, dependency.name


def test_release_does_not_wait_for_app_health_unless_asked(dev: Deployment) -> None:
    """A crash-looping producer (say, a key without WebSocket access) must not fail `pulumi up`."""
    assert dev.one("kubernetes:helm.sh/v3:Release", "tickcast").inputs["skipAwait"] is True
    config = with_secret(stack_file_config("dev"))
    config["tickcast:awaitApp"] = True
    waiting = run_program("await", config)
    assert not waiting.one("kubernetes:helm.sh/v3:Release", "tickcast").inputs.get("skipAwait")


def test_deploy_app_false_builds_only_the_platform() -> None:
    config = with_secret(stack_file_config("dev"))
    config["tickcast:deployApp"] = False
    deployment = run_program("infra-only", config)
    releases = {r.name for r in deployment.of_type("kubernetes:helm.sh/v3:Release")}
    assert "tickcast" not in releases and "kuberay-operator" in releases
    assert deployment.outputs["dashboardUrl"] == "(tickcast:deployApp is false)"
    assert deployment.outputs["bucketName"]


def test_chart_values_is_a_pure_function_of_its_inputs() -> None:
    inputs = ChartInputs(
        image_tag="1.2.3",
        repository_urls={i: f"registry/{i}" for i in ("producer", "consumer", "forecaster", "serving", "dashboard")},
        role_arns={w: f"arn:role/{w}" for _, w in CHART_COMPONENTS.values()},
        bootstrap_servers="b-1:9098",
        lake_url="s3://bucket/tickcast",
        region="eu-west-1",
        kafka_partitions=3,
        kafka_replication_factor=2,
        kafka_retention_hours=24,
        gpu_min_replicas=0,
        gpu_replicas=1,
        gpu_max_replicas=2,
        dashboard=DashboardIngress(),
    )
    values = chart_values(inputs)
    assert values["jobs"] == {"serviceAccount": {"create": True, "name": "tickcast-batch", "roleArn": "arn:role/batch"}}
    assert values["rayService"]["image"] == {"repository": "registry/serving"}
    # the lake maintenance CronJobs: their own role, the slim consumer image (it has `tickcast lake`)
    assert values["maintenance"] == {
        "serviceAccount": {"create": True, "name": "tickcast-maintenance", "roleArn": "arn:role/maintenance"},
        "image": {"repository": "registry/consumer"},
    }
    assert values["config"]["kafka"]["retention_hours"] == 24
    assert values["dashboard"]["ingress"] == {"enabled": False}
    assert chart_values(inputs) == values
    with pytest.raises(ValueError, match="certificate ARN and OIDC"):
        chart_values(replace(inputs, dashboard=DashboardIngress(scheme="internal")))


def _leaf_paths(values: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if (
            isinstance(value, dict)
            and value
            and not path.endswith((".annotations", ".podAnnotations", ".nodeSelector"))
        ):
            paths.extend(_leaf_paths(value, path))
        else:
            paths.append(path)
    return paths


CHART_VALUES = PULUMI_DIR.parent / "helm" / "tickcast" / "values.yaml"


@pytest.mark.skipif(not CHART_VALUES.exists(), reason="helm/tickcast/values.yaml is not in this checkout")
def test_every_value_pulumi_sets_is_a_key_of_the_chart(dev: Deployment) -> None:
    chart = yaml.safe_load(Path(CHART_VALUES).read_text())
    missing = []
    for path in _leaf_paths(_values(dev)):
        node = chart
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(path)
                break
            node = node[part]
    assert not missing, f"values Pulumi sets that helm/tickcast/values.yaml lacks: {sorted(missing)}"


CHART_SCHEMA = CHART_VALUES.with_name("values.schema.json")


def _merge(defaults: dict, overrides: dict) -> dict:
    """Helm's merge of user values over the chart's: maps merge, everything else replaces."""
    merged = dict(defaults)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _whole_numbers(value: object) -> object:
    """Numbers as Helm sees them after YAML: the mocks hand integers back as floats."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


@pytest.mark.skipif(not CHART_SCHEMA.exists(), reason="helm/tickcast/values.schema.json is not in this checkout")
def test_values_pulumi_passes_satisfy_the_chart_schema(deployment: Deployment) -> None:
    _assert_schema_valid(deployment)


@pytest.mark.skipif(not CHART_SCHEMA.exists(), reason="helm/tickcast/values.schema.json is not in this checkout")
def test_values_of_an_exposed_dashboard_satisfy_the_chart_schema(named_prod: Deployment) -> None:
    """The schema refuses an exposed dashboard without TLS and OIDC: Pulumi's values carry both."""
    _assert_schema_valid(named_prod)


def _assert_schema_valid(deployment: Deployment) -> None:
    ours = _whole_numbers(_values(deployment))
    merged = _merge(yaml.safe_load(CHART_VALUES.read_text()), ours)
    validator = jsonschema.Draft7Validator(json.loads(CHART_SCHEMA.read_text()))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(merged)]
    assert not errors, errors


def test_dashboard_url_says_pending_until_the_load_balancer_exists() -> None:
    assert _ingress_url(None, "http").startswith("(load balancer pending")
    assert _ingress_url(SimpleNamespace(load_balancer=SimpleNamespace(ingress=[])), "http").startswith("(load")
    ready = SimpleNamespace(load_balancer=SimpleNamespace(ingress=[SimpleNamespace(hostname="alb.example")]))
    assert _ingress_url(ready, "https") == "https://alb.example"


def test_main_program_runs_and_exports_the_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """``__main__.py`` as ``pulumi up`` runs it, under the mocks."""

    exported: dict[str, object] = {}
    monkeypatch.setattr(pulumi, "export", exported.__setitem__)
    install_mocks(RecordingMocks("us-east-1"), "main")
    config = with_secret(stack_file_config("dev"))
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    pulumi.runtime.set_all_config(raw, ["tickcast:polygonApiKey"])

    @pulumi.runtime.test
    def program() -> None:
        runpy.run_path(str(PULUMI_DIR / "__main__.py"), run_name="__main__")

    program()
    assert {"kubeconfig", "dashboardUrl", "serveEndpoint", "bucketName", "bootstrapServers"} <= set(exported)


# --------------------------------------------------------------------------------------------
# Locked down: Pod Security, the forecast API's token, Ray's token


def test_namespace_enforces_the_restricted_pod_security_profile(deployment: Deployment) -> None:
    """Every pod in the namespace must pass ``restricted`` (tests/helm/test_pod_security.py runs the
    real admission checks over the chart's pods): enforced at the cluster's policy version, warned
    and audited at the latest."""
    labels = deployment.one("kubernetes:core/v1:Namespace").inputs["metadata"]["labels"]
    assert labels == {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "v1.35",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/warn-version": "latest",
        "pod-security.kubernetes.io/audit": "restricted",
        "pod-security.kubernetes.io/audit-version": "latest",
    }


@pytest.mark.parametrize(
    ("resource", "secret_name", "key"),
    [
        ("tickcast-serving-token", SERVING_TOKEN_SECRET, "TICKCAST_SERVING__AUTH_TOKEN"),
        ("tickcast-ray-auth", RAY_AUTH_SECRET, "auth_token"),
    ],
)
def test_tokens_are_generated_into_secrets_once_and_kept(
    deployment: Deployment, resource: str, secret_name: str, key: str
) -> None:
    """The forecast API's bearer token and the Ray cluster token: random, secret in the state,
    created before the release, and never regenerated by a later `pulumi up` (ignore_changes)."""
    secret = deployment.one("kubernetes:core/v1:Secret", resource)
    assert secret.inputs["metadata"] == {"name": secret_name, "namespace": "tickcast"}
    assert is_secret_value(secret.inputs["stringData"]), "the token must be a Pulumi secret"
    assert not plain_strings(secret.inputs["stringData"])
    (token,) = unwrap(secret.inputs["stringData"]).values()
    assert list(unwrap(secret.inputs["stringData"])) == [key] and len(token) >= 43
    assert set(secret.ignore_changes) == {"stringData", "data"}
    assert secret.urn in deployment.waits_for(deployment.one("kubernetes:helm.sh/v3:Release", "tickcast"))


def test_tokens_differ_between_the_api_and_ray(dev: Deployment) -> None:
    tokens = {
        unwrap(dev.one("kubernetes:core/v1:Secret", name).inputs["stringData"])[key]
        for name, key in (
            ("tickcast-serving-token", "TICKCAST_SERVING__AUTH_TOKEN"),
            ("tickcast-ray-auth", "auth_token"),
        )
    }
    assert len(tokens) == 2


def test_the_chart_requires_the_api_token_and_ray_auth_from_those_secrets(deployment: Deployment) -> None:
    """Serve, the forecaster and the dashboard read the API token from one Secret; KubeRay hands
    the Ray token to every Ray container from the other."""
    values = _values(deployment)
    assert values["servingAuth"] == {"required": True, "secretName": SERVING_TOKEN_SECRET}
    assert values["rayService"]["auth"] == {"enabled": True, "secretName": RAY_AUTH_SECRET}
