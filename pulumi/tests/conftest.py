"""Run the Pulumi program offline under ``pulumi.runtime.set_mocks`` and record every resource.

Each stack config (Pulumi.dev.yaml, Pulumi.prod.yaml, plus variants) runs the real program
once per session; the mocks answer with plausible ARNs, IDs, URLs and bootstrap brokers and
keep each resource's inputs, so tests assert on exactly what would be sent to AWS and Kubernetes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from google.protobuf import struct_pb2
from pulumi.runtime.mocks import MockMonitor

_SIG_KEY = "4dabf18193072939515e22adb298388d"  # pulumi.runtime.rpc._special_sig_key

PULUMI_DIR = Path(__file__).resolve().parents[1]
if str(PULUMI_DIR) not in sys.path:
    sys.path.insert(0, str(PULUMI_DIR))

ACCOUNT = "123456789012"
REGION_FALLBACK = "us-east-1"
POLYGON_TEST_KEY = "pk-test-not-a-real-key"
OIDC_ID = "EXAMPLED539D4633E53DE1B71EXAMPLE"
ZONE_IDS = [f"use1-az{i}" for i in range(1, 7)]
"""The mocked region's zones: use1-az3 is one EKS does not support."""
NO_GPU_ZONE_IDS = {"use1-az2"}
"""Zones the mocks say offer none of the GPU instance types."""


@dataclass
class Recorded:
    """One resource the program registered (or read): its type token, name, inputs and outputs."""

    type: str
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    custom: bool
    read: bool
    urn: str = ""
    dependencies: frozenset[str] = frozenset()
    """URNs this resource waits for (its ``depends_on`` and the resources its inputs come from)."""
    ignore_changes: tuple[str, ...] = ()


