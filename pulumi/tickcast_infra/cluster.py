"""The EKS cluster: a CPU and a GPU managed node group, OIDC for IRSA, and a Kubernetes provider."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_eks as eks
import pulumi_kubernetes as k8s

from tickcast_infra.config import NodeGroupSize

NODE_POOL_LABEL = "tickcast.io/node-pool"
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_LABELS = {NODE_POOL_LABEL: "gpu", "nvidia.com/gpu.present": "true"}
"""GPU node labels: the pool selector, and the label the NVIDIA device plugin's default affinity wants."""
CPU_LABELS = {NODE_POOL_LABEL: "cpu"}
GPU_TOLERATION = {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
"""The toleration a pod needs to land on a GPU node."""

NODE_POLICIES = (
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
    "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
)
CLUSTER_ADMIN_POLICY = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"


@dataclass(frozen=True)
class NodeGroupSpec:
    """One managed node group."""

    instance_types: Sequence[str]
    size: NodeGroupSize
    ami_type: str
    capacity_type: str = "ON_DEMAND"
    disk_size_gb: int = 50


@dataclass(frozen=True)
class ClusterArgs:
    """Where the cluster lives, who administers it and its two node groups."""

    cluster_name: str
    kubernetes_version: str
    vpc_id: pulumi.Input[str]
    private_subnet_ids: Sequence[pulumi.Input[str]]
    public_subnet_ids: Sequence[pulumi.Input[str]]
    endpoint_public_access_cidrs: Sequence[str]
    admin_role_arns: Sequence[str]
    cpu: NodeGroupSpec
    gpu: NodeGroupSpec


class Cluster(pulumi.ComponentResource):
    """EKS with API access entries, encrypted secrets, control-plane logs, private nodes,
    an OIDC provider for IRSA, a CPU group and a tainted GPU group."""

    cluster_name: str
    kubeconfig: pulumi.Output[str]
    oidc_provider_arn: pulumi.Output[str]
    oidc_issuer: pulumi.Output[str]
    node_security_group_id: pulumi.Output[str]
    provider: k8s.Provider
    node_groups: list[pulumi.Resource]

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickcast:infra:Cluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        node_role = aws.iam.Role(
            f"{name}-node",
            name=f"{args.cluster_name}-node",
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
            aws.iam.RolePolicyAttachment(f"{name}-node-{index}", role=node_role.name, policy_arn=arn, opts=child)
            for index, arn in enumerate(NODE_POLICIES)
        ]
        secrets_key = aws.kms.Key(
            f"{name}-secrets",
            description=f"{args.cluster_name} Kubernetes secrets envelope encryption",
            enable_key_rotation=True,
            opts=child,
        )

        cluster = eks.Cluster(
            name,
            name=args.cluster_name,
            version=args.kubernetes_version,
            vpc_id=args.vpc_id,
            private_subnet_ids=list(args.private_subnet_ids),
            public_subnet_ids=list(args.public_subnet_ids),
            node_associate_public_ip_address=False,
            endpoint_private_access=True,
            endpoint_public_access=True,
            public_access_cidrs=list(args.endpoint_public_access_cidrs),
            authentication_mode=eks.AuthenticationMode.API,
            access_entries={
                f"admin-{index}": eks.AccessEntryArgs(
                    principal_arn=arn,
                    access_policies={
                        "admin": eks.AccessPolicyAssociationArgs(
                            policy_arn=CLUSTER_ADMIN_POLICY,
                            access_scope=aws.eks.AccessPolicyAssociationAccessScopeArgs(type="cluster"),
                        )
                    },
                )
                for index, arn in enumerate(args.admin_role_arns)
            },
            create_oidc_provider=True,
            skip_default_node_group=True,
            # Managed node groups only: nodes get EKS's own cluster security group, which
            # node_security_group_id then reports.
            skip_default_security_groups=True,
            encryption_config_key_arn=secrets_key.arn,
            enabled_cluster_log_types=["api", "audit", "authenticator"],
            opts=child,
        )

        def node_group(pool: str, spec: NodeGroupSpec, labels: dict[str, str], taints: list | None) -> pulumi.Resource:
            return eks.ManagedNodeGroup(
                f"{name}-{pool}",
                cluster=cluster,
                node_group_name_prefix=f"{args.cluster_name}-{pool}-",
                node_role=node_role,
                subnet_ids=list(args.private_subnet_ids),
                instance_types=list(spec.instance_types),
                ami_type=spec.ami_type,
                capacity_type=spec.capacity_type,
                disk_size=spec.disk_size_gb,
                scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                    min_size=spec.size.min_size,
                    desired_size=spec.size.desired_size,
                    max_size=spec.size.max_size,
                ),
                labels=labels,
                taints=taints,
                opts=pulumi.ResourceOptions(parent=self, depends_on=attachments),
            )

        self.node_groups = [
            node_group("cpu", args.cpu, CPU_LABELS, None),
            node_group(
                "gpu",
                args.gpu,
                GPU_LABELS,
                [aws.eks.NodeGroupTaintArgs(key=GPU_TAINT_KEY, value="true", effect="NO_SCHEDULE")],
            ),
        ]

        self.cluster_name = args.cluster_name
        self.kubeconfig = pulumi.Output.secret(cluster.kubeconfig_json)
        self.oidc_provider_arn = cluster.oidc_provider_arn
        self.oidc_issuer = cluster.oidc_issuer
        self.node_security_group_id = cluster.node_security_group_id
        self.provider = k8s.Provider(f"{name}-k8s", kubeconfig=self.kubeconfig, opts=child)
        self.register_outputs({"clusterName": args.cluster_name, "oidcProviderArn": self.oidc_provider_arn})
