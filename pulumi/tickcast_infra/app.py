"""The tickcast Helm release, its namespace and secret, and (MSK Serverless) the topic Job.

:func:`chart_values` is the one place the created resources become values of the chart in
``helm/tickcast``. The keys it sets (documented in ``pulumi/README.md``, "Chart values"):

================================================  ==============================================
key                                                from
================================================  ==============================================
``image.tag``                                      ``tickcast:imageTag`` (``image.registry`` stays
                                                   empty: repositories are full ECR URLs)
``<component>.image.repository``                  the component's ECR repository URL
``<component>.serviceAccount.{create,name,roleArn}``  ``tickcast-<workload>`` and its IRSA role
``config.kafka.bootstrap_servers``                 the MSK IAM bootstrap brokers (port 9098)
``config.kafka.security_protocol/sasl_mechanism``  ``SASL_SSL`` / ``OAUTHBEARER`` (MSK IAM auth)
``config.kafka.sasl_username``                     empty (IAM needs none)
``config.kafka.aws_region``                        the region (signs the MSK IAM tokens)
``config.kafka.partitions/replication_factor/retention_hours``  the topic settings
``config.lake.url`` / ``config.lake.s3_region``    ``s3://BUCKET/PREFIX`` / the region
``secrets.existingSecret``                         the Secret this component creates
``rayService.head.nodeSelector``                   the CPU pool
``rayService.workerGroup.{replicas,minReplicas,maxReplicas,nodeSelector,tolerations}``
                                                   the GPU node group's size, label and taint
``dashboard.ingress.{enabled,className,scheme,host,certificateArn,inboundCidrs,oidc}``
                                                   ``tickcast:dashboard*`` (off unless exposed:
                                                   then HTTPS and OIDC sign-in)
``servingAuth.{required,secretName}``              the forecast API's bearer token, generated
                                                   here into :data:`SERVING_TOKEN_SECRET`
``rayService.auth.{enabled,secretName}``           Ray token auth, the token generated here into
                                                   :data:`RAY_AUTH_SECRET`
``networkPolicy.kuberayOperatorNamespace``         where the KubeRay operator is installed
================================================  ==============================================

The namespace enforces the ``restricted`` Pod Security Standard (labels
:func:`pod_security_labels`); tests/helm's psa-check proves every pod the chart renders passes.

Components and the workload (IAM role, service account) each runs as: producer, consumer,
forecaster, dashboard, rayService (role ``serving``), jobs (Ray batch jobs, role ``batch``) and
maintenance (the lake's optimize and vacuum CronJobs, role ``maintenance``, consumer image).
The release name, those service accounts and the names of the objects read back (the dashboard
Ingress, the Serve Service) are in :mod:`tickcast_infra.chart_names`, which tests/helm checks
against what the chart renders.
"""

from __future__ import annotations

import secrets as token_source
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from tickcast_infra.addons import KUBERAY_NAMESPACE
from tickcast_infra.chart_names import (
    CHART_WORKLOADS,
    DASHBOARD_INGRESS_NAME,
    RELEASE_NAME,
    serve_endpoint,
    service_account_name,
)
from tickcast_infra.cluster import CPU_LABELS, GPU_LABELS, GPU_TOLERATION, NODE_POOL_LABEL
from tickcast_infra.iam import KAFKA_ADMIN
from tickcast_infra.kafka import SASL_MECHANISM, SECURITY_PROTOCOL

