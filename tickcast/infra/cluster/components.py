"""The dev cluster's processes, each a :class:`~tickcast.infra.base.LocalService` (pid file, log,
health probe, reuse of a running one): kine (etcd's API over SQLite), kube-apiserver,
kube-controller-manager, kube-scheduler, kwok (fake nodes and pods) and the KubeRay operator.

Every listener binds 127.0.0.1, on ``cluster_port_base + offset`` (see :data:`PORT_OFFSETS`).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from tickcast.infra import process
from tickcast.infra.base import HOST, LocalService, Port, Progress, inherited_env
from tickcast.infra.cluster.pki import SERVICE_CIDR, ClusterPki
from tickcast.infra.cluster.tools import GoTools
from tickcast.settings import InfraSettings

#: Port of each listener, relative to ``infra.cluster_port_base``.
PORT_OFFSETS: dict[str, int] = {
    "kine": 0,
    "kine-metrics": 1,
    "kube-apiserver": 2,
    "kube-controller-manager": 3,
    "kube-scheduler": 4,
    "kwok": 5,
    "kuberay-operator": 6,
    "kuberay-operator-metrics": 7,
}


def cluster_port(infra: InfraSettings, name: str) -> int:
    """The port of listener ``name`` (a key of :data:`PORT_OFFSETS`)."""
    return infra.cluster_port_base + PORT_OFFSETS[name]


def https_ok(url: str, *, ca: Path | None = None, token: str | None = None, timeout_s: float = 2.0) -> bool:
    """Whether ``url`` answers 200. With ``ca`` the certificate is verified against it; without,
    the component's self-signed serving certificate is accepted (127.0.0.1 only)."""
    context = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class ClusterComponent(LocalService):
    """A cluster process: binaries from :class:`GoTools`, state under ``{state_dir}`` (the
    cluster's own folder), material from :class:`ClusterPki`."""

    def __init__(self, infra: InfraSettings, tools: GoTools, pki: ClusterPki, progress: Progress | None = None) -> None:
        super().__init__(infra, progress)
        self.tools = tools
        self.pki = pki

    @property
    def ports(self) -> list[Port]:
        return [Port(cluster_port(self.infra, self.name), "cluster_port_base")]

    def is_installed(self) -> bool:
        return not self.tools.missing()

    def install(self) -> None:
        """The cluster manager builds every program before it starts any (:meth:`GoTools.ensure`)."""

    def prepare(self) -> None:
        """Nothing beyond what the cluster manager prepared (certificates, folders)."""

    @property
    def stop_grace_s(self) -> float:
        return 15.0

    def _kube_flags(self) -> list[str]:
        """Flags of the controller-manager and scheduler: the admin kubeconfig for everything,
        serving on 127.0.0.1 with their own self-signed certificate."""
        kubeconfig = str(self.pki.kubeconfig)
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={HOST}",
            f"--secure-port={self.port}",
            f"--cert-dir={self.state_dir / self.name}",
            "--leader-elect=false",
            "--profiling=false",
        ]


class Kine(ClusterComponent):
    """etcd's API over SQLite; the database lives in ``{state_dir}/kine`` and is wiped at a cold start."""

    name = "kine"

    def command(self) -> tuple[list[str], dict[str, str]]:
        db = self.state_dir / "kine" / "state.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self.tools.bin("kine")),
            f"--endpoint=sqlite://{db}?_journal=WAL&cache=shared&_busy_timeout=30000",
            f"--listen-address={HOST}:{self.port}",
            f"--metrics-bind-address={HOST}:{cluster_port(self.infra, 'kine-metrics')}",
        ]
        return argv, inherited_env({})

    def probe(self, timeout_s: float = 2.0) -> bool:
        return process.port_open(HOST, self.port, timeout_s)


class ApiServer(ClusterComponent):
    """kube-apiserver: RBAC, the default admission plugins (Pod Security among them), token auth.

    ``--allow-privileged=true`` on purpose: a privileged container must then be refused by the
    namespace's Pod Security level, the control the chart relies on, not by this server flag.
    """

    name = "kube-apiserver"

    def command(self) -> tuple[list[str], dict[str, str]]:
        argv = [
            str(self.tools.bin("kube-apiserver")),
            f"--etcd-servers=http://{HOST}:{cluster_port(self.infra, 'kine')}",
            f"--bind-address={HOST}",
            f"--advertise-address={HOST}",
            f"--secure-port={self.port}",
            f"--tls-cert-file={self.pki.server_cert}",
            f"--tls-private-key-file={self.pki.server_key}",
            f"--client-ca-file={self.pki.ca_cert}",
            f"--token-auth-file={self.pki.token_file}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.pki.sa_pub}",
            f"--service-account-signing-key-file={self.pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            # Fewer background loops on a small machine; nothing here needs them.
            "--enable-priority-and-fairness=false",
            f"--cert-dir={self.state_dir / self.name}",
        ]
        return argv, inherited_env({})

    def probe(self, timeout_s: float = 2.0) -> bool:
        if not self.pki.token_file.is_file():
            return False
        return https_ok(
            f"https://{HOST}:{self.port}/readyz", ca=self.pki.ca_cert, token=self.pki.token(), timeout_s=timeout_s
        )


