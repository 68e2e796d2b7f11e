"""What EKS gives: the Kubernetes version, node shapes, and the pod sizes derived from them.

The one source of every number that decides whether a pod fits a node. The program passes
:func:`chart_resources` to the chart (``app.chart_values``), the node pools use
:data:`INSTANCE_TYPES`, and ``tests/helm/test_chart.py`` renders the chart with the same values
for each stack and checks that every pod fits a node of its pool.

Plain Python with no imports on purpose (like ``chart_names.py``): tests/helm loads this file
on its own, without Pulumi.
"""

KUBERNETES_VERSION = "1.35"
"""The EKS Kubernetes version of every stack (``tickcast:kubernetesVersion`` defaults to it).

EKS gives each minor version 14 months of standard support from its EKS release, then 12
months of extended support at $0.60 per cluster-hour instead of $0.10. EKS released 1.33 on
2025-05-28 (standard support to 2026-07-29), 1.34 on 2025-10-06 (to 2026-12-02) and 1.35 on
2026-01-28 (to 2027-03-27). On 2026-12-03 only 1.35 (and anything newer) is in standard
support, so 1.35 is the oldest version a release made that day can use without the
extended-support charge. Move it forward before 2027-03-27 (`aws eks describe-cluster-versions`
lists the current dates).
"""

KUBERNETES_STANDARD_SUPPORT_ENDS = "2027-03-27"
"""End of EKS standard support for :data:`KUBERNETES_VERSION` (see above)."""

