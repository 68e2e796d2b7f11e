"""A real single-node Apache Kafka broker (KRaft, combined broker+controller).

The jars come from Maven (``kafka/pom.xml`` in this package) into the shared cache; the broker
runs with the machine's Java 17+. The health probe speaks the Kafka protocol directly
(ApiVersions, then Metadata), so it needs neither Java nor a client library and tells a
real broker apart from anything else listening on the port.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import socket
import struct
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from tickcast.errors import InfraError
from tickcast.infra import process
from tickcast.infra.base import HOST, LocalService, Port, Progress, inherited_env
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


def render_server_properties(infra: InfraSettings, kafka: KafkaSettings, data_dir: Path) -> str:
    """The broker's ``server.properties`` for a single-node KRaft cluster on 127.0.0.1."""
    port, controller = infra.kafka_port, infra.kafka_controller_port
    lines = [
        "# Written by tickcast on every start; edit the TICKCAST_INFRA__* settings instead.",
        "process.roles=broker,controller",
        "node.id=1",
        # A static voter set (not --standalone's dynamic quorum): the controller port can
        # change between starts without re-formatting the data.
        f"controller.quorum.voters=1@{HOST}:{controller}",
        f"listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller}",
        f"advertised.listeners=PLAINTEXT://{HOST}:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
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
_API_VERSIONS = 18
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


def kafka_metadata(host: str, port: int, timeout_s: float = 2.0) -> KafkaMetadata:
    """Ask the broker at ``host:port`` for cluster metadata over the Kafka protocol.

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
        # topics = null (all topics), allow_auto_topic_creation = false
        body = struct.pack(">ib", -1, 0)
        return _parse_metadata(_call(sock, _API_METADATA, version, 2, body), version)


def kafka_healthy(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether a Kafka broker answers Metadata on ``host:port`` and lists at least one broker."""
    try:
        return bool(kafka_metadata(host, port, timeout_s).brokers)
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

    def prepare(self) -> None:
        """Write ``server.properties`` and format the KRaft storage once."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text(render_server_properties(self.infra, self.kafka, self.data_dir))
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

    def probe(self, timeout_s: float = 2.0) -> bool:
        """A Metadata round trip that lists at least one broker."""
        return kafka_healthy(HOST, self.port, timeout_s)

    def metadata(self, timeout_s: float = 5.0) -> KafkaMetadata:
        """Cluster id, brokers and (non-internal) topics of the broker on the client port."""
        return kafka_metadata(HOST, self.port, timeout_s)
