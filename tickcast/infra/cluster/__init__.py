"""The dev Kubernetes cluster (kine, kube-apiserver, controller-manager, scheduler, kwok, KubeRay
operator on 127.0.0.1), built from pinned Go modules; see :mod:`tickcast.infra.cluster.manager`."""

from tickcast.infra.cluster.manager import DevCluster, node_manifests

__all__ = ["DevCluster", "node_manifests"]
