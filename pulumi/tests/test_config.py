"""Every config key is declared once, documented in the README, and used as declared."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import (
    DASHBOARD_OIDC,
    POLYGON_TEST_KEY,
    PULUMI_DIR,
    SECRET_KEYS,
    run_program,
    stack_file_config,
    with_secret,
)
from tickcast_infra.config import KEYS, KEYS_BY_NAME, reference_markdown

README = PULUMI_DIR / "README.md"


def test_readme_reference_is_generated_from_the_declared_keys() -> None:
    text = README.read_text()
    assert reference_markdown() in text, (
        "pulumi/README.md's configuration reference is stale: paste the output of "
        "`.venv/bin/python -m tickcast_infra.config` into it"
    )


def test_only_config_py_reads_config() -> None:
    sources = [PULUMI_DIR / "__main__.py", *sorted((PULUMI_DIR / "tickcast_infra").glob("*.py"))]
    getters = r"\.(require|require_secret|get_secret|get_int|get_bool|get_float|get_object|require_\w+)\("
    for path in sources:
        if path.name != "config.py":
            text = path.read_text()
            assert "Config(" not in text.replace("StackConfig", ""), path.name
            assert not re.search(getters, text), path.name


def test_the_program_reads_exactly_the_declared_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spy on every config lookup of a whole run, the providers' SDKs included."""
    import pulumi.config

    read: set[str] = set()
    real = pulumi.config.get_config

    def spy(key: str) -> object:
        read.add(key)
        return real(key)

    monkeypatch.setattr(pulumi.config, "get_config", spy)
    run_program("spy", with_secret(stack_file_config("dev")))
    assert read == set(KEYS_BY_NAME), {
        "read but not declared": sorted(read - set(KEYS_BY_NAME)),
        "declared but never read": sorted(set(KEYS_BY_NAME) - read),
    }
    assert len(KEYS_BY_NAME) == len(KEYS), "a key is declared twice"


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_stack_files_use_only_declared_keys_with_valid_values(stack: str) -> None:
    config = stack_file_config(stack)
    unknown = sorted(set(config) - set(KEYS_BY_NAME))
    assert not unknown, f"Pulumi.{stack}.yaml sets undocumented keys: {unknown}"
    for name, value in config.items():
        key = KEYS_BY_NAME[name]
        if key.choices:
            assert value in key.choices, name
        expected = {"string": str, "integer": int, "boolean": bool, "list": list}[key.kind]
        assert isinstance(value, expected), name
    assert "tickcast:polygonApiKey" not in config, "the API key is set with `pulumi config set --secret`"


def test_stack_files_pin_the_region() -> None:
    for stack in ("dev", "prod"):
        assert stack_file_config(stack)["aws:region"]