NODE_POOL_LABEL = "tickcast.io/node-pool"
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_LABELS = {NODE_POOL_LABEL: "gpu", "nvidia.com/gpu.present": "true"}
"""GPU node labels: the pool selector, and the label the NVIDIA device plugin's default affinity wants."""
CPU_LABELS = {NODE_POOL_LABEL: "cpu"}
GPU_TAINT = {"key": GPU_TAINT_KEY, "value": "true", "effect": "NoSchedule"}
"""The taint of every GPU node (Karpenter's ``gpu`` NodePool): only pods that tolerate it land there."""
GPU_TOLERATION = {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
"""The toleration a pod needs to land on a GPU node."""

# instance type -> (vCPUs, memory GiB, NVIDIA GPUs, max pods). Max pods is what the EKS AMIs
# set without prefix delegation: ENIs x (IPv4 addresses per ENI - 1) + 2 (the VPC CNI's
# eni-max-pods table).
INSTANCE_TYPES: dict[str, tuple[int, int, int, int]] = {
    "m6i.large": (2, 8, 0, 29),
    "m6i.xlarge": (4, 16, 0, 58),
    "m6i.2xlarge": (8, 32, 0, 58),
    "m7i.large": (2, 8, 0, 29),
    "m7i.xlarge": (4, 16, 0, 58),
    "m7i.2xlarge": (8, 32, 0, 58),
    "g4dn.xlarge": (4, 16, 1, 29),
    "g4dn.2xlarge": (8, 32, 1, 29),
    "g5.xlarge": (4, 16, 1, 58),
    "g5.2xlarge": (8, 32, 1, 58),
    "g5.4xlarge": (16, 64, 1, 234),
    "g6.xlarge": (4, 16, 1, 58),
    "g6.2xlarge": (8, 32, 1, 58),
    "g6e.xlarge": (4, 32, 1, 58),
    "g6e.2xlarge": (8, 64, 1, 58),
}

VM_MEMORY_OVERHEAD = 0.075
"""Share of an instance's nominal memory the kernel and firmware keep before the kubelet sees
it (Karpenter's ``vmMemoryOverheadPercent`` default, measured on EC2 Nitro instances)."""

EVICTION_HARD_MIB = 100
"""``evictionHard: memory.available<100Mi``, the EKS AMIs' kubelet setting."""

DAEMONSET_CPU_MILLI = 200
DAEMONSET_MEMORY_MIB = 256
"""Room left on every node for DaemonSet pods: aws-node (25m), kube-proxy (100m) and the NVIDIA
device plugin (no requests) need 125m; the rest is headroom for add-on updates."""


def kube_reserved_cpu_milli(vcpus: int) -> int:
    """The EKS AMIs' ``kubeReserved.cpu``: 6% of the first core, 1% of the second, 0.5% of the
    third and fourth, 0.25% of every further core (amazon-eks-ami, nodeadm and the AL2
    bootstrap.sh compute the same)."""
    shares = [60, 10, 5, 5]  # millicores reserved for core 1, 2, 3, 4
    return int(sum(shares[:vcpus]) + max(0, vcpus - 4) * 2.5)


def kube_reserved_memory_mib(max_pods: int) -> int:
    """The EKS AMIs' ``kubeReserved.memory``: 255 MiB plus 11 MiB per pod the node may run."""
    return 255 + 11 * max_pods


def allocatable(instance_type: str) -> tuple[int, int]:
    """(CPU millicores, memory MiB) a node of ``instance_type`` offers to pods, DaemonSets included.

    allocatable = capacity - kubeReserved - evictionHard (the EKS AMIs reserve no systemReserved);
    the memory capacity is the nominal memory less :data:`VM_MEMORY_OVERHEAD`.
    """
    vcpus, memory_gib, _, max_pods = INSTANCE_TYPES[instance_type]
    cpu = vcpus * 1000 - kube_reserved_cpu_milli(vcpus)
    capacity_mib = int(memory_gib * 1024 * (1 - VM_MEMORY_OVERHEAD))
    memory = capacity_mib - kube_reserved_memory_mib(max_pods) - EVICTION_HARD_MIB
    return cpu, memory


def pod_room(instance_types: list[str] | tuple[str, ...]) -> tuple[int, int]:
    """(CPU millicores, memory MiB) one pod may request and still fit on an otherwise empty node
    of any of ``instance_types``, beside the DaemonSets: the smallest shape decides.

    Raises:
        KeyError: an instance type missing from :data:`INSTANCE_TYPES` (add its row).
    """
    unknown = [t for t in instance_types if t not in INSTANCE_TYPES]
    if unknown:
        raise KeyError(
            f"instance types {unknown} are not in tickcast_infra/eks_facts.py INSTANCE_TYPES: "
            "add their vCPUs, memory, GPUs and max pods there"
        )
    shapes = [allocatable(t) for t in instance_types]
    return (
        min(cpu for cpu, _ in shapes) - DAEMONSET_CPU_MILLI,
        min(memory for _, memory in shapes) - DAEMONSET_MEMORY_MIB,
    )


def _cpu(milli: int) -> str:
    return f"{milli}m"


def _mib(mib: int) -> str:
    return f"{mib}Mi"


BACKTEST_WANT = (2000, 8192)
"""What the backtest asks for where a node has room: 2 CPUs, 8 GiB (one Ray with a few workers)."""


def whole_node(instance_types: list[str] | tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Requests and limits of a pod that takes a whole node of the smallest shape (rounded down
    to 100m and 256 MiB): the GPU workers, one GPU and one pod per node."""
    cpu, memory = pod_room(instance_types)
    cpu, memory = cpu // 100 * 100, memory // 256 * 256
    return {
        "requests": {"cpu": _cpu(cpu), "memory": _mib(memory)},
        "limits": {"cpu": _cpu(cpu), "memory": _mib(memory)},
    }


def capped(instance_types: list[str] | tuple[str, ...], want: tuple[int, int]) -> dict[str, dict[str, str]]:
    """Requests of ``want`` (millicores, MiB), cut to what a node of the smallest shape holds."""
    room = whole_node(instance_types)["requests"]
    cpu = min(want[0], int(room["cpu"].removesuffix("m")))
    memory = min(want[1], int(room["memory"].removesuffix("Mi")))
    return {
        "requests": {"cpu": _cpu(cpu), "memory": _mib(memory)},
        "limits": {"cpu": _cpu(cpu), "memory": _mib(memory)},
    }


def chart_resources(cpu_types: list[str] | tuple[str, ...], gpu_types: list[str] | tuple[str, ...]) -> dict:
    """The chart values that size the big pods for a stack's node pools.

    GPU pods (Serve workers, fine-tune workers) take a whole GPU node of the smallest GPU type;
    the backtest (CPU) asks for :data:`BACKTEST_WANT` cut to the smallest CPU type. The small
    pods (producer, consumer, head, ...) keep the chart's requests, which tests/helm checks fit.
    """
    gpu = whole_node(gpu_types)
    return {
        "rayService": {"workerGroup": {"resources": gpu}},
        "jobs": {
            "backtest": {"resources": capped(cpu_types, BACKTEST_WANT)},
            "finetune": {"worker": {"resources": gpu}},
        },
    }


def node_shape(instance_type: str, *, less_daemonsets: bool = False) -> dict[str, str]:
    """What a node of ``instance_type`` reports as ``status.allocatable`` on EKS: CPU and memory
    from :func:`allocatable`, its NVIDIA GPUs and the max pods. ``less_daemonsets`` leaves out the
    room kept for DaemonSet pods (:data:`DAEMONSET_CPU_MILLI`, :data:`DAEMONSET_MEMORY_MIB`): what
    the application's pods may take, for a cluster that runs no DaemonSets (the dev cluster)."""
    cpu, memory = allocatable(instance_type)
    if less_daemonsets:
        cpu, memory = cpu - DAEMONSET_CPU_MILLI, memory - DAEMONSET_MEMORY_MIB
    _, _, gpus, max_pods = INSTANCE_TYPES[instance_type]
    shape = {"cpu": _cpu(cpu), "memory": _mib(memory), "pods": str(max_pods)}
    if gpus:
        shape["nvidia.com/gpu"] = str(gpus)
    return shape


def stack_nodes(stack_config: dict) -> list[dict]:
    """The most nodes a stack may run, each ``{"pool", "instance_type", "labels", "taints",
    "allocatable"}`` (allocatable less the DaemonSets' room, see :func:`node_shape`), from the
    ``config:`` block of its ``Pulumi.<stack>.yaml``.

    CPU: ``2 x cpuMaxSize`` nodes of the first ``cpuInstanceTypes``: the managed node group grows to
    ``cpuMaxSize`` and Karpenter's ``cpu`` NodePool adds as many again (its CPU limit is
    ``cpuMaxSize`` nodes' vCPUs, ``autoscaling.node_pools``). GPU: ``max(gpuMaxSize, 1)`` nodes,
    one per GPU worker, each of the GPU type with the least allocatable memory (the one the chart's
    GPU pods are sized for: :func:`pod_room`), so a pod that fits these fits any type the pool may
    pick.

    Raises:
        KeyError: a key the function needs is missing from the stack's config.
    """
    needed = ("cpuInstanceTypes", "cpuMaxSize", "gpuInstanceTypes", "gpuMaxSize")
    missing = [k for k in needed if f"tickcast:{k}" not in stack_config]
    if missing:
        raise KeyError(f"the stack config lacks {['tickcast:' + k for k in missing]}: set them in Pulumi.<stack>.yaml")
    cpu_type = stack_config["tickcast:cpuInstanceTypes"][0]
    gpu_types = list(stack_config["tickcast:gpuInstanceTypes"])
    pod_room([*gpu_types, cpu_type])  # raises on an unknown instance type
    gpu_type = min(gpu_types, key=lambda t: allocatable(t)[::-1])
    nodes = [
        {
            "pool": "cpu",
            "instance_type": cpu_type,
            "labels": dict(CPU_LABELS),
            "taints": [],
            "allocatable": node_shape(cpu_type, less_daemonsets=True),
        }
        for _ in range(2 * int(stack_config["tickcast:cpuMaxSize"]))
    ]
    nodes += [
        {
            "pool": "gpu",
            "instance_type": gpu_type,
            "labels": dict(GPU_LABELS),
            "taints": [dict(GPU_TAINT)],
            "allocatable": node_shape(gpu_type, less_daemonsets=True),
        }
        for _ in range(max(int(stack_config["tickcast:gpuMaxSize"]), 1))
    ]
    return nodes
