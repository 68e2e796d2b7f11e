"""Container images: one ECR repository per deployable, plus the Polygon key in Secrets Manager."""

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
    images: Sequence[str] = IMAGES
    keep_images: int = 50


class Registry(pulumi.ComponentResource):
    """ECR repositories with immutable tags, scan on push and KMS encryption."""

    repository_urls: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: RegistryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickcast:infra:Registry", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.repository_urls = {}
        for image in args.images:
            repo = aws.ecr.Repository(
                f"{name}-{image}",
                name=f"{args.cluster_name}/{image}",
                image_tag_mutability="IMMUTABLE",
                image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
                encryption_configurations=[aws.ecr.RepositoryEncryptionConfigurationArgs(encryption_type="KMS")],
                force_delete=args.force_destroy,
                opts=child,
            )
            aws.ecr.LifecyclePolicy(
                f"{name}-{image}", repository=repo.name, policy=lifecycle_policy(args.keep_images), opts=child
            )
            self.repository_urls[image] = repo.repository_url
        self.register_outputs({"repositoryUrls": self.repository_urls})


@dataclass(frozen=True)
class PolygonSecretArgs:
    """The key itself comes from the stack's secret config and stays a secret output."""

    cluster_name: str
    api_key: pulumi.Input[str]
    force_destroy: bool


class PolygonSecret(pulumi.ComponentResource):
    """The Polygon/Massive API key in Secrets Manager (encrypted with the account's managed key)."""

    arn: pulumi.Output[str]
    name: pulumi.Output[str]

    def __init__(self, name: str, args: PolygonSecretArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickcast:infra:PolygonSecret", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        secret = aws.secretsmanager.Secret(
            name,
            name=f"{args.cluster_name}/polygon-api-key",
            description="Polygon/Massive API key of the tickcast producer",
            recovery_window_in_days=0 if args.force_destroy else 7,
            opts=child,
        )
        aws.secretsmanager.SecretVersion(
            name,
            secret_id=secret.id,
            secret_string=pulumi.Output.secret(args.api_key),
            opts=child,
        )
        self.arn = secret.arn
        self.name = secret.name
        self.register_outputs({"arn": self.arn})
