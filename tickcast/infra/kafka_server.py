"""A real single-node Apache Kafka broker (KRaft, combined broker+controller).

The jars come from Maven (``kafka/pom.xml`` in this package) into the shared cache; the broker
runs with the machine's Java 17+. The health probe speaks the Kafka protocol directly
(ApiVersions, then Metadata), so it needs neither Java nor a client library and tells a
real broker apart from anything else listening on the port.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import shutil
import socket
import struct
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tickcast.errors import InfraError
from tickcast.infra import process
from tickcast.infra.base import HOST, LocalService, Port, Progress, inherited_env
from tickcast.infra.kafka_acls import ADMIN, CONTROLLER, PLAIN_MECHANISM, SCRAM_MECHANISM, KafkaUser, load_users
from tickcast.settings import InfraSettings, KafkaSettings

KAFKA_VERSION = "4.1.1"
POM_PATH = Path(__file__).with_name("kafka") / "pom.xml"
LOG4J_PATH = Path(__file__).with_name("kafka") / "log4j2.properties"
MIN_JAVA = 17

_JAVA_FIX = "install a Java 17+ runtime (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
_MVN_FIX = "install Maven 3.6+ (Debian/Ubuntu: apt-get install maven), or copy the jars into the cache yourself"
# Stamp inside the libs folder: the hash of the pom they came from, so a changed pom re-resolves.
_STAMP = ".tickcast-pom.sha256"


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (like ``random-uuid``).

    Never starting with ``-``, as Kafka's own ``Uuid.randomUuid`` ensures: ``kafka-storage
    format -t -abc...`` reads the id as an option and fails (1 format in 64 did).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _plain_jaas(login: KafkaUser, users: list[KafkaUser]) -> str:
    """A PlainLoginModule config: ``login`` is who this broker logs in as, ``users`` who may log in."""
    accepted = " ".join(f'user_{u.name}="{u.password.get_secret_value()}"' for u in users)
    return (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{login.name}" password="{login.password.get_secret_value()}" {accepted};'
    )


def _security_lines(port: int, controller: int, users: Mapping[str, KafkaUser] | None) -> list[str]:
    if users is None:
        return [
            f"listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller}",
            f"advertised.listeners=PLAINTEXT://{HOST}:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]
    admin, controller_user = users[ADMIN], users[CONTROLLER]
    return [
        # Policy-enforced mode: every connection logs in. Clients use SCRAM-SHA-512 (the
        # workloads) or PLAIN (the admin, whose password sits here rather than in the metadata,
        # so it also works on a data folder formatted before users existed).
        f"listeners=CLIENT://{HOST}:{port},CONTROLLER://{HOST}:{controller}",
        f"advertised.listeners=CLIENT://{HOST}:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=CLIENT",
        "listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
        f"listener.name.client.sasl.enabled.mechanisms={SCRAM_MECHANISM},{PLAIN_MECHANISM}",
        "listener.name.client.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        f"listener.name.client.plain.sasl.jaas.config={_plain_jaas(admin, [admin])}",
        f"sasl.mechanism.inter.broker.protocol={PLAIN_MECHANISM}",
        # KRaft cannot authenticate its controller listener with SCRAM (the credentials live in
        # the metadata the controller serves), so it has a PLAIN principal of its own.
        f"listener.name.controller.sasl.enabled.mechanisms={PLAIN_MECHANISM}",
        f"listener.name.controller.plain.sasl.jaas.config={_plain_jaas(controller_user, [controller_user])}",
        f"sasl.mechanism.controller.protocol={PLAIN_MECHANISM}",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        f"super.users=User:{ADMIN};User:{CONTROLLER}",
        # Deny what no ACL allows (the default, said out loud: the ACLs are the grants).
        "allow.everyone.if.no.acl.found=false",
    ]


def render_server_properties(
    infra: InfraSettings, kafka: KafkaSettings, data_dir: Path, users: Mapping[str, KafkaUser] | None = None
) -> str:
    """The broker's ``server.properties`` for a single-node KRaft cluster on 127.0.0.1.

    Args:
        users: the local users (:func:`tickcast.infra.kafka_acls.load_users`) for the
            policy-enforced mode (SASL logins, ACLs); None for an open PLAINTEXT broker.
    """
    port, controller = infra.kafka_port, infra.kafka_controller_port
    lines = [
        "# Written by tickcast on every start; edit the TICKCAST_INFRA__* settings instead.",
        "process.roles=broker,controller",
        "node.id=1",
        # A static voter set (not --standalone's dynamic quorum): the controller port can
        # change between starts without re-formatting the data.
        f"controller.quorum.voters=1@{HOST}:{controller}",
        *_security_lines(port, controller, users),
        f"log.dirs={data_dir}",
        f"num.partitions={kafka.partitions}",
        "default.replication.factor=1",
        "min.insync.replicas=1",
        # One broker: every internal topic must fit on it.
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=12",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=6",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        # Off on purpose: a typo in a topic name should fail loudly, and tickcast creates
        # its topics with the configured partitions and retention (tickcast.kafka.ensure_topics).
        "auto.create.topics.enable=false",
        "delete.topic.enable=true",
        f"log.retention.hours={kafka.retention_hours}",
        # Two cores are shared with MinIO, Ray and the model: few threads are plenty.
        "num.network.threads=2",
        "num.io.threads=4",
        "num.recovery.threads.per.data.dir=1",
        "background.threads=4",
    ]
    return "\n".join(lines) + "\n"


def java_major_version(java: str) -> int:
    """The major version of the ``java`` executable (8 for 1.8, 17 for 17.0.x)."""
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise InfraError(f"could not read the Java version from `{java} -version`", _JAVA_FIX)
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


# -- the Kafka wire protocol, just enough for a health probe ----------------------------------

_API_METADATA = 3
_API_SASL_HANDSHAKE = 17
_API_VERSIONS = 18
_API_SASL_AUTHENTICATE = 36
_METADATA_VERSIONS = range(4, 8)  # v4..v7: one request layout; v8 adds fields, v9+ is flexible


@dataclass(frozen=True)
class KafkaMetadata:
    """What a Metadata request tells about the cluster."""

    cluster_id: str | None
    brokers: list[tuple[int, str, int]]
    topics: list[str]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str | None:
        size = self.take(">h")
        if size < 0:
            return None
        value = self.data[self.pos : self.pos + size].decode()
        self.pos += size
        return value

    def int32_array(self) -> list[int]:
        return [self.take(">i") for _ in range(max(0, self.take(">i")))]


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _call(sock: socket.socket, api_key: int, version: int, correlation_id: int, body: bytes) -> _Reader:
    client_id = b"tickcast-infra-probe"
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    if not 4 <= size <= 64 * 1024 * 1024:
        raise ValueError(f"implausible response size {size}")
    reader = _Reader(_recv_exact(sock, size))
    if reader.take(">i") != correlation_id:
        raise ValueError("correlation id mismatch")
    return reader


def _parse_metadata(reader: _Reader, version: int) -> KafkaMetadata:
    reader.take(">i")  # throttle_time_ms
    brokers = []
    for _ in range(reader.take(">i")):
        node = reader.take(">i")
        host = reader.string() or ""
        port = reader.take(">i")
        reader.string()  # rack
        brokers.append((node, host, port))
    cluster_id = reader.string()
    reader.take(">i")  # controller_id
    topics = []
    for _ in range(reader.take(">i")):
        reader.take(">h")  # error_code
        name = reader.string()
        internal = reader.take(">b")
        for _ in range(reader.take(">i")):
            reader.take(">h")  # error_code
            reader.take(">i")  # partition
            reader.take(">i")  # leader
            if version >= 7:
                reader.take(">i")  # leader_epoch
            reader.int32_array()  # replicas
            reader.int32_array()  # isr
            if version >= 5:
                reader.int32_array()  # offline replicas
        if name and not internal:
            topics.append(name)
    return KafkaMetadata(cluster_id=cluster_id, brokers=brokers, topics=sorted(topics))


def _kafka_string(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _sasl_plain(sock: socket.socket, login: tuple[str, str]) -> None:
    """Log in with SASL/PLAIN (SaslHandshake v1, then SaslAuthenticate v0)."""
    reader = _call(sock, _API_SASL_HANDSHAKE, 1, 3, _kafka_string(PLAIN_MECHANISM))
    error = reader.take(">h")
    if error != 0:
        raise ValueError(f"the broker does not offer SASL/PLAIN (SaslHandshake error code {error})")
    user, password = login
    token = b"\0" + user.encode() + b"\0" + password.encode()
    reader = _call(sock, _API_SASL_AUTHENTICATE, 0, 4, struct.pack(">i", len(token)) + token)
    error = reader.take(">h")
    if error != 0:
        # the broker's message names the user at most, never the password
        raise ValueError(f"SASL/PLAIN login as {user!r} refused (error code {error}: {reader.string()})")


def kafka_metadata(
    host: str, port: int, timeout_s: float = 2.0, sasl_plain: tuple[str, str] | None = None
) -> KafkaMetadata:
    """Ask the broker at ``host:port`` for cluster metadata over the Kafka protocol.

    Args:
        sasl_plain: (user, password) to log in with SASL/PLAIN first, for a broker that
            requires a login (the policy-enforced mode's admin).

    Raises:
        OSError, ValueError, struct.error: when nothing answers or it does not speak Kafka.
    """
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        # ApiVersions v0 is answered by every broker version, even one that rejects v0.
        reader = _call(sock, _API_VERSIONS, 0, 1, b"")
        error = reader.take(">h")
        if error != 0:
            raise ValueError(f"ApiVersions error code {error}")
        supported = {}
        for _ in range(reader.take(">i")):
            key, low, high = reader.take(">h"), reader.take(">h"), reader.take(">h")
            supported[key] = (low, high)
        low, high = supported.get(_API_METADATA, (0, -1))
        usable = [v for v in _METADATA_VERSIONS if low <= v <= high]
        if not usable:
            raise ValueError(f"broker supports Metadata v{low}..v{high}, the probe needs one of v4..v7")
        version = usable[-1]
        if sasl_plain is not None:
            _sasl_plain(sock, sasl_plain)
        # topics = null (all topics), allow_auto_topic_creation = false
        body = struct.pack(">ib", -1, 0)
        return _parse_metadata(_call(sock, _API_METADATA, version, 2, body), version)


def _answers_api_versions(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether something on ``host:port`` answers a Kafka ApiVersions request (no login needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            return _call(sock, _API_VERSIONS, 0, 1, b"").take(">h") == 0
    except (OSError, ValueError, struct.error):
        return False


def kafka_healthy(host: str, port: int, timeout_s: float = 2.0, sasl_plain: tuple[str, str] | None = None) -> bool:
    """Whether a Kafka broker answers Metadata on ``host:port`` and lists at least one broker."""
    try:
        return bool(kafka_metadata(host, port, timeout_s, sasl_plain).brokers)
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        return False


# -- the service ----------------------------------------------------------------------------


class KafkaServer(LocalService):
    """The local broker: jars in ``{cache_dir}/kafka-4.1.1/libs``, state in ``{state_dir}/kafka``."""

    name = "kafka"

    def __init__(self, infra: InfraSettings, kafka: KafkaSettings, progress: Progress | None = None) -> None:
        super().__init__(infra, progress)
        self.kafka = kafka
        self.home = self.cache_dir / f"kafka-{KAFKA_VERSION}"
        self.libs = self.home / "libs"
        self.config_dir = self.state_dir / "kafka"
        self.data_dir = self.config_dir / "data"
        self.properties_path = self.config_dir / "server.properties"

    @property
    def ports(self) -> list[Port]:
        """The client port, then the KRaft controller port."""
        return [
            Port(self.infra.kafka_port, "kafka_port"),
            Port(self.infra.kafka_controller_port, "kafka_controller_port"),
        ]

    @property
    def stop_grace_s(self) -> float:
        """A controlled shutdown of one node takes a few seconds; allow for a busy machine."""
        return 45.0

    @staticmethod
    def _pom_hash() -> str:
        return hashlib.sha256(POM_PATH.read_bytes()).hexdigest()

    def is_installed(self) -> bool:
        """Whether the cached jars were resolved from the current pom."""
        stamp = self.libs / _STAMP
        return stamp.is_file() and stamp.read_text().strip() == self._pom_hash()

    def install(self) -> None:
        """Resolve the broker's jars with Maven into the cache (atomic; skipped when current)."""
        if self.is_installed():
            return
        mvn = process.require_executable("mvn", "resolve Kafka's jars", _MVN_FIX)
        self.home.mkdir(parents=True, exist_ok=True)
        build = self.home / f"build-{uuid.uuid4().hex[:8]}"
        build.mkdir()
        try:
            # Run Maven on a copy of the pom, so nothing is written next to the installed package.
            shutil.copy2(POM_PATH, build / "pom.xml")
            out = build / "libs"
            mvn_log = self.home / "mvn.log"
            self.progress(
                f"kafka: fetching Apache Kafka {KAFKA_VERSION} jars with Maven (first time only: about 10-60 s, "
                f"longer on a slow network); Maven's output goes to {mvn_log}"
            )
            # Batch mode without -q: the log then lists each jar as it is fetched, which the
            # heartbeat quotes, and which tells a person reading the log how far it got.
            elapsed = process.run_logged(
                [mvn, "-B", "-f", str(build / "pom.xml"), "dependency:copy-dependencies",
                 f"-DoutputDirectory={out}", "-DincludeScope=runtime"],
                what="fetching Kafka's jars with Maven",
                fix="check the Maven output; Maven needs to reach its repository (or a mirror in ~/.m2/settings.xml)",
                progress=self.progress,
                cwd=build,
                env=inherited_env({}),
                log_path=mvn_log,
            )  # fmt: skip
            if not any(out.glob("kafka_2.13-*.jar")):
                raise InfraError(f"Maven finished but {out} holds no kafka_2.13 jar", f"see {mvn_log}")
            if any(out.glob("slf4j-api-1.*.jar")) and not any(out.glob("log4j-slf4j-impl-*.jar")):
                # slf4j 1.x finds no log4j binding (log4j-slf4j2-impl serves slf4j 2.x only).
                self.progress(
                    f"kafka: warning: {POM_PATH} pairs slf4j-api 1.x with no matching binding, so the broker "
                    "will log nothing; depend on org.apache.logging.log4j:log4j-slf4j-impl there"
                )
            (out / _STAMP).write_text(self._pom_hash() + "\n")
            # Swap in the new folder by rename; a running broker keeps the jars it opened.
            old = self.home / f"libs.old-{build.name}"
            if self.libs.exists():
                self.libs.rename(old)
            out.rename(self.libs)
            shutil.rmtree(old, ignore_errors=True)
            self.progress(f"kafka: {len(list(self.libs.glob('*.jar')))} jars in {self.libs} ({elapsed:.0f} s)")
        finally:
            shutil.rmtree(build, ignore_errors=True)

    def _java(self) -> str:
        java = process.require_executable("java", "run the Kafka broker", _JAVA_FIX)
        major = java_major_version(java)
        if major < MIN_JAVA:
            raise InfraError(f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+, but `{java}` is Java {major}", _JAVA_FIX)
        return java

    @functools.cached_property
    def users(self) -> dict[str, KafkaUser] | None:
        """The local users in policy-enforced mode (``infra.kafka_workload_users``), else None."""
        return load_users(self.state_dir) if self.infra.kafka_workload_users else None

    def _admin_login(self) -> tuple[str, str] | None:
        users = self.users
        if users is None:
            return None
        return users[ADMIN].name, users[ADMIN].password.get_secret_value()

    def prepare(self) -> None:
        """Write ``server.properties`` (mode 0600: it holds the admin's password) and format the
        KRaft storage once."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        text = render_server_properties(self.infra, self.kafka, self.data_dir, self.users)
        fd = os.open(self.properties_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(self.properties_path, 0o600)  # a file an earlier version wrote keeps its old mode otherwise
        if (self.data_dir / "meta.properties").is_file():
            return  # formatted before: keep the data (and its cluster id) across restarts
        process.run_logged(
            [self._java(), "-Xmx256m", f"-Dlog4j2.configurationFile={LOG4J_PATH}", "-cp", f"{self.libs}/*",
             "kafka.tools.StorageTool", "format", "--ignore-formatted",
             "-t", new_cluster_id(), "-c", str(self.properties_path)],
            what="formatting Kafka's KRaft storage",
            fix=f"remove {self.data_dir} if it holds a broken earlier attempt, then start again",
            progress=self.progress,
            log_path=self.state_dir / "logs" / "kafka-format.log",
        )  # fmt: skip

    def command(self) -> tuple[list[str], dict[str, str]]:
        """``java ... kafka.Kafka server.properties`` with a modest heap and log4j2 to stdout."""
        argv = [
            self._java(),
            f"-Xmx{self.infra.kafka_heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_PATH}",
            f"-Dkafka.logs.dir={self.state_dir / 'logs'}",
            "-cp",
            f"{self.libs}/*",
            "kafka.Kafka",
            str(self.properties_path),
        ]
        return argv, inherited_env({})

    def _port_conflict(self, port: Port, what: str) -> InfraError:
        login = self._admin_login()
        if port == self.ports[0] and login is not None and kafka_healthy(HOST, self.port):
            # An open broker (or one that answers without a login): not this folder's broker.
            what = "a Kafka broker without logins (an earlier tickcast, or another state folder's)"
        elif port == self.ports[0] and login is not None and _answers_api_versions(HOST, self.port):
            what = "a Kafka broker that refuses this state folder's admin login (another state folder's?)"
        return super()._port_conflict(port, what)

    def probe(self, timeout_s: float = 2.0) -> bool:
        """A Metadata round trip that lists at least one broker (logged in as the admin in
        policy-enforced mode, so a broker with other users does not count as ours)."""
        return kafka_healthy(HOST, self.port, timeout_s, self._admin_login())

    def metadata(self, timeout_s: float = 5.0) -> KafkaMetadata:
        """Cluster id, brokers and (non-internal) topics of the broker on the client port."""
        return kafka_metadata(HOST, self.port, timeout_s, self._admin_login())
