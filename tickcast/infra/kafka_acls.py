"""The local broker's users and ACLs: one SASL/SCRAM user per workload, ACLs from the Pulumi grants.

The grants come from ``pulumi/tickcast_infra/kafka_access.py`` (standard library only, loaded by
file path), the same source Pulumi turns into MSK IAM statements, so a grant missing there
fails locally too, denied by the broker's KRaft ``StandardAuthorizer``.

Users (``{state_dir}/kafka/users.json``, mode 0600, made once per state folder):

- ``admin``: the super user, SASL/PLAIN. Its password lives in the broker's JAAS config rather
  than in the cluster metadata, so it works on the very first start and on a data folder
  formatted before users existed; it creates topics, users and ACLs, and is the inter-broker
  principal.
- ``controller``: the KRaft controller listener's principal, SASL/PLAIN (KRaft cannot use SCRAM
  there: SCRAM credentials live in the metadata the controller serves). Super user.
- one SCRAM-SHA-512 user per workload with Kafka access (``producer``, ``consumer``,
  ``forecaster``, ``dashboard``), created or updated through the admin API on every start.

Passwords never reach a log or an error message; they reach each service through its
environment (``TICKCAST_KAFKA__SASL_*``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import SecretStr

from tickcast.errors import InfraError
from tickcast.infra import process
from tickcast.settings import KafkaSettings, Settings, env_name

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_ACCESS_PATH = REPO_ROOT / "pulumi" / "tickcast_infra" / "kafka_access.py"

ADMIN = "admin"
CONTROLLER = "controller"
#: SASL mechanism of the workload users (kafka-python speaks SCRAM-SHA-256 and -512).
SCRAM_MECHANISM = "SCRAM-SHA-512"
#: Mechanism of the admin and controller principals (static credentials in the broker's JAAS config).
PLAIN_MECHANISM = "PLAIN"
SECURITY_PROTOCOL = "SASL_PLAINTEXT"
USERS_FILE = "users.json"


@functools.cache
def kafka_access() -> ModuleType:
    """``pulumi/tickcast_infra/kafka_access.py``, loaded by file path (it is plain Python).

    Raises:
        InfraError: when the file is missing (an installed package without the checkout).
    """
    if not KAFKA_ACCESS_PATH.is_file():
        raise InfraError(
            f"the Kafka grants file {KAFKA_ACCESS_PATH} is missing, so the local broker's ACLs cannot be made",
            "run from a tickcast checkout, or turn the policy-enforced mode off with "
            "TICKCAST_INFRA__KAFKA_WORKLOAD_USERS=false",
        )
    name = "tickcast_kafka_access"
    spec = importlib.util.spec_from_file_location(name, KAFKA_ACCESS_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the file runs
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# -- credentials ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaUser:
    """One SASL user of the local broker."""

    name: str
    mechanism: str
    password: SecretStr

    def __repr__(self) -> str:  # the password never shows, not even in a traceback's locals
        return f"KafkaUser({self.name!r}, {self.mechanism!r})"


def users_path(state_dir: Path) -> Path:
    """Where the local broker's users are stored."""
    return Path(state_dir).expanduser().resolve() / "kafka" / USERS_FILE


def _wanted_users() -> dict[str, str]:
    users = {ADMIN: PLAIN_MECHANISM, CONTROLLER: PLAIN_MECHANISM}
    users.update({workload: SCRAM_MECHANISM for workload in kafka_access().kafka_workloads()})
    return users


def load_users(state_dir: Path) -> dict[str, KafkaUser]:
    """The broker's users, made (random passwords, file mode 0600) for any that is missing.

    Safe to call from several processes at once: a lock keeps one set of passwords.
    """
    path = users_path(state_dir)
    with process.file_lock(path.parent.parent / "run" / "kafka-users.lock"):
        stored: dict[str, dict[str, str]] = {}
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except ValueError:
                raise InfraError(
                    f"{path} is not valid JSON",
                    "delete it and `tickcast infra down` / `up` again (the users are made anew)",
                ) from None
        changed = False
        for name, mechanism in _wanted_users().items():
            if stored.get(name, {}).get("mechanism") != mechanism:
                stored[name] = {"mechanism": mechanism, "password": secrets.token_urlsafe(24)}
                changed = True
        if changed:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(stored, handle, indent=2)
            os.replace(tmp, path)
        os.chmod(path, 0o600)  # also tightens a file an older version or a person left readable
    return {name: KafkaUser(name, entry["mechanism"], SecretStr(entry["password"])) for name, entry in stored.items()}


