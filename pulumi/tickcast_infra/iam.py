"""IAM roles for service accounts (IRSA): one role per workload, least privilege.

:data:`WORKLOADS` is the access matrix, the one place that says which workload may touch
which Kafka topic and group; its lake part is
:data:`tickcast_infra.lake_access.LAKE_ACCESS` (tables and blob prefixes, read, write or
maintain). No workload reads Secrets Manager: the Polygon key reaches the producer as a
Kubernetes Secret only (see app.py). The policy builders are plain functions over ARNs, so tests read the exact
documents the roles get.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from tickcast_infra.chart_names import service_account_name
from tickcast_infra.lake_access import LAKE_ACCESS, Access, s3_statements, writes_lake

# Topic and consumer-group names, the defaults of tickcast.settings.KafkaSettings and the
# services' group ids (TICKCAST_KAFKA__TOPIC_*, TICKCAST_CONSUMER__GROUP_ID, ...).
TOPIC_BARS = "bars"
TOPIC_FORECASTS = "forecasts"
TOPIC_DLQ = "bars.dlq"
TOPIC_OPEN_CLOSE = "open_close"
TOPICS = (TOPIC_BARS, TOPIC_FORECASTS, TOPIC_DLQ, TOPIC_OPEN_CLOSE)
GROUP_CONSUMER = "tickcast-sink"
GROUP_FORECASTER = "tickcast-forecaster"


@dataclass(frozen=True)
class WorkloadAccess:
    """What one workload may do. ``lake`` maps a table or blob prefix to its access level."""

    lake: Mapping[str, Access] = field(default_factory=dict)
    kafka_read: tuple[str, ...] = ()
    kafka_write: tuple[str, ...] = ()
    kafka_groups: tuple[str, ...] = ()
    kafka_create_topics: tuple[str, ...] = ()

    @property
    def uses_lake(self) -> bool:
        return bool(self.lake)

    @property
    def writes_lake(self) -> bool:
        return writes_lake(self.lake)

    @property
    def uses_kafka(self) -> bool:
        return bool(self.kafka_read or self.kafka_write or self.kafka_create_topics)


WORKLOADS: dict[str, WorkloadAccess] = {
    # Polygon -> Kafka; open/close rows and backfill checkpoints in the lake.
    "producer": WorkloadAccess(
        lake=LAKE_ACCESS["producer"],
        kafka_write=(TOPIC_BARS, TOPIC_DLQ, TOPIC_OPEN_CLOSE),
    ),
    # Kafka -> the bars table (its commits record the Kafka positions); bad records to the DLQ.
    "consumer": WorkloadAccess(
        lake=LAKE_ACCESS["consumer"],
        kafka_read=(TOPIC_BARS,),
        kafka_write=(TOPIC_DLQ,),
        kafka_groups=(GROUP_CONSUMER,),
    ),
    # bars -> serving -> forecasts (Kafka and lake), scores and score aggregates.
    "forecaster": WorkloadAccess(
        lake=LAKE_ACCESS["forecaster"],
        kafka_read=(TOPIC_BARS,),
        kafka_write=(TOPIC_FORECASTS,),
        kafka_groups=(GROUP_FORECASTER,),
    ),
    # Ray Serve (and batch forecasts on its cluster): models and bars in, forecasts out.
    "serving": WorkloadAccess(lake=LAKE_ACCESS["serving"]),
    # Streamlit: reads the lake and the newest dead-letter records (no consumer group); writes nothing.
    "dashboard": WorkloadAccess(lake=LAKE_ACCESS["dashboard"], kafka_read=(TOPIC_DLQ,)),
    # Ray batch jobs: backtests and fine-tuning.
    "batch": WorkloadAccess(lake=LAKE_ACCESS["batch"]),
    # The lake maintenance CronJobs (optimize, vacuum): the only role that deletes data files.
    "maintenance": WorkloadAccess(lake=LAKE_ACCESS["maintenance"]),
}

KAFKA_ADMIN = "kafka-admin"
KAFKA_ADMIN_ACCESS = WorkloadAccess(kafka_create_topics=TOPICS)
"""The topic-creation Job's access (MSK Serverless only; provisioned clusters use the MSK topic API)."""


@dataclass(frozen=True)
class ResourceArns:
    """ARNs a policy can point at; empty strings for resources a stack lacks."""

    bucket_arn: str
    lake_prefix: str
    lake_kms_key_arn: str
    kafka_cluster_arn: str


def kafka_arn(cluster_arn: str, kind: str, name: str) -> str:
    """The ARN of a topic or group (``kind``) of an MSK cluster, from the cluster's ARN.

    ``arn:aws:kafka:R:A:cluster/NAME/UUID`` -> ``arn:aws:kafka:R:A:topic/NAME/UUID/TOPIC``.
    """
    head, sep, tail = cluster_arn.partition(":cluster/")
    if not sep:
        raise ValueError(f"not an MSK cluster ARN: {cluster_arn!r}")
    return f"{head}:{kind}/{tail}/{name}"