def test_pulumi_yaml_uses_the_project_namespace_and_venv() -> None:
    project = yaml.safe_load((PULUMI_DIR / "Pulumi.yaml").read_text())
    assert project["name"] == "tickcast"
    assert project["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": ".venv"}}
    assert not (PULUMI_DIR / "__init__.py").exists(), "a package named pulumi would shadow the SDK"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("tickcast:gpuMinSize", 3, "gpuMinSize <= gpuDesiredSize <= gpuMaxSize"),
        ("tickcast:kafkaMode", "kraft", "kafkaMode is 'kraft'; use one of provisioned, serverless"),
        ("tickcast:azCount", 1, "azCount must be at least 2"),
        ("tickcast:vpcCidr", "10.0.0.0/8", "must be a /16 to /20"),
        ("tickcast:cpuInstanceTypes", "m6i.large", "tickcast:cpuInstanceTypes must be a list"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(key: str, value: object, message: str) -> None:
    config = with_secret(stack_file_config("dev"))
    config[key] = value
    with pytest.raises(Exception, match=re.escape(message)):
        run_program("bad", config)


CERT = "arn:aws:acm:us-east-1:210987654321:certificate/3f1c2b8e-5d4a-4c1e-9a7b-2e6f0d9c8b71"
EXPOSED = {
    "tickcast:dashboardScheme": "internal",
    "tickcast:dashboardHost": "tickcast.markets.acme-trading.net",
    "tickcast:dashboardCertificateArn": CERT,
    **DASHBOARD_OIDC,
}
"""A dashboard exposed on an internal ALB with everything it needs (TLS and OIDC sign-in)."""


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tickcast:endpointPublicAccessCidrs": ["203.0.113.0/24"]}, "documentation-only range"),
        ({"tickcast:endpointPublicAccessCidrs": ["198.51.100.7/32"]}, "<your address>/32"),
        ({"tickcast:endpointPublicAccessCidrs": ["2001:db8::/48"]}, "documentation-only range"),
        (
            {"tickcast:endpointPublicAccessCidrs": []},
            "tickcast:endpointPublicAccessCidrs is required while tickcast:endpointPublicAccess is true",
        ),
        ({"tickcast:endpointPublicAccess": False}, "is set but tickcast:endpointPublicAccess is false"),
        (
            {"tickcast:dashboardScheme": "internal"},
            "missing: tickcast:dashboardHost, tickcast:dashboardCertificateArn, tickcast:dashboardOidcIssuer",
        ),
        (
            {**EXPOSED, "tickcast:dashboardCertificateArn": ""},
            "needs HTTPS and OIDC sign-in at the load balancer; missing: tickcast:dashboardCertificateArn.",
        ),
        ({**EXPOSED, "tickcast:dashboardOidcClientId": ""}, "missing: tickcast:dashboardOidcClientId."),
        (
            {**EXPOSED, "tickcast:dashboardScheme": "internet-facing"},
            "tickcast:dashboardAllowedCidrs is required with tickcast:dashboardScheme internet-facing",
        ),
        ({**EXPOSED, "tickcast:dashboardOidcIssuer": "http://login.acme-trading.net"}, "must be an https:// URL"),
        (
            {**EXPOSED, "tickcast:dashboardOidcTokenEndpoint": "https://idp.example.com/token"},
            "reserved example domain",
        ),
        ({"tickcast:endpointPublicAccessCidrs": ["10.0.0.300/8"]}, "not a CIDR"),
        (
            {
                **EXPOSED,
                "tickcast:dashboardScheme": "internet-facing",
                "tickcast:dashboardAllowedCidrs": ["192.0.2.0/24"],
            },
            "dashboardAllowedCidrs has 192.0.2.0/24",
        ),
        ({"tickcast:dashboardHost": "tickcast.example.com"}, "reserved example name"),
        ({"tickcast:dashboardHost": "dash.test"}, "reserved example name"),
        ({"tickcast:dashboardHost": "not a host"}, "is not a DNS name"),
        (
            {
                "tickcast:dashboardHost": "t.acme.io",
                "tickcast:dashboardCertificateArn": CERT.replace("210987654321", "123456789012"),
            },
            "account 123456789012 is an AWS documentation example",
        ),
        (
            {"tickcast:dashboardHost": "t.acme.io", "tickcast:dashboardCertificateArn": "my-cert"},
            "not an ACM certificate ARN",
        ),
        (
            {
                "tickcast:dashboardHost": "t.acme.io",
                "tickcast:dashboardCertificateArn": CERT.replace(
                    "3f1c2b8e-5d4a-4c1e-9a7b-2e6f0d9c8b71", "0" * 8 + "-0000" * 3 + "-" + "0" * 12
                ),
            },
            "placeholder certificate id",
        ),
        (
            {
                "tickcast:dashboardHost": "t.acme.io",
                "tickcast:dashboardCertificateArn": CERT.replace("us-east-1", "eu-west-1"),
            },
            "request or import the certificate in us-east-1",
        ),
        ({"tickcast:dashboardCertificateArn": CERT}, "needs tickcast:dashboardHost"),
        ({"tickcast:dashboardHostedZoneId": "Z0123456789ABC"}, "needs tickcast:dashboardHost"),
        ({"tickcast:dashboardHost": "t.acme.io", "tickcast:dashboardHostedZoneId": "zone-1"}, "hosted zone id"),
        ({"tickcast:adminRoleArns": ["arn:aws:iam::123456789012:role/admin"]}, "documentation example"),
        ({"tickcast:adminRoleArns": ["admin"]}, "not an IAM role or user ARN"),
        ({"tickcast:gpuInstanceTypes": ["p9.mega"]}, "no row in tickcast_infra/eks_facts.py"),
        ({"tickcast:cpuInstanceTypes": ["g5.xlarge"]}, "GPU types go in tickcast:gpuInstanceTypes"),
    ],
)
def test_placeholders_and_unreachable_settings_are_refused_before_anything_is_created(
    overrides: dict[str, object], message: str
) -> None:
    config = {**with_secret(stack_file_config("dev")), **overrides}
    from conftest import RecordingMocks, install_mocks
    from tickcast_infra import config as config_module

    mocks = RecordingMocks("us-east-1")
    install_mocks(mocks, "bad")
    import json

    import pulumi

    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    pulumi.runtime.set_all_config(raw, [k for k in raw if k in SECRET_KEYS])
    with pytest.raises(config_module.ConfigError, match=re.escape(message)):
        config_module.load()
    assert mocks.resources == [], "nothing may be created before the config is checked"


