"""Print, as JSON, the chart values the Pulumi program passes for a stack: ``app.chart_values``
itself, fed with the stack's ``Pulumi.<stack>.yaml`` (config defaults from ``config.KEYS``) and
placeholders for what only ``pulumi up`` creates (ECR URLs, IRSA role ARNs, MSK brokers, the
bucket). Also prints the names and keys of the Secrets the program creates beside the release.

Run with the Pulumi program's interpreter, from pulumi/:
    cd pulumi && .venv/bin/python ../tests/k8s/pulumi_chart_values.py prod
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path.cwd()))

from tickcast_infra import app
from tickcast_infra.config import KEYS
from tickcast_infra.eks_facts import chart_resources

ACCOUNT = "123456789012"


def main(stack: str) -> dict[str, Any]:
    """The values and Secrets for ``stack``."""
    raw = yaml.safe_load(Path(f"Pulumi.{stack}.yaml").read_text())["config"]
    defaults = {key.name: key.default for key in KEYS}

    def get(short: str) -> Any:
        name = f"tickcast:{short}"
        return raw.get(name, defaults[name])

    region = raw["aws:region"]
    registry = f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com"
    images = sorted({image for image in app.CHART_IMAGES.values() if image})
    workloads = sorted({workload for _, workload in app.CHART_COMPONENTS.values()})
    inputs = app.ChartInputs(
        image_tag=get("imageTag"),
        repository_urls={image: f"{registry}/tickcast-{stack}/{image}" for image in images},
        role_arns={w: f"arn:aws:iam::{ACCOUNT}:role/tickcast-{stack}-{w}" for w in workloads},
        bootstrap_servers=f"b-1.tickcast-{stack}.example.kafka.{region}.amazonaws.com:9098",
        lake_url=f"s3://tickcast-{stack}-lake/{get('lakePrefix')}",
        region=region,
        kafka_partitions=get("kafkaPartitions"),
        kafka_replication_factor=get("kafkaReplicationFactor"),
        kafka_retention_hours=get("kafkaRetentionHours"),
        gpu_min_replicas=get("gpuMinSize"),
        gpu_replicas=get("gpuDesiredSize"),
        gpu_max_replicas=get("gpuMaxSize"),
        pod_resources=chart_resources(get("cpuInstanceTypes"), get("gpuInstanceTypes")),
    )
    secrets = {
        app.SECRETS_NAME: [app.POLYGON_API_KEY_VARIABLE],
        app.SERVING_TOKEN_SECRET: [app.SERVING_TOKEN_VARIABLE],
        app.RAY_AUTH_SECRET: [app.RAY_AUTH_TOKEN_KEY],
    }
    return {
        "values": app.chart_values(inputs),
        "secrets": secrets,
        "release": app.RELEASE_NAME,
        "namespace_labels": app.pod_security_labels(get("kubernetesVersion")),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
