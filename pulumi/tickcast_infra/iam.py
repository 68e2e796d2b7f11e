"""IAM roles for service accounts (IRSA): one role per workload, least privilege.

:data:`WORKLOADS` is the access matrix: its lake part is
:data:`tickcast_infra.lake_access.LAKE_ACCESS` (tables and blob prefixes, read, write or
maintain), its Kafka part :data:`tickcast_infra.kafka_access.KAFKA_ACCESS` (topics and groups,
the same grants the local broker enforces as ACLs). No workload reads Secrets Manager: the
Polygon key reaches the producer as a Kubernetes Secret only (see app.py). The policy builders
are plain functions over ARNs, so tests read the exact documents the roles get.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from tickcast_infra.chart_names import service_account_name
from tickcast_infra.kafka_access import (
    KAFKA_ACCESS,
    KAFKA_ADMIN,
    TOPICS,
    KafkaGrant,
    kafka_arn,
    msk_statements,
)
from tickcast_infra.kafka_access import KAFKA_ADMIN_ACCESS as _KAFKA_ADMIN_GRANT
from tickcast_infra.lake_access import LAKE_ACCESS, Access, s3_statements, writes_lake

__all__ = [
    "KAFKA_ADMIN",
    "KAFKA_ADMIN_ACCESS",
    "TOPICS",
    "WORKLOADS",
    "IrsaRole",
    "IrsaRoleArgs",
    "ResourceArns",
    "WorkloadAccess",
    "WorkloadRoles",
    "WorkloadRolesArgs",
    "irsa_trust_policy",
    "kafka_arn",
    "policy_document",
]


@dataclass(frozen=True)
class WorkloadAccess:
    """What one workload may do: ``lake`` maps a table or blob prefix to its access level,
    ``kafka`` is its :class:`~tickcast_infra.kafka_access.KafkaGrant`."""

    lake: Mapping[str, Access] = field(default_factory=dict)
    kafka: KafkaGrant = field(default_factory=KafkaGrant)

    @property
    def uses_lake(self) -> bool:
        return bool(self.lake)

    @property
    def writes_lake(self) -> bool:
        return writes_lake(self.lake)

    @property
    def uses_kafka(self) -> bool:
        return self.kafka.uses_kafka


WORKLOADS: dict[str, WorkloadAccess] = {
    workload: WorkloadAccess(lake=LAKE_ACCESS[workload], kafka=KAFKA_ACCESS[workload])
    for workload in ("producer", "consumer", "forecaster", "serving", "dashboard", "batch", "maintenance")
}
"""Workload -> its lake and Kafka grants (``tests/test_iam.py`` checks that both sources name
exactly these workloads)."""

KAFKA_ADMIN_ACCESS = WorkloadAccess(kafka=_KAFKA_ADMIN_GRANT)
"""The topic-creation Job's access (MSK Serverless only; provisioned clusters use the MSK topic API)."""


@dataclass(frozen=True)
class ResourceArns:
    """ARNs a policy can point at; empty strings for resources a stack lacks."""

    bucket_arn: str
    lake_prefix: str
    lake_kms_key_arn: str
    kafka_cluster_arn: str


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
    statements.extend(msk_statements(access.kafka, arns.kafka_cluster_arn))
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
