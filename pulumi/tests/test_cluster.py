"""EKS: private nodes, OIDC for IRSA, a CPU group, managed add-ons, and the add-on releases' order."""

from __future__ import annotations

from conftest import Deployment, Recorded, run_program, stack_file_config, with_secret
from tickcast_infra.eks_facts import KUBERNETES_STANDARD_SUPPORT_ENDS, KUBERNETES_VERSION

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
RELEASE = "kubernetes:helm.sh/v3:Release"


def _group(deployment: Deployment) -> Recorded:
    return deployment.one(NODE_GROUP, "cluster-cpu")


def test_the_only_node_group_is_the_cpu_one(deployment: Deployment) -> None:
    """GPU nodes come from Karpenter; no GPU node group holds a node or blocks anything."""
    assert [g.name for g in deployment.of_type(NODE_GROUP)] == ["cluster-cpu"]
    assert not deployment.of_type("eks:index:ManagedNodeGroup")


def test_cpu_group_is_sized_from_config_and_pulumi_leaves_its_size_to_eks(deployment: Deployment) -> None:
    config = deployment.config
    group = _group(deployment)
    assert group.inputs["scalingConfig"] == {
        "minSize": config["tickcast:cpuMinSize"],
        "desiredSize": config["tickcast:cpuDesiredSize"],
        "maxSize": config["tickcast:cpuMaxSize"],
    }
    assert group.inputs["instanceTypes"] == config["tickcast:cpuInstanceTypes"]
    assert group.ignore_changes == ("scalingConfig.desiredSize",)


def test_cpu_group_is_not_tainted(deployment: Deployment) -> None:
    cpu = _group(deployment).inputs
    assert not cpu.get("taints")
    assert cpu["labels"] == {"tickcast.io/node-pool": "cpu"}


def test_nodes_are_private(deployment: Deployment) -> None:
    private = {s.name for s in deployment.of_type("aws:ec2/subnet:Subnet") if "private" in s.name}
    private_ids = sorted(f"{name}-id" for name in private)
    assert sorted(_group(deployment).inputs["subnetIds"]) == private_ids
    cluster = deployment.one("eks:index:Cluster").inputs
    assert cluster["nodeAssociatePublicIpAddress"] is False
    assert cluster["skipDefaultNodeGroup"] is True


def test_kubernetes_version_is_in_standard_support_and_set_in_one_place(deployment: Deployment) -> None:
    cluster = deployment.one("eks:index:Cluster").inputs
    assert cluster["version"] == KUBERNETES_VERSION == "1.35"
    assert KUBERNETES_STANDARD_SUPPORT_ENDS > "2026-12-03"
    for stack in ("dev", "prod"):
        assert "tickcast:kubernetesVersion" not in stack_file_config(stack), "one setting: eks_facts.py"
    assert deployment.outputs["kubernetesVersion"] == "1.35"


def test_control_plane_logs_have_a_retention_and_exist_before_the_cluster(deployment: Deployment) -> None:
    group = deployment.one("aws:cloudwatch/logGroup:LogGroup", "cluster-logs")
    assert group.inputs["name"] == f"/aws/eks/tickcast-{deployment.stack}/cluster"
    assert group.inputs["retentionInDays"] == 30
    assert group.urn in deployment.one("eks:index:Cluster").dependencies


def test_coredns_and_metrics_server_are_managed_addons_after_the_cpu_nodes(deployment: Deployment) -> None:
    addons = {a.inputs["addonName"]: a for a in deployment.of_type("aws:eks/addon:Addon")}
    assert set(addons) == {"coredns", "metrics-server", "vpc-cni"}  # vpc-cni: before the nodes, below
    for addon in (addons["coredns"], addons["metrics-server"]):
        assert addon.inputs["clusterName"] == f"tickcast-{deployment.stack}"
        assert _group(deployment).urn in addon.dependencies
    # pulumi_eks's own CoreDNS (created before any node) is off
    assert deployment.one("eks:index:Cluster").inputs["corednsAddonOptions"]["enabled"] is False


