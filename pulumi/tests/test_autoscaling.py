"""Karpenter: GPU nodes on demand (to zero in dev), room for a RayService upgrade, and the Ray
autoscaler's bounds matching the pools'."""

from __future__ import annotations

import json

from conftest import ACCOUNT, Deployment
from tickcast_infra.autoscaling import GPU_SURGE, controller_policy

NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"


def _pool(deployment: Deployment, pool: str) -> dict:
    return deployment.one(NODE_POOL, f"karpenter-pool-{pool}").inputs["spec"]


def _requirement(spec: dict, key: str) -> list[str]:
    (found,) = [r["values"] for r in spec["template"]["spec"]["requirements"] if r["key"] == key]
    return found


def test_gpu_pool_is_tainted_labelled_and_offers_every_configured_gpu_type(deployment: Deployment) -> None:
    gpu = _pool(deployment, "gpu")
    assert gpu["template"]["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]
    assert gpu["template"]["metadata"]["labels"] == {"tickcast.io/node-pool": "gpu", "nvidia.com/gpu.present": "true"}
    assert _requirement(gpu, "node.kubernetes.io/instance-type") == deployment.config["tickcast:gpuInstanceTypes"]


def test_dev_gpu_alternatives_and_spot_with_on_demand_fallback(dev: Deployment, prod: Deployment) -> None:
    dev_gpu = _pool(dev, "gpu")
    assert {t.split(".")[0] for t in _requirement(dev_gpu, "node.kubernetes.io/instance-type")} == {
        "g5",
        "g6",
        "g6e",
        "g4dn",
    }
    assert _requirement(dev_gpu, "karpenter.sh/capacity-type") == ["spot", "on-demand"]
    assert _requirement(_pool(prod, "gpu"), "karpenter.sh/capacity-type") == ["on-demand"]


def test_gpu_pool_empties_to_zero_and_allows_an_upgrade_surge(deployment: Deployment) -> None:
    gpu = _pool(deployment, "gpu")
    # Karpenter removes empty GPU nodes, so with no worker there is no GPU node
    assert gpu["disruption"]["consolidationPolicy"] == "WhenEmpty"
    # a RayService upgrade (NewCluster) runs a second set of workers beside the first
    max_workers = deployment.config["tickcast:gpuMaxSize"]
    assert gpu["limits"] == {"nvidia.com/gpu": str(GPU_SURGE * max_workers)} and GPU_SURGE == 2
    assert "replicas" not in json.dumps(gpu), "Pulumi sets bounds, never a node count"


def test_dev_serve_and_ray_workers_may_go_to_zero(dev: Deployment) -> None:
    values = dev.one("kubernetes:helm.sh/v3:Release", "tickcast").inputs["values"]
    assert dev.config["tickcast:gpuMinSize"] == 0
    assert values["rayService"]["workerGroup"]["minReplicas"] == 0
    assert values["config"]["serving"]["min_replicas"] == 0


def test_ray_never_asks_for_more_gpu_workers_than_the_pool_allows(deployment: Deployment) -> None:
    values = deployment.one("kubernetes:helm.sh/v3:Release", "tickcast").inputs["values"]
    max_workers = deployment.config["tickcast:gpuMaxSize"]
    assert values["rayService"]["workerGroup"]["maxReplicas"] == max_workers
    assert values["config"]["serving"]["max_replicas"] == max_workers
    gpu_limit = int(_pool(deployment, "gpu")["limits"]["nvidia.com/gpu"])
    assert gpu_limit >= 2 * max_workers  # old and new cluster during an upgrade


def test_ray_worker_selector_and_toleration_match_the_gpu_pool(deployment: Deployment) -> None:
    workers = deployment.one("kubernetes:helm.sh/v3:Release", "tickcast").inputs["values"]["rayService"]["workerGroup"]
    template = _pool(deployment, "gpu")["template"]
    assert all(template["metadata"]["labels"][k] == v for k, v in workers["nodeSelector"].items())
    (toleration,) = workers["tolerations"]
    (taint,) = template["spec"]["taints"]
    assert toleration["key"] == taint["key"] and toleration["effect"] == taint["effect"]


def test_cpu_pool_matches_the_cpu_node_group_labels(deployment: Deployment) -> None:
    cpu = _pool(deployment, "cpu")
    group = deployment.one("aws:eks/nodeGroup:NodeGroup", "cluster-cpu").inputs
    assert cpu["template"]["metadata"]["labels"] == group["labels"]
    assert _requirement(cpu, "node.kubernetes.io/instance-type") == group["instanceTypes"]
    assert "taints" not in cpu["template"]["spec"]


def test_node_classes_use_the_private_subnets_the_cluster_security_group_and_the_karpenter_role(
    deployment: Deployment,
) -> None:
    private = sorted(f"{s.name}-id" for s in deployment.of_type("aws:ec2/subnet:Subnet") if "private" in s.name)
    role = deployment.one("aws:iam/role:Role", "karpenter-node")
    for pool in ("cpu", "gpu"):
        spec = deployment.one(NODE_CLASS, f"karpenter-class-{pool}").inputs["spec"]
        assert sorted(t["id"] for t in spec["subnetSelectorTerms"]) == private
        assert spec["securityGroupSelectorTerms"] == [{"id": "sg-0eksclusterprimary"}]
        assert spec["role"] == role.outputs["name"]
        # IMDSv2 only, hop limit 1: pods never reach the node role's credentials
        assert spec["metadataOptions"] == {
            "httpEndpoint": "enabled",
            "httpProtocolIPv6": "disabled",
            "httpTokens": "required",
            "httpPutResponseHopLimit": 1,
        }
    entry = deployment.one("aws:eks/accessEntry:AccessEntry", "karpenter-node").inputs
    assert entry["type"] == "EC2_LINUX" and entry["principalArn"] == role.outputs["arn"]


def test_karpenter_reads_interruptions_from_its_queue(deployment: Deployment) -> None:
    queue = deployment.one("aws:sqs/queue:Queue")
    rules = deployment.of_type("aws:cloudwatch/eventRule:EventRule")
    assert {json.loads(r.inputs["eventPattern"])["detail-type"][0] for r in rules} == {
        "EC2 Spot Instance Interruption Warning",
        "EC2 Instance Rebalance Recommendation",
        "EC2 Instance State-change Notification",
        "AWS Health Event",
    }
    assert {t.inputs["arn"] for t in deployment.of_type("aws:cloudwatch/eventTarget:EventTarget")} == {
        queue.outputs["arn"]
    }
    release = deployment.one("kubernetes:helm.sh/v3:Release", "karpenter").inputs
    assert release["values"]["settings"] == {
        "clusterName": f"tickcast-{deployment.stack}",
        "interruptionQueue": queue.outputs["name"],
    }
    assert release["values"]["nodeSelector"] == {"tickcast.io/node-pool": "cpu"}


def test_controller_policy_passes_only_the_node_role_and_terminates_only_owned_instances() -> None:
    policy = controller_policy("tickcast-dev", "us-east-1", ACCOUNT, "arn:aws:iam::1:role/node", "arn:sqs")
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["PassNodeRole"]["Resource"] == "arn:aws:iam::1:role/node"
    assert by_sid["OwnedInstances"]["Condition"] == {
        "StringEquals": {"aws:ResourceTag/kubernetes.io/cluster/tickcast-dev": "owned"}
    }
    assert by_sid["InterruptionQueue"]["Resource"] == "arn:sqs"
