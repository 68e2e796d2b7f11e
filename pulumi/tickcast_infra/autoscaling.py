"""Node autoscaling with Karpenter: GPU nodes on demand (to zero when idle), CPU overflow.

Why Karpenter rather than the Cluster Autoscaler: one NodePool may list several GPU instance
types (g5, g6, g6e, g4dn) and both capacity types, so a shortage of one type or of spot capacity
is answered with another; it launches a node sized for the pending pod within a minute, and
removes empty nodes, so the GPU pool goes to zero without a node group held at a minimum.

How a pending GPU worker gets a node: Serve asks for a replica -> the KubeRay autoscaler (in
the Ray head) adds a worker pod within ``minReplicas..maxReplicas`` -> the pod is Pending
(no GPU node) -> Karpenter sees it, launches a node of the ``gpu`` NodePool that satisfies its
requests, nodeSelector and toleration -> the NVIDIA device plugin advertises the GPU -> the pod
starts. In reverse, an idle worker is removed by the Ray autoscaler after its idle timeout, and
Karpenter deletes the empty node ``consolidateAfter`` later. The ``gpu`` NodePool's GPU limit
is twice ``gpuMaxSize`` so that a RayService upgrade (``NewCluster``: a second cluster comes up
beside the old one) gets its workers.

Pulumi creates the pools' bounds only; it never sets a node count, so it does not fight
Karpenter (and the CPU node group ignores drift of its desired size, see cluster.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from tickcast_infra.cluster import CPU_LABELS, GPU_LABELS, GPU_TAINT, NODE_POLICIES
from tickcast_infra.eks_facts import INSTANCE_TYPES
from tickcast_infra.iam import IrsaRole, IrsaRoleArgs

KARPENTER_REPO = "oci://public.ecr.aws/karpenter"
KARPENTER_NAMESPACE = "kube-system"
KARPENTER_SERVICE_ACCOUNT = "karpenter"
KARPENTER_METADATA_OPTIONS = {
    "httpEndpoint": "enabled",
    "httpProtocolIPv6": "disabled",
    "httpTokens": "required",
    "httpPutResponseHopLimit": 1,
}
"""IMDSv2 only with hop limit 1 on Karpenter's nodes, as on the node group (cluster.METADATA_OPTIONS):
pods cannot reach the node role's credentials."""
GPU_SURGE = 2
"""GPU NodePool limit = GPU_SURGE x gpuMaxSize: room for a RayService upgrade's second cluster."""

INTERRUPTION_EVENTS: dict[str, dict[str, Any]] = {
    "spot-interruption": {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
    "rebalance": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
    "state-change": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]},
    "scheduled-change": {"source": ["aws.health"], "detail-type": ["AWS Health Event"]},
}
"""EventBridge patterns Karpenter reads from its queue to drain a node before EC2 takes it."""