class RecordingMocks(pulumi.runtime.Mocks):
    """Mocks that answer like AWS would, in shape, and record what the program asked for."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.resources: list[Recorded] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.registrations: dict[tuple[str, str], tuple[str, frozenset[str], tuple[str, ...]]] = {}

    def joined(self) -> list[Recorded]:
        """The records with their URNs, dependencies and ignore_changes filled in."""
        for record in self.resources:
            if (record.type, record.name) in self.registrations:
                record.urn, record.dependencies, record.ignore_changes = self.registrations[(record.type, record.name)]
        return self.resources

    def _arn(self, service: str, resource: str, region: bool = True) -> str:
        return f"arn:aws:{service}:{self.region if region else ''}:{ACCOUNT}:{resource}"

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        inputs = dict(args.inputs)
        outputs: dict[str, Any] = dict(inputs)
        typ, name = args.typ, args.name
        physical = inputs.get("name") or name
        if typ == "aws:s3/bucket:Bucket":
            bucket = f"{inputs.get('bucketPrefix', name)}20250101abcdef"
            outputs.update(bucket=bucket, arn=f"arn:aws:s3:::{bucket}", id=bucket)
            physical = bucket
        elif typ == "aws:kms/key:Key":
            outputs.update(arn=self._arn("kms", f"key/{name}-0000"), keyId=f"{name}-0000")
        elif typ == "aws:iam/role:Role":
            outputs.update(arn=f"arn:aws:iam::{ACCOUNT}:role/{physical}", name=physical)
        elif typ in ("aws:msk/cluster:Cluster", "aws:msk/serverlessCluster:ServerlessCluster"):
            cluster = inputs["clusterName"]
            outputs.update(
                arn=self._arn("kafka", f"cluster/{cluster}/5f3c1a2b-uuid-1"),
                bootstrapBrokersSaslIam=",".join(
                    f"b-{i}.{cluster}.abc123.c2.kafka.{self.region}.amazonaws.com:9098" for i in (1, 2, 3)
                ),
            )
        elif typ == "aws:msk/configuration:Configuration":
            outputs.update(arn=self._arn("kafka", f"configuration/{physical}/uuid-2"), latestRevision=1)
        elif typ == "aws:secretsmanager/secret:Secret":
            outputs.update(arn=self._arn("secretsmanager", f"secret:{physical}-AbCdEf"), name=physical)
        elif typ == "aws:ecr/repository:Repository":
            outputs.update(
                arn=self._arn("ecr", f"repository/{physical}"),
                repositoryUrl=f"{ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com/{physical}",
            )
        elif typ == "eks:index:Cluster":
            issuer = f"oidc.eks.{self.region}.amazonaws.com/id/{OIDC_ID}"
            outputs.update(
                kubeconfigJson=json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": [{"name": physical}]}),
                oidcProviderArn=f"arn:aws:iam::{ACCOUNT}:oidc-provider/{issuer}",
                oidcProviderUrl=f"https://{issuer}",
                oidcIssuer=issuer,
                nodeSecurityGroupId="sg-0eksclusterprimary",
                clusterSecurityGroupId="sg-0ekscontrolplane",
            )
        elif typ == "kubernetes:networking.k8s.io/v1:Ingress":
            outputs["status"] = {
                "loadBalancer": {"ingress": [{"hostname": "k8s-tickcast-dashboard-1234.elb.amazonaws.com"}]}
            }
        elif typ == "kubernetes:core/v1:Secret":
            outputs["metadata"] = {**inputs.get("metadata", {}), "resourceVersion": "4711"}
        elif typ == "aws:ec2/launchTemplate:LaunchTemplate":
            outputs.update(latestVersion=1, arn=self._arn("ec2", f"launch-template/lt-{name}"))
        elif typ == "docker-build:index:Image":
            outputs["digest"] = f"sha256:{name.encode().hex():0<64}"[:71]
        elif typ == "aws:sqs/queue:Queue":
            outputs.update(
                arn=self._arn("sqs", physical), url=f"https://sqs.{self.region}.amazonaws.com/{ACCOUNT}/{physical}"
            )
        elif typ == "kubernetes:helm.sh/v3:Release":
            outputs["status"] = {
                "name": inputs.get("name", name),
                "namespace": inputs.get("namespace"),
                "status": "deployed",
            }
        elif typ.startswith("aws:"):
            service = typ.split(":")[1].split("/")[0]
            outputs.setdefault("arn", self._arn(service, f"{name}"))
        self.resources.append(
            Recorded(
                typ,
                name,
                inputs,
                outputs,
                bool(args.custom),
                read=args.resource_id is not None and args.resource_id != "",
            )
        )
        resource_id = args.resource_id or f"{physical}-id"
        return resource_id, outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list]:
        self.calls.append((args.token, dict(args.args)))
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            names = [f"{self.region}{suffix}" for suffix in "abcdef"]
            return {"names": names, "zoneIds": ZONE_IDS, "id": self.region}, []
        if args.token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            types = set(args.args["filters"][0]["values"])
            gpu = any(t.startswith("g") for t in types)
            zones = [z for z in ZONE_IDS if not (gpu and z in NO_GPU_ZONE_IDS)]
            return {"locations": zones, "instanceTypes": sorted(types), "locationTypes": [], "id": "offers"}, []
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/deployer", "userId": "AIDA"}, []
        if args.token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            endpoint = f"https://{ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com"
            return {"proxyEndpoint": endpoint, "userName": "AWS", "password": "ecr-token", "id": "t"}, []
        if args.token == "aws:ecr/getImage:getImage":
            return {"imageDigest": f"sha256:{'ab' * 32}", "id": args.args["repositoryName"]}, []
        return {}, []


_RESOURCE_SIG = "5cf8f73096256a8f31e491e813e4eb8e"  # pulumi.runtime.rpc._special_resource_sig


def _resource_refs_as_urns(value: struct_pb2.Value) -> None:
    """Replace every resource reference inside ``value`` by its URN, in place."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        fields = value.struct_value.fields
        if fields.get(_SIG_KEY) is not None and fields[_SIG_KEY].string_value == _RESOURCE_SIG:
            value.string_value = fields["urn"].string_value
            return
        for item in fields.values():
            _resource_refs_as_urns(item)
    elif kind == "list_value":
        for item in value.list_value.values:
            _resource_refs_as_urns(item)


def _without_resource_refs(struct: struct_pb2.Struct) -> struct_pb2.Struct:
    wrapped = struct_pb2.Value()
    wrapped.struct_value.CopyFrom(struct)
    _resource_refs_as_urns(wrapped)
    return wrapped.struct_value if wrapped.WhichOneof("kind") == "struct_value" else struct_pb2.Struct()


