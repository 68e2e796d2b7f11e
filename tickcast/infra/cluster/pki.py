"""The dev cluster's certificates, service-account key, admin token and kubeconfig.

Generated fresh at each cold start with ``openssl`` (a throwaway CA valid for a week, ECDSA P-256
keys), all mode 0600 under ``{state_dir}/cluster/pki``. The API server serves 127.0.0.1 only; the
admin identity is a bearer token in a static token file (group ``system:masters``), written into
the kubeconfig that tickcast's own ``kubectl`` and ``helm`` calls use. Nothing here is ever logged.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tickcast.errors import InfraError
from tickcast.infra import process
from tickcast.private_files import create_once

#: The cluster's service network: the ``kubernetes`` Service takes its first address.
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
ADMIN_USER = "tickcast-admin"
_DAYS = "7"
_OPENSSL_FIX = "install openssl (apt-get install openssl)"


@dataclass(frozen=True)
class ClusterPki:
    """File paths of the generated material, under ``root``."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "apiserver.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        """Signs service-account tokens (API server) and mints them (controller-manager)."""
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"

    @property
    def token_file(self) -> Path:
        """The API server's ``--token-auth-file``."""
        return self.root / "tokens.csv"

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (token auth) for every client tickcast runs."""
        return self.root / "admin.kubeconfig"

    def generate(self, api_port: int) -> None:
        """Replace everything with new material for an API server on ``127.0.0.1:api_port``."""
        openssl = process.require_executable("openssl", "generate the dev cluster's certificates", _OPENSSL_FIX)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        for old in self.root.iterdir():
            old.unlink()
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        self._run(
            [
                openssl,
                "req",
                "-x509",
                *ec,
                "-keyout",
                str(self.ca_key),
                "-out",
                str(self.ca_cert),
                "-days",
                _DAYS,
                "-subj",
                "/CN=tickcast-dev-cluster-ca",
            ]
        )
        csr = self.root / "apiserver.csr"
        self._run(
            [
                openssl,
                "req",
                "-new",
                *ec,
                "-keyout",
                str(self.server_key),
                "-out",
                str(csr),
                "-subj",
                "/CN=kube-apiserver",
            ]
        )
        ext = self.root / "apiserver.ext"
        names = ["IP:127.0.0.1", f"IP:{KUBERNETES_SERVICE_IP}", "DNS:localhost", "DNS:kubernetes"]
        names += ["DNS:kubernetes.default", "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"]
        ext.write_text(f"subjectAltName={','.join(names)}\nextendedKeyUsage=serverAuth\n")
        self._run(
            [
                openssl,
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(self.ca_cert),
                "-CAkey",
                str(self.ca_key),
                "-CAcreateserial",
                "-days",
                _DAYS,
                "-extfile",
                str(ext),
                "-out",
                str(self.server_cert),
            ]
        )
        self._run(
            [
                openssl,
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-out",
                str(self.sa_key),
            ]
        )
        self._run([openssl, "pkey", "-in", str(self.sa_key), "-pubout", "-out", str(self.sa_pub)])
        token = secrets.token_urlsafe(32)
        create_once(self.token_file, f'{token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'.encode())
        create_once(self.kubeconfig, json.dumps(self._kubeconfig(api_port, token), indent=2).encode())
        for path in self.root.iterdir():
            os.chmod(path, 0o600)

    def _kubeconfig(self, api_port: int, token: str) -> dict[str, object]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "tickcast-dev",
                    "cluster": {"server": f"https://127.0.0.1:{api_port}", "certificate-authority": str(self.ca_cert)},
                }
            ],
            "users": [{"name": ADMIN_USER, "user": {"token": token}}],
            "contexts": [{"name": "tickcast-dev", "context": {"cluster": "tickcast-dev", "user": ADMIN_USER}}],
            "current-context": "tickcast-dev",
        }

    def token(self) -> str:
        """The admin bearer token (for the health probe; never log it)."""
        return self.token_file.read_text().split(",", 1)[0]

    @staticmethod
    def _run(argv: list[str]) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise InfraError(
                f"openssl failed while generating the dev cluster's certificates: {done.stderr.strip()[-500:]}",
                _OPENSSL_FIX,
            )
