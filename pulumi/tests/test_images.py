"""The five images: built for linux/amd64 and pushed to ECR by `pulumi up`, or looked up when CI
pushed them; the chart pulls them by digest, so it never installs before they exist."""

from __future__ import annotations

from pathlib import Path

from conftest import (
    PULUMI_DIR,
    Deployment,
    is_secret_value,
    plain_strings,
    run_program,
    stack_file_config,
    unwrap,
    with_secret,
)
from tickcast_infra.images import BUILD_CONTEXT, dockerfile
from tickcast_infra.registry import IMAGES

IMAGE = "docker-build:index:Image"


def test_every_image_is_built_for_the_nodes_and_pushed_to_its_repository(deployment: Deployment) -> None:
    repos = {r.inputs["name"].rsplit("/", 1)[1]: r for r in deployment.of_type("aws:ecr/repository:Repository")}
    tag = deployment.config.get("tickcast:imageTag", "0.1.0")
    built = {r.name.removeprefix("images-"): r for r in deployment.of_type(IMAGE)}
    assert set(built) == set(IMAGES)
    for image, resource in built.items():
        inputs = resource.inputs
        assert inputs["platforms"] == ["linux/amd64"]
        assert inputs["push"] is True
        assert inputs["tags"] == [f"{repos[image].outputs['repositoryUrl']}:{tag}"]
        assert inputs["context"] == {"location": BUILD_CONTEXT}
        assert inputs["dockerfile"] == {"location": dockerfile(image)}
        # the ECR token is a secret, and so is the registry list that carries it
        assert is_secret_value(inputs["registries"])
        (registry,) = unwrap(inputs["registries"])
        assert registry["address"].endswith(".amazonaws.com") and registry["username"] == "AWS"
        assert "ecr-token" not in plain_strings(inputs)


def test_the_dockerfiles_the_program_builds_exist() -> None:
    for image in IMAGES:
        path = (PULUMI_DIR / dockerfile(image)).resolve()
        assert path.is_file(), path
        assert path.parent == (PULUMI_DIR / BUILD_CONTEXT).resolve() / "docker"
    assert Path(PULUMI_DIR / BUILD_CONTEXT / "pyproject.toml").is_file(), "the build context is the repository root"


def test_chart_pulls_the_built_digests(deployment: Deployment) -> None:
    values = deployment.one("kubernetes:helm.sh/v3:Release", "tickcast").inputs["values"]
    digests = {r.name.removeprefix("images-"): r.outputs["digest"] for r in deployment.of_type(IMAGE)}
    assert values["producer"]["image"]["digest"] == digests["producer"]
    assert values["rayService"]["image"]["digest"] == digests["serving"]
    assert values["maintenance"]["image"]["digest"] == digests["consumer"]
    assert deployment.outputs["imageDigests"] == digests


def test_prebuilt_images_are_looked_up_and_a_missing_one_stops_the_preview() -> None:
    """buildImages false (CI pushed them): each digest comes from ECR's get-image lookup, which
    fails the preview, naming repository and tag, when the image is not there."""
    config = with_secret(stack_file_config("dev"))
    config["tickcast:buildImages"] = False
    deployment = run_program("prebuilt", config)
    assert not deployment.of_type(IMAGE)
    # CI pushes a new tag per release, so here tags are immutable.
    repos = deployment.of_type("aws:ecr/repository:Repository")
    assert repos and all(r.inputs["imageTagMutability"] == "IMMUTABLE" for r in repos)
    values = deployment.one("kubernetes:helm.sh/v3:Release", "tickcast").inputs["values"]
    assert values["dashboard"]["image"]["digest"] == f"sha256:{'ab' * 32}"
