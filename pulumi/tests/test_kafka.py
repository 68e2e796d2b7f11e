"""MSK: IAM auth over TLS, no public access, reachable only from the cluster; topics at deploy."""

from __future__ import annotations

import json

import pytest

from conftest import Deployment, run_program, stack_file_config, with_secret
from tickcast_infra.config import ConfigError
from tickcast_infra.iam import TOPICS


def _only_from_cluster(deployment: Deployment) -> None:
    group = deployment.one("aws:ec2/securityGroup:SecurityGroup", "kafka-brokers")
    assert not group.inputs.get("ingress"), "no inline rules: every ingress rule is below"
    rules = deployment.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    assert rules, "the brokers must be reachable from the cluster"
    cluster = deployment.one("eks:index:Cluster")
    for rule in rules:
        assert rule.inputs["securityGroupId"] == f"{group.name}-id"
        assert rule.inputs["referencedSecurityGroupId"] == cluster.outputs["nodeSecurityGroupId"]
        assert "cidrIpv4" not in rule.inputs and "cidrIpv6" not in rule.inputs
        assert (rule.inputs["fromPort"], rule.inputs["toPort"], rule.inputs["ipProtocol"]) == (9098, 9098, "tcp")


def test_provisioned_cluster_is_private_with_iam_and_tls(dev: Deployment) -> None:
    msk = dev.one("aws:msk/cluster:Cluster").inputs
    info = msk["brokerNodeGroupInfo"]
    assert info["connectivityInfo"]["publicAccess"]["type"] == "DISABLED"
    assert sorted(info["clientSubnets"]) == sorted(
        f"{s.name}-id" for s in dev.of_type("aws:ec2/subnet:Subnet") if "private" in s.name
    )
    assert msk["clientAuthentication"]["sasl"]["iam"] is True
    assert msk["clientAuthentication"]["unauthenticated"] is False
    assert "tls" not in msk["clientAuthentication"] or not msk["clientAuthentication"]["tls"]
    transit = msk["encryptionInfo"]["encryptionInTransit"]
    assert transit == {"clientBroker": "TLS", "inCluster": True}
    _only_from_cluster(dev)


def test_provisioned_cluster_is_sized_from_config(dev: Deployment, prod: Deployment) -> None:
    for deployment in (dev, prod):
        msk = deployment.one("aws:msk/cluster:Cluster").inputs
        config = deployment.config
        assert msk["numberOfBrokerNodes"] == config["tickcast:azCount"] * config["tickcast:kafkaBrokersPerAz"]
        assert msk["brokerNodeGroupInfo"]["instanceType"] == config["tickcast:kafkaBrokerInstanceType"]
    server = prod.one("aws:msk/configuration:Configuration").inputs["serverProperties"]
    assert "auto.create.topics.enable=false" in server
    assert "min.insync.replicas=2" in server and "default.replication.factor=3" in server


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_provisioned_topics_are_created_by_pulumi(stack: str, request: pytest.FixtureRequest) -> None:
    deployment: Deployment = request.getfixturevalue(stack)
    msk = deployment.one("aws:msk/cluster:Cluster")
    topics = {t.inputs["name"]: t.inputs for t in deployment.of_type("aws:msk/topic:Topic")}
    assert set(topics) == set(TOPICS)
    config = deployment.config
    hours = config.get("tickcast:kafkaRetentionHours", 168)
    for topic in topics.values():
        assert topic["clusterArn"] == msk.outputs["arn"]
        assert topic["partitionCount"] == config.get("tickcast:kafkaPartitions", 6)
        assert topic["replicationFactor"] == config["tickcast:kafkaReplicationFactor"]
        assert json.loads(topic["configs"])["retention.ms"] == str(hours * 3_600_000)


def test_serverless_cluster_uses_iam_and_a_topic_job(serverless: Deployment) -> None:
    msk = serverless.one("aws:msk/serverlessCluster:ServerlessCluster").inputs
    assert msk["clientAuthentication"]["sasl"]["iam"]["enabled"] is True
    (vpc,) = msk["vpcConfigs"]
    assert vpc["securityGroupIds"] == ["kafka-brokers-id"]
    _only_from_cluster(serverless)
    assert not serverless.of_type("aws:msk/topic:Topic")

    job = serverless.one("kubernetes:batch/v1:Job").inputs
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "tickcast-kafka-admin"
    (container,) = pod["containers"]
    assert "ensure_topics" in container["command"][-1]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TICKCAST_KAFKA__BOOTSTRAP_SERVERS"] == serverless.outputs["bootstrapServers"]
    assert env["TICKCAST_KAFKA__REPLICATION_FACTOR"] == "3"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    account = serverless.one("kubernetes:core/v1:ServiceAccount").inputs
    assert (
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        == serverless.one("aws:iam/role:Role", "kafka-admin").outputs["arn"]
    )
    release = serverless.one("kubernetes:helm.sh/v3:Release", "tickcast")
    assert release.inputs["values"]["config"]["kafka"]["replication_factor"] == 3


def test_bootstrap_servers_are_the_iam_listener(deployment: Deployment) -> None:
    servers = deployment.outputs["bootstrapServers"].split(",")
    assert servers and all(s.endswith(":9098") for s in servers)


def test_replication_factor_above_the_broker_count_is_refused() -> None:
    config = with_secret(stack_file_config("dev"))
    config["tickcast:kafkaReplicationFactor"] = 3
    with pytest.raises(Exception, match="kafkaReplicationFactor exceeds the broker count"):
        run_program("bad-rf", config)
    assert issubclass(ConfigError, ValueError)
