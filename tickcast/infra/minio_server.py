"""A real MinIO server for the lake's ``s3://`` path, built from its Go module at a pinned version.

``go install`` builds the binary once into ``{cache_dir}/minio-<version>/bin`` (a few minutes on
two cores), next to ``tickcast-minio-admin`` (:mod:`tickcast.infra.minio_users`, seconds once
MinIO is built); starts reuse them. The server runs with update checks off and its web console off,
binds 127.0.0.1 only, and keeps its data in ``{state_dir}/minio/data``.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
import uuid

from tickcast.infra import process
from tickcast.infra.base import HOST, LocalService, Port, Progress, inherited_env
from tickcast.infra.minio_users import MinioUsers
from tickcast.settings import InfraSettings

MINIO_MODULE = "github.com/minio/minio"
#: The pinned pseudo-version (``go install github.com/minio/minio@latest`` on 2026-02-12).
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"

_GO_FIX = "install Go 1.24+ (https://go.dev/dl or apt-get install golang), or put a minio binary in the cache"


def minio_healthy(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether MinIO's liveness and readiness endpoints both answer 200."""
    for path in ("/minio/health/live", "/minio/health/ready"):
        try:
            with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout_s) as response:
                if response.status != 200:
                    return False
        except (urllib.error.URLError, OSError, ValueError):
            return False
    return True


class MinioServer(LocalService):
    """The local MinIO: binary in the cache, data in ``{state_dir}/minio/data``."""

    name = "minio"

    def __init__(self, infra: InfraSettings, progress: Progress | None = None) -> None:
        super().__init__(infra, progress)
        self.home = self.cache_dir / f"minio-{MINIO_VERSION}"
        self.binary = self.home / "bin" / "minio"
        self.data_dir = self.state_dir / "minio" / "data"
        # Outside the data folder: MinIO would list a folder there as a bucket.
        self.certs_dir = self.state_dir / "minio" / "certs"

    @property
    def ports(self) -> list[Port]:
        """The S3 API port.

        The console port is passed on but not bound: the web console is off
        (``MINIO_BROWSER=off``) to spare CPU and memory on small machines.
        """
        return [Port(self.infra.minio_port, "minio_port")]

    @property
    def users(self) -> MinioUsers:
        """The per-workload users and the admin program that applies them."""
        return MinioUsers(self.infra, MINIO_VERSION, self.progress)

    def is_installed(self) -> bool:
        """Whether the pinned binary (and, in policy-enforced mode, the admin program) is in the cache."""
        return self.binary.is_file() and (not self.infra.minio_workload_users or self.users.is_installed())

    def install(self) -> None:
        """Build the pinned MinIO with ``go install``, then the admin program (each skipped when present)."""
        if not self.binary.is_file():
            self._install_server()
        if self.infra.minio_workload_users:
            # After MinIO: it reuses the module and build caches MinIO's build filled.
            self.users.install()

    def _install_server(self) -> None:
        go = process.require_executable("go", "build MinIO from its Go module", _GO_FIX)
        self.home.mkdir(parents=True, exist_ok=True)
        staging = self.home / f"build-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            build_log = self.home / "go-install.log"
            self.progress(
                f"minio: building MinIO {MINIO_VERSION} from its Go module (first time only: a few minutes "
                f"on 2 cores, mostly compiling); the build's output goes to {build_log}"
            )
            elapsed = process.run_logged(
                [go, "install", f"{MINIO_MODULE}@{MINIO_VERSION}"],
                what="building MinIO with go install",
                fix=f"check the build output; Go needs to reach its module proxy, and {_GO_FIX}",
                progress=self.progress,
                cwd=staging,
                # GOBIN puts the binary in the staging folder, renamed into place when done.
                env=inherited_env({"GOBIN": str(staging)}),
                log_path=build_log,
            )
            self.binary.parent.mkdir(parents=True, exist_ok=True)
            (staging / "minio").replace(self.binary)
            self.progress(f"minio: built {self.binary} in {elapsed:.0f} s")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def prepare(self) -> None:
        """Create the data and certs folders."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.certs_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> tuple[list[str], dict[str, str]]:
        """``minio server`` bound to 127.0.0.1 with the root credentials in its environment."""
        argv = [
            str(self.binary),
            "server",
            str(self.data_dir),
            "--address",
            f"{HOST}:{self.infra.minio_port}",
            "--console-address",
            f"{HOST}:{self.infra.minio_console_port}",
            "--certs-dir",
            str(self.certs_dir),
            # Keeps credentials out of the log even if it is ever attached to a terminal.
            "--anonymous",
        ]
        env = inherited_env(
            {
                "MINIO_ROOT_USER": self.infra.minio_root_user,
                "MINIO_ROOT_PASSWORD": self.infra.minio_root_password.get_secret_value(),
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
                "MINIO_CALLHOME_ENABLE": "off",
            }
        )
        return argv, env

    def probe(self, timeout_s: float = 2.0) -> bool:
        """GET ``/minio/health/live`` and ``/minio/health/ready``."""
        return minio_healthy(HOST, self.port, timeout_s)