def client_settings(kafka: KafkaSettings, user: KafkaUser) -> KafkaSettings:
    """``kafka`` (bootstrap servers, topics) with ``user``'s SASL credentials."""
    return kafka.model_copy(
        update={
            "security_protocol": SECURITY_PROTOCOL,
            "sasl_mechanism": user.mechanism,
            "sasl_username": user.name,
            "sasl_password": user.password,
        }
    )


def admin_settings(settings: Settings) -> KafkaSettings:
    """The Kafka settings of the local super user (topic creation, users, ACLs)."""
    return client_settings(settings.kafka, load_users(settings.infra.state_dir)[ADMIN])


def workload_settings(settings: Settings, workload: str) -> KafkaSettings:
    """The Kafka settings of ``workload``'s own user.

    Raises:
        InfraError: for a workload that has no Kafka grant (it gets no user).
    """
    users = load_users(settings.infra.state_dir)
    if workload not in kafka_access().kafka_workloads():
        raise InfraError(
            f"workload {workload!r} has no Kafka grant, so it has no Kafka user",
            f"use one of {', '.join(kafka_access().kafka_workloads())}",
        )
    return client_settings(settings.kafka, users[workload])


def client_env(user: KafkaUser) -> dict[str, str]:
    """``TICKCAST_KAFKA__*`` variables that make a tickcast process log in as ``user``."""
    return {
        env_name("kafka", "security_protocol"): SECURITY_PROTOCOL,
        env_name("kafka", "sasl_mechanism"): user.mechanism,
        env_name("kafka", "sasl_username"): user.name,
        env_name("kafka", "sasl_password"): user.password.get_secret_value(),
    }


def workload_env(settings: Settings, workload: str) -> dict[str, str]:
    """The environment of a service running as ``workload`` (empty when it has no Kafka grant)."""
    if workload not in kafka_access().kafka_workloads():
        return {}
    return client_env(load_users(settings.infra.state_dir)[workload])


# -- ACLs -----------------------------------------------------------------------------------


def names_from_settings(settings: Settings) -> dict[str, str]:
    """Default topic/group name (what the grants say) -> the name these settings use."""
    access = kafka_access()
    names = {default: getattr(settings.kafka, field) for field, default in access.TOPIC_SETTINGS.items()}
    names.update({default: getattr(settings, group).group_id for group, default in access.GROUP_SETTINGS.items()})
    return names


def principal(workload: str) -> str:
    """The Kafka principal of a workload's user."""
    return f"User:{workload}"


def desired_acls(settings: Settings) -> dict[str, set[Any]]:
    """Principal -> its ``kafka_access.AclEntry`` set, for the names these settings use."""
    access = kafka_access()
    names = names_from_settings(settings)
    return {
        principal(workload): set(access.acl_entries(access.KAFKA_ACCESS[workload], names))
        for workload in access.kafka_workloads()
    }


def _acl(principal_name: str, entry: Any) -> Any:
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ResourcePattern, ResourceType
    from kafka.admin import ACLResourcePatternType as Pattern

    return ACL(
        principal=principal_name,
        host="*",
        operation=ACLOperation[entry.operation],
        permission_type=ACLPermissionType.ALLOW,
        resource_pattern=ResourcePattern(ResourceType[entry.resource_type], entry.name, Pattern.LITERAL),
    )


def _entry(acl: Any) -> Any:
    access = kafka_access()
    pattern = acl.resource_pattern
    return access.AclEntry(pattern.resource_type.name, pattern.resource_name, acl.operation.name)


def _current(admin: Any, principal_name: str) -> list[Any]:
    from kafka.admin import ACLFilter, ACLOperation, ACLPermissionType, ResourcePatternFilter, ResourceType
    from kafka.admin import ACLResourcePatternType as Pattern

    acls, _ = admin.describe_acls(
        ACLFilter(
            principal=principal_name,
            host="*",
            operation=ACLOperation.ANY,
            permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, Pattern.ANY),
        )
    )
    return list(acls)