class ControllerManager(ClusterComponent):
    """kube-controller-manager: namespaces' default service accounts, Deployments, Jobs, CronJobs,
    garbage collection, EndpointSlices."""

    name = "kube-controller-manager"

    def command(self) -> tuple[list[str], dict[str, str]]:
        argv = [
            str(self.tools.bin("kube-controller-manager")),
            *self._kube_flags(),
            f"--service-account-private-key-file={self.pki.sa_key}",
            f"--root-ca-file={self.pki.ca_cert}",
            "--use-service-account-credentials=false",
        ]
        return argv, inherited_env({})

    def probe(self, timeout_s: float = 2.0) -> bool:
        return https_ok(f"https://{HOST}:{self.port}/healthz", timeout_s=timeout_s)


class Scheduler(ClusterComponent):
    """kube-scheduler: places pods by requests, node selectors, taints and tolerations.

    Scored ``MostAllocated`` (bin-packing) rather than the default ``LeastAllocated``: the dev
    cluster holds every node a stack may grow to from the start, and spreading the small pods over
    all of them would leave no empty node for a big one, where on EKS Karpenter launches a new
    node for a pod that fits nowhere. Packing keeps the spare nodes empty, as Karpenter's are.
    """

    name = "kube-scheduler"

    def command(self) -> tuple[list[str], dict[str, str]]:
        config = self.state_dir / self.name / "config.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(self.pki.kubeconfig)},
                    "leaderElection": {"leaderElect": False},
                    "profiles": [
                        {
                            "schedulerName": "default-scheduler",
                            "pluginConfig": [
                                {
                                    "name": "NodeResourcesFit",
                                    "args": {
                                        "scoringStrategy": {
                                            "type": "MostAllocated",
                                            "resources": [
                                                {"name": "cpu", "weight": 1},
                                                {"name": "memory", "weight": 1},
                                            ],
                                        }
                                    },
                                }
                            ],
                        }
                    ],
                }
            )
        )
        flags = [f for f in self._kube_flags() if not f.startswith(("--kubeconfig=", "--leader-elect="))]
        return [str(self.tools.bin("kube-scheduler")), f"--config={config}", *flags], inherited_env({})

    def probe(self, timeout_s: float = 2.0) -> bool:
        return https_ok(f"https://{HOST}:{self.port}/healthz", timeout_s=timeout_s)


#: The annotation that hands a node to kwok (the dev cluster's nodes carry it).
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")


class Kwok(ClusterComponent):
    """kwok: plays the kubelet of the nodes annotated :data:`KWOK_NODE_ANNOTATION` with the stage
    definitions shipped in its module (node ready and heartbeats, pods Running, Jobs' pods done)."""

    name = "kwok"

    def command(self) -> tuple[list[str], dict[str, str]]:
        key, value = KWOK_NODE_ANNOTATION
        argv = [
            str(self.tools.bin("kwok")),
            f"--kubeconfig={self.pki.kubeconfig}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={key}={value}",
            f"--server-address={HOST}:{self.port}",
            "--node-lease-duration-seconds=40",
            *(f"--config={stage}" for stage in sorted(self.tools.kwok_stages.glob("*.yaml"))),
        ]
        return argv, inherited_env({})

    @property
    def marker(self) -> str:
        # kwok takes no path of its own: the state folder's kubeconfig identifies it.
        return str(self.pki.kubeconfig)

    def probe(self, timeout_s: float = 2.0) -> bool:
        return process.port_open(HOST, self.port, timeout_s)


class KubeRayOperator(ClusterComponent):
    """The KubeRay operator (the release whose CRDs the chart targets), outside the cluster with the
    admin kubeconfig, watching every namespace."""

    name = "kuberay-operator"

    def command(self) -> tuple[list[str], dict[str, str]]:
        argv = [
            str(self.tools.bin("ray-operator")),
            f"--kubeconfig={self.pki.kubeconfig}",
            f"--metrics-addr={HOST}:{cluster_port(self.infra, 'kuberay-operator-metrics')}",
            f"--health-probe-bind-address={HOST}:{self.port}",
            "--enable-leader-election=false",
        ]
        return argv, inherited_env({})

    @property
    def marker(self) -> str:
        return str(self.pki.kubeconfig)

    def probe(self, timeout_s: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}/readyz", timeout=timeout_s) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False
