"""Stack configuration: every key the program reads, declared once.

:data:`KEYS` is the single source of truth. :func:`load` reads the stack's config through it
(nothing else in the program calls ``pulumi.Config``), and the README's configuration
reference is :func:`reference_markdown`'s output; a test keeps the two equal. Regenerate the
table with ``.venv/bin/python -m tickcast_infra.config``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal

import pulumi

PROJECT = "tickcast"
"""The project's config namespace (``tickcast:KEY``), the ``name`` in Pulumi.yaml."""

Kind = Literal["string", "integer", "boolean", "list", "secret"]


@dataclass(frozen=True)
class Key:
    """One config key: its namespaced name, type, default (None: required) and meaning."""

    name: str
    kind: Kind
    default: Any
    description: str
    choices: tuple[str, ...] = ()

    @property
    def namespace(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def short(self) -> str:
        return self.name.split(":", 1)[1]


KEYS: tuple[Key, ...] = (
    Key("aws:region", "string", None, "AWS region of every resource (the AWS provider's own key)."),
    # network
    Key("tickcast:vpcCidr", "string", "10.0.0.0/16", "CIDR of the VPC, /16 to /20."),
    Key("tickcast:azCount", "integer", 2, "Availability zones to spread subnets, nodes and brokers over (2 or more)."),
    Key(
        "tickcast:natGateways",
        "string",
        "single",
        "NAT gateways: `single` (one, cheaper) or `perAz` (one per zone, survives a zone outage).",
        ("single", "perAz"),
    ),
    # cluster
    Key("tickcast:kubernetesVersion", "string", "1.33", "EKS Kubernetes version."),
    Key(
        "tickcast:endpointPublicAccessCidrs",
        "list",
        ["0.0.0.0/0"],
        "CIDRs allowed to reach the public Kubernetes API endpoint (the private endpoint is always on).",
    ),
    Key(
        "tickcast:adminRoleArns",
        "list",
        [],
        "IAM principals given cluster-admin access entries, besides whoever runs `pulumi up`.",
    ),
    Key("tickcast:cpuInstanceTypes", "list", ["m6i.xlarge"], "Instance types of the CPU node group."),
    Key("tickcast:cpuMinSize", "integer", 2, "Lower bound of the CPU node group."),
    Key("tickcast:cpuDesiredSize", "integer", 2, "Desired size of the CPU node group."),
    Key("tickcast:cpuMaxSize", "integer", 4, "Upper bound of the CPU node group."),
    Key("tickcast:gpuInstanceTypes", "list", ["g5.xlarge"], "Instance types of the GPU node group (NVIDIA)."),
    Key(
        "tickcast:gpuAmiType",
        "string",
        "AL2023_x86_64_NVIDIA",
        "AMI of the GPU nodes; Bottlerocket ships its own device plugin, so the NVIDIA chart is skipped for it.",
        ("AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA"),
    ),
    Key("tickcast:gpuMinSize", "integer", 0, "Lower bound of the GPU node group."),
    Key("tickcast:gpuDesiredSize", "integer", 1, "Desired size of the GPU node group."),
    Key("tickcast:gpuMaxSize", "integer", 2, "Upper bound of the GPU node group, and of Ray's GPU workers."),
    Key(
        "tickcast:gpuCapacityType",
        "string",
        "ON_DEMAND",
        "Capacity type of the GPU nodes.",
        ("ON_DEMAND", "SPOT"),
    ),
    Key("tickcast:gpuDiskSizeGb", "integer", 100, "Root volume of a GPU node, in GiB (images with CUDA are large)."),
    # lake
    Key(
        "tickcast:lakePrefix",
        "string",
        "tickcast",
        "Key prefix of the lake inside the bucket: the lake URL is s3://BUCKET/PREFIX.",
    ),
    Key(
        "tickcast:lakeNoncurrentVersionDays",
        "integer",
        30,
        "Days an overwritten or deleted lake object's old version is kept.",
    ),
    Key(
        "tickcast:lakeIntelligentTieringDays",
        "integer",
        30,
        "Days after which lake objects move to S3 Intelligent-Tiering (0 disables).",
    ),
    Key(
        "tickcast:forceDestroy",
        "boolean",
        False,
        "Let `pulumi destroy` delete a non-empty bucket and ECR repositories and the secret without recovery window.",
    ),
    # kafka
    Key(
        "tickcast:kafkaMode",
        "string",
        "provisioned",
        "Amazon MSK flavour: `provisioned` (brokers you size) or `serverless` (pay per partition-hour).",
        ("provisioned", "serverless"),
    ),
    Key(
        "tickcast:kafkaVersion",
        "string",
        "3.8.x",
        "Kafka version of a provisioned cluster (3.6 or later: topics use the MSK topic API).",
    ),
    Key("tickcast:kafkaBrokerInstanceType", "string", "kafka.t3.small", "Broker instance type (provisioned)."),
    Key("tickcast:kafkaBrokersPerAz", "integer", 1, "Brokers per availability zone (provisioned)."),
    Key("tickcast:kafkaVolumeSizeGb", "integer", 100, "EBS volume per broker, in GiB (provisioned)."),
    Key("tickcast:kafkaPartitions", "integer", 6, "Partitions of each tickcast topic."),
    Key(
        "tickcast:kafkaReplicationFactor",
        "integer",
        2,
        "Replication factor of each topic (provisioned; serverless always uses 3). At most the broker count.",
    ),
    Key("tickcast:kafkaRetentionHours", "integer", 168, "Retention of each topic, in hours."),
    # images and app
    Key("tickcast:imageTag", "string", "0.1.0", "Image tag deployed from the ECR repositories (tags are immutable)."),
    Key(
        "tickcast:deployApp",
        "boolean",
        True,
        "Install the tickcast chart; set false for the first `pulumi up`, before the images are pushed.",
    ),
    Key("tickcast:namespace", "string", "tickcast", "Kubernetes namespace of the tickcast release."),
    Key("tickcast:chartPath", "string", "../helm/tickcast", "Path of the tickcast Helm chart, relative to pulumi/."),
    Key(
        "tickcast:dashboardScheme",
        "string",
        "internal",
        "Load balancer of the dashboard: `internal` (VPC only) or `internet-facing`.",
        ("internal", "internet-facing"),
    ),
    Key(
        "tickcast:dashboardAllowedCidrs",
        "list",
        ["0.0.0.0/0"],
        "CIDRs allowed to reach an internet-facing dashboard.",
    ),
    Key("tickcast:dashboardHost", "string", "", "DNS name of the dashboard (empty: the load balancer's own name)."),
    Key(
        "tickcast:dashboardCertificateArn",
        "string",
        "",
        "ACM certificate for the dashboard's HTTPS listener (empty: HTTP only).",
    ),
    Key("tickcast:kuberayVersion", "string", "1.7.0", "Version of the kuberay-operator chart."),
    Key("tickcast:nvidiaDevicePluginVersion", "string", "0.17.1", "Version of the nvidia-device-plugin chart."),
    Key(
        "tickcast:awsLoadBalancerControllerVersion",
        "string",
        "1.13.0",
        "Version of the aws-load-balancer-controller chart (serves the dashboard Ingress).",
    ),
    Key(
        "tickcast:polygonApiKey",
        "secret",
        None,
        "Polygon/Massive API key, set with `pulumi config set --secret`; stored in Secrets Manager.",
    ),
)

KEYS_BY_NAME = {key.name: key for key in KEYS}

NatGateways = Literal["single", "perAz"]
KafkaMode = Literal["provisioned", "serverless"]


@dataclass(frozen=True)
class NodeGroupSize:
    """Scaling bounds of a managed node group."""

    min_size: int
    desired_size: int
    max_size: int


@dataclass(frozen=True)
class StackConfig:
    """The stack's configuration, typed and checked. Build it with :func:`load`."""

    stack: str
    region: str
    vpc_cidr: str
    az_count: int
    nat_gateways: NatGateways
    kubernetes_version: str
    endpoint_public_access_cidrs: tuple[str, ...]
    admin_role_arns: tuple[str, ...]
    cpu_instance_types: tuple[str, ...]
    cpu_size: NodeGroupSize
    gpu_instance_types: tuple[str, ...]
    gpu_ami_type: str
    gpu_size: NodeGroupSize
    gpu_capacity_type: str
    gpu_disk_size_gb: int
    lake_prefix: str
    lake_noncurrent_version_days: int
    lake_intelligent_tiering_days: int
    force_destroy: bool
    kafka_mode: KafkaMode
    kafka_version: str
    kafka_broker_instance_type: str
    kafka_brokers_per_az: int
    kafka_volume_size_gb: int
    kafka_partitions: int
    kafka_replication_factor: int
    kafka_retention_hours: int
    image_tag: str
    deploy_app: bool
    namespace: str
    chart_path: str
    dashboard_scheme: str
    dashboard_allowed_cidrs: tuple[str, ...]
    dashboard_host: str
    dashboard_certificate_arn: str
    kuberay_version: str
    nvidia_device_plugin_version: str
    aws_load_balancer_controller_version: str
    polygon_api_key: pulumi.Output[str]

    @property
    def name(self) -> str:
        """Base of physical names: ``tickcast-<stack>``."""
        return f"{PROJECT}-{self.stack}"

    @property
    def kafka_broker_count(self) -> int:
        return self.az_count * self.kafka_brokers_per_az


class ConfigError(ValueError):
    """A stack config value is missing or out of range; the message names the key and the fix."""


def _read(key: Key) -> Any:
    config = pulumi.Config(key.namespace)
    if key.kind == "secret":
        return config.require_secret(key.short)
    getter = {
        "string": config.get,
        "integer": config.get_int,
        "boolean": config.get_bool,
        "list": config.get_object,
    }[key.kind]
    try:
        value = getter(key.short)
    except (ValueError, pulumi.ConfigTypeError) as exc:
        raise ConfigError(f"{key.name} must be a {key.kind}: {exc}") from None
    if value is None:
        if key.default is None:
            raise ConfigError(f"{key.name} is required: `pulumi config set {key.name} VALUE` ({key.description})")
        return key.default
    if key.choices and value not in key.choices:
        raise ConfigError(f"{key.name} is {value!r}; use one of {', '.join(key.choices)}")
    if key.kind == "list" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ConfigError(
            f"{key.name} must be a list of strings, e.g. `pulumi config set --path '{key.name}[0]' VALUE`"
        )
    return value


def _size(values: dict[str, Any], prefix: str) -> NodeGroupSize:
    size = NodeGroupSize(values[f"{prefix}MinSize"], values[f"{prefix}DesiredSize"], values[f"{prefix}MaxSize"])
    if not 0 <= size.min_size <= size.desired_size <= size.max_size or size.max_size < 1:
        raise ConfigError(
            f"tickcast:{prefix}MinSize <= {prefix}DesiredSize <= {prefix}MaxSize must hold with MaxSize >= 1; "
            f"got {size.min_size}, {size.desired_size}, {size.max_size}"
        )
    return size


def load() -> StackConfig:
    """Read and check the stack's config.

    Raises:
        ConfigError: naming the first bad key and how to fix it.
    """
    v = {key.short: _read(key) for key in KEYS}
    network = ipaddress.ip_network(v["vpcCidr"])
    if not 16 <= network.prefixlen <= 20:
        raise ConfigError(f"tickcast:vpcCidr {v['vpcCidr']} must be a /16 to /20")
    if v["azCount"] < 2:
        raise ConfigError("tickcast:azCount must be at least 2 (EKS and MSK need two zones)")
    for name in ("kafkaBrokersPerAz", "kafkaPartitions", "kafkaReplicationFactor", "kafkaRetentionHours"):
        if v[name] < 1:
            raise ConfigError(f"tickcast:{name} must be at least 1")
    if v["kafkaMode"] == "provisioned" and v["kafkaReplicationFactor"] > v["azCount"] * v["kafkaBrokersPerAz"]:
        raise ConfigError(
            "tickcast:kafkaReplicationFactor exceeds the broker count (azCount x kafkaBrokersPerAz); "
            "lower it or add brokers"
        )
    if not v["cpuInstanceTypes"] or not v["gpuInstanceTypes"]:
        raise ConfigError("tickcast:cpuInstanceTypes and tickcast:gpuInstanceTypes need at least one type")
    return StackConfig(
        stack=pulumi.get_stack(),
        region=v["region"],
        vpc_cidr=v["vpcCidr"],
        az_count=v["azCount"],
        nat_gateways=v["natGateways"],
        kubernetes_version=v["kubernetesVersion"],
        endpoint_public_access_cidrs=tuple(v["endpointPublicAccessCidrs"]),
        admin_role_arns=tuple(v["adminRoleArns"]),
        cpu_instance_types=tuple(v["cpuInstanceTypes"]),
        cpu_size=_size(v, "cpu"),
        gpu_instance_types=tuple(v["gpuInstanceTypes"]),
        gpu_ami_type=v["gpuAmiType"],
        gpu_size=_size(v, "gpu"),
        gpu_capacity_type=v["gpuCapacityType"],
        gpu_disk_size_gb=v["gpuDiskSizeGb"],
        lake_prefix=v["lakePrefix"].strip("/"),
        lake_noncurrent_version_days=v["lakeNoncurrentVersionDays"],
        lake_intelligent_tiering_days=v["lakeIntelligentTieringDays"],
        force_destroy=v["forceDestroy"],
        kafka_mode=v["kafkaMode"],
        kafka_version=v["kafkaVersion"],
        kafka_broker_instance_type=v["kafkaBrokerInstanceType"],
        kafka_brokers_per_az=v["kafkaBrokersPerAz"],
        kafka_volume_size_gb=v["kafkaVolumeSizeGb"],
        kafka_partitions=v["kafkaPartitions"],
        kafka_replication_factor=3 if v["kafkaMode"] == "serverless" else v["kafkaReplicationFactor"],
        kafka_retention_hours=v["kafkaRetentionHours"],
        image_tag=v["imageTag"],
        deploy_app=v["deployApp"],
        namespace=v["namespace"],
        chart_path=v["chartPath"],
        dashboard_scheme=v["dashboardScheme"],
        dashboard_allowed_cidrs=tuple(v["dashboardAllowedCidrs"]),
        dashboard_host=v["dashboardHost"],
        dashboard_certificate_arn=v["dashboardCertificateArn"],
        kuberay_version=v["kuberayVersion"],
        nvidia_device_plugin_version=v["nvidiaDevicePluginVersion"],
        aws_load_balancer_controller_version=v["awsLoadBalancerControllerVersion"],
        polygon_api_key=v["polygonApiKey"],
    )


def _default_text(key: Key) -> str:
    if key.kind == "secret":
        return "(required, secret)"
    if key.default is None:
        return "(required)"
    if isinstance(key.default, bool):
        return f"`{str(key.default).lower()}`"
    if isinstance(key.default, list):
        return "`[" + ", ".join(key.default) + "]`"
    if key.default == "":
        return "(empty)"
    return f"`{key.default}`"


def reference_markdown() -> str:
    """The configuration reference as a Markdown table, one row a key."""
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for key in KEYS:
        rows.append(f"| `{key.name}` | {key.kind} | {_default_text(key)} | {key.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(reference_markdown())
