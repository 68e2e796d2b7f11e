"""Kafka on Amazon MSK, provisioned or serverless, reachable only from the cluster's nodes.

Clients authenticate with IAM (SASL/OAUTHBEARER over TLS, port 9098); there is no
unauthenticated or plaintext listener and no public access. Topics are created at deploy:

- provisioned (Kafka 3.6 or later): as ``aws.msk.Topic`` resources, through MSK's topic API,
  which needs no network path to the brokers;
- serverless (no topic API): by a Kubernetes Job that runs ``tickcast.kafka.ensure_topics``
  inside the cluster before the chart is installed (see :mod:`tickcast_infra.app`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from tickcast_infra.config import KafkaMode
from tickcast_infra.iam import TOPICS

IAM_PORT = 9098
"""The MSK listener for IAM access control (SASL_SSL)."""

SECURITY_PROTOCOL = "SASL_SSL"
SASL_MECHANISM = "OAUTHBEARER"


@dataclass(frozen=True)
class KafkaArgs:
    """The MSK cluster's flavour, size and placement."""

    cluster_name: str
    mode: KafkaMode
    vpc_id: pulumi.Input[str]
    subnet_ids: Sequence[pulumi.Input[str]]
    client_security_group_ids: Sequence[pulumi.Input[str]]
    kafka_version: str
    broker_instance_type: str
    broker_count: int
    volume_size_gb: int
    partitions: int
    replication_factor: int
    retention_hours: int
    topics: Sequence[str] = TOPICS


def server_properties(replication_factor: int) -> str:
    """Broker settings of a provisioned cluster: no implicit topics, durable writes."""
    min_insync = max(1, min(2, replication_factor - 1))
    return "\n".join(
        [
            "auto.create.topics.enable=false",
            f"default.replication.factor={replication_factor}",
            f"min.insync.replicas={min_insync}",
            "unclean.leader.election.enable=false",
        ]
    )


class Kafka(pulumi.ComponentResource):
    """An MSK cluster with IAM auth and TLS, its security group, and (provisioned) the topics."""

    cluster_arn: pulumi.Output[str]
    bootstrap_servers: pulumi.Output[str]
    security_group_id: pulumi.Output[str]
    topics: list[pulumi.Resource]
    """The topic resources (provisioned); empty when the topic Job creates them (serverless)."""
    topics_managed: bool
    """True when this component created the topics (provisioned); False leaves them to the Job."""

    def __init__(self, name: str, args: KafkaArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickcast:infra:Kafka", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        group = aws.ec2.SecurityGroup(
            f"{name}-brokers",
            vpc_id=args.vpc_id,
            description=f"{args.cluster_name} MSK brokers: IAM listener, from the EKS nodes only",
            tags={"Name": f"{args.cluster_name}-msk"},
            opts=child,
        )
        for index, source in enumerate(args.client_security_group_ids):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-from-cluster-{index}",
                security_group_id=group.id,
                referenced_security_group_id=source,
                ip_protocol="tcp",
                from_port=IAM_PORT,
                to_port=IAM_PORT,
                description="Kafka clients on EKS (IAM auth over TLS)",
                opts=child,
            )

        cluster: aws.msk.Cluster | aws.msk.ServerlessCluster
        self.topics = []
        if args.mode == "serverless":
            cluster = aws.msk.ServerlessCluster(
                name,
                cluster_name=args.cluster_name,
                vpc_configs=[
                    aws.msk.ServerlessClusterVpcConfigArgs(
                        subnet_ids=list(args.subnet_ids), security_group_ids=[group.id]
                    )
                ],
                client_authentication=aws.msk.ServerlessClusterClientAuthenticationArgs(
                    sasl=aws.msk.ServerlessClusterClientAuthenticationSaslArgs(
                        iam=aws.msk.ServerlessClusterClientAuthenticationSaslIamArgs(enabled=True)
                    )
                ),
                opts=child,
            )
            self.topics_managed = False
        else:
            configuration = aws.msk.Configuration(
                name,
                name=f"{args.cluster_name}-kafka",
                kafka_versions=[args.kafka_version],
                server_properties=server_properties(args.replication_factor),
                opts=child,
            )
            cluster = aws.msk.Cluster(
                name,
                cluster_name=args.cluster_name,
                kafka_version=args.kafka_version,
                number_of_broker_nodes=args.broker_count,
                broker_node_group_info=aws.msk.ClusterBrokerNodeGroupInfoArgs(
                    instance_type=args.broker_instance_type,
                    client_subnets=list(args.subnet_ids),
                    security_groups=[group.id],
                    storage_info=aws.msk.ClusterBrokerNodeGroupInfoStorageInfoArgs(
                        ebs_storage_info=aws.msk.ClusterBrokerNodeGroupInfoStorageInfoEbsStorageInfoArgs(
                            volume_size=args.volume_size_gb
                        )
                    ),
                    connectivity_info=aws.msk.ClusterBrokerNodeGroupInfoConnectivityInfoArgs(
                        public_access=aws.msk.ClusterBrokerNodeGroupInfoConnectivityInfoPublicAccessArgs(
                            type="DISABLED"
                        )
                    ),
                ),
                client_authentication=aws.msk.ClusterClientAuthenticationArgs(
                    sasl=aws.msk.ClusterClientAuthenticationSaslArgs(iam=True),
                    unauthenticated=False,
                ),
                encryption_info=aws.msk.ClusterEncryptionInfoArgs(
                    encryption_in_transit=aws.msk.ClusterEncryptionInfoEncryptionInTransitArgs(
                        client_broker="TLS", in_cluster=True
                    ),
                ),
                configuration_info=aws.msk.ClusterConfigurationInfoArgs(
                    arn=configuration.arn, revision=configuration.latest_revision
                ),
                opts=child,
            )
            retention_ms = str(args.retention_hours * 3600 * 1000)
            for topic in args.topics:
                resource = aws.msk.Topic(
                    f"{name}-{topic.replace('.', '-')}",
                    cluster_arn=cluster.arn,
                    name=topic,
                    partition_count=args.partitions,
                    replication_factor=args.replication_factor,
                    configs=json.dumps({"retention.ms": retention_ms, "cleanup.policy": "delete"}),
                    opts=child,
                )
                self.topics.append(resource)
            self.topics_managed = True

        self.cluster_arn = cluster.arn
        self.bootstrap_servers = cluster.bootstrap_brokers_sasl_iam
        self.security_group_id = group.id
        self.register_outputs({"clusterArn": self.cluster_arn, "bootstrapServers": self.bootstrap_servers})
