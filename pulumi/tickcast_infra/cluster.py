"""The EKS cluster: a CPU (system) managed node group, managed add-ons, OIDC for IRSA, and a
Kubernetes provider. GPU nodes (and CPU overflow) come from Karpenter (``autoscaling.py``).

Hardening that lives here: every node requires IMDSv2 with a hop limit of 1 (a launch template
for the node group; Karpenter's EC2NodeClasses say the same), so a pod cannot borrow the node
role's credentials from the instance metadata service; the VPC CNI is a managed add-on with its
own IRSA role (the node role no longer carries ``AmazonEKS_CNI_Policy``) and its network policy
agent on, so the chart's NetworkPolicies are enforced, not merely stored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_eks as eks
import pulumi_kubernetes as k8s

from tickcast_infra.config import NodeGroupSize

# The node pools' labels, taint and toleration live in eks_facts (plain Python, so the dev cluster
# of tests/k8s shapes its fake nodes from the same values); re-exported from here.
from tickcast_infra.eks_facts import (  # noqa: F401
    CPU_LABELS,
    GPU_LABELS,
    GPU_TAINT,
    GPU_TAINT_KEY,
    GPU_TOLERATION,
    NODE_POOL_LABEL,
)
from tickcast_infra.iam import IrsaRole, IrsaRoleArgs

NODE_POLICIES = (
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
    "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
)
"""The node roles' policies. Not ``AmazonEKS_CNI_Policy``: the VPC CNI has its own IRSA role, so
nothing on a node (or a pod that reached the node's credentials) can rewrite the VPC's ENIs."""
CNI_POLICY = "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy"
CNI_NAMESPACE = "kube-system"
CNI_SERVICE_ACCOUNT = "aws-node"
CNI_CONFIGURATION = {"enableNetworkPolicy": "true"}
"""The vpc-cni add-on's configuration values: its network policy agent enforces NetworkPolicies
(off by default: without it the chart's policies install and guard nothing)."""
METADATA_OPTIONS = aws.ec2.LaunchTemplateMetadataOptionsArgs(
    http_endpoint="enabled",
    http_tokens="required",
    http_put_response_hop_limit=1,
    instance_metadata_tags="disabled",
)
"""IMDSv2 only, one hop: the node's own processes reach the metadata service, a pod's packets
(one hop further) do not, so pods use their IRSA roles and never the node role."""
CLUSTER_ADMIN_POLICY = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"


@dataclass(frozen=True)
class NodeGroupSpec:
    """One managed node group."""

    instance_types: Sequence[str]
    size: NodeGroupSize
    ami_type: str
    capacity_type: str = "ON_DEMAND"
    disk_size_gb: int = 50


def node_launch_template_args(name: str, disk_size_gb: int) -> aws.ec2.LaunchTemplateArgs:
    """A managed node group's launch template: IMDSv2 with hop limit 1 and an encrypted gp3 root
    volume (with a launch template, EKS takes the disk from it, not from the node group)."""
    return aws.ec2.LaunchTemplateArgs(
        name_prefix=f"{name}-",
        description="tickcast managed nodes: IMDSv2 only, hop limit 1",
        metadata_options=METADATA_OPTIONS,
        block_device_mappings=[
            aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                device_name="/dev/xvda",
                ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                    volume_size=disk_size_gb, volume_type="gp3", encrypted="true", delete_on_termination="true"
                ),
            )
        ],
        update_default_version=True,
    )


@dataclass(frozen=True)
class ClusterArgs:
    """Where the cluster lives, who administers it and its two node groups."""

    cluster_name: str
    kubernetes_version: str
    log_retention_days: int
    vpc_id: pulumi.Input[str]
    private_subnet_ids: Sequence[pulumi.Input[str]]
    public_subnet_ids: Sequence[pulumi.Input[str]]
    endpoint_public_access_cidrs: Sequence[str]
    """Who may reach the public API endpoint; empty turns the public endpoint off."""
    admin_role_arns: Sequence[str]
    cpu: NodeGroupSpec


MANAGED_ADDONS = ("coredns", "metrics-server")
"""EKS add-ons created after the CPU nodes exist (their pods need a node to turn ACTIVE):
CoreDNS, and metrics-server, which the consumer's HorizontalPodAutoscaler reads."""


