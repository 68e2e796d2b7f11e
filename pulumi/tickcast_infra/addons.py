"""Cluster add-ons installed with Helm: the AWS load balancer controller (which turns the
dashboard's Ingress into an ALB), the KubeRay operator, the NVIDIA device plugin and, with a
hosted zone, external-dns (the dashboard's DNS record)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from tickcast_infra.cluster import GPU_LABELS, GPU_TOLERATION, NODE_POOL_LABEL
from tickcast_infra.iam import IrsaRole, IrsaRoleArgs

KUBERAY_REPO = "https://ray-project.github.io/kuberay-helm/"
NVIDIA_REPO = "https://nvidia.github.io/k8s-device-plugin"
EKS_CHARTS_REPO = "https://aws.github.io/eks-charts"
EXTERNAL_DNS_REPO = "https://kubernetes-sigs.github.io/external-dns/"
EXTERNAL_DNS_SERVICE_ACCOUNT = "external-dns"
LB_CONTROLLER_SERVICE_ACCOUNT = "aws-load-balancer-controller"
KUBERAY_NAMESPACE = "kuberay-operator"

_CLUSTER_TAG = "elbv2.k8s.aws/cluster"


def load_balancer_controller_policy() -> dict[str, Any]:
    """What the AWS load balancer controller needs: reads everywhere, writes only to the load
    balancers, target groups and security groups it tagged as its own."""
    owned = {"Null": {f"aws:ResourceTag/{_CLUSTER_TAG}": "false"}}
    tagging_new = {"Null": {f"aws:RequestTag/{_CLUSTER_TAG}": "false"}}
    elb = "arn:aws:elasticloadbalancing:*:*:"
    balancers = [f"{elb}targetgroup/*/*", f"{elb}loadbalancer/net/*/*", f"{elb}loadbalancer/app/*/*"]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iam:CreateServiceLinkedRole",
                "Resource": "*",
                "Condition": {"StringEquals": {"iam:AWSServiceName": "elasticloadbalancing.amazonaws.com"}},
            },
            {
                "Effect": "Allow",
                "Action": [
                    "ec2:DescribeAccountAttributes",
                    "ec2:DescribeAddresses",
                    "ec2:DescribeAvailabilityZones",
                    "ec2:DescribeInternetGateways",
                    "ec2:DescribeVpcs",
                    "ec2:DescribeVpcPeeringConnections",
                    "ec2:DescribeSubnets",
                    "ec2:DescribeSecurityGroups",
                    "ec2:DescribeInstances",
                    "ec2:DescribeNetworkInterfaces",
                    "ec2:DescribeTags",
                    "ec2:DescribeRouteTables",
                    "ec2:DescribeCoipPools",
                    "ec2:DescribeIpamPools",
                    "ec2:GetCoipPoolUsage",
                    "ec2:GetSecurityGroupsForVpc",
                    "elasticloadbalancing:Describe*",
                    "acm:ListCertificates",
                    "acm:DescribeCertificate",
                    "iam:ListServerCertificates",
                    "iam:GetServerCertificate",
                    "cognito-idp:DescribeUserPoolClient",
                    "wafv2:GetWebACL",
                    "wafv2:GetWebACLForResource",
                    "wafv2:AssociateWebACL",
                    "wafv2:DisassociateWebACL",
                    "waf-regional:GetWebACL",
                    "waf-regional:GetWebACLForResource",
                    "waf-regional:AssociateWebACL",
                    "waf-regional:DisassociateWebACL",
                    "shield:GetSubscriptionState",
                    "shield:DescribeProtection",
                    "shield:CreateProtection",
                    "shield:DeleteProtection",
                ],
                "Resource": "*",
            },
            {
                "Effect": "Allow",
                "Action": [
                    "ec2:CreateSecurityGroup",
                    "ec2:AuthorizeSecurityGroupIngress",
                    "ec2:RevokeSecurityGroupIngress",
                ],
                "Resource": "*",
            },
            {
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": "arn:aws:ec2:*:*:security-group/*",
                "Condition": {"StringEquals": {"ec2:CreateAction": "CreateSecurityGroup"}, **tagging_new},
            },
            {
                "Effect": "Allow",
                "Action": ["ec2:CreateTags", "ec2:DeleteTags", "ec2:DeleteSecurityGroup"],
                "Resource": "arn:aws:ec2:*:*:security-group/*",
                "Condition": owned,
            },
            {
                "Effect": "Allow",
                "Action": ["elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:CreateTargetGroup"],
                "Resource": "*",
                "Condition": tagging_new,
            },
            {
                "Effect": "Allow",
                "Action": ["elasticloadbalancing:AddTags"],
                "Resource": balancers,
                "Condition": {
                    "StringEquals": {"elasticloadbalancing:CreateAction": ["CreateTargetGroup", "CreateLoadBalancer"]},
                    **tagging_new,
                },
            },
            {
                "Effect": "Allow",
                "Action": [
                    "elasticloadbalancing:AddTags",
                    "elasticloadbalancing:RemoveTags",
                    "elasticloadbalancing:ModifyLoadBalancerAttributes",
                    "elasticloadbalancing:SetIpAddressType",
                    "elasticloadbalancing:SetSecurityGroups",
                    "elasticloadbalancing:SetSubnets",
                    "elasticloadbalancing:DeleteLoadBalancer",
                    "elasticloadbalancing:ModifyTargetGroup",
                    "elasticloadbalancing:ModifyTargetGroupAttributes",
                    "elasticloadbalancing:DeleteTargetGroup",
                    "elasticloadbalancing:ModifyListenerAttributes",
                    "elasticloadbalancing:ModifyCapacityReservation",
                    "elasticloadbalancing:ModifyIpPools",
                ],
                "Resource": balancers,
                "Condition": owned,
            },
            {
                "Effect": "Allow",
                "Action": ["elasticloadbalancing:AddTags", "elasticloadbalancing:RemoveTags"],
                "Resource": [
                    f"{elb}listener/net/*/*/*",
                    f"{elb}listener/app/*/*/*",
                    f"{elb}listener-rule/net/*/*/*",
                    f"{elb}listener-rule/app/*/*/*",
                ],
            },
            {
                "Effect": "Allow",
                "Action": ["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"],
                "Resource": f"{elb}targetgroup/*/*",
            },
            {
                "Effect": "Allow",
                "Action": [
                    "elasticloadbalancing:CreateListener",
                    "elasticloadbalancing:DeleteListener",
                    "elasticloadbalancing:CreateRule",
                    "elasticloadbalancing:DeleteRule",
                    "elasticloadbalancing:ModifyListener",
                    "elasticloadbalancing:ModifyRule",
                    "elasticloadbalancing:SetRulePriorities",
                    "elasticloadbalancing:SetWebAcl",
                    "elasticloadbalancing:AddListenerCertificates",
                    "elasticloadbalancing:RemoveListenerCertificates",
                ],
                "Resource": "*",
            },
        ],
    }


def external_dns_policy(hosted_zone_id: str) -> dict[str, Any]:
    """external-dns may change records in the dashboard's hosted zone only."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "route53:ChangeResourceRecordSets",
                "Resource": f"arn:aws:route53:::hostedzone/{hosted_zone_id}",
            },
            {
                "Effect": "Allow",
                "Action": [
                    "route53:ListHostedZones",
                    "route53:ListResourceRecordSets",
                    "route53:ListTagsForResources",
                    "route53:ListTagsForResource",
                ],
                "Resource": "*",
            },
        ],
    }