SECRETS_NAME = "tickcast-pulumi-secrets"
"""The Secret handed to the chart as ``secrets.existingSecret``; keys are setting variables."""
POLYGON_API_KEY_VARIABLE = "TICKCAST_POLYGON__API_KEY"
SECRET_VERSION_ANNOTATION = "tickcast.io/secret-version"
"""Producer pod annotation holding the Secret's resourceVersion: a new key rolls the producer."""
RELEASE_TIMEOUT_S = 1200
SERVING_TOKEN_SECRET = "tickcast-serving-token"
"""Secret holding the forecast API's bearer token (``TICKCAST_SERVING__AUTH_TOKEN``), which Serve,
the forecaster and the dashboard read (the chart's ``servingAuth.secretName``)."""
SERVING_TOKEN_VARIABLE = "TICKCAST_SERVING__AUTH_TOKEN"
RAY_AUTH_SECRET = "tickcast-ray-auth"
"""Secret holding the Ray cluster token under ``auth_token`` (KubeRay ``authOptions.secretName``)."""
RAY_AUTH_TOKEN_KEY = "auth_token"
"""The key KubeRay reads a Ray token from (its RAY_AUTH_TOKEN_SECRET_KEY)."""
DASHBOARD_OIDC_SECRET = "tickcast-dashboard-oidc"
"""Secret with the dashboard's OIDC client (keys ``clientID``, ``clientSecret``), read by the AWS
load balancer controller for the ALB's sign-in."""
GENERATED_TOKEN_BYTES = 32
"""Randomness of each generated token: 32 bytes, 43 URL-safe characters."""

# Chart section -> its image: the jobs run the serving image, set by rayService.image; the lake
# maintenance CronJobs run `tickcast lake optimize|vacuum` from the slim consumer image.
CHART_IMAGES: dict[str, str | None] = {
    "producer": "producer",
    "consumer": "consumer",
    "forecaster": "forecaster",
    "dashboard": "dashboard",
    "rayService": "serving",
    "jobs": None,
    "maintenance": "consumer",
}
# chart section -> (image, workload); the names of objects read back live in chart_names.
CHART_COMPONENTS: dict[str, tuple[str | None, str]] = {
    section: (CHART_IMAGES[section], workload) for section, workload in CHART_WORKLOADS.items()
}


def pod_security_labels(kubernetes_version: str) -> dict[str, str]:
    """The namespace's Pod Security admission labels: ``restricted`` enforced at the cluster's
    own policy version (a later EKS upgrade does not start refusing pods by surprise), and
    warned and audited at the latest version, so a check a newer Kubernetes adds shows up first
    as a warning."""
    return {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": f"v{kubernetes_version}",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/warn-version": "latest",
        "pod-security.kubernetes.io/audit": "restricted",
        "pod-security.kubernetes.io/audit-version": "latest",
    }


@dataclass(frozen=True)
class DashboardOidc:
    """The OIDC provider the dashboard's load balancer signs users in with."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    user_info_endpoint: str
    client_id: str


@dataclass(frozen=True)
class DashboardIngress:
    """How the dashboard is exposed: ``none`` (cluster-internal, the default) or through an ALB
    (``internal`` or ``internet-facing``) that serves HTTPS only and signs users in with OIDC."""

    scheme: str = "none"
    allowed_cidrs: Sequence[str] = ()
    host: str = ""
    certificate_arn: str = ""
    oidc: DashboardOidc | None = None

    @property
    def exposed(self) -> bool:
        return self.scheme != "none"

    def values(self) -> dict[str, Any]:
        if not self.exposed:
            return {"enabled": False}
        if not (self.certificate_arn and self.oidc):
            raise ValueError("an exposed dashboard needs a certificate ARN and OIDC sign-in (config.py checks both)")
        return {
            "enabled": True,
            "className": "alb",
            "scheme": self.scheme,
            "host": self.host,
            "certificateArn": self.certificate_arn,
            "inboundCidrs": list(self.allowed_cidrs) if self.scheme == "internet-facing" else [],
            "oidc": {
                "issuer": self.oidc.issuer,
                "authorizationEndpoint": self.oidc.authorization_endpoint,
                "tokenEndpoint": self.oidc.token_endpoint,
                "userInfoEndpoint": self.oidc.user_info_endpoint,
                "secretName": DASHBOARD_OIDC_SECRET,
            },
            "annotations": {},
        }


@dataclass(frozen=True)
class ChartInputs:
    """Everything the chart's values are made of."""

    image_tag: str
    repository_urls: Mapping[str, pulumi.Input[str]]
    role_arns: Mapping[str, pulumi.Input[str]]
    bootstrap_servers: pulumi.Input[str]
    lake_url: pulumi.Input[str]
    region: str
    kafka_partitions: int
    kafka_replication_factor: int
    kafka_retention_hours: int
    gpu_min_replicas: int
    gpu_replicas: int
    gpu_max_replicas: int
    dashboard: DashboardIngress = field(default_factory=DashboardIngress)
    image_digests: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    """image -> ``sha256:...`` (images.Images); the chart pulls by digest when one is given."""
    pod_resources: Mapping[str, Any] = field(default_factory=dict)
    """eks_facts.chart_resources() for the stack's node types: the pods that must fit a node."""
    secret_version: pulumi.Input[str] | None = None
    """Changes when the Polygon key changes: a producer pod annotation, so rotation rolls it."""


