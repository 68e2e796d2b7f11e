"""Container images: one ECR repository per deployable."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

IMAGES = ("producer", "consumer", "forecaster", "serving", "dashboard")
"""The images the chart runs; Ray batch jobs use the serving image."""


def lifecycle_policy(keep_images: int) -> str:
    """Expire untagged images after a week and keep only the newest ``keep_images`` tagged ones."""
    return json.dumps(
        {
            "rules": [
                {
                    "rulePriority": 1,
                    "description": "expire untagged images",
                    "selection": {
                        "tagStatus": "untagged",
                        "countType": "sinceImagePushed",
                        "countUnit": "days",
                        "countNumber": 7,
                    },
                    "action": {"type": "expire"},
                },
                {
                    "rulePriority": 2,
                    "description": f"keep the newest {keep_images} images",
                    "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": keep_images},
                    "action": {"type": "expire"},
                },
            ]
        }
    )


@dataclass(frozen=True)
class RegistryArgs:
    """Repository names are ``<cluster_name>/<image>``."""

    cluster_name: str
    force_destroy: bool
    # CI pushes a new tag per release: tags stay immutable. When `pulumi up` builds, it pushes
    # under the stack's one tag again after each change, so tags must move; the chart pulls
    # by digest either way, so a moved tag never changes what runs.
    immutable_tags: bool = True
    images: Sequence[str] = IMAGES
    keep_images: int = 50


class Registry(pulumi.ComponentResource):
    """ECR repositories with scan on push and KMS encryption; immutable tags unless `pulumi up` builds."""

    repository_urls: dict[str, pulumi.Output[str]]
    repository_names: dict[str, pulumi.Output[str]]
    registry_ids: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: RegistryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickcast:infra:Registry", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.repository_urls = {}
        self.repository_names = {}
        self.registry_ids = {}
        for image in args.images:
            repo = aws.ecr.Repository(
                f"{name}-{image}",
                name=f"{args.cluster_name}/{image}",
                image_tag_mutability="IMMUTABLE" if args.immutable_tags else "MUTABLE",
                image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
                encryption_configurations=[aws.ecr.RepositoryEncryptionConfigurationArgs(encryption_type="KMS")],
                force_delete=args.force_destroy,
                opts=child,
            )
            aws.ecr.LifecyclePolicy(
                f"{name}-{image}", repository=repo.name, policy=lifecycle_policy(args.keep_images), opts=child
            )
            self.repository_urls[image] = repo.repository_url
            self.repository_names[image] = repo.name
            self.registry_ids[image] = repo.registry_id
        self.register_outputs({"repositoryUrls": self.repository_urls})