@dataclass(frozen=True)
class AddonsArgs:
    """Chart versions and what the add-ons need to know about the cluster."""

    cluster_name: str
    region: str
    vpc_id: pulumi.Input[str]
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]
    provider: k8s.Provider
    cpu_nodes: Sequence[pulumi.Resource]
    """The CPU node group and the add-ons that make it usable (CoreDNS): all the releases wait on.
    Never the GPU pool: a GPU shortage must not hold up the platform."""
    kuberay_version: str
    nvidia_device_plugin_version: str
    aws_load_balancer_controller_version: str
    install_device_plugin: bool
    dashboard_host: str = ""
    dashboard_hosted_zone_id: str = ""
    external_dns_version: str = ""


class Addons(pulumi.ComponentResource):
    """The Helm releases the tickcast chart relies on.

    The AWS load balancer controller installs first and is awaited (Helm waits for its pods):
    its webhook rejects Services and Ingresses until they are ready, so every later release
    (KubeRay, NVIDIA, external-dns, the app) depends on it.
    """

    releases: list[k8s.helm.v3.Release]
    load_balancer_controller: k8s.helm.v3.Release

    def __init__(self, name: str, args: AddonsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickcast:infra:Addons", name, None, opts)
        on_cpu_nodes = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.cpu_nodes))
        cpu_only = {"nodeSelector": {NODE_POOL_LABEL: "cpu"}}

        lb_role = IrsaRole(
            "aws-load-balancer-controller",
            IrsaRoleArgs(
                cluster_name=args.cluster_name,
                oidc_provider_arn=args.oidc_provider_arn,
                oidc_issuer=args.oidc_issuer,
                namespace="kube-system",
                service_account=LB_CONTROLLER_SERVICE_ACCOUNT,
                policy=json.dumps(load_balancer_controller_policy()),
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.load_balancer_controller = k8s.helm.v3.Release(
            "aws-load-balancer-controller",
            name="aws-load-balancer-controller",
            chart="aws-load-balancer-controller",
            version=args.aws_load_balancer_controller_version,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=EKS_CHARTS_REPO),
            namespace="kube-system",
            values={
                "clusterName": args.cluster_name,
                "region": args.region,
                "vpcId": args.vpc_id,
                "serviceAccount": {
                    "create": True,
                    "name": LB_CONTROLLER_SERVICE_ACCOUNT,
                    "annotations": {"eks.amazonaws.com/role-arn": lb_role.arn},
                },
                **cpu_only,
            },
            # Awaited (no skip_await): ready pods mean a serving webhook.
            opts=on_cpu_nodes,
        )
        after_lb = pulumi.ResourceOptions(
            parent=self, provider=args.provider, depends_on=[*args.cpu_nodes, self.load_balancer_controller]
        )
        self.releases = [
            self.load_balancer_controller,
            k8s.helm.v3.Release(
                "kuberay-operator",
                name="kuberay-operator",
                chart="kuberay-operator",
                version=args.kuberay_version,
                repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=KUBERAY_REPO),
                namespace=KUBERAY_NAMESPACE,
                create_namespace=True,
                values=cpu_only,
                opts=after_lb,
            ),
        ]
        if args.install_device_plugin:
            # A DaemonSet on GPU nodes: ready with zero GPU nodes, so it never waits for one.
            self.releases.append(
                k8s.helm.v3.Release(
                    "nvidia-device-plugin",
                    name="nvidia-device-plugin",
                    chart="nvidia-device-plugin",
                    version=args.nvidia_device_plugin_version,
                    repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=NVIDIA_REPO),
                    namespace="kube-system",
                    values={
                        "nodeSelector": {NODE_POOL_LABEL: GPU_LABELS[NODE_POOL_LABEL]},
                        "tolerations": [GPU_TOLERATION],
                    },
                    opts=after_lb,
                )
            )
        if args.dashboard_host and args.dashboard_hosted_zone_id:
            dns_role = IrsaRole(
                "external-dns",
                IrsaRoleArgs(
                    cluster_name=args.cluster_name,
                    oidc_provider_arn=args.oidc_provider_arn,
                    oidc_issuer=args.oidc_issuer,
                    namespace="kube-system",
                    service_account=EXTERNAL_DNS_SERVICE_ACCOUNT,
                    policy=json.dumps(external_dns_policy(args.dashboard_hosted_zone_id)),
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
            # Watches the dashboard Ingress and points dashboardHost at its load balancer once the
            # controller has made it: no record to create by hand, nothing racing the ALB.
            self.releases.append(
                k8s.helm.v3.Release(
                    "external-dns",
                    name="external-dns",
                    chart="external-dns",
                    version=args.external_dns_version,
                    repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=EXTERNAL_DNS_REPO),
                    namespace="kube-system",
                    values={
                        "provider": {"name": "aws"},
                        "sources": ["ingress"],
                        "domainFilters": [args.dashboard_host],
                        "zoneIdFilters": [args.dashboard_hosted_zone_id],
                        "policy": "upsert-only",
                        "txtOwnerId": args.cluster_name,
                        "env": [{"name": "AWS_DEFAULT_REGION", "value": args.region}],
                        "serviceAccount": {
                            "create": True,
                            "name": EXTERNAL_DNS_SERVICE_ACCOUNT,
                            "annotations": {"eks.amazonaws.com/role-arn": dns_role.arn},
                        },
                        **cpu_only,
                    },
                    opts=after_lb,
                )
            )
        self.register_outputs({})