def controller_policy(
    cluster_name: str, region: str, account: str, node_role_arn: str, queue_arn: str
) -> dict[str, Any]:
    """Karpenter's controller permissions (after its reference CloudFormation policy): launch and
    terminate only instances tagged for this cluster, pass only the node role, read its queue."""
    owned = {"StringEquals": {f"aws:ResourceTag/kubernetes.io/cluster/{cluster_name}": "owned"}}
    tagging = {"StringEquals": {f"aws:RequestTag/kubernetes.io/cluster/{cluster_name}": "owned"}}
    ec2 = f"arn:aws:ec2:{region}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Launch",
                "Effect": "Allow",
                "Action": ["ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"],
                "Resource": [
                    f"{ec2}:*:fleet/*",
                    f"{ec2}:*:instance/*",
                    f"{ec2}:*:volume/*",
                    f"{ec2}:*:network-interface/*",
                    f"{ec2}:*:launch-template/*",
                    f"{ec2}:*:spot-instances-request/*",
                ],
                "Condition": tagging,
            },
            {
                "Sid": "LaunchFrom",
                "Effect": "Allow",
                "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
                "Resource": [
                    f"{ec2}::image/*",
                    f"{ec2}::snapshot/*",
                    f"{ec2}:*:security-group/*",
                    f"{ec2}:*:subnet/*",
                    f"{ec2}:*:launch-template/*",
                    f"{ec2}:*:capacity-reservation/*",
                ],
            },
            {
                "Sid": "TagOnCreate",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": [
                    f"{ec2}:*:fleet/*",
                    f"{ec2}:*:instance/*",
                    f"{ec2}:*:volume/*",
                    f"{ec2}:*:network-interface/*",
                    f"{ec2}:*:launch-template/*",
                    f"{ec2}:*:spot-instances-request/*",
                ],
                "Condition": {
                    **tagging,
                    "StringEqualsIfExists": {
                        "ec2:CreateAction": ["RunInstances", "CreateFleet", "CreateLaunchTemplate"]
                    },
                },
            },
            {
                "Sid": "OwnedInstances",
                "Effect": "Allow",
                "Action": ["ec2:TerminateInstances", "ec2:DeleteLaunchTemplate", "ec2:CreateTags"],
                "Resource": [f"{ec2}:*:instance/*", f"{ec2}:*:launch-template/*"],
                "Condition": owned,
            },
            {
                "Sid": "Describe",
                "Effect": "Allow",
                "Action": [
                    "ec2:DescribeAvailabilityZones",
                    "ec2:DescribeCapacityReservations",
                    "ec2:DescribeImages",
                    "ec2:DescribeInstances",
                    "ec2:DescribeInstanceTypeOfferings",
                    "ec2:DescribeInstanceTypes",
                    "ec2:DescribeLaunchTemplates",
                    "ec2:DescribePlacementGroups",
                    "ec2:DescribeSecurityGroups",
                    "ec2:DescribeSpotPriceHistory",
                    "ec2:DescribeSubnets",
                ],
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:RequestedRegion": region}},
            },
            {
                "Sid": "AmisAndPrices",
                "Effect": "Allow",
                "Action": ["ssm:GetParameter", "pricing:GetProducts"],
                "Resource": [f"arn:aws:ssm:{region}::parameter/aws/service/*", "*"],
            },
            {
                "Sid": "InterruptionQueue",
                "Effect": "Allow",
                "Action": ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"],
                "Resource": queue_arn,
            },
            {
                "Sid": "PassNodeRole",
                "Effect": "Allow",
                "Action": "iam:PassRole",
                "Resource": node_role_arn,
                "Condition": {"StringEquals": {"iam:PassedToService": ["ec2.amazonaws.com"]}},
            },
            {
                "Sid": "InstanceProfiles",
                "Effect": "Allow",
                "Action": [
                    "iam:CreateInstanceProfile",
                    "iam:TagInstanceProfile",
                    "iam:AddRoleToInstanceProfile",
                    "iam:RemoveRoleFromInstanceProfile",
                    "iam:DeleteInstanceProfile",
                    "iam:GetInstanceProfile",
                    "iam:ListInstanceProfiles",
                ],
                "Resource": f"arn:aws:iam::{account}:instance-profile/*",
            },
            {
                "Sid": "Cluster",
                "Effect": "Allow",
                "Action": "eks:DescribeCluster",
                "Resource": f"arn:aws:eks:{region}:{account}:cluster/{cluster_name}",
            },
        ],
    }


def _requirements(instance_types: Sequence[str], capacity_types: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": list(instance_types)},
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": list(capacity_types)},
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
    ]


def node_pools(
    cpu_types: Sequence[str], cpu_max_nodes: int, gpu_types: Sequence[str], gpu_max_workers: int, gpu_capacity: str
) -> dict[str, dict[str, Any]]:
    """The two NodePools' specs: ``cpu`` (overflow beside the node group) and ``gpu`` (tainted)."""
    cpu_limit = cpu_max_nodes * max(INSTANCE_TYPES[t][0] for t in cpu_types)
    # SPOT lists on-demand too: Karpenter prefers spot and falls back when none is offered.
    gpu_capacity_types = ["spot", "on-demand"] if gpu_capacity == "SPOT" else ["on-demand"]
    return {
        "cpu": {
            "template": {
                "metadata": {"labels": dict(CPU_LABELS)},
                "spec": {
                    "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "cpu"},
                    "requirements": _requirements(cpu_types, ["on-demand"]),
                    "expireAfter": "720h",
                },
            },
            "limits": {"cpu": str(cpu_limit)},
            "disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "5m"},
        },
        "gpu": {
            "template": {
                "metadata": {"labels": dict(GPU_LABELS)},
                "spec": {
                    "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "gpu"},
                    "requirements": _requirements(gpu_types, gpu_capacity_types),
                    "taints": [dict(GPU_TAINT)],
                    "expireAfter": "720h",
                },
            },
            "limits": {"nvidia.com/gpu": str(GPU_SURGE * gpu_max_workers)},
            # Only empty GPU nodes go: a Serve worker is never moved to pack nodes tighter.
            "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "5m"},
        },
    }


@dataclass(frozen=True)
class NodeAutoscalingArgs:
    """The cluster Karpenter serves and the pools' shapes and bounds."""

    cluster_name: str
    region: str
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]
    provider: k8s.Provider
    subnet_ids: Sequence[pulumi.Input[str]]
    security_group_id: pulumi.Input[str]
    cpu_instance_types: Sequence[str]
    cpu_max_nodes: int
    gpu_instance_types: Sequence[str]
    gpu_max_workers: int
    gpu_capacity_type: str
    gpu_ami_alias: str
    gpu_disk_size_gb: int
    version: str
    depends_on: Sequence[pulumi.Resource]
    """What the release waits for: the CPU node group (never the GPU pool)."""


