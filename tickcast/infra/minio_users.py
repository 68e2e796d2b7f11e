"""Policy-enforced local lake: one MinIO user per workload, its policy made from the IAM statements.

On EKS each workload has an IAM role whose S3 statements come from
``pulumi/tickcast_infra/lake_access.py`` (:data:`LAKE_ACCESS` and :func:`s3_statements`). Locally,
the same function's statements become the MinIO policy of a user ``tickcast-<workload>``
(MinIO evaluates AWS-style policy JSON), and each service the platform starts gets its own
user's keys, so a grant missing from the Pulumi program fails locally too, denied by MinIO.

Creating users needs MinIO's admin API, whose request bodies are encrypted with the root
secret (madmin's ``EncryptData``: argon2id and DARE). Rather than re-implement that format,
tickcast builds a small Go program (``minio_admin/main.go``) against ``madmin-go``, MinIO's own
admin client, at the version the pinned MinIO's ``go.mod`` requires: the program's ``go.mod``
and ``go.sum`` *are* MinIO's (module line renamed), so it compiles from the module cache
and build cache that building MinIO filled, offline, in seconds, and speaks exactly the
admin API of the server it talks to.

Users are long-lived (no expiring STS sessions: services run for days). Their secrets are
random, made once and kept in ``{state_dir}/minio/users.json`` (mode 0600); applying the
users again (every start of the infrastructure or the platform) changes nothing unless the
grants did. The program reads its request, root and user secrets included, on standard input,
so no secret is in a command line, an environment or a log.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import SecretStr

from tickcast.errors import InfraError
from tickcast.infra import process
from tickcast.infra.base import HOST, Progress, inherited_env
from tickcast.settings import InfraSettings, LakeSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The one source of every workload's S3 grants (standard library only, loaded by file path:
#: a package named ``pulumi`` on the path would shadow the Pulumi SDK).
LAKE_ACCESS_FILE = REPO_ROOT / "pulumi" / "tickcast_infra" / "lake_access.py"
ADMIN_SOURCE = Path(__file__).with_name("minio_admin") / "main.go"
MINIO_MODULE = "github.com/minio/minio"
#: Users and policies tickcast manages are named ``tickcast-<workload>``; others are left alone.
USER_PREFIX = "tickcast-"
#: The platform's services and the workload (``LAKE_ACCESS`` key) each runs as.
SERVICE_WORKLOADS: Mapping[str, str] = {
    "serve": "serving",
    "consumer": "consumer",
    "forecaster": "forecaster",
    "producer": "producer",
    "dashboard": "dashboard",
}
#: Environment variables a service started in policy-enforced mode must not inherit: the
#: root credentials of the local MinIO, and AWS keys that could stand in for its own.
ROOT_ENV = (
    "TICKCAST_INFRA__MINIO_ROOT_USER",
    "TICKCAST_INFRA__MINIO_ROOT_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)

_GO_FIX = (
    "install Go 1.24+ (https://go.dev/dl or apt-get install golang), or set "
    "TICKCAST_INFRA__MINIO_WORKLOAD_USERS=false to run every service with the MinIO root keys"
)


@cache
def lake_access() -> ModuleType:
    """``pulumi/tickcast_infra/lake_access.py``, loaded by file path."""
    spec = importlib.util.spec_from_file_location("tickcast_lake_access", LAKE_ACCESS_FILE)
    if spec is None or spec.loader is None:
        raise InfraError(f"cannot load {LAKE_ACCESS_FILE}", "run tickcast from its source checkout")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def workloads() -> list[str]:
    """Every workload with lake access, sorted."""
    access: Mapping[str, Mapping[str, str]] = lake_access().LAKE_ACCESS
    return sorted(w for w, grants in access.items() if grants)


def user_name(workload: str) -> str:
    """The MinIO user (and policy) of a workload: ``tickcast-<workload>``."""
    return f"{USER_PREFIX}{workload}"


def bucket_and_prefix(lake_url: str) -> tuple[str, str]:
    """``("bucket", "prefix")`` of an ``s3://bucket/prefix`` lake URL.

    Raises:
        InfraError: for a URL that is not ``s3://``.
    """
    if not lake_url.startswith("s3://"):
        raise InfraError(
            f"the lake {lake_url} is not on S3, so it has no MinIO policy",
            "set TICKCAST_LAKE__URL=s3://BUCKET/PREFIX to put the lake in the local MinIO",
        )
    bucket, _, prefix = lake_url.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def policy_document(workload: str, bucket: str, prefix: str) -> dict[str, Any]:
    """The MinIO policy of ``workload``: exactly ``s3_statements(LAKE_ACCESS[workload], ...)``."""
    module = lake_access()
    if workload not in module.LAKE_ACCESS:
        raise InfraError(f"unknown workload {workload!r}", f"use one of {', '.join(sorted(module.LAKE_ACCESS))}")
    statements = module.s3_statements(module.LAKE_ACCESS[workload], f"arn:aws:s3:::{bucket}", prefix)
    return {"Version": "2012-10-17", "Statement": statements}


def uses_local_minio(lake: LakeSettings, infra: InfraSettings) -> bool:
    """Whether the lake is an ``s3://`` URL served by this infrastructure's MinIO."""
    endpoint = (lake.s3_endpoint_url or "").rstrip("/")
    local = {f"http://{host}:{infra.minio_port}" for host in (HOST, "localhost")}
    return lake.url.startswith("s3://") and endpoint in local


