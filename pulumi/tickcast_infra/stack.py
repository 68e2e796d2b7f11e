"""The whole stack: builds every component from the config and returns the stack outputs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pulumi
import pulumi_aws as aws

from tickcast_infra.addons import Addons, AddonsArgs
from tickcast_infra.app import AppArgs, ChartInputs, DashboardIngress, DashboardOidc, TickcastApp
from tickcast_infra.autoscaling import NodeAutoscaling, NodeAutoscalingArgs
from tickcast_infra.cluster import Cluster, ClusterArgs, NodeGroupSpec
from tickcast_infra.config import StackConfig
from tickcast_infra.eks_facts import chart_resources
from tickcast_infra.iam import KAFKA_ADMIN, KAFKA_ADMIN_ACCESS, WorkloadRoles, WorkloadRolesArgs
from tickcast_infra.images import Images, ImagesArgs
from tickcast_infra.kafka import Kafka, KafkaArgs
from tickcast_infra.lake import Lake, LakeArgs
from tickcast_infra.network import Network, NetworkArgs, choose_zone_ids
from tickcast_infra.registry import Registry, RegistryArgs

BOTTLEROCKET_NVIDIA = "BOTTLEROCKET_x86_64_NVIDIA"


@dataclass
class Stack:
    """The built components, for the program's exports and for tests."""

    config: StackConfig
    network: Network
    cluster: Cluster
    lake: Lake
    kafka: Kafka
    registry: Registry
    images: Images
    roles: WorkloadRoles
    autoscaling: NodeAutoscaling
    addons: Addons
    app: TickcastApp | None
    outputs: dict[str, Any] = field(default_factory=dict)


def zone_ids(config: StackConfig) -> list[str]:
    """Zone IDs for the subnets: EKS-supported zones offering a CPU and a GPU instance type.

    By ID, not name: ``us-east-1a`` is a different physical zone in each account, and the
    exclusions and instance offerings are per physical zone.
    """
    available = aws.get_availability_zones(
        state="available", filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}]
    ).zone_ids
    offering = [
        aws.ec2.get_instance_type_offerings(
            location_type="availability-zone-id", filters=[{"name": "instance-type", "values": list(types)}]
        ).locations
        for types in (config.cpu_instance_types, config.gpu_instance_types)
    ]
    return choose_zone_ids(available, offering, config.az_count)


def _dashboard_oidc(config: StackConfig) -> DashboardOidc | None:
    """The dashboard's OIDC provider when the stack exposes it (config.py made sure it is complete)."""
    if config.dashboard_scheme == "none":
        return None
    o = config.dashboard_oidc
    return DashboardOidc(
        issuer=o["Issuer"],
        authorization_endpoint=o["AuthorizationEndpoint"],
        token_endpoint=o["TokenEndpoint"],
        user_info_endpoint=o["UserInfoEndpoint"],
        client_id=o["ClientId"],
    )