class RecordingMonitor(MockMonitor):
    """The SDK's mock monitor, except that resource references in inputs stay URNs.

    The SDK runs the monitor's calls on executor threads and, when it deserializes an
    input that references a resource (an EKS cluster, an IAM role), builds a live Resource
    there, whose read (``get_resource``) is scheduled on that thread's own event loop. The
    program's loop then awaits it and fails with "attached to a different loop", depending
    on timing. The recorded inputs only need the reference, so the monitor never builds one.
    """

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.recording = mocks

    def RegisterResource(self, request: Any) -> Any:
        request.object.CopyFrom(_without_resource_refs(request.object))
        dependencies = frozenset(request.dependencies) | frozenset(
            urn for deps in request.propertyDependencies.values() for urn in deps.urns
        )
        response = super().RegisterResource(request)
        # Calls run on several threads: keyed by (type, name), joined to the records afterwards.
        self.recording.registrations[(request.type, request.name)] = (
            response.urn,
            dependencies,
            tuple(request.ignoreChanges),
        )
        return response

    def ReadResource(self, request: Any) -> Any:
        request.properties.CopyFrom(_without_resource_refs(request.properties))
        return super().ReadResource(request)

    def Invoke(self, request: Any) -> Any:
        request.args.CopyFrom(_without_resource_refs(request.args))
        return super().Invoke(request)


def install_mocks(mocks: RecordingMocks, stack: str) -> None:
    """``pulumi.runtime.set_mocks`` with :class:`RecordingMonitor`."""
    pulumi.runtime.set_mocks(mocks, project="tickcast", stack=stack, preview=False, monitor=RecordingMonitor(mocks))