@dataclass(frozen=True)
class LakeCredentials:
    """One workload's MinIO keys (the secret is hidden from repr and logs)."""

    workload: str
    access_key_id: str
    secret_access_key: SecretStr = field(repr=False)

    def env(self) -> dict[str, str]:
        """The settings a service needs to use these keys (``TICKCAST_LAKE__S3_*``)."""
        return {
            "TICKCAST_LAKE__S3_ACCESS_KEY_ID": self.access_key_id,
            "TICKCAST_LAKE__S3_SECRET_ACCESS_KEY": self.secret_access_key.get_secret_value(),
        }

    def lake_settings(self, lake: LakeSettings) -> LakeSettings:
        """``lake`` with these keys instead of its own."""
        return lake.model_copy(
            update={"s3_access_key_id": SecretStr(self.access_key_id), "s3_secret_access_key": self.secret_access_key}
        )


def service_env(base: Mapping[str, str], credentials: LakeCredentials) -> dict[str, str]:
    """A service's environment: ``base`` without the root credentials, plus its own keys."""
    env = {name: value for name, value in base.items() if name.upper() not in ROOT_ENV}
    env.update(credentials.env())
    return env


def _source_digest() -> str:
    return hashlib.sha256(ADMIN_SOURCE.read_bytes()).hexdigest()[:12]


