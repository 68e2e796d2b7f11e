"""EKS: private nodes, OIDC for IRSA, a CPU group and a tainted GPU group sized from config."""

from __future__ import annotations

from conftest import Deployment, run_program, stack_file_config, with_secret


def _group(deployment: Deployment, pool: str) -> dict:
    return deployment.one("eks:index:ManagedNodeGroup", f"cluster-{pool}").inputs


def test_gpu_group_is_tainted_labelled_and_uses_the_nvidia_ami(deployment: Deployment) -> None:
    gpu = _group(deployment, "gpu")
    assert gpu["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}]
    assert gpu["labels"] == {"tickcast.io/node-pool": "gpu", "nvidia.com/gpu.present": "true"}
    assert gpu["amiType"] == deployment.config.get("tickcast:gpuAmiType", "AL2023_x86_64_NVIDIA")
    assert "NVIDIA" in gpu["amiType"]


def test_node_groups_are_sized_and_typed_from_config(deployment: Deployment) -> None:
    config = deployment.config
    for pool in ("cpu", "gpu"):
        group = _group(deployment, pool)
        scaling = group["scalingConfig"]
        assert scaling == {
            "minSize": config[f"tickcast:{pool}MinSize"],
            "desiredSize": config[f"tickcast:{pool}DesiredSize"],
            "maxSize": config[f"tickcast:{pool}MaxSize"],
        }
        assert group["instanceTypes"] == config[f"tickcast:{pool}InstanceTypes"]
    assert _group(deployment, "gpu")["capacityType"] == config["tickcast:gpuCapacityType"]


def test_dev_and_prod_differ_where_their_configs_do(dev: Deployment, prod: Deployment) -> None:
    assert _group(dev, "gpu")["scalingConfig"]["maxSize"] == 1
    assert _group(prod, "gpu")["scalingConfig"] == {"minSize": 2, "desiredSize": 2, "maxSize": 4}
    assert _group(prod, "gpu")["instanceTypes"] == ["g5.2xlarge"]


def test_cpu_group_is_not_tainted(deployment: Deployment) -> None:
    cpu = _group(deployment, "cpu")
    assert not cpu.get("taints")
    assert cpu["labels"] == {"tickcast.io/node-pool": "cpu"}


def test_nodes_are_private(deployment: Deployment) -> None:
    private = {s.name for s in deployment.of_type("aws:ec2/subnet:Subnet") if "private" in s.name}
    private_ids = sorted(f"{name}-id" for name in private)
    for pool in ("cpu", "gpu"):
        assert sorted(_group(deployment, pool)["subnetIds"]) == private_ids
    cluster = deployment.one("eks:index:Cluster").inputs
    assert cluster["nodeAssociatePublicIpAddress"] is False
    assert cluster["skipDefaultNodeGroup"] is True


def test_cluster_has_oidc_api_access_encryption_and_logs(deployment: Deployment) -> None:
    cluster = deployment.one("eks:index:Cluster").inputs
    assert cluster["createOidcProvider"] is True
    assert cluster["authenticationMode"] == "API"
    assert cluster["endpointPrivateAccess"] is True
    assert cluster["encryptionConfigKeyArn"] == deployment.one("aws:kms/key:Key", "cluster-secrets").outputs["arn"]
    assert {"api", "audit", "authenticator"} <= set(cluster["enabledClusterLogTypes"])
    assert cluster["publicAccessCidrs"] == deployment.config.get("tickcast:endpointPublicAccessCidrs", ["0.0.0.0/0"])
    assert cluster["name"] == f"tickcast-{deployment.stack}"


def test_admin_roles_get_cluster_admin_access_entries() -> None:
    config = with_secret(stack_file_config("dev"))
    config["tickcast:adminRoleArns"] = ["arn:aws:iam::123456789012:role/platform-admin"]
    deployment = run_program("admins", config)
    entries = deployment.one("eks:index:Cluster").inputs["accessEntries"]
    (entry,) = entries.values()
    assert entry["principalArn"] == "arn:aws:iam::123456789012:role/platform-admin"
    (policy,) = entry["accessPolicies"].values()
    assert policy["policyArn"].endswith("/AmazonEKSClusterAdminPolicy")


def test_node_role_has_only_the_node_policies(deployment: Deployment) -> None:
    attached = {a.inputs["policyArn"] for a in deployment.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")}
    assert attached == {
        "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
        "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
        "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
        "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
    }


def test_device_plugin_runs_on_gpu_nodes_only(deployment: Deployment) -> None:
    plugin = deployment.one("kubernetes:helm.sh/v3:Release", "nvidia-device-plugin").inputs
    assert plugin["chart"] == "nvidia-device-plugin"
    assert plugin["values"]["nodeSelector"] == {"tickcast.io/node-pool": "gpu"}
    assert plugin["values"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_bottlerocket_gpu_nodes_skip_the_device_plugin_chart() -> None:
    config = with_secret(stack_file_config("dev"))
    config["tickcast:gpuAmiType"] = "BOTTLEROCKET_x86_64_NVIDIA"
    deployment = run_program("bottlerocket", config)
    assert _group(deployment, "gpu")["amiType"] == "BOTTLEROCKET_x86_64_NVIDIA"
    releases = {r.name for r in deployment.of_type("kubernetes:helm.sh/v3:Release")}
    assert "nvidia-device-plugin" not in releases
    assert {"kuberay-operator", "aws-load-balancer-controller", "tickcast"} <= releases


def test_addons_are_pinned_and_wait_for_the_nodes(deployment: Deployment) -> None:
    for release in deployment.of_type("kubernetes:helm.sh/v3:Release"):
        if release.name == "tickcast":
            continue
        assert release.inputs["version"], f"{release.name} is not pinned"
        assert release.inputs["repositoryOpts"]["repo"].startswith("https://")
    kuberay = deployment.one("kubernetes:helm.sh/v3:Release", "kuberay-operator").inputs
    assert kuberay["version"] == "1.7.0"  # the CRDs the chart is validated against
    assert kuberay["namespace"] == "kuberay-operator"