def build(config: StackConfig) -> Stack:
    """Create every resource of the stack."""
    name = config.name
    network = Network(
        "network",
        NetworkArgs(
            cluster_name=name,
            region=config.region,
            vpc_cidr=config.vpc_cidr,
            zone_ids=zone_ids(config),
            nat_gateways=config.nat_gateways,
        ),
    )
    cluster = Cluster(
        "cluster",
        ClusterArgs(
            cluster_name=name,
            kubernetes_version=config.kubernetes_version,
            log_retention_days=config.control_plane_log_retention_days,
            vpc_id=network.vpc_id,
            private_subnet_ids=network.private_subnet_ids,
            public_subnet_ids=network.public_subnet_ids,
            endpoint_public_access_cidrs=config.endpoint_public_access_cidrs if config.endpoint_public_access else (),
            admin_role_arns=config.admin_role_arns,
            cpu=NodeGroupSpec(
                instance_types=config.cpu_instance_types, size=config.cpu_size, ami_type="AL2023_x86_64_STANDARD"
            ),
        ),
    )
    # Everything on the cluster waits for usable CPU nodes, and nothing waits for a GPU node.
    cpu_nodes: list[pulumi.Resource] = [cluster.cpu_node_group, *cluster.addons]
    lake = Lake(
        "lake",
        LakeArgs(
            cluster_name=name,
            prefix=config.lake_prefix,
            noncurrent_version_days=config.lake_noncurrent_version_days,
            intelligent_tiering_days=config.lake_intelligent_tiering_days,
            force_destroy=config.force_destroy,
        ),
    )
    kafka = Kafka(
        "kafka",
        KafkaArgs(
            cluster_name=name,
            mode=config.kafka_mode,
            vpc_id=network.vpc_id,
            subnet_ids=network.private_subnet_ids,
            client_security_group_ids=[cluster.node_security_group_id],
            kafka_version=config.kafka_version,
            broker_instance_type=config.kafka_broker_instance_type,
            broker_count=config.kafka_broker_count,
            volume_size_gb=config.kafka_volume_size_gb,
            partitions=config.kafka_partitions,
            replication_factor=config.kafka_replication_factor,
            retention_hours=config.kafka_retention_hours,
        ),
    )
    registry = Registry(
        "images",
        RegistryArgs(cluster_name=name, force_destroy=config.force_destroy, immutable_tags=not config.build_images),
    )
    images = Images(
        "images",
        ImagesArgs(
            tag=config.image_tag,
            build=config.build_images,
            repository_urls=registry.repository_urls,
            repository_names=registry.repository_names,
            registry_ids=registry.registry_ids,
        ),
    )
    workloads = WorkloadRolesArgs(
        cluster_name=name,
        oidc_provider_arn=cluster.oidc_provider_arn,
        oidc_issuer=cluster.oidc_issuer,
        namespace=config.namespace,
        bucket_arn=lake.bucket_arn,
        lake_prefix=config.lake_prefix,
        lake_kms_key_arn=lake.kms_key_arn,
        kafka_cluster_arn=kafka.cluster_arn,
    )
    if not kafka.topics_managed:
        workloads = replace(workloads, workloads={**workloads.workloads, KAFKA_ADMIN: KAFKA_ADMIN_ACCESS})
    roles = WorkloadRoles("workloads", workloads)
    autoscaling = NodeAutoscaling(
        "karpenter",
        NodeAutoscalingArgs(
            cluster_name=name,
            region=config.region,
            oidc_provider_arn=cluster.oidc_provider_arn,
            oidc_issuer=cluster.oidc_issuer,
            provider=cluster.provider,
            subnet_ids=network.private_subnet_ids,
            security_group_id=cluster.node_security_group_id,
            cpu_instance_types=config.cpu_instance_types,
            cpu_max_nodes=config.cpu_size.max_size,
            gpu_instance_types=config.gpu_instance_types,
            gpu_max_workers=config.gpu_size.max_size,
            gpu_capacity_type=config.gpu_capacity_type,
            gpu_ami_alias="bottlerocket@latest" if config.gpu_ami_type == BOTTLEROCKET_NVIDIA else "al2023@latest",
            gpu_disk_size_gb=config.gpu_disk_size_gb,
            version=config.karpenter_version,
            depends_on=cpu_nodes,
        ),
    )
    addons = Addons(
        "addons",
        AddonsArgs(
            cluster_name=name,
            region=config.region,
            vpc_id=network.vpc_id,
            oidc_provider_arn=cluster.oidc_provider_arn,
            oidc_issuer=cluster.oidc_issuer,
            provider=cluster.provider,
            cpu_nodes=cpu_nodes,
            kuberay_version=config.kuberay_version,
            nvidia_device_plugin_version=config.nvidia_device_plugin_version,
            aws_load_balancer_controller_version=config.aws_load_balancer_controller_version,
            install_device_plugin=config.gpu_ami_type != BOTTLEROCKET_NVIDIA,
            dashboard_host=config.dashboard_host,
            dashboard_hosted_zone_id=config.dashboard_hosted_zone_id,
            external_dns_version=config.external_dns_version,
        ),
    )

    app: TickcastApp | None = None
    if config.deploy_app:
        app = TickcastApp(
            "tickcast",
            AppArgs(
                namespace=config.namespace,
                chart_path=config.chart_path,
                chart=ChartInputs(
                    image_tag=config.image_tag,
                    repository_urls=registry.repository_urls,
                    role_arns=roles.arns,
                    bootstrap_servers=kafka.bootstrap_servers,
                    lake_url=lake.url,
                    region=config.region,
                    kafka_partitions=config.kafka_partitions,
                    kafka_replication_factor=config.kafka_replication_factor,
                    kafka_retention_hours=config.kafka_retention_hours,
                    gpu_min_replicas=config.gpu_size.min_size,
                    gpu_replicas=config.gpu_size.desired_size,
                    gpu_max_replicas=config.gpu_size.max_size,
                    dashboard=DashboardIngress(
                        scheme=config.dashboard_scheme,
                        allowed_cidrs=config.dashboard_allowed_cidrs,
                        host=config.dashboard_host,
                        certificate_arn=config.dashboard_certificate_arn,
                        oidc=_dashboard_oidc(config),
                    ),
                    image_digests=images.digests,
                    pod_resources=chart_resources(config.cpu_instance_types, config.gpu_instance_types),
                ),
                polygon_api_key=config.polygon_api_key,
                dashboard_oidc_client_secret=config.dashboard_oidc_client_secret,
                kubernetes_version=config.kubernetes_version,
                provider=cluster.provider,
                # The images, the add-ons (after the load balancer controller) and Karpenter's
                # pools; not a GPU node: without one, Serve's workers wait Pending, alone.
                depends_on=[*addons.releases, *autoscaling.node_pools, *kafka.topics],
                await_health=config.await_app,
                topics_job_role_arn=None if kafka.topics_managed else roles.arns[KAFKA_ADMIN],
            ),
        )

    not_deployed = "(tickcast:deployApp is false)"
    outputs: dict[str, Any] = {
        "kubeconfig": cluster.kubeconfig,
        "clusterName": name,
        "region": config.region,
        "bucketName": lake.bucket_name,
        "lakeUrl": lake.url,
        "bootstrapServers": kafka.bootstrap_servers,
        "kafkaClusterArn": kafka.cluster_arn,
        "ecrRepositories": registry.repository_urls,
        "imageDigests": images.digests,
        "kubernetesVersion": config.kubernetes_version,
        "workloadRoleArns": roles.arns,
        "dashboardUrl": app.dashboard_url if app else not_deployed,
        "serveEndpoint": app.serve_endpoint if app else not_deployed,
    }
    return Stack(config, network, cluster, lake, kafka, registry, images, roles, autoscaling, addons, app, outputs)


def export(stack: Stack) -> None:
    """Export the stack outputs (``pulumi stack output``)."""
    for key, value in stack.outputs.items():
        pulumi.export(key, value)