class Cluster(pulumi.ComponentResource):
    """EKS with API access entries, encrypted secrets, control-plane logs with a retention,
    private nodes, an OIDC provider for IRSA, a CPU group and the CoreDNS and metrics-server
    add-ons."""

    cluster_name: str
    kubeconfig: pulumi.Output[str]
    oidc_provider_arn: pulumi.Output[str]
    oidc_issuer: pulumi.Output[str]
    node_security_group_id: pulumi.Output[str]
    private_subnet_ids: list[pulumi.Input[str]]
    provider: k8s.Provider
    cpu_node_group: pulumi.Resource
    vpc_cni: pulumi.Resource
    addons: list[pulumi.Resource]

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

        # EKS writes to this group if it exists; creating it first gives it a retention (EKS's own
        # group never expires).
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-logs",
            name=f"/aws/eks/{args.cluster_name}/cluster",
            retention_in_days=args.log_retention_days,
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
            # Public only for the CIDRs the stack names (config.py requires them): no 0.0.0.0/0.
            endpoint_public_access=bool(args.endpoint_public_access_cidrs),
            public_access_cidrs=list(args.endpoint_public_access_cidrs) or None,
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
            # CoreDNS is created below as a plain add-on that waits for the CPU nodes.
            coredns_addon_options=eks.CoreDnsAddonOptionsArgs(enabled=False),
            # The VPC CNI is created below as a managed add-on with its own IRSA role, which
            # needs this cluster's OIDC provider: pulumi_eks's own add-on could not have one.
            use_default_vpc_cni=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[log_group]),
        )

        cni_role = IrsaRole(
            "vpc-cni",
            IrsaRoleArgs(
                cluster_name=args.cluster_name,
                oidc_provider_arn=cluster.oidc_provider_arn,
                oidc_issuer=cluster.oidc_issuer,
                namespace=CNI_NAMESPACE,
                service_account=CNI_SERVICE_ACCOUNT,
                managed_policy_arns=(CNI_POLICY,),
            ),
            opts=child,
        )
        # A DaemonSet: ACTIVE without nodes, so it is in place before the first node joins.
        self.vpc_cni = aws.eks.Addon(
            f"{name}-vpc-cni",
            cluster_name=args.cluster_name,
            addon_name="vpc-cni",
            service_account_role_arn=cni_role.arn,
            configuration_values=json.dumps(CNI_CONFIGURATION),
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="OVERWRITE",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster]),
        )

        # A plain aws.eks.NodeGroup (not pulumi_eks's component) so that ignore_changes reaches it.
        # The Karpenter controller, CoreDNS and the add-ons' controllers run here; every other
        # node comes from Karpenter. EKS adds this role's access entry itself.
        cpu = args.cpu
        launch_template = aws.ec2.LaunchTemplate(
            f"{name}-cpu",
            node_launch_template_args(f"{args.cluster_name}-cpu", cpu.disk_size_gb),
            opts=child,
        )
        self.cpu_node_group = aws.eks.NodeGroup(
            f"{name}-cpu",
            cluster_name=args.cluster_name,
            node_group_name_prefix=f"{args.cluster_name}-cpu-",
            node_role_arn=node_role.arn,
            subnet_ids=list(args.private_subnet_ids),
            instance_types=list(cpu.instance_types),
            ami_type=cpu.ami_type,
            capacity_type=cpu.capacity_type,
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=launch_template.id, version=launch_template.latest_version.apply(str)
            ),
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=cpu.size.min_size, desired_size=cpu.size.desired_size, max_size=cpu.size.max_size
            ),
            labels=dict(CPU_LABELS),
            # EKS owns the node count after the first `pulumi up` (a node replaced, a manual
            # resize); Pulumi keeps the bounds and does not reset the desired size on every run.
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[cluster, *attachments, self.vpc_cni],
                ignore_changes=["scalingConfig.desiredSize"],
            ),
        )
        self.addons = [
            aws.eks.Addon(
                f"{name}-{addon}",
                cluster_name=args.cluster_name,
                addon_name=addon,
                resolve_conflicts_on_create="OVERWRITE",
                resolve_conflicts_on_update="OVERWRITE",
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.cpu_node_group]),
            )
            for addon in MANAGED_ADDONS
        ]

        self.cluster_name = args.cluster_name
        self.kubeconfig = pulumi.Output.secret(cluster.kubeconfig_json)
        self.oidc_provider_arn = cluster.oidc_provider_arn
        self.oidc_issuer = cluster.oidc_issuer
        self.node_security_group_id = cluster.node_security_group_id
        self.private_subnet_ids = list(args.private_subnet_ids)
        self.provider = k8s.Provider(f"{name}-k8s", kubeconfig=self.kubeconfig, opts=child)
        self.register_outputs({"clusterName": args.cluster_name, "oidcProviderArn": self.oidc_provider_arn})