def _delete(admin: Any, acls: Iterable[Any]) -> None:
    from kafka.admin import ACLFilter

    filters = [
        ACLFilter(
            principal=a.principal,
            host=a.host,
            operation=a.operation,
            permission_type=a.permission_type,
            resource_pattern=a.resource_pattern,
        )
        for a in acls
    ]
    if filters:
        for _, _, error in admin.delete_acls(filters):
            if error.errno:
                raise InfraError(f"the broker refused to delete an ACL ({error.__name__})", "see the broker's log")


@dataclass(frozen=True)
class AclSync:
    """What :func:`apply` did."""

    users: int
    created: int
    deleted: int
    seconds: float


def apply(settings: Settings, progress: Callable[[str], None] | None = None) -> AclSync:
    """Create or update every workload's SCRAM user and make its ACLs match its grant (idempotent).

    ACLs a grant no longer gives are deleted, for the topic and group names these settings use
    (ACLs on other names, e.g. a test's own topics, are left alone).

    Raises:
        InfraError: when the broker refuses (for instance a broker started with other credentials).
    """
    from kafka.admin import UserScramCredentialUpsertion
    from kafka.errors import KafkaError

    from tickcast.kafka import make_admin

    started = time.monotonic()
    users = load_users(settings.infra.state_dir)
    workloads = kafka_access().kafka_workloads()
    # the local broker, whatever bootstrap servers the services are told
    local = admin_settings(settings).model_copy(update={"bootstrap_servers": f"127.0.0.1:{settings.infra.kafka_port}"})
    try:
        admin = make_admin(local)
    except Exception as exc:
        raise InfraError(
            f"could not log in to Kafka at {local.bootstrap_servers} as the local admin ({type(exc).__name__})",
            f"is the broker there the one started from {settings.infra.state_dir}? "
            "`tickcast infra down` then `tickcast infra up` restarts it with this folder's users",
        ) from None
    created = deleted = 0
    try:
        errors = admin.alter_user_scram_credentials(
            [
                UserScramCredentialUpsertion(name, SCRAM_MECHANISM, users[name].password.get_secret_value())
                for name in workloads
            ]
        )
        failed = {name: message for name, message in errors.items() if message}
        if failed:
            raise InfraError(f"the broker refused the SCRAM users {sorted(failed)}", "see the broker's log")
        managed = set(names_from_settings(settings).values()) | {kafka_access().CLUSTER_NAME}
        for principal_name, wanted in desired_acls(settings).items():
            current = _current(admin, principal_name)
            have = {_entry(acl) for acl in current}
            missing = sorted(wanted - have)
            stale = [
                acl for acl in current if _entry(acl) not in wanted and acl.resource_pattern.resource_name in managed
            ]
            if missing:
                result = admin.create_acls([_acl(principal_name, entry) for entry in missing])
                if result["failed"]:
                    raise InfraError(
                        f"the broker refused {len(result['failed'])} ACLs of {principal_name}", "see the broker's log"
                    )
            _delete(admin, stale)
            created += len(missing)
            deleted += len(stale)
    except KafkaError as exc:
        raise InfraError(
            f"setting up Kafka users and ACLs failed ({type(exc).__name__})",
            "is the broker's authorizer on? `tickcast infra down` then `up` rewrites its config",
        ) from None
    finally:
        with contextlib.suppress(Exception):
            admin.close()
    result = AclSync(users=len(workloads), created=created, deleted=deleted, seconds=time.monotonic() - started)
    if progress is not None:
        progress(
            f"kafka: {result.users} SCRAM users ({', '.join(workloads)}), ACLs from the Pulumi grants "
            f"({created} added, {deleted} removed) in {result.seconds:.1f} s"
        )
    return result


def remove_acls(settings: Settings, names: Mapping[str, str] | None = None) -> int:
    """Delete the workload ACLs on the topic and group names these settings use (tests clean up
    with it); returns how many went. ``names`` overrides :func:`names_from_settings`."""
    from tickcast.kafka import make_admin

    managed = set((names or names_from_settings(settings)).values())
    admin = make_admin(admin_settings(settings))
    try:
        doomed = [
            acl
            for workload in kafka_access().kafka_workloads()
            for acl in _current(admin, principal(workload))
            if acl.resource_pattern.resource_name in managed
        ]
        _delete(admin, doomed)
        return len(doomed)
    finally:
        admin.close()
