"""The five images, built and pushed by `pulumi up`, or looked up when CI pushed them.

Either way the result is each image's digest, which the chart pulls by (``<section>.image.digest``):
the release depends on the digests, so it is never installed before its images exist, and a
changed image rolls its pods even under the same tag.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

from tickcast_infra.registry import IMAGES

BUILD_CONTEXT = ".."
"""The repository root, relative to pulumi/ (where `pulumi up` runs): the Dockerfiles' context."""
PLATFORM = "linux/amd64"
"""The nodes' architecture (x86_64 CPU and NVIDIA AMIs), whatever machine runs `pulumi up`."""


def dockerfile(image: str) -> str:
    """The Dockerfile of ``image``, relative to pulumi/."""
    return f"{BUILD_CONTEXT}/docker/{image}.Dockerfile"


@dataclass(frozen=True)
class ImagesArgs:
    """Where the images go and under which tag; ``build`` false looks up pushed ones instead."""

    tag: str
    build: bool
    repository_urls: Mapping[str, pulumi.Input[str]]
    repository_names: Mapping[str, pulumi.Input[str]]
    registry_ids: Mapping[str, pulumi.Input[str]]


class Images(pulumi.ComponentResource):
    """One digest per image: built with BuildKit (Docker Build provider) and pushed to ECR, or
    read from ECR, which fails the preview with the missing tag named."""

    digests: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: ImagesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickcast:infra:Images", name, None, opts)
        self.digests = {}
        for image in IMAGES:
            if args.build:
                token = aws.ecr.get_authorization_token_output(registry_id=args.registry_ids[image])
                built = docker_build.Image(
                    f"{name}-{image}",
                    context=docker_build.BuildContextArgs(location=BUILD_CONTEXT),
                    dockerfile=docker_build.DockerfileArgs(location=dockerfile(image)),
                    platforms=[docker_build.Platform.LINUX_AMD64],
                    push=True,
                    tags=[pulumi.Output.concat(args.repository_urls[image], ":", args.tag)],
                    registries=[
                        docker_build.RegistryArgs(
                            address=token.proxy_endpoint,
                            username=token.user_name,
                            password=pulumi.Output.secret(token.password),
                        )
                    ],
                    opts=pulumi.ResourceOptions(parent=self),
                )
                self.digests[image] = built.digest
            else:
                pushed = aws.ecr.get_image_output(repository_name=args.repository_names[image], image_tag=args.tag)
                self.digests[image] = pushed.image_digest
        self.register_outputs({"digests": self.digests})