def policy_document(access: WorkloadAccess, arns: ResourceArns) -> dict[str, Any]:
    """The IAM policy document of one workload's role."""
    statements: list[dict[str, Any]] = s3_statements(access.lake, arns.bucket_arn, arns.lake_prefix)
    if access.uses_lake:
        # SSE-KMS: reading decrypts; writing (multipart uploads included) also makes data keys.
        kms_actions = ["kms:Decrypt"] + (["kms:GenerateDataKey"] if access.writes_lake else [])
        statements.append(
            {
                "Sid": "LakeKey",
                "Effect": "Allow",
                "Action": kms_actions,
                "Resource": [arns.lake_kms_key_arn],
            }
        )
    if access.uses_kafka:
        cluster_actions = ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster"]
        if access.kafka_write:
            cluster_actions.append("kafka-cluster:WriteDataIdempotently")
        statements.append(
            {
                "Sid": "KafkaCluster",
                "Effect": "Allow",
                "Action": cluster_actions,
                "Resource": [arns.kafka_cluster_arn],
            }
        )
    topic_statements = (
        ("KafkaRead", access.kafka_read, ["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"]),
        ("KafkaWrite", access.kafka_write, ["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"]),
        (
            "KafkaCreateTopics",
            access.kafka_create_topics,
            [
                "kafka-cluster:CreateTopic",
                "kafka-cluster:DescribeTopic",
                "kafka-cluster:AlterTopic",
                "kafka-cluster:DescribeTopicDynamicConfiguration",
                "kafka-cluster:AlterTopicDynamicConfiguration",
            ],
        ),
    )
    for sid, topics, actions in topic_statements:
        if topics:
            statements.append(
                {
                    "Sid": sid,
                    "Effect": "Allow",
                    "Action": actions,
                    "Resource": [kafka_arn(arns.kafka_cluster_arn, "topic", t) for t in topics],
                }
            )
    if access.kafka_groups:
        statements.append(
            {
                "Sid": "KafkaGroups",
                "Effect": "Allow",
                "Action": ["kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"],
                "Resource": [kafka_arn(arns.kafka_cluster_arn, "group", g) for g in access.kafka_groups],
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def irsa_trust_policy(oidc_provider_arn: str, oidc_issuer: str, namespace: str, service_account: str) -> dict[str, Any]:
    """A trust policy that lets exactly one Kubernetes service account assume the role."""
    issuer = oidc_issuer.removeprefix("https://")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": oidc_provider_arn},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {
                        f"{issuer}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                        f"{issuer}:aud": "sts.amazonaws.com",
                    }
                },
            }
        ],
    }


@dataclass(frozen=True)
class IrsaRoleArgs:
    """One IRSA role: who may assume it (a namespaced service account) and its inline policy."""

    cluster_name: str
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]
    namespace: str
    service_account: str
    policy: pulumi.Input[str] | None = None
    managed_policy_arns: Sequence[str] = field(default_factory=tuple)


class IrsaRole(pulumi.ComponentResource):
    """An IAM role one Kubernetes service account assumes through the cluster's OIDC provider."""

    arn: pulumi.Output[str]

    def __init__(self, name: str, args: IrsaRoleArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickcast:infra:IrsaRole", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        trust = pulumi.Output.all(args.oidc_provider_arn, args.oidc_issuer).apply(
            lambda v: json.dumps(irsa_trust_policy(v[0], v[1], args.namespace, args.service_account))
        )
        role = aws.iam.Role(
            name,
            name=f"{args.cluster_name}-{name}"[:64],
            assume_role_policy=trust,
            description=f"IRSA role of {args.namespace}/{args.service_account}",
            opts=child,
        )
        if args.policy is not None:
            aws.iam.RolePolicy(name, role=role.id, policy=args.policy, opts=child)
        for index, policy_arn in enumerate(args.managed_policy_arns):
            aws.iam.RolePolicyAttachment(f"{name}-{index}", role=role.name, policy_arn=policy_arn, opts=child)
        self.arn = role.arn
        self.register_outputs({"arn": self.arn})


@dataclass(frozen=True)
class WorkloadRolesArgs:
    """Everything the workload roles point at."""

    cluster_name: str
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]
    namespace: str
    bucket_arn: pulumi.Input[str]
    lake_prefix: str
    lake_kms_key_arn: pulumi.Input[str]
    kafka_cluster_arn: pulumi.Input[str]
    workloads: Mapping[str, WorkloadAccess] = field(default_factory=lambda: dict(WORKLOADS))


class WorkloadRoles(pulumi.ComponentResource):
    """One :class:`IrsaRole` per workload, each with the policy :data:`WORKLOADS` gives it."""

    arns: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: WorkloadRolesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickcast:infra:WorkloadRoles", name, None, opts)
        resource_arns = pulumi.Output.all(args.bucket_arn, args.lake_kms_key_arn, args.kafka_cluster_arn).apply(
            lambda v: ResourceArns(v[0], args.lake_prefix, v[1], v[2])
        )
        self.arns = {}
        for workload, access in args.workloads.items():
            role = IrsaRole(
                workload,
                IrsaRoleArgs(
                    cluster_name=args.cluster_name,
                    oidc_provider_arn=args.oidc_provider_arn,
                    oidc_issuer=args.oidc_issuer,
                    namespace=args.namespace,
                    service_account=service_account_name(workload),
                    policy=resource_arns.apply(lambda arns, a=access: json.dumps(policy_document(a, arns))),
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.arns[workload] = role.arn
        self.register_outputs({"arns": self.arns})