@dataclass
class Deployment:
    """The result of one mocked run of the program."""

    stack: str
    config: dict[str, Any]
    resources: list[Recorded]
    outputs: dict[str, Any]
    secret_outputs: set[str]

    def of_type(self, typ: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str, name: str | None = None) -> Recorded:
        found = [r for r in self.of_type(typ) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {typ} {name or ''}, found {[r.name for r in found]}"
        return found[0]

    def waits_for(self, resource: Recorded) -> set[str]:
        """URNs ``resource`` waits for, directly or through what it waits for (custom resources)."""
        by_urn = {r.urn: r for r in self.resources if r.urn}
        seen: set[str] = set()
        todo = list(resource.dependencies)
        while todo:
            urn = todo.pop()
            if urn in seen:
                continue
            seen.add(urn)
            if urn in by_urn:
                todo.extend(by_urn[urn].dependencies)
        return seen

    def urn_of(self, typ: str, name: str) -> str:
        return self.one(typ, name).urn


def stack_file_config(stack: str) -> dict[str, Any]:
    """The ``config:`` block of ``Pulumi.<stack>.yaml``."""
    data = yaml.safe_load((PULUMI_DIR / f"Pulumi.{stack}.yaml").read_text())
    return dict(data.get("config") or {})


def run_program(stack: str, config: dict[str, Any]) -> Deployment:
    """Run ``__main__``'s program under mocks with ``config`` (namespaced keys) for ``stack``."""
    from tickcast_infra import config as config_module
    from tickcast_infra import stack as stack_module

    region = str(config.get("aws:region", REGION_FALLBACK))
    mocks = RecordingMocks(region)
    install_mocks(mocks, stack)
    raw = {key: value if isinstance(value, str) else json.dumps(value) for key, value in config.items()}
    secret_keys = [key for key in raw if key in SECRET_KEYS]
    pulumi.runtime.set_all_config(raw, secret_keys)

    result: dict[str, Any] = {}

    @pulumi.runtime.test
    def program() -> pulumi.Output[Any]:
        built = stack_module.build(config_module.load())
        outputs = {key: pulumi.Output.from_input(value) for key, value in built.outputs.items()}

        async def gather() -> None:
            result["outputs"] = {key: await out.future(with_unknowns=True) for key, out in outputs.items()}
            result["secret"] = {key for key, out in outputs.items() if await out.is_secret()}

        return pulumi.Output.from_input(asyncio.ensure_future(gather()))

    program()
    return Deployment(stack, config, mocks.joined(), result["outputs"], result["secret"])


SECRET_KEYS = ("tickcast:polygonApiKey", "tickcast:dashboardOidcClientSecret")
"""Config keys set with `pulumi config set --secret`."""
OPERATOR_ENDPOINT_CIDRS = ["198.18.7.0/24"]
"""The public API endpoint's CIDRs an operator names before the first `pulumi up` (the stack files
cannot: the program refuses documentation ranges and has no 0.0.0.0/0 default)."""


def with_secret(config: dict[str, Any]) -> dict[str, Any]:
    """A stack file's config plus what its operator sets before the first `pulumi up`: the Polygon
    key and, unless the stack keeps its API private, the CIDRs that may reach the API endpoint."""
    operator: dict[str, Any] = {"tickcast:polygonApiKey": POLYGON_TEST_KEY}
    if config.get("tickcast:endpointPublicAccess", True) not in (False, "false"):
        operator["tickcast:endpointPublicAccessCidrs"] = OPERATOR_ENDPOINT_CIDRS
    return {**operator, **config}


@pytest.fixture(scope="session")
def dev() -> Deployment:
    return run_program("dev", with_secret(stack_file_config("dev")))


@pytest.fixture(scope="session")
def prod() -> Deployment:
    return run_program("prod", with_secret(stack_file_config("prod")))


DASHBOARD_OIDC = {
    "tickcast:dashboardOidcIssuer": "https://login.acme-trading.net/oauth2/default",
    "tickcast:dashboardOidcAuthorizationEndpoint": "https://login.acme-trading.net/oauth2/default/v1/authorize",
    "tickcast:dashboardOidcTokenEndpoint": "https://login.acme-trading.net/oauth2/default/v1/token",
    "tickcast:dashboardOidcUserInfoEndpoint": "https://login.acme-trading.net/oauth2/default/v1/userinfo",
    "tickcast:dashboardOidcClientId": "0oa1tickcastdashboard",
    "tickcast:dashboardOidcClientSecret": "oidc-client-secret-not-real",
}
"""An OIDC client for the dashboard's load balancer sign-in."""
NAMED_PROD = {
    "tickcast:endpointPublicAccessCidrs": ["198.18.7.0/24"],
    "tickcast:dashboardScheme": "internal",
    "tickcast:dashboardHost": "tickcast.markets.acme-trading.net",
    "tickcast:dashboardHostedZoneId": "Z04417372EXAMPLEZONE",
    "tickcast:dashboardCertificateArn": (
        "arn:aws:acm:us-east-1:210987654321:certificate/3f1c2b8e-5d4a-4c1e-9a7b-2e6f0d9c8b71"
    ),
    **DASHBOARD_OIDC,
}
"""What an operator sets on prod before the first `pulumi up` (Pulumi.prod.yaml's comments)."""


@pytest.fixture(scope="session")
def named_prod() -> Deployment:
    return run_program("prod", with_secret({**stack_file_config("prod"), **NAMED_PROD}))


@pytest.fixture(scope="session")
def serverless() -> Deployment:
    config = with_secret(stack_file_config("dev"))
    config["tickcast:kafkaMode"] = "serverless"
    return run_program("serverless", config)


@pytest.fixture(scope="session", params=["dev", "prod", "serverless"])
def deployment(request: pytest.FixtureRequest) -> Deployment:
    return request.getfixturevalue(request.param)


_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # pulumi.runtime.rpc._special_secret_sig


def is_secret_value(value: Any) -> bool:
    """Whether a recorded input is a Pulumi secret (the engine's wire form of one)."""
    return isinstance(value, dict) and value.get(_SIG_KEY) == _SECRET_SIG


def unwrap(value: Any) -> Any:
    """A recorded input with secret markers removed, for assertions on the content."""
    if is_secret_value(value):
        return unwrap(value["value"])
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def plain_strings(value: Any) -> list[str]:
    """Every string in a recorded input that is not inside a secret."""
    if is_secret_value(value):
        return []
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *plain_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in plain_strings(v)]
    return [value] if isinstance(value, str) else []
