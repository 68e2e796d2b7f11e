"""Stack configuration: every key the program reads, declared once.

:data:`KEYS` is the single source of truth. :func:`load` reads the stack's config through it
(nothing else in the program calls ``pulumi.Config``), and the README's configuration
reference is :func:`reference_markdown`'s output; a test keeps the two equal. Regenerate the
table with ``.venv/bin/python -m tickcast_infra.config``.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Literal

import pulumi

from tickcast_infra.eks_facts import INSTANCE_TYPES, KUBERNETES_VERSION

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
    Key(
        "tickcast:kubernetesVersion",
        "string",
        KUBERNETES_VERSION,
        "EKS Kubernetes version (default: the one in standard support, `eks_facts.KUBERNETES_VERSION`).",
    ),
    Key(
        "tickcast:controlPlaneLogRetentionDays",
        "integer",
        30,
        "Days the control-plane logs (`/aws/eks/CLUSTER/cluster`) are kept.",
    ),
    Key(
        "tickcast:endpointPublicAccess",
        "boolean",
        True,
        "Serve the Kubernetes API on a public endpoint too (the private one is always on); false: `pulumi up` "
        "and `kubectl` must run inside the VPC.",
    ),
    Key(
        "tickcast:endpointPublicAccessCidrs",
        "list",
        [],
        "CIDRs allowed to reach the public Kubernetes API endpoint: required while endpointPublicAccess is "
        "true (no 0.0.0.0/0 default), e.g. your egress address as a /32.",
    ),
    Key(
        "tickcast:adminRoleArns",
        "list",
        [],
        "IAM principals given cluster-admin access entries, besides whoever runs `pulumi up`.",
    ),
    Key(
        "tickcast:cpuInstanceTypes",
        "list",
        ["m6i.xlarge"],
        "Instance types of the CPU nodes (the system node group and the Karpenter `cpu` NodePool).",
    ),
    Key("tickcast:cpuMinSize", "integer", 2, "Lower bound of the CPU (system) node group."),
    Key(
        "tickcast:cpuDesiredSize",
        "integer",
        2,
        "Initial size of the CPU node group (later left to EKS: Pulumi ignores drift).",
    ),
    Key(
        "tickcast:cpuMaxSize",
        "integer",
        4,
        "Upper bound of the CPU node group; also caps the Karpenter `cpu` NodePool at this many nodes.",
    ),
    Key(
        "tickcast:gpuInstanceTypes",
        "list",
        ["g5.xlarge", "g6.xlarge", "g6e.xlarge", "g4dn.xlarge"],
        "Instance types Karpenter may launch for GPU pods (NVIDIA, one GPU each); alternatives ride out a shortage.",
    ),
    Key(
        "tickcast:gpuAmiType",
        "string",
        "AL2023_x86_64_NVIDIA",
        "AMI of the GPU nodes; Bottlerocket ships its own device plugin, so the NVIDIA chart is skipped for it.",
        ("AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA"),
    ),
    Key(
        "tickcast:gpuMinSize",
        "integer",
        0,
        "Fewest Ray GPU workers (and Serve replicas); 0 lets the GPU nodes go away when idle.",
    ),
    Key("tickcast:gpuDesiredSize", "integer", 1, "Ray GPU workers at install."),
    Key(
        "tickcast:gpuMaxSize",
        "integer",
        2,
        "Most Ray GPU workers and Serve replicas; the GPU NodePool allows twice this for a RayService upgrade.",
    ),
    Key(
        "tickcast:gpuCapacityType",
        "string",
        "ON_DEMAND",
        "Capacity type of the GPU nodes (SPOT falls back to on-demand when spot is short).",
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
    Key(
        "tickcast:imageTag",
        "string",
        "0.1.0",
        "Image tag pushed and deployed (the chart pins each image by digest; tags are immutable when CI pushes them).",
    ),
    Key(
        "tickcast:deployApp",
        "boolean",
        True,
        "Install the tickcast chart (after its images exist); false builds the platform only.",
    ),
    Key(
        "tickcast:buildImages",
        "boolean",
        True,
        "Build the five images (linux/amd64) and push them to ECR in `pulumi up`; false: CI pushed them (imageTag).",
    ),
    Key(
        "tickcast:awaitApp",
        "boolean",
        False,
        "Wait for ready tickcast pods before `pulumi up` succeeds; false: done once Kubernetes accepts the objects.",
    ),
    Key("tickcast:namespace", "string", "tickcast", "Kubernetes namespace of the tickcast release."),
    Key("tickcast:chartPath", "string", "../helm/tickcast", "Path of the tickcast Helm chart, relative to pulumi/."),
    Key(
        "tickcast:dashboardScheme",
        "string",
        "none",
        "How the dashboard is exposed: `none` (cluster-internal, `kubectl port-forward`), or an ALB, "
        "`internal` (VPC only) or `internet-facing`; an ALB needs dashboardHost, dashboardCertificateArn "
        "(HTTPS only) and the dashboardOidc* keys (sign-in).",
        ("none", "internal", "internet-facing"),
    ),
    Key(
        "tickcast:dashboardAllowedCidrs",
        "list",
        [],
        "CIDRs allowed to reach an internet-facing dashboard: required with `internet-facing` (no 0.0.0.0/0 default).",
    ),
    Key("tickcast:dashboardHost", "string", "", "DNS name of the dashboard (empty: the load balancer's own name)."),
    Key(
        "tickcast:dashboardHostedZoneId",
        "string",
        "",
        "Route 53 hosted zone of dashboardHost: external-dns then creates its record (empty: you create it).",
    ),
    Key(
        "tickcast:dashboardCertificateArn",
        "string",
        "",
        "ACM certificate for the dashboard's HTTPS listener: required when the dashboard is exposed.",
    ),
    Key(
        "tickcast:dashboardOidcIssuer",
        "string",
        "",
        "OIDC issuer URL (https://) the dashboard's ALB signs users in with.",
    ),
    Key(
        "tickcast:dashboardOidcAuthorizationEndpoint",
        "string",
        "",
        "The OIDC provider's authorization endpoint (https://).",
    ),
    Key("tickcast:dashboardOidcTokenEndpoint", "string", "", "The OIDC provider's token endpoint (https://)."),
    Key("tickcast:dashboardOidcUserInfoEndpoint", "string", "", "The OIDC provider's user info endpoint (https://)."),
    Key("tickcast:dashboardOidcClientId", "string", "", "Client id of the dashboard's OIDC client."),
    Key(
        "tickcast:dashboardOidcClientSecret",
        "secret",
        "",
        "Client secret of the dashboard's OIDC client (`pulumi config set --secret`); required when the "
        "dashboard is exposed.",
    ),
    Key("tickcast:kuberayVersion", "string", "1.7.0", "Version of the kuberay-operator chart."),
    Key("tickcast:nvidiaDevicePluginVersion", "string", "0.17.1", "Version of the nvidia-device-plugin chart."),
    Key(
        "tickcast:awsLoadBalancerControllerVersion",
        "string",
        "1.13.0",
        "Version of the aws-load-balancer-controller chart (serves the dashboard Ingress).",
    ),
    Key("tickcast:karpenterVersion", "string", "1.11.1", "Version of the Karpenter chart (node autoscaling)."),
    Key(
        "tickcast:externalDnsVersion",
        "string",
        "1.16.1",
        "Version of the external-dns chart (only with dashboardHostedZoneId).",
    ),
    Key(
        "tickcast:polygonApiKey",
        "secret",
        None,
        "Polygon/Massive API key, set with `pulumi config set --secret`; reaches the producer as a Kubernetes Secret.",
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
    control_plane_log_retention_days: int
    endpoint_public_access: bool
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
    build_images: bool
    await_app: bool
    namespace: str
    chart_path: str
    dashboard_scheme: str
    dashboard_allowed_cidrs: tuple[str, ...]
    dashboard_host: str
    dashboard_hosted_zone_id: str
    dashboard_certificate_arn: str
    dashboard_oidc: dict[str, str]
    """issuer, authorizationEndpoint, tokenEndpoint, userInfoEndpoint, clientId (empty: not exposed)."""
    dashboard_oidc_client_secret: pulumi.Output[str] | None
    kuberay_version: str
    nvidia_device_plugin_version: str
    aws_load_balancer_controller_version: str
    karpenter_version: str
    external_dns_version: str
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
        # An optional secret (a default, even empty) is None when unset.
        return config.require_secret(key.short) if key.default is None else config.get_secret(key.short)
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


# Ranges, names and accounts that exist only in documentation: a stack that still holds one was
# copied from an example and cannot work (nobody connects from 203.0.113.0/24, nobody owns
# tickcast.example.com, no certificate lives in account 123456789012).
DOCUMENTATION_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)
"""RFC 5737 (IPv4) and RFC 3849 (IPv6) documentation ranges."""
RESERVED_DOMAINS = ("example.com", "example.net", "example.org", "example", "test", "invalid", "localhost")
"""RFC 2606 and RFC 6761 names that never resolve to anything of yours."""
EXAMPLE_ACCOUNTS = ("123456789012", "111122223333", "444455556666", "000000000000")
"""Account ids the AWS documentation uses in its examples."""
CERTIFICATE_ARN = re.compile(
    r"^arn:aws(?:-cn|-us-gov)?:acm:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):certificate/(?P<id>[0-9a-f-]{36})$"
)
PRINCIPAL_ARN = re.compile(r"^arn:aws(?:-cn|-us-gov)?:iam::(?P<account>\d{12}):(?:role|user)/[\w+=,.@/-]+$")
HOSTED_ZONE_ID = re.compile(r"^Z[A-Z0-9]{1,31}$")
HOST_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$")


def _check_cidrs(key: str, cidrs: list[str]) -> None:
    if not cidrs:
        raise ConfigError(f"tickcast:{key} is empty: nobody could connect; give at least one CIDR")
    for cidr in cidrs:
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"tickcast:{key} has {cidr!r}, which is not a CIDR such as 198.18.7.0/24") from None
        if any(network.version == doc.version and network.subnet_of(doc) for doc in DOCUMENTATION_NETWORKS):  # type: ignore[arg-type]
            raise ConfigError(
                f"tickcast:{key} has {cidr}, a documentation-only range that no real client connects from. "
                f"Replace it with the public egress address of your workstation, VPN or CI runner as a /32, e.g. "
                f"`pulumi config set --path 'tickcast:{key}[0]' <your address>/32`"
            )


def _check_account(key: str, arn: str, account: str) -> None:
    if account in EXAMPLE_ACCOUNTS:
        raise ConfigError(
            f"tickcast:{key} is {arn!r}: account {account} is an AWS documentation example. "
            "Put the ARN from your own account there (`aws sts get-caller-identity` shows its id)"
        )


def check_reachable(v: dict[str, Any]) -> None:
    """Refuse placeholders and settings that cannot work, before any resource is created.

    Raises:
        ConfigError: naming the key, what is wrong with its value and how to fix it.
    """
    if v["endpointPublicAccess"]:
        if not v["endpointPublicAccessCidrs"]:
            raise ConfigError(
                "tickcast:endpointPublicAccessCidrs is required while tickcast:endpointPublicAccess is true: name "
                "the CIDRs that may reach the public Kubernetes API endpoint (there is no 0.0.0.0/0 default), e.g. "
                "`pulumi config set --path 'tickcast:endpointPublicAccessCidrs[0]' <your egress address>/32`, or "
                "`pulumi config set tickcast:endpointPublicAccess false` to keep the API private (then run "
                "`pulumi up` from inside the VPC)"
            )
        _check_cidrs("endpointPublicAccessCidrs", v["endpointPublicAccessCidrs"])
    elif v["endpointPublicAccessCidrs"]:
        raise ConfigError(
            "tickcast:endpointPublicAccessCidrs is set but tickcast:endpointPublicAccess is false: remove the CIDRs "
            "or turn the public endpoint on"
        )
    _check_dashboard_exposure(v)
    for arn in v["adminRoleArns"]:
        match = PRINCIPAL_ARN.match(arn)
        if not match:
            raise ConfigError(
                f"tickcast:adminRoleArns has {arn!r}, not an IAM role or user ARN (arn:aws:iam::ACCOUNT:role/NAME)"
            )
        _check_account("adminRoleArns", arn, match["account"])
    host = v["dashboardHost"]
    if host:
        if not HOST_NAME.match(host):
            raise ConfigError(f"tickcast:dashboardHost {host!r} is not a DNS name such as tickcast.markets.acme.io")
        if any(host == d or host.endswith("." + d) for d in RESERVED_DOMAINS):
            raise ConfigError(
                f"tickcast:dashboardHost {host!r} is a reserved example name that will never resolve: "
                "use a name in a domain you own, or `pulumi config rm tickcast:dashboardHost` to use the "
                "load balancer's own name"
            )
    zone = v["dashboardHostedZoneId"]
    if zone and (not host or not HOSTED_ZONE_ID.match(zone)):
        raise ConfigError(
            f"tickcast:dashboardHostedZoneId {zone!r} needs tickcast:dashboardHost and must be a Route 53 "
            "hosted zone id such as Z0123456789ABCDEFGHIJ (`aws route53 list-hosted-zones`)"
        )
    certificate = v["dashboardCertificateArn"]
    if certificate:
        match = CERTIFICATE_ARN.match(certificate)
        if not match:
            raise ConfigError(
                f"tickcast:dashboardCertificateArn {certificate!r} is not an ACM certificate ARN "
                "(arn:aws:acm:REGION:ACCOUNT:certificate/UUID; `aws acm list-certificates` lists yours)"
            )
        _check_account("dashboardCertificateArn", certificate, match["account"])
        if set(match["id"]) <= {"0", "-"}:
            raise ConfigError(f"tickcast:dashboardCertificateArn {certificate!r} is a placeholder certificate id")
        if match["region"] != v["region"]:
            raise ConfigError(
                f"tickcast:dashboardCertificateArn is in {match['region']}, but the load balancer is in "
                f"{v['region']}: request or import the certificate in {v['region']}"
            )
        if not host:
            raise ConfigError(
                "tickcast:dashboardCertificateArn needs tickcast:dashboardHost (a certificate is issued for a "
                "name, not for the load balancer's own name)"
            )
    unknown = [t for t in (*v["cpuInstanceTypes"], *v["gpuInstanceTypes"]) if t not in INSTANCE_TYPES]
    if unknown:
        raise ConfigError(
            f"instance types {unknown} have no row in tickcast_infra/eks_facts.py INSTANCE_TYPES, so the pods "
            f"cannot be sized for them: add a row or use one of {', '.join(INSTANCE_TYPES)}"
        )
    if any(INSTANCE_TYPES[t][2] for t in v["cpuInstanceTypes"]):
        raise ConfigError("tickcast:cpuInstanceTypes lists a GPU type: GPU types go in tickcast:gpuInstanceTypes")
    if not all(INSTANCE_TYPES[t][2] == 1 for t in v["gpuInstanceTypes"]):
        raise ConfigError("tickcast:gpuInstanceTypes must all have exactly one GPU (one Ray GPU worker per node)")


OIDC_KEYS = (
    "dashboardOidcIssuer",
    "dashboardOidcAuthorizationEndpoint",
    "dashboardOidcTokenEndpoint",
    "dashboardOidcUserInfoEndpoint",
    "dashboardOidcClientId",
)


def _check_dashboard_exposure(v: dict[str, Any]) -> None:
    """An exposed dashboard (an ALB) needs HTTPS, OIDC sign-in and, on the internet, named CIDRs."""
    scheme = v["dashboardScheme"]
    if scheme == "none":
        return
    missing = [f"tickcast:{key}" for key in ("dashboardHost", "dashboardCertificateArn", *OIDC_KEYS) if not v[key]]
    if v["dashboardOidcClientSecret"] is None:
        missing.append("tickcast:dashboardOidcClientSecret (--secret)")
    if missing:
        raise ConfigError(
            f"tickcast:dashboardScheme {scheme} exposes the dashboard (it holds the forecast API's token), which "
            f"then needs HTTPS and OIDC sign-in at the load balancer; missing: {', '.join(missing)}. Set them "
            "(`pulumi config set tickcast:KEY VALUE`, the client secret with --secret), or "
            "`pulumi config set tickcast:dashboardScheme none` to keep it cluster-internal"
        )
    for key in OIDC_KEYS[:4]:
        url = urllib.parse.urlsplit(v[key])
        if url.scheme != "https" or not url.hostname:
            raise ConfigError(f"tickcast:{key} {v[key]!r} must be an https:// URL of your OIDC provider")
        if any(url.hostname == d or url.hostname.endswith("." + d) for d in RESERVED_DOMAINS):
            raise ConfigError(
                f"tickcast:{key} {v[key]!r} names a reserved example domain: use your identity provider's URL "
                "(its /.well-known/openid-configuration lists all four endpoints)"
            )
    if scheme == "internet-facing":
        if not v["dashboardAllowedCidrs"]:
            raise ConfigError(
                "tickcast:dashboardAllowedCidrs is required with tickcast:dashboardScheme internet-facing: name the "
                "CIDRs that may reach the dashboard (there is no 0.0.0.0/0 default), e.g. "
                "`pulumi config set --path 'tickcast:dashboardAllowedCidrs[0]' <office or VPN egress>/32`"
            )
        _check_cidrs("dashboardAllowedCidrs", v["dashboardAllowedCidrs"])


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
    check_reachable(v)
    return StackConfig(
        stack=pulumi.get_stack(),
        region=v["region"],
        vpc_cidr=v["vpcCidr"],
        az_count=v["azCount"],
        nat_gateways=v["natGateways"],
        kubernetes_version=v["kubernetesVersion"],
        control_plane_log_retention_days=v["controlPlaneLogRetentionDays"],
        endpoint_public_access=v["endpointPublicAccess"],
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
        build_images=v["buildImages"],
        await_app=v["awaitApp"],
        namespace=v["namespace"],
        chart_path=v["chartPath"],
        dashboard_scheme=v["dashboardScheme"],
        dashboard_allowed_cidrs=tuple(v["dashboardAllowedCidrs"]),
        dashboard_host=v["dashboardHost"],
        dashboard_hosted_zone_id=v["dashboardHostedZoneId"],
        dashboard_certificate_arn=v["dashboardCertificateArn"],
        dashboard_oidc={key.removeprefix("dashboardOidc"): v[key] for key in OIDC_KEYS},
        dashboard_oidc_client_secret=v["dashboardOidcClientSecret"],
        kuberay_version=v["kuberayVersion"],
        nvidia_device_plugin_version=v["nvidiaDevicePluginVersion"],
        aws_load_balancer_controller_version=v["awsLoadBalancerControllerVersion"],
        karpenter_version=v["karpenterVersion"],
        external_dns_version=v["externalDnsVersion"],
        polygon_api_key=v["polygonApiKey"],
    )


def _default_text(key: Key) -> str:
    if key.kind == "secret":
        return "(required, secret)" if key.default is None else "(empty, secret)"
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
