"""ECR repositories and the Polygon key: hardened repositories, a secret that never leaks."""

from __future__ import annotations

from conftest import POLYGON_TEST_KEY, Deployment, is_secret_value, plain_strings, unwrap
from tickcast_infra.registry import IMAGES


def test_one_hardened_repository_per_image(deployment: Deployment) -> None:
    repos = {r.inputs["name"]: r.inputs for r in deployment.of_type("aws:ecr/repository:Repository")}
    assert set(repos) == {f"tickcast-{deployment.stack}/{image}" for image in IMAGES}
    for repo in repos.values():
        # `pulumi up` builds (the default) and pushes under the stack's tag after each change.
        assert repo["imageTagMutability"] == "MUTABLE"
        assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
        assert repo["encryptionConfigurations"] == [{"encryptionType": "KMS"}]
    assert len(deployment.of_type("aws:ecr/lifecyclePolicy:LifecyclePolicy")) == len(IMAGES)
    assert set(deployment.outputs["ecrRepositories"]) == set(IMAGES)


def test_polygon_key_has_one_path_the_kubernetes_secret(deployment: Deployment) -> None:
    """No Secrets Manager copy that no pod reads (and that rotation would not reach)."""
    assert not [r for r in deployment.resources if r.type.startswith("aws:secretsmanager")]
    assert "polygonSecretArn" not in deployment.outputs


def test_a_rotated_key_rolls_the_producer(deployment: Deployment) -> None:
    """The producer's pod annotation is the Secret's resourceVersion: a new key, a new rollout."""
    secret = deployment.one("kubernetes:core/v1:Secret", "tickcast-secrets")
    values = deployment.one("kubernetes:helm.sh/v3:Release", "tickcast").inputs["values"]
    version = values["producer"]["podAnnotations"]["tickcast.io/secret-version"]
    assert version == secret.outputs["metadata"]["resourceVersion"] == "4711"


def test_polygon_key_reaches_the_chart_only_through_a_secret(deployment: Deployment) -> None:
    k8s_secret = deployment.one("kubernetes:core/v1:Secret", "tickcast-secrets").inputs
    assert is_secret_value(k8s_secret["stringData"])
    assert unwrap(k8s_secret["stringData"]) == {"TICKCAST_POLYGON__API_KEY": POLYGON_TEST_KEY}
    values = deployment.one("kubernetes:helm.sh/v3:Release", "tickcast").inputs["values"]
    assert values["secrets"]["existingSecret"] == k8s_secret["metadata"]["name"]


def test_polygon_key_appears_nowhere_in_plain_text(deployment: Deployment) -> None:
    for resource in deployment.resources:
        assert not any(POLYGON_TEST_KEY in s for s in plain_strings(resource.inputs)), resource.name
    assert not any(POLYGON_TEST_KEY in str(value) for value in deployment.outputs.values())


def test_kubeconfig_output_is_secret(deployment: Deployment) -> None:
    assert "kubeconfig" in deployment.secret_outputs
    assert deployment.secret_outputs == {"kubeconfig"}


def test_missing_polygon_key_is_a_clear_error() -> None:
    import pytest

    from conftest import run_program, stack_file_config

    with pytest.raises(Exception, match="polygonApiKey"):
        run_program("nokey", stack_file_config("dev"))