def test_cluster_has_oidc_api_access_encryption_and_logs(deployment: Deployment) -> None:
    cluster = deployment.one("eks:index:Cluster").inputs
    assert cluster["createOidcProvider"] is True
    assert cluster["authenticationMode"] == "API"
    assert cluster["endpointPrivateAccess"] is True
    assert cluster["encryptionConfigKeyArn"] == deployment.one("aws:kms/key:Key", "cluster-secrets").outputs["arn"]
    assert {"api", "audit", "authenticator"} <= set(cluster["enabledClusterLogTypes"])
    # public only for the CIDRs the operator named (conftest.with_secret): there is no default
    assert cluster["endpointPublicAccess"] is True
    assert cluster["publicAccessCidrs"] == deployment.config["tickcast:endpointPublicAccessCidrs"]
    assert "0.0.0.0/0" not in cluster["publicAccessCidrs"]
    assert cluster["name"] == f"tickcast-{deployment.stack}"


def test_admin_roles_get_cluster_admin_access_entries() -> None:
    config = with_secret(stack_file_config("dev"))
    config["tickcast:adminRoleArns"] = ["arn:aws:iam::210987654321:role/platform-admin"]
    deployment = run_program("admins", config)
    entries = deployment.one("eks:index:Cluster").inputs["accessEntries"]
    (entry,) = entries.values()
    assert entry["principalArn"] == "arn:aws:iam::210987654321:role/platform-admin"
    (policy,) = entry["accessPolicies"].values()
    assert policy["policyArn"].endswith("/AmazonEKSClusterAdminPolicy")


NODE_ROLE_POLICIES = {
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
    "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
}
CNI_POLICY = "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy"


def _attachments(deployment: Deployment) -> dict[str, set[str]]:
    """Role name (as the attachment refers to it) -> managed policies attached to it."""
    roles: dict[str, set[str]] = {}
    for a in deployment.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment"):
        roles.setdefault(a.inputs["role"], set()).add(a.inputs["policyArn"])
    return roles


def test_node_roles_have_only_the_node_policies_and_not_the_cni_one(deployment: Deployment) -> None:
    """The CNI policy (rewrite any ENI in the VPC) is the VPC CNI's own IRSA role's, not the nodes'."""
    roles = _attachments(deployment)
    for node_role in (f"tickcast-{deployment.stack}-node", f"tickcast-{deployment.stack}-karpenter-node"):
        assert roles[node_role] == NODE_ROLE_POLICIES, node_role
    holders = [role for role, policies in roles.items() if CNI_POLICY in policies]
    assert holders == [f"tickcast-{deployment.stack}-vpc-cni"]


def test_vpc_cni_is_a_managed_addon_with_its_own_irsa_role_and_network_policy_on(deployment: Deployment) -> None:
    """NetworkPolicies are enforced: the VPC CNI's network policy agent is on. The add-on exists
    before the first node, and its role trusts kube-system/aws-node only."""
    import json

    cluster = deployment.one("eks:index:Cluster").inputs
    assert cluster["useDefaultVpcCni"] is True, "pulumi_eks must not install a second VPC CNI"
    addon = deployment.one("aws:eks/addon:Addon", "cluster-vpc-cni")
    assert addon.inputs["addonName"] == "vpc-cni"
    assert json.loads(addon.inputs["configurationValues"]) == {"enableNetworkPolicy": "true"}
    role = deployment.one("aws:iam/role:Role", "vpc-cni")
    assert addon.inputs["serviceAccountRoleArn"] == role.outputs["arn"]
    (statement,) = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    subjects = [v for k, v in statement["Condition"]["StringEquals"].items() if k.endswith(":sub")]
    assert subjects == ["system:serviceaccount:kube-system:aws-node"]
    assert addon.urn in _group(deployment).dependencies, "nodes join once the CNI add-on is in place"


