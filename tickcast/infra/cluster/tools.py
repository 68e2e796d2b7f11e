"""Where the dev cluster's programs are: built by ``scripts/build-go-tools.sh`` into a cache
outside the checkout (``{cache_dir}/go-tools``), at the versions pinned in ``tools/versions.env``
(Kubernetes by ``tools/kube/go.mod``). This module computes the same folder names as the script,
and runs the script when something is missing.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from tickcast.errors import InfraError
from tickcast.infra import process
from tickcast.infra.base import Progress, inherited_env

REPO_ROOT = Path(__file__).resolve().parents[3]
TOOLS_DIR = REPO_ROOT / "tools"
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-go-tools.sh"

#: binary -> the cache folder's name prefix (the folder is ``PREFIX-KEY``) and its version key.
_FOLDERS: dict[str, str] = {
    "kine": "kine",
    "kwok": "kwok",
    "helm": "helm",
    "ray-operator": "kuberay",
    "kube-apiserver": "kube",
    "kube-controller-manager": "kube",
    "kube-scheduler": "kube",
    "kubectl": "kube",
}


def read_versions(path: Path = TOOLS_DIR / "versions.env") -> dict[str, str]:
    """The ``KEY=VALUE`` pins of ``tools/versions.env`` (comments and blank lines skipped)."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pins[key.strip()] = value.strip()
    return pins


def kube_key(kube_dir: Path = TOOLS_DIR / "kube") -> tuple[str, str]:
    """(Kubernetes version, cache key) of the wrapper module: the key changes with go.mod/go.sum,
    exactly as the build script computes it (version, a dash, 12 hex digits of their sha256)."""
    go_mod = (kube_dir / "go.mod").read_bytes()
    version = next(
        line.split()[-1] for line in go_mod.decode().splitlines() if line.startswith("require k8s.io/kubernetes ")
    )
    digest = hashlib.sha256(go_mod + (kube_dir / "go.sum").read_bytes()).hexdigest()[:12]
    return version, f"{version}-{digest}"


@dataclass(frozen=True)
class GoTools:
    """The cached programs: ``GoTools(cache_dir / "go-tools").bin("kubectl")``."""

    root: Path

    @property
    def versions(self) -> dict[str, str]:
        """Folder prefix -> version key (``kube`` -> ``v1.36.3-<hash>``)."""
        pins = read_versions()
        return {
            "kine": pins["KINE_VERSION"],
            "kwok": pins["KWOK_VERSION"],
            "helm": pins["HELM_VERSION"],
            "kuberay": pins["KUBERAY_VERSION"],
            "kube": kube_key()[1],
        }

    @property
    def kubernetes_version(self) -> str:
        """The pinned Kubernetes release (``v1.36.3``)."""
        return kube_key()[0]

    def folder(self, prefix: str) -> Path:
        """The cache folder of one program set (``kube``, ``kwok``, ...)."""
        return self.root / f"{prefix}-{self.versions[prefix]}"

    def bin(self, name: str) -> Path:
        """The path of one program in the cache (it may not be built yet)."""
        return self.folder(_FOLDERS[name]) / "bin" / name

    @property
    def kwok_stages(self) -> Path:
        """kwok's stage definitions (node and pod lifecycle), copied from its module."""
        return self.folder("kwok") / "stages"

    @property
    def kuberay_crds(self) -> Path:
        """The KubeRay CRDs of the pinned operator release, copied from its module."""
        return self.folder("kuberay") / "crds"

    def missing(self) -> list[str]:
        """The programs (and data folders) not in the cache."""
        absent = [name for name in _FOLDERS if not os.access(self.bin(name), os.X_OK)]
        absent += [str(p) for p in (self.kwok_stages, self.kuberay_crds) if not any(p.glob("*.yaml"))]
        return absent

    def ensure(self, progress: Progress, log_path: Path) -> None:
        """Run the build script when anything is missing (cold: about 10 minutes on 2 cores).

        Raises:
            InfraError: the script is not in this checkout, or the build failed.
        """
        if not self.missing():
            return
        if not BUILD_SCRIPT.is_file():
            raise InfraError(
                f"the dev cluster's programs are missing from {self.root} ({', '.join(self.missing())})",
                "run scripts/build-go-tools.sh from a tickcast checkout",
            )
        progress(f"cluster: building {', '.join(self.missing())} into {self.root} (first time: about 10 minutes)")
        process.run_logged(
            ["bash", str(BUILD_SCRIPT)],
            what="building the dev cluster's Go programs",
            fix="read the build log; Go 1.26+ must reach its module proxy",
            progress=progress,
            log_path=log_path,
            env=inherited_env({"TICKCAST_GO_TOOLS_CACHE": str(self.root)}),
        )
        if self.missing():
            raise InfraError(
                f"the build finished but {', '.join(self.missing())} are still missing from {self.root}",
                "check that TICKCAST_GO_TOOLS_CACHE and tickcast's cache_dir name the same folder",
            )