def chart_values(inputs: ChartInputs) -> dict[str, Any]:
    """The tickcast chart's values, wired from the created resources (see the module docs)."""
    values: dict[str, Any] = {"image": {"tag": inputs.image_tag}}
    for section, (image, workload) in CHART_COMPONENTS.items():
        values[section] = {
            "serviceAccount": {
                "create": True,
                "name": service_account_name(workload),
                "roleArn": inputs.role_arns[workload],
            },
        }
        if image is not None:
            values[section]["image"] = {"repository": inputs.repository_urls[image]}
            if image in inputs.image_digests:
                values[section]["image"]["digest"] = inputs.image_digests[image]
    values["config"] = {
        "kafka": {
            "bootstrap_servers": inputs.bootstrap_servers,
            "security_protocol": SECURITY_PROTOCOL,
            "sasl_mechanism": SASL_MECHANISM,
            "sasl_username": "",
            "aws_region": inputs.region,
            "partitions": inputs.kafka_partitions,
            "replication_factor": inputs.kafka_replication_factor,
            "retention_hours": inputs.kafka_retention_hours,
        },
        "lake": {"url": inputs.lake_url, "s3_region": inputs.region},
        # One Serve replica per GPU worker (num_gpus 1): Serve never asks for more workers than
        # the GPU pool may hold, and a GPU pool that may go to zero lets Serve go to zero too.
        "serving": {"min_replicas": inputs.gpu_min_replicas, "max_replicas": inputs.gpu_max_replicas},
    }
    values["secrets"] = {"existingSecret": SECRETS_NAME}
    values["servingAuth"] = {"required": True, "secretName": SERVING_TOKEN_SECRET}
    values["rayService"]["auth"] = {"enabled": True, "secretName": RAY_AUTH_SECRET}
    values["rayService"]["head"] = {"nodeSelector": dict(CPU_LABELS)}
    values["rayService"]["workerGroup"] = {
        "replicas": inputs.gpu_replicas,
        "minReplicas": inputs.gpu_min_replicas,
        "maxReplicas": inputs.gpu_max_replicas,
        "nodeSelector": {NODE_POOL_LABEL: GPU_LABELS[NODE_POOL_LABEL]},
        "tolerations": [dict(GPU_TOLERATION)],
    }
    values["dashboard"]["ingress"] = inputs.dashboard.values()
    _merge_into(values, inputs.pod_resources)
    if inputs.secret_version is not None:
        values["producer"]["podAnnotations"] = {SECRET_VERSION_ANNOTATION: inputs.secret_version}
    values["networkPolicy"] = {"kuberayOperatorNamespace": KUBERAY_NAMESPACE}
    return values