class NodeAutoscaling(pulumi.ComponentResource):
    """Karpenter: its node role and access entry, interruption queue, controller and pools."""

    release: k8s.helm.v3.Release
    node_pools: list[pulumi.Resource]

    def __init__(self, name: str, args: NodeAutoscalingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickcast:infra:NodeAutoscaling", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # Its own node role: the CPU node group's role already has the access entry EKS made for it.
        node_role = aws.iam.Role(
            f"{name}-node",
            name=f"{args.cluster_name}-karpenter-node",
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
                    ],
                }
            ),
            opts=child,
        )
        attachments = [
            aws.iam.RolePolicyAttachment(f"{name}-node-{i}", role=node_role.name, policy_arn=arn, opts=child)
            for i, arn in enumerate(NODE_POLICIES)
        ]
        access_entry = aws.eks.AccessEntry(
            f"{name}-node",
            cluster_name=args.cluster_name,
            principal_arn=node_role.arn,
            type="EC2_LINUX",
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on)),
        )

        queue = aws.sqs.Queue(
            f"{name}-interruptions",
            name=f"{args.cluster_name}-karpenter",
            message_retention_seconds=300,
            sqs_managed_sse_enabled=True,
            opts=child,
        )
        aws.sqs.QueuePolicy(
            f"{name}-interruptions",
            queue_url=queue.url,
            policy=queue.arn.apply(
                lambda arn: json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Principal": {"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]},
                                "Action": "sqs:SendMessage",
                                "Resource": arn,
                            }
                        ],
                    }
                )
            ),
            opts=child,
        )
        for event, pattern in INTERRUPTION_EVENTS.items():
            rule = aws.cloudwatch.EventRule(f"{name}-{event}", event_pattern=json.dumps(pattern), opts=child)
            aws.cloudwatch.EventTarget(f"{name}-{event}", rule=rule.name, arn=queue.arn, opts=child)

        account = aws.get_caller_identity_output().account_id
        policy = pulumi.Output.all(account, node_role.arn, queue.arn).apply(
            lambda v: json.dumps(controller_policy(args.cluster_name, args.region, v[0], v[1], v[2]))
        )
        controller = IrsaRole(
            "karpenter",
            IrsaRoleArgs(
                cluster_name=args.cluster_name,
                oidc_provider_arn=args.oidc_provider_arn,
                oidc_issuer=args.oidc_issuer,
                namespace=KARPENTER_NAMESPACE,
                service_account=KARPENTER_SERVICE_ACCOUNT,
                policy=policy,
            ),
            opts=child,
        )
        self.release = k8s.helm.v3.Release(
            "karpenter",
            name="karpenter",
            chart=f"{KARPENTER_REPO}/karpenter",
            version=args.version,
            namespace=KARPENTER_NAMESPACE,
            values={
                "settings": {"clusterName": args.cluster_name, "interruptionQueue": queue.name},
                "serviceAccount": {
                    "name": KARPENTER_SERVICE_ACCOUNT,
                    "annotations": {"eks.amazonaws.com/role-arn": controller.arn},
                },
                # On the CPU node group (the chart's own affinity keeps it off Karpenter's nodes).
                "nodeSelector": dict(CPU_LABELS),
                "controller": {"resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}},
            },
            opts=pulumi.ResourceOptions(
                parent=self, provider=args.provider, depends_on=[*args.depends_on, access_entry, *attachments]
            ),
        )

        after_crds = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[self.release])
        classes = {"cpu": ("al2023@latest", 50), "gpu": (args.gpu_ami_alias, args.gpu_disk_size_gb)}
        for pool, (alias, disk) in classes.items():
            k8s.apiextensions.CustomResource(
                f"{name}-class-{pool}",
                api_version="karpenter.k8s.aws/v1",
                kind="EC2NodeClass",
                metadata={"name": pool},
                spec={
                    # al2023@latest picks the NVIDIA variant of the AMI for GPU instance types.
                    "amiSelectorTerms": [{"alias": alias}],
                    "role": node_role.name,
                    "subnetSelectorTerms": [{"id": subnet} for subnet in args.subnet_ids],
                    "securityGroupSelectorTerms": [{"id": args.security_group_id}],
                    "blockDeviceMappings": [
                        {
                            # Bottlerocket keeps images and pods on its second (data) volume.
                            "deviceName": "/dev/xvdb" if alias.startswith("bottlerocket") else "/dev/xvda",
                            "ebs": {"volumeSize": f"{disk}Gi", "volumeType": "gp3", "encrypted": True},
                        }
                    ],
                    "metadataOptions": dict(KARPENTER_METADATA_OPTIONS),
                    # No tags here: Karpenter tags its instances kubernetes.io/cluster/NAME=owned
                    # itself (the controller policy's condition) and rejects that key in a class.
                },
                opts=after_crds,
            )
        pools = node_pools(
            args.cpu_instance_types,
            args.cpu_max_nodes,
            args.gpu_instance_types,
            args.gpu_max_workers,
            args.gpu_capacity_type,
        )
        self.node_pools = [
            k8s.apiextensions.CustomResource(
                f"{name}-pool-{pool}",
                api_version="karpenter.sh/v1",
                kind="NodePool",
                metadata={"name": pool},
                spec=spec,
                opts=after_crds,
            )
            for pool, spec in pools.items()
        ]
        self.register_outputs({})
