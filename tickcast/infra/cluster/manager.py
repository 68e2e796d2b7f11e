"""The dev cluster: a real Kubernetes control plane on 127.0.0.1 with fake nodes shaped like a
Pulumi stack's node pools, for testing the Helm chart against the real API server, admission,
scheduler, controllers and KubeRay operator (``tickcast dev cluster up|down|status``, tests/k8s).

What is real: kube-apiserver (RBAC, Pod Security admission, CRD validation), the controller-manager
(service accounts, Deployments, Jobs, CronJobs, garbage collection, EndpointSlices), the scheduler
and the KubeRay operator. What is not: the nodes and containers (kwok marks scheduled pods Running
without running anything), networking (no CNI: NetworkPolicies are stored and selected, not
enforced), storage, IAM and load balancers.

A cold ``up`` (nothing running) starts from an empty database with new certificates and a new
admin token; ``up`` on a running cluster reuses it and only reshapes the nodes.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from tickcast.errors import InfraError
from tickcast.infra import process
from tickcast.infra.base import Progress, ServiceStatus, inherited_env
from tickcast.infra.cluster.components import (
    KWOK_NODE_ANNOTATION,
    ApiServer,
    ClusterComponent,
    ControllerManager,
    Kine,
    KubeRayOperator,
    Kwok,
    Scheduler,
)
from tickcast.infra.cluster.pki import ClusterPki
from tickcast.infra.cluster.tools import REPO_ROOT, GoTools
from tickcast.settings import InfraSettings

log = logging.getLogger(__name__)

PULUMI_DIR = REPO_ROOT / "pulumi"
#: Label on every node the dev cluster creates: the Pulumi stack whose node pools it imitates.
STACK_LABEL = "tickcast.io/dev-cluster-stack"
STACKS = ("dev", "prod")
#: Start order; ``down`` stops in reverse.
COMPONENTS: tuple[type[ClusterComponent], ...] = (Kine, ApiServer, ControllerManager, Scheduler, Kwok, KubeRayOperator)


def load_eks_facts() -> ModuleType:
    """``pulumi/tickcast_infra/eks_facts.py``, plain Python, loaded without Pulumi."""
    path = PULUMI_DIR / "tickcast_infra" / "eks_facts.py"
    spec = importlib.util.spec_from_file_location("tickcast_pulumi_eks_facts", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise InfraError(
            f"{path} is missing", "run from a tickcast checkout (the dev cluster reads the Pulumi program)"
        )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stack_config(stack: str) -> dict[str, Any]:
    """The ``config:`` block of ``pulumi/Pulumi.<stack>.yaml``."""
    path = PULUMI_DIR / f"Pulumi.{stack}.yaml"
    if stack not in STACKS or not path.is_file():
        raise InfraError(f"unknown Pulumi stack {stack!r}", f"choose one of {', '.join(STACKS)}")
    return dict(yaml.safe_load(path.read_text())["config"])


def node_manifests(stack: str) -> list[dict[str, Any]]:
    """Node objects for the most nodes the stack may run (``eks_facts.stack_nodes``): its pools'
    labels and taints, and the allocatable CPU, memory, GPUs and pods of its instance types on EKS,
    less the room EKS keeps for DaemonSet pods (this cluster runs none). Capacity is set equal to
    allocatable: the scheduler reads only allocatable."""
    nodes = []
    counts: dict[str, int] = {}
    for node in load_eks_facts().stack_nodes(stack_config(stack)):
        index = counts[node["pool"]] = counts.get(node["pool"], -1) + 1
        name = f"{stack}-{node['pool']}-{index}"
        labels = {
            **node["labels"],
            STACK_LABEL: stack,
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": node["instance_type"],
            "type": "kwok",
        }
        nodes.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels, "annotations": dict([KWOK_NODE_ANNOTATION])},
                "spec": {"taints": node["taints"]},
                "status": {"allocatable": node["allocatable"], "capacity": node["allocatable"]},
            }
        )
    return nodes


class DevCluster:
    """Start, reshape, stop and query the dev cluster kept in ``{state_dir}/cluster``."""

    def __init__(self, infra: InfraSettings, progress: Progress | None = None) -> None:
        state_dir = infra.state_dir.expanduser().resolve() / "cluster"
        self.infra = infra.model_copy(update={"state_dir": state_dir})
        self.state_dir = state_dir
        self.progress: Progress = progress or log.info
        self.tools = GoTools(infra.cache_dir.expanduser().resolve() / "go-tools")
        self.pki = ClusterPki(state_dir / "pki")
        self.components = [cls(self.infra, self.tools, self.pki, self.progress) for cls in COMPONENTS]
        self.lock_path = state_dir / "run" / "cluster.lock"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (mode 0600)."""
        return self.pki.kubeconfig

    def _component(self, kind: type[ClusterComponent]) -> ClusterComponent:
        return next(c for c in self.components if isinstance(c, kind))

    # -- lifecycle -----------------------------------------------------------------------

    def up(self, stack: str = "dev") -> list[ServiceStatus]:
        """Build what is missing, start (or reuse) every process, install the KubeRay CRDs and
        make the nodes those of ``stack``.

        Raises:
            InfraError: a build, a start or the bootstrap failed (with the log to read).
        """
        stack_config(stack)  # an unknown stack fails before anything starts
        with process.file_lock(self.lock_path):
            self.tools.ensure(self.progress, self.state_dir / "logs" / "go-tools-build.log")
            api = self._component(ApiServer)
            if api.pid() is None:
                self._cold_start_reset()
            for component in self.components:
                if isinstance(component, KubeRayOperator):
                    # The operator watches the CRDs: they must exist before it starts.
                    self._install_crds()
                component.start()
            self._wait_for_default_service_account()
            self.set_nodes(stack)
        self.progress(f"cluster: up with the {stack} stack's nodes; export KUBECONFIG={self.kubeconfig}")
        return self.status()

    def _cold_start_reset(self) -> None:
        """Nothing runs: stop leftovers, drop the old database and generate new credentials."""
        for component in reversed(self.components):
            component.stop()
        for sub in ("kine", *(c.name for c in self.components)):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        self.pki.generate(self._component(ApiServer).port)

    def down(self) -> list[ServiceStatus]:
        """Stop every process this state folder started (the database stays until the next cold up)."""
        with process.file_lock(self.lock_path):
            for component in reversed(self.components):
                component.stop()
        return self.status()

    def status(self) -> list[ServiceStatus]:
        """Each process's state."""
        return [component.status() for component in self.components]

    # -- bootstrap -----------------------------------------------------------------------

    def _install_crds(self) -> None:
        crds = sorted(str(p) for p in self.tools.kuberay_crds.glob("*.yaml"))
        # Server-side apply: the CRDs are larger than client-side apply's annotation limit.
        self.kubectl("apply", "--server-side", "--force-conflicts", *(f"--filename={c}" for c in crds))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")

    def _wait_for_default_service_account(self, timeout_s: float = 60.0) -> None:
        """Pods are refused until the controller-manager has made the namespace's ``default``
        service account; waiting for the one in ``default`` shows the controller is working."""
        deadline = time.monotonic() + timeout_s
        while self.kubectl("get", "serviceaccount", "default", "--namespace=default", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise InfraError(
                    f"the controller-manager made no default service account within {timeout_s:.0f} s",
                    f"read {self._component(ControllerManager).log_path}",
                )
            time.sleep(0.5)

    def set_nodes(self, stack: str, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Replace the cluster's nodes with ``stack``'s (no-op when they are already those) and
        wait until kwok reports them Ready.

        Returns:
            The node manifests created.
        """
        wanted = node_manifests(stack)
        have = self.get_json("nodes", f"--selector={STACK_LABEL}")["items"]
        if sorted(n["metadata"]["name"] for n in have) != sorted(n["metadata"]["name"] for n in wanted):
            if have:
                self.kubectl("delete", "nodes", f"--selector={STACK_LABEL}", "--wait=true")
            self.kubectl(
                "create", "--filename=-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": wanted})
            )
        self.kubectl(
            "wait", "--for=condition=Ready", f"--timeout={timeout_s:.0f}s", "nodes", f"--selector={STACK_LABEL}"
        )
        return wanted

    # -- clients -------------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout_s: float = 180.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned ``kubectl`` against this cluster.

        Raises:
            InfraError: ``check`` and a non-zero exit, with kubectl's stderr.
        """
        return self._run(
            [str(self.tools.bin("kubectl")), f"--kubeconfig={self.kubeconfig}", *args], input, check, timeout_s
        )

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout_s: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned Helm CLI against this cluster, its caches and config under the state folder."""
        home = self.state_dir / "helm"
        env = {
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        return self._run([str(self.tools.bin("helm")), *args], input, check, timeout_s, env)

    def get_json(self, *args: str) -> dict[str, Any]:
        """``kubectl get ARGS --output=json``, parsed."""
        return json.loads(self.kubectl("get", *args, "--output=json").stdout)

    @staticmethod
    def _run(
        argv: Sequence[str], input: str | None, check: bool, timeout_s: float, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env=inherited_env(env or {}),
        )
        if check and done.returncode != 0:
            shown = " ".join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv) if "kubeconfig" not in a)
            raise InfraError(
                f"`{shown}` failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}",
                "read the message; `tickcast dev cluster status` shows the cluster's logs",
            )
        return done
