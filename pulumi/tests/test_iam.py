"""IRSA: one role per workload, trusted by its own service account only, least privilege."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import OIDC_ID, Deployment
from tickcast_infra.iam import WORKLOADS

WORKLOAD_NAMES = sorted(WORKLOADS)


def _policy(deployment: Deployment, workload: str) -> dict[str, Any]:
    return json.loads(deployment.one("aws:iam/rolePolicy:RolePolicy", workload).inputs["policy"])


def _actions(policy: dict[str, Any]) -> set[str]:
    return {a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}


def _resources_for(policy: dict[str, Any], prefix: str) -> set[str]:
    """Resources of the statements granting any action that starts with ``prefix``."""
    found: set[str] = set()
    for statement in policy["Statement"]:
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        if any(a.startswith(prefix) for a in actions):
            found.update(statement["Resource"])
    return found


class Arns:
    def __init__(self, deployment: Deployment) -> None:
        self.bucket = deployment.one("aws:s3/bucket:Bucket").outputs["arn"]
        self.lake = f"{self.bucket}/tickcast"
        self.lake_key = deployment.one("aws:kms/key:Key", "lake-key").outputs["arn"]
        self.secret = deployment.one("aws:secretsmanager/secret:Secret").outputs["arn"]
        self.kafka = deployment.outputs["kafkaClusterArn"]
        self.topic = self.kafka.replace(":cluster/", ":topic/")
        self.group = self.kafka.replace(":cluster/", ":group/")


def test_every_workload_has_its_own_role_and_service_account(deployment: Deployment) -> None:
    namespace = deployment.config.get("tickcast:namespace", "tickcast")
    issuer = f"oidc.eks.{deployment.config['aws:region']}.amazonaws.com/id/{OIDC_ID}"
    for workload in WORKLOAD_NAMES:
        role = deployment.one("aws:iam/role:Role", workload)
        trust = json.loads(role.inputs["assumeRolePolicy"])
        (statement,) = trust["Statement"]
        assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
        assert statement["Principal"]["Federated"].endswith(f"oidc-provider/{issuer}")
        assert statement["Condition"]["StringEquals"] == {
            f"{issuer}:sub": f"system:serviceaccount:{namespace}:tickcast-{workload}",
            f"{issuer}:aud": "sts.amazonaws.com",
        }
        assert deployment.outputs["workloadRoleArns"][workload] == role.outputs["arn"]


def test_no_policy_uses_wildcard_resources(deployment: Deployment) -> None:
    for workload in WORKLOAD_NAMES:
        for statement in _policy(deployment, workload)["Statement"]:
            assert statement["Effect"] == "Allow"
            assert "*" not in statement["Resource"], (workload, statement["Sid"])
            assert not any(a.endswith(":*") or a == "*" for a in statement["Action"]), (workload, statement["Sid"])


def test_every_resource_is_this_stacks_own(deployment: Deployment) -> None:
    arns = Arns(deployment)
    own = (arns.bucket, arns.lake_key, arns.secret, arns.kafka, arns.topic, arns.group)
    for workload in WORKLOAD_NAMES:
        for statement in _policy(deployment, workload)["Statement"]:
            for resource in statement["Resource"]:
                assert resource.startswith(own), (workload, resource)


def test_producer_cannot_touch_the_lake(deployment: Deployment) -> None:
    policy = _policy(deployment, "producer")
    assert not any(a.startswith(("s3:", "kms:")) for a in _actions(policy))


def test_producer_reads_only_the_polygon_secret_and_writes_only_its_topics(deployment: Deployment) -> None:
    arns = Arns(deployment)
    policy = _policy(deployment, "producer")
    assert _resources_for(policy, "secretsmanager:") == {arns.secret}
    assert _resources_for(policy, "kafka-cluster:WriteData") >= {f"{arns.topic}/bars", f"{arns.topic}/bars.dlq"}
    assert "kafka-cluster:ReadData" not in _actions(policy)
    assert f"{arns.topic}/forecasts" not in _resources_for(policy, "kafka-cluster:WriteData")


@pytest.mark.parametrize("workload", [w for w in WORKLOAD_NAMES if w != "producer"])
def test_only_the_producer_can_read_secrets(deployment: Deployment, workload: str) -> None:
    assert not any(a.startswith("secretsmanager:") for a in _actions(_policy(deployment, workload)))


def test_consumer_writes_bars_only(deployment: Deployment) -> None:
    arns = Arns(deployment)
    policy = _policy(deployment, "consumer")
    assert _resources_for(policy, "s3:PutObject") == {f"{arns.lake}/bars/*"}
    assert _resources_for(policy, "s3:GetObject") == {f"{arns.lake}/bars/*"}
    assert f"{arns.topic}/bars" in _resources_for(policy, "kafka-cluster:ReadData")
    assert _resources_for(policy, "kafka-cluster:AlterGroup") == {f"{arns.group}/tickcast-sink"}


def test_forecaster_writes_forecasts_and_scores(deployment: Deployment) -> None:
    arns = Arns(deployment)
    policy = _policy(deployment, "forecaster")
    assert _resources_for(policy, "s3:PutObject") == {f"{arns.lake}/forecasts/*", f"{arns.lake}/scores/*"}
    assert _resources_for(policy, "kafka-cluster:ReadData") == {f"{arns.topic}/bars"}
    assert f"{arns.topic}/forecasts" in _resources_for(policy, "kafka-cluster:WriteData")
    assert _resources_for(policy, "kafka-cluster:AlterGroup") == {f"{arns.group}/tickcast-forecaster"}


@pytest.mark.parametrize("workload", ["serving", "dashboard"])
def test_readers_read_the_lake_and_write_nothing(deployment: Deployment, workload: str) -> None:
    arns = Arns(deployment)
    policy = _policy(deployment, workload)
    assert _resources_for(policy, "s3:GetObject") == {f"{arns.lake}/*"}
    assert not any(a in _actions(policy) for a in ("s3:PutObject", "s3:DeleteObject", "kms:GenerateDataKey"))
    kafka = {a for a in _actions(policy) if a.startswith("kafka-cluster:")}
    if workload == "serving":
        assert not kafka
    else:
        # the data-quality page reads the newest dead-letter records (assigned partitions, no group)
        assert kafka == {
            "kafka-cluster:Connect",
            "kafka-cluster:DescribeCluster",
            "kafka-cluster:DescribeTopic",
            "kafka-cluster:ReadData",
        }
        assert _resources_for(policy, "kafka-cluster:ReadData") == {f"{arns.topic}/bars.dlq"}


def test_batch_writes_reports_models_and_forecasts_only(deployment: Deployment) -> None:
    arns = Arns(deployment)
    policy = _policy(deployment, "batch")
    assert _resources_for(policy, "s3:PutObject") == {
        f"{arns.lake}/forecasts/*",
        f"{arns.lake}/models/*",
        f"{arns.lake}/reports/*",
    }
    assert not any(a.startswith("kafka-cluster:") for a in _actions(policy))


def test_lake_key_use_matches_lake_access(deployment: Deployment) -> None:
    arns = Arns(deployment)
    for workload, access in WORKLOADS.items():
        policy = _policy(deployment, workload)
        if access.uses_lake:
            assert _resources_for(policy, "kms:") == {arns.lake_key}
            assert ("kms:GenerateDataKey" in _actions(policy)) == bool(access.lake_write)


def test_no_workload_may_create_topics(deployment: Deployment) -> None:
    for workload in WORKLOAD_NAMES:
        assert "kafka-cluster:CreateTopic" not in _actions(_policy(deployment, workload))


def test_serverless_topic_job_may_only_manage_tickcast_topics(serverless: Deployment) -> None:
    arns = Arns(serverless)
    policy = _policy(serverless, "kafka-admin")
    assert _resources_for(policy, "kafka-cluster:CreateTopic") == {
        f"{arns.topic}/{t}" for t in ("bars", "forecasts", "bars.dlq", "open_close")
    }
    assert not any(a.startswith(("s3:", "secretsmanager:", "kms:")) for a in _actions(policy))
    assert "kafka-cluster:WriteData" not in _actions(policy)


def test_load_balancer_controller_role_is_for_its_service_account(deployment: Deployment) -> None:
    role = deployment.one("aws:iam/role:Role", "aws-load-balancer-controller")
    trust = json.loads(role.inputs["assumeRolePolicy"])
    conditions = trust["Statement"][0]["Condition"]["StringEquals"]
    assert "system:serviceaccount:kube-system:aws-load-balancer-controller" in conditions.values()
    policy = json.loads(
        deployment.one("aws:iam/rolePolicy:RolePolicy", "aws-load-balancer-controller").inputs["policy"]
    )
    assert not any(a.startswith(("s3:", "secretsmanager:", "kafka", "kms:")) for a in _actions(policy))
    release = deployment.one("kubernetes:helm.sh/v3:Release", "aws-load-balancer-controller").inputs["values"]
    assert release["serviceAccount"]["annotations"]["eks.amazonaws.com/role-arn"] == role.outputs["arn"]
    assert release["clusterName"] == f"tickcast-{deployment.stack}"