def test_stack_files_ship_no_placeholders() -> None:
    """The shipped stacks load as they are: no documentation CIDR, example host or account."""
    text = "\n".join(
        line.split("#", 1)[0]
        for stack in ("dev", "prod")
        for line in (PULUMI_DIR / f"Pulumi.{stack}.yaml").read_text().splitlines()
    )
    for placeholder in ("203.0.113.", "198.51.100.", "192.0.2.", "example.com", "123456789012"):
        assert placeholder not in text, placeholder


def test_an_operator_configured_prod_stack_is_accepted(named_prod: object) -> None:
    assert named_prod is not None


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_a_stack_that_names_no_api_cidrs_is_refused_naming_the_key(stack: str) -> None:
    """No 0.0.0.0/0 default for the public Kubernetes API: the shipped stack files, as they are,
    stop before anything is created and say which key to set."""
    config = {**stack_file_config(stack), "tickcast:polygonApiKey": POLYGON_TEST_KEY}
    assert "tickcast:endpointPublicAccessCidrs" not in config
    with pytest.raises(Exception, match=re.escape("pulumi config set --path 'tickcast:endpointPublicAccessCidrs[0]'")):
        run_program(f"{stack}-no-cidrs", config)


def test_an_exposed_dashboard_without_its_oidc_client_secret_is_refused() -> None:
    config = {**with_secret(stack_file_config("dev")), **DASHBOARD_OIDC}
    config.update(
        {
            "tickcast:dashboardScheme": "internal",
            "tickcast:dashboardHost": "tickcast.markets.acme-trading.net",
            "tickcast:dashboardCertificateArn": CERT,
        }
    )
    del config["tickcast:dashboardOidcClientSecret"]
    with pytest.raises(Exception, match=re.escape("missing: tickcast:dashboardOidcClientSecret (--secret)")):
        run_program("no-oidc-secret", config)


def test_no_key_defaults_to_the_whole_internet() -> None:
    """Neither the API endpoint nor the dashboard has a 0.0.0.0/0 (or ::/0) default."""
    for key in KEYS:
        if key.kind == "list":
            assert not any(str(v).endswith("/0") for v in key.default), key.name
    assert KEYS_BY_NAME["tickcast:dashboardScheme"].default == "none"


def test_a_private_api_endpoint_needs_no_cidrs() -> None:
    config = with_secret({**stack_file_config("dev"), "tickcast:endpointPublicAccess": False})
    assert "tickcast:endpointPublicAccessCidrs" not in config
    cluster = run_program("private-api", config).one("eks:index:Cluster").inputs
    assert cluster["endpointPublicAccess"] is False and cluster["endpointPrivateAccess"] is True
    assert not cluster.get("publicAccessCidrs")