class MinioUsers:
    """The admin program, the stored secrets, and applying users and policies to a running MinIO.

    Args:
        infra: the infrastructure settings (state and cache folders, MinIO port and root user).
        minio_version: the pinned MinIO pseudo-version whose ``go.mod`` the program builds with.
        progress: called with one line per step worth telling a person.
    """

    def __init__(self, infra: InfraSettings, minio_version: str, progress: Progress) -> None:
        self.infra = infra
        self.minio_version = minio_version
        self.progress = progress
        state_dir = infra.state_dir.expanduser().resolve()
        self.credentials_path = state_dir / "minio" / "users.json"
        self.home = infra.cache_dir.expanduser().resolve() / f"minio-{minio_version}"
        # The source's digest in the name: an edited program is rebuilt, never stale.
        self.binary = self.home / "bin" / f"tickcast-minio-admin-{_source_digest()}"
        self.build_log = self.home / "admin-build.log"

    # -- the admin program ------------------------------------------------------------------

    def is_installed(self) -> bool:
        """Whether the admin program for this source and MinIO version is built."""
        return self.binary.is_file()

    def install(self) -> None:
        """Build the admin program with MinIO's ``go.mod`` and ``go.sum`` (skipped when built)."""
        if self.is_installed():
            return
        go = process.require_executable("go", "build tickcast's MinIO admin program", _GO_FIX)
        self.home.mkdir(parents=True, exist_ok=True)
        staging = self.home / f"admin-build-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            self.progress(
                f"minio: building tickcast-minio-admin (madmin-go as MinIO {self.minio_version} pins it; "
                f"reuses MinIO's module and build caches); output in {self.build_log}"
            )
            go_mod, go_sum = self._minio_module_files(go, staging)
            lines = go_mod.splitlines()
            module_line = next(i for i, line in enumerate(lines) if line.startswith("module "))
            lines[module_line] = "module tickcast.local/minio-admin"
            (staging / "go.mod").write_text("\n".join(lines) + "\n")
            (staging / "go.sum").write_text(go_sum)
            shutil.copyfile(ADMIN_SOURCE, staging / "main.go")
            target = staging / "tickcast-minio-admin"
            elapsed = process.run_logged(
                # -mod=readonly: exactly MinIO's module versions, never a silently resolved newer one.
                [go, "build", "-mod=readonly", "-o", str(target), "."],
                what="building tickcast-minio-admin",
                fix=f"check the build output; Go needs its module cache or proxy, and {_GO_FIX}",
                progress=self.progress,
                log_path=self.build_log,
                cwd=staging,
                env=inherited_env({}),
            )
            self.binary.parent.mkdir(parents=True, exist_ok=True)
            target.replace(self.binary)
            self.progress(f"minio: built {self.binary} in {elapsed:.0f} s")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _minio_module_files(self, go: str, cwd: Path) -> tuple[str, str]:
        """MinIO's ``go.mod`` and ``go.sum`` from the module cache (downloaded if missing)."""
        proc = subprocess.run(
            [go, "mod", "download", "-json", f"{MINIO_MODULE}@{self.minio_version}"],
            cwd=cwd,
            env=inherited_env({}),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise InfraError(
                f"`go mod download {MINIO_MODULE}@{self.minio_version}` failed: {proc.stderr.strip()[-500:]}",
                f"build MinIO first (`tickcast infra install minio`), or let Go reach its module proxy; {_GO_FIX}",
            )
        info = json.loads(proc.stdout)
        return Path(info["GoMod"]).read_text(), (Path(info["Dir"]) / "go.sum").read_text()

    # -- secrets ------------------------------------------------------------------------------

    def credentials(self) -> dict[str, LakeCredentials]:
        """Every workload's keys, made (random, once) and kept in ``users.json`` (mode 0600)."""
        stored = self._read_secrets()
        missing = [w for w in workloads() if w not in stored]
        if missing:
            stored.update({w: secrets.token_urlsafe(30) for w in missing})
            self._write_secrets(stored)
        return {w: LakeCredentials(w, user_name(w), SecretStr(stored[w])) for w in workloads()}

    def _read_secrets(self) -> dict[str, str]:
        path = self.credentials_path
        if not path.exists():
            return {}
        if path.stat().st_mode & 0o077:
            # Someone loosened it: put it back rather than serve keys anyone may read.
            path.chmod(0o600)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InfraError(
                f"cannot read the MinIO user secrets in {path}: {type(exc).__name__}",
                f"delete {path}; new secrets are made and applied at the next start",
            ) from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise InfraError(f"{path} is not a JSON object of secrets", f"delete {path}; new ones are made")
        return data

    def _write_secrets(self, stored: Mapping[str, str]) -> None:
        path = self.credentials_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        # Created 0600 (not chmod-ed after): the secrets are never readable by others, even briefly.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(dict(sorted(stored.items())), out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)

    # -- applying -----------------------------------------------------------------------------

    def apply(self, bucket: str, prefix: str) -> dict[str, LakeCredentials]:
        """Create or update every workload's user and policy for the lake ``s3://bucket/prefix``.

        Creates the bucket when missing (with the root credentials: no workload may create
        buckets). Users and policies named ``tickcast-*`` that no workload has any more are
        removed. Idempotent.

        Returns:
            Every workload's keys.

        Raises:
            InfraError: when the program cannot be built or MinIO refuses a change.
        """
        self.install()
        self.ensure_bucket(bucket)
        credentials = self.credentials()
        request = {
            "endpoint": f"{HOST}:{self.infra.minio_port}",
            "root_user": self.infra.minio_root_user,
            "root_password": self.infra.minio_root_password.get_secret_value(),
            "prefix": USER_PREFIX,
            "users": [
                {
                    "name": creds.access_key_id,
                    "secret": creds.secret_access_key.get_secret_value(),
                    "policy": policy_document(workload, bucket, prefix),
                }
                for workload, creds in credentials.items()
            ],
        }
        proc = subprocess.run(
            [str(self.binary)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            # No secret in its environment either: everything it needs is on stdin.
            env={"PATH": os.environ.get("PATH", "")},
        )
        if proc.returncode != 0:
            raise InfraError(
                f"applying the MinIO workload users failed: {proc.stderr.strip()[-800:]}",
                "check that MinIO runs with the root credentials in TICKCAST_INFRA__MINIO_ROOT_USER and "
                "TICKCAST_INFRA__MINIO_ROOT_PASSWORD (the log is in the state folder's logs/minio.log)",
            )
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        removed = f"; removed {', '.join(result['removed'])}" if result["removed"] else ""
        self.progress(
            f"minio: {len(result['applied'])} workload users, policies from lake_access.py for "
            f"s3://{bucket}/{prefix}{removed}"
        )
        return credentials

    def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` with the root credentials unless it exists."""
        import boto3
        from botocore.config import Config
        from botocore.exceptions import ClientError

        client = boto3.client(
            "s3",
            endpoint_url=f"http://{HOST}:{self.infra.minio_port}",
            aws_access_key_id=self.infra.minio_root_user,
            aws_secret_access_key=self.infra.minio_root_password.get_secret_value(),
            region_name="us-east-1",
            config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2}),
        )
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise InfraError(
                    f"cannot check the lake bucket {bucket} on the local MinIO: {exc.response.get('Error')}",
                    "check TICKCAST_INFRA__MINIO_ROOT_USER and TICKCAST_INFRA__MINIO_ROOT_PASSWORD",
                ) from None
            client.create_bucket(Bucket=bucket)
            self.progress(f"minio: created the lake bucket {bucket}")