def test_cpu_nodes_require_imdsv2_with_hop_limit_1_through_a_launch_template(deployment: Deployment) -> None:
    """A pod cannot reach the instance metadata service (one hop more than the node), so it never
    gets the node role's credentials; IMDSv1 is off."""
    group = _group(deployment).inputs
    template = deployment.one("aws:ec2/launchTemplate:LaunchTemplate", "cluster-cpu")
    assert group["launchTemplate"] == {"id": f"{template.name}-id", "version": "1"}
    assert "diskSize" not in group, "with a launch template the disk comes from it"
    metadata = template.inputs["metadataOptions"]
    assert metadata == {
        "httpEndpoint": "enabled",
        "httpTokens": "required",
        "httpPutResponseHopLimit": 1,
        "instanceMetadataTags": "disabled",
    }
    (disk,) = template.inputs["blockDeviceMappings"]
    assert disk["ebs"]["encrypted"] == "true" and disk["ebs"]["volumeSize"] == 50
    # every node group has one (Karpenter's nodes: tests/test_autoscaling.py)
    assert all(g.inputs.get("launchTemplate") for g in deployment.of_type(NODE_GROUP))


def test_device_plugin_runs_on_gpu_nodes_only(deployment: Deployment) -> None:
    plugin = deployment.one(RELEASE, "nvidia-device-plugin").inputs
    assert plugin["chart"] == "nvidia-device-plugin"
    assert plugin["values"]["nodeSelector"] == {"tickcast.io/node-pool": "gpu"}
    assert plugin["values"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_bottlerocket_gpu_nodes_skip_the_device_plugin_chart() -> None:
    config = with_secret(stack_file_config("dev"))
    config["tickcast:gpuAmiType"] = "BOTTLEROCKET_x86_64_NVIDIA"
    deployment = run_program("bottlerocket", config)
    gpu_class = deployment.one("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass", "karpenter-class-gpu").inputs
    assert gpu_class["spec"]["amiSelectorTerms"] == [{"alias": "bottlerocket@latest"}]
    releases = {r.name for r in deployment.of_type(RELEASE)}
    assert "nvidia-device-plugin" not in releases
    assert {"kuberay-operator", "aws-load-balancer-controller", "tickcast"} <= releases


def test_addons_are_pinned(deployment: Deployment) -> None:
    for release in deployment.of_type(RELEASE):
        if release.name == "tickcast":
            continue
        assert release.inputs["version"], f"{release.name} is not pinned"
        chart = release.inputs.get("repositoryOpts", {}).get("repo") or release.inputs["chart"]
        assert chart.startswith(("https://", "oci://")), release.name
    kuberay = deployment.one(RELEASE, "kuberay-operator").inputs
    assert kuberay["version"] == "1.7.0"  # the CRDs the chart is validated against
    assert kuberay["namespace"] == "kuberay-operator"


def test_releases_wait_for_the_load_balancer_controller_and_the_cpu_nodes_only(deployment: Deployment) -> None:
    """The controller's webhook rejects Services until its pods are ready: it goes first, awaited.
    Everything waits for the CPU node group and CoreDNS, and nothing for a GPU node."""
    lb = deployment.one(RELEASE, "aws-load-balancer-controller")
    assert not lb.inputs.get("skipAwait")
    cpu_nodes = {_group(deployment).urn, *(a.urn for a in deployment.of_type("aws:eks/addon:Addon"))}
    gpu_pool = deployment.one("kubernetes:karpenter.sh/v1:NodePool", "karpenter-pool-gpu").urn
    for release in deployment.of_type(RELEASE):
        waits = deployment.waits_for(release)
        assert cpu_nodes <= waits, release.name
        assert gpu_pool not in waits or release.name == "tickcast", release.name
        if release.name not in ("aws-load-balancer-controller", "karpenter"):
            assert lb.urn in waits, release.name