def _merge_into(target: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = value


TOPICS_SCRIPT = (
    "from tickcast.kafka import ensure_topics; from tickcast.settings import load_settings; "
    "print('created:', ensure_topics(load_settings().kafka) or 'none')"
)


@dataclass(frozen=True)
class AppArgs:
    """The release's chart, namespace and values, and what must exist before it installs."""

    namespace: str
    chart_path: str
    chart: ChartInputs
    polygon_api_key: pulumi.Input[str]
    provider: k8s.Provider
    depends_on: Sequence[pulumi.Resource]
    kubernetes_version: str
    """The cluster's version: the Pod Security policy version the namespace enforces."""
    dashboard_oidc_client_secret: pulumi.Input[str] | None = None
    """The OIDC client's secret (``tickcast:dashboardOidcClientSecret``) of an exposed dashboard."""
    await_health: bool = False
    """Wait for ready pods (Helm --wait); False: the release succeeds once Kubernetes accepts its
    objects, and a crash-looping pod is reported by `kubectl`, not by a failed `pulumi up`."""
    topics_job_role_arn: pulumi.Input[str] | None = None
    """Set (MSK Serverless) to create the topics with a Job running as ``tickcast-kafka-admin``."""


class TickcastApp(pulumi.ComponentResource):
    """Namespace, Polygon Secret, optional topic Job and the tickcast Helm release."""

    release: k8s.helm.v3.Release
    dashboard_url: pulumi.Output[str]
    serve_endpoint: str

    def __init__(self, name: str, args: AppArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickcast:infra:TickcastApp", name, None, opts)
        on_cluster = pulumi.ResourceOptions(parent=self, provider=args.provider)
        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata={"name": args.namespace, "labels": pod_security_labels(args.kubernetes_version)},
            opts=on_cluster,
        )
        self._namespace = namespace
        in_namespace = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[namespace])
        secret = k8s.core.v1.Secret(
            f"{name}-secrets",
            metadata={"name": SECRETS_NAME, "namespace": args.namespace},
            type="Opaque",
            string_data={POLYGON_API_KEY_VARIABLE: pulumi.Output.secret(args.polygon_api_key)},
            opts=in_namespace,
        )
        before_release: list[pulumi.Resource] = [
            secret,
            self._generated_secret(f"{name}-serving-token", SERVING_TOKEN_SECRET, SERVING_TOKEN_VARIABLE, args),
            self._generated_secret(f"{name}-ray-auth", RAY_AUTH_SECRET, RAY_AUTH_TOKEN_KEY, args),
            *args.depends_on,
        ]
        oidc = args.chart.dashboard.oidc
        if args.chart.dashboard.exposed and oidc is not None:
            if args.dashboard_oidc_client_secret is None:
                raise ValueError("an exposed dashboard needs its OIDC client secret (config.py checks it)")
            before_release.append(
                k8s.core.v1.Secret(
                    f"{name}-dashboard-oidc",
                    metadata={"name": DASHBOARD_OIDC_SECRET, "namespace": args.namespace},
                    type="Opaque",
                    string_data={
                        "clientID": oidc.client_id,
                        "clientSecret": pulumi.Output.secret(args.dashboard_oidc_client_secret),
                    },
                    opts=in_namespace,
                )
            )
        if args.topics_job_role_arn is not None:
            before_release.append(self._topics_job(name, args, namespace))

        # resourceVersion changes whenever the Secret's data does (a rotated key).
        chart = replace(args.chart, secret_version=secret.metadata.apply(lambda m: m.resource_version or ""))
        self.release = k8s.helm.v3.Release(
            name,
            name=RELEASE_NAME,
            chart=args.chart_path,
            namespace=args.namespace,
            values=chart_values(chart),
            skip_await=not args.await_health,
            timeout=RELEASE_TIMEOUT_S,
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[namespace, *before_release]),
        )

        self.serve_endpoint = serve_endpoint(args.namespace)
        dashboard = args.chart.dashboard
        scheme = "https"
        if not dashboard.exposed:
            self.dashboard_url = pulumi.Output.from_input(
                f"(cluster-internal: kubectl -n {args.namespace} port-forward svc/{DASHBOARD_INGRESS_NAME} 8501:80, "
                "then http://127.0.0.1:8501)"
            )
        elif dashboard.host:
            self.dashboard_url = pulumi.Output.from_input(f"{scheme}://{dashboard.host}")
        else:
            ingress = k8s.networking.v1.Ingress.get(
                f"{name}-dashboard",
                f"{args.namespace}/{DASHBOARD_INGRESS_NAME}",
                opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[self.release]),
            )
            self.dashboard_url = ingress.status.apply(lambda status: _ingress_url(status, scheme))
        self.register_outputs({"dashboardUrl": self.dashboard_url, "serveEndpoint": self.serve_endpoint})

    def _generated_secret(self, name: str, secret_name: str, key: str, args: AppArgs) -> pulumi.Resource:
        """A Secret holding one token generated here, created once and then kept.

        ``secrets.token_urlsafe`` runs on every ``pulumi up``, but ``ignore_changes`` keeps the
        first value: the token is stable, and rotating it means replacing the Secret
        (``pulumi up --replace <urn>``), which rolls the pods through the chart. The value is a
        Pulumi secret: encrypted in the state, never shown in a preview.
        """
        token = pulumi.Output.secret(token_source.token_urlsafe(GENERATED_TOKEN_BYTES))
        return k8s.core.v1.Secret(
            name,
            metadata={"name": secret_name, "namespace": args.namespace},
            type="Opaque",
            string_data={key: token},
            opts=pulumi.ResourceOptions(
                parent=self,
                provider=args.provider,
                depends_on=[self._namespace],
                ignore_changes=["stringData", "data"],
                additional_secret_outputs=["stringData", "data"],
            ),
        )

    def _topics_job(self, name: str, args: AppArgs, namespace: pulumi.Resource) -> pulumi.Resource:
        account = service_account_name(KAFKA_ADMIN)
        service_account = k8s.core.v1.ServiceAccount(
            f"{name}-kafka-admin",
            metadata={
                "name": account,
                "namespace": args.namespace,
                "annotations": {"eks.amazonaws.com/role-arn": args.topics_job_role_arn},
            },
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[namespace]),
        )
        env = {
            "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": args.chart.bootstrap_servers,
            "TICKCAST_KAFKA__SECURITY_PROTOCOL": SECURITY_PROTOCOL,
            "TICKCAST_KAFKA__SASL_MECHANISM": SASL_MECHANISM,
            "TICKCAST_KAFKA__AWS_REGION": args.chart.region,
            "TICKCAST_KAFKA__PARTITIONS": str(args.chart.kafka_partitions),
            "TICKCAST_KAFKA__REPLICATION_FACTOR": str(args.chart.kafka_replication_factor),
            "TICKCAST_KAFKA__RETENTION_HOURS": str(args.chart.kafka_retention_hours),
            "AWS_REGION": args.chart.region,
        }
        return k8s.batch.v1.Job(
            f"{name}-kafka-topics",
            metadata={"name": f"{RELEASE_NAME}-kafka-topics", "namespace": args.namespace},
            spec={
                "backoffLimit": 6,
                "template": {
                    "spec": {
                        "serviceAccountName": account,
                        "restartPolicy": "OnFailure",
                        "nodeSelector": dict(CPU_LABELS),
                        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [
                            {
                                "name": "topics",
                                "image": pulumi.Output.concat(
                                    args.chart.repository_urls["producer"], ":", args.chart.image_tag
                                ),
                                "command": ["python", "-c", TOPICS_SCRIPT],
                                "env": [{"name": k, "value": v} for k, v in env.items()],
                                "resources": {
                                    "requests": {"cpu": "50m", "memory": "128Mi"},
                                    "limits": {"memory": "256Mi"},
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                            }
                        ],
                    }
                },
            },
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[service_account]),
        )


def _ingress_url(status: Any, scheme: str) -> str:
    """``SCHEME://<load balancer name>`` once the controller has provisioned it."""
    balancer = getattr(status, "load_balancer", None)
    for entry in getattr(balancer, "ingress", None) or []:
        hostname = getattr(entry, "hostname", None)
        if hostname:
            return f"{scheme}://{hostname}"
    return "(load balancer pending: run `pulumi refresh` or `pulumi up` again in a few minutes)"
