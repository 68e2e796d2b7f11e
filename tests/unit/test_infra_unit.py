"""The infrastructure layer's logic, with nothing running: config rendering, errors, processes."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tickcast.cli import build_parser, main
from tickcast.errors import InfraError
from tickcast.infra import process
from tickcast.infra.base import ServiceStatus
from tickcast.infra.cli import render_table
from tickcast.infra.kafka_server import (
    KafkaServer,
    java_major_version,
    kafka_healthy,
    new_cluster_id,
    render_server_properties,
)
from tickcast.infra.manager import InfraManager
from tickcast.infra.minio_server import MINIO_VERSION, MinioServer, minio_healthy
from tickcast.settings import InfraSettings, KafkaSettings, load_settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port held by something that is neither Kafka nor MinIO (accepts, then closes)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.1)
    yield int(sock.getsockname()[1])
    sock.close()


def _infra(tmp_path: Path, **overrides: object) -> InfraSettings:
    values: dict[str, object] = {
        "state_dir": tmp_path / "state",
        "cache_dir": tmp_path / "cache",
        "kafka_port": _free_port(),
        "kafka_controller_port": _free_port(),
        "minio_port": _free_port(),
        "minio_console_port": _free_port(),
        **overrides,
    }
    return InfraSettings.model_validate(values)


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return dict(pairs)  # type: ignore[arg-type]


def test_server_properties_single_node_kraft(tmp_path: Path) -> None:
    infra = _infra(tmp_path, kafka_port=19092, kafka_controller_port=19093)
    props = _properties(
        render_server_properties(infra, KafkaSettings.model_validate({"partitions": 6}), tmp_path / "data")
    )
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["num.partitions"] == "6"
    assert props["auto.create.topics.enable"] == "false"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"


def test_server_properties_follow_kafka_settings(tmp_path: Path) -> None:
    props = _properties(
        render_server_properties(
            _infra(tmp_path), KafkaSettings.model_validate({"partitions": 12, "retention_hours": 24}), tmp_path
        )
    )
    assert props["num.partitions"] == "12"
    assert props["log.retention.hours"] == "24"


def test_cluster_id_is_16_bytes_urlsafe_base64() -> None:
    cluster_id = new_cluster_id()
    assert len(cluster_id) == 22 and "=" not in cluster_id
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    assert new_cluster_id() != cluster_id


def test_cluster_id_never_starts_with_a_dash() -> None:
    """``kafka-storage format -t -xyz`` takes the id for an option; 1 random id in 64 starts
    with "-", so without the guard 2,000 draws all miss one with probability (63/64)^2000, 2e-14."""
    assert not any(new_cluster_id().startswith("-") for _ in range(2000))


def test_port_taken_by_something_unhealthy_names_the_setting(tmp_path: Path, listener: int) -> None:
    kafka = KafkaServer(_infra(tmp_path, kafka_port=listener), KafkaSettings.model_validate({}))
    kafka.reuse_wait_s = 0.5
    with pytest.raises(InfraError) as info:
        kafka.start()
    assert f"port {listener}" in str(info.value)
    assert "TICKCAST_INFRA__KAFKA_PORT" in str(info.value)


def test_controller_port_taken_names_its_setting(tmp_path: Path, listener: int) -> None:
    kafka = KafkaServer(_infra(tmp_path, kafka_controller_port=listener), KafkaSettings.model_validate({}))
    with pytest.raises(InfraError, match="TICKCAST_INFRA__KAFKA_CONTROLLER_PORT"):
        kafka.start()


def test_minio_port_taken_names_its_setting(tmp_path: Path, listener: int) -> None:
    minio = MinioServer(_infra(tmp_path, minio_port=listener))
    minio.reuse_wait_s = 0.5
    with pytest.raises(InfraError, match="TICKCAST_INFRA__MINIO_PORT"):
        minio.start()


def test_probes_reject_a_port_that_is_not_the_service(listener: int) -> None:
    assert kafka_healthy("127.0.0.1", listener, timeout_s=0.5) is False
    assert minio_healthy("127.0.0.1", listener, timeout_s=0.5) is False
    closed = _free_port()
    assert kafka_healthy("127.0.0.1", closed, timeout_s=0.5) is False
    assert minio_healthy("127.0.0.1", closed, timeout_s=0.5) is False


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH with no tools on it."""
    bin_dir = tmp_path / "empty-bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def test_missing_maven_says_what_to_install(tmp_path: Path, empty_path: Path) -> None:
    with pytest.raises(InfraError) as info:
        KafkaServer(_infra(tmp_path), KafkaSettings.model_validate({})).install()
    assert "`mvn` was not found" in str(info.value)
    assert "apt-get install maven" in str(info.value)


def test_missing_go_says_what_to_install(tmp_path: Path, empty_path: Path) -> None:
    minio = MinioServer(_infra(tmp_path))
    assert MINIO_VERSION in str(minio.binary)
    with pytest.raises(InfraError) as info:
        minio.install()
    assert "`go` was not found" in str(info.value)
    assert "install Go" in str(info.value)


def test_missing_java_says_what_to_install(tmp_path: Path, empty_path: Path) -> None:
    kafka = KafkaServer(_infra(tmp_path), KafkaSettings.model_validate({}))
    with pytest.raises(InfraError) as info:
        kafka.command()
    assert "`java` was not found" in str(info.value)
    assert "Java 17" in str(info.value)


def _fake_java(bin_dir: Path, version_line: str) -> Path:
    java = bin_dir / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return java


@pytest.mark.parametrize(
    ("line", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_292"', 8),
    ],
)
def test_java_major_version(tmp_path: Path, line: str, major: int) -> None:
    assert java_major_version(str(_fake_java(tmp_path, line))) == major


def test_old_java_is_refused(tmp_path: Path, empty_path: Path) -> None:
    _fake_java(empty_path, 'openjdk version "11.0.2" 2019-01-15')
    with pytest.raises(InfraError, match="needs Java 17"):
        KafkaServer(_infra(tmp_path), KafkaSettings.model_validate({})).command()


def test_minio_command_keeps_the_password_out_of_argv(tmp_path: Path) -> None:
    infra = _infra(tmp_path, minio_root_password="s3cret-pass-123")
    argv, env = MinioServer(infra).command()
    assert "s3cret-pass-123" not in " ".join(argv)
    assert env["MINIO_ROOT_PASSWORD"] == "s3cret-pass-123"
    assert env["MINIO_UPDATE"] == "off" and env["MINIO_BROWSER"] == "off"
    assert f"127.0.0.1:{infra.minio_port}" in argv


def test_state_dir_is_resolved_to_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    kafka = KafkaServer(
        InfraSettings.model_validate({"state_dir": Path("rel-state")}), KafkaSettings.model_validate({})
    )
    assert kafka.state_dir == tmp_path / "rel-state"
    assert kafka.marker in str(kafka.properties_path)


# -- processes ------------------------------------------------------------------------------


def test_start_detached_then_stop_leaves_no_process(tmp_path: Path) -> None:
    marker = str(tmp_path / "marker")
    pid_path, log_path = tmp_path / "run" / "svc.pid", tmp_path / "logs" / "svc.log"
    # A shell with a child: stopping must take the whole group down.
    argv = ["/bin/sh", "-c", f"echo started; sleep 60 & wait # {marker}"]
    pid = process.start_detached(argv, pid_path=pid_path, log_path=log_path, marker=marker)
    assert process.running_pid(pid_path) == pid
    assert os.getpgid(pid) == pid
    assert json.loads(pid_path.read_text())["marker"] == marker
    process.wait_until_healthy(
        "svc", lambda: "started" in log_path.read_text(), pid=pid, log_path=log_path, timeout_s=10, interval_s=0.05
    )

    assert process.stop_process(pid_path, grace_s=5) is True
    assert not process.pid_alive(pid)
    assert not process.group_alive(pid)  # the shell's child went down with it
    assert not pid_path.exists()
    assert process.stop_process(pid_path, grace_s=5) is False


def test_stale_pid_file_of_an_unrelated_process_is_ignored(tmp_path: Path) -> None:
    pid_path = tmp_path / "svc.pid"
    # Our own pid is alive but its command line lacks the marker: it is not the service.
    pid_path.write_text(json.dumps({"pid": os.getpid(), "marker": "/no/such/marker", "started_at": time.time()}))
    assert process.running_pid(pid_path) is None
    assert not pid_path.exists()


def test_wait_until_healthy_reports_an_early_exit_with_the_log(tmp_path: Path) -> None:
    marker = str(tmp_path / "m")
    log_path = tmp_path / "svc.log"
    pid = process.start_detached(
        ["/bin/sh", "-c", f"echo 'boom: bad config' ; exit 3 # {marker}"],
        pid_path=tmp_path / "svc.pid",
        log_path=log_path,
        marker=marker,
    )
    with pytest.raises(InfraError) as info:
        process.wait_until_healthy("svc", lambda: False, pid=pid, log_path=log_path, timeout_s=30)
    assert "exited while starting" in str(info.value)
    assert "boom: bad config" in str(info.value)


def test_wait_until_healthy_times_out_naming_the_setting(tmp_path: Path) -> None:
    marker = str(tmp_path / "m")
    pid_path = tmp_path / "svc.pid"
    pid = process.start_detached(
        [sys.executable, "-c", "import time; time.sleep(60)", marker],
        pid_path=pid_path,
        log_path=tmp_path / "svc.log",
        marker=marker,
    )
    try:
        with pytest.raises(InfraError, match="TICKCAST_INFRA__START_TIMEOUT_S"):
            process.wait_until_healthy(
                "svc", lambda: False, pid=pid, log_path=tmp_path / "svc.log", timeout_s=0.5, interval_s=0.1
            )
    finally:
        process.stop_process(pid_path, grace_s=5)


# -- manager and CLI ------------------------------------------------------------------------


def test_status_of_nothing_running(tmp_path: Path) -> None:
    manager = InfraManager(load_settings(infra=_infra(tmp_path, minio_enabled=False).model_dump()))
    statuses = {s.name: s for s in manager.status()}
    assert statuses["kafka"].enabled and not statuses["kafka"].running and not statuses["kafka"].healthy
    assert not statuses["minio"].enabled
    assert not manager.healthy()
    with pytest.raises(InfraError, match="unknown service"):
        manager.service("zookeeper")


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    """``main`` configures the root logger; put it back so later tests see no trace of it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_cli_status_exits_non_zero_when_a_service_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in _infra(tmp_path).model_dump().items():
        if key != "minio_root_password":
            monkeypatch.setenv(f"TICKCAST_INFRA__{key.upper()}", str(value))
    assert main(["infra", "status", "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == ["kafka", "minio"]
    assert not any(row["healthy"] for row in rows)


def test_cli_registers_infra_actions() -> None:
    parser = build_parser()
    for action in ("install", "up", "down", "status"):
        args = parser.parse_args(["infra", action])
        assert callable(args.handler)
    assert parser.parse_args(["infra", "up", "kafka", "--json"]).services == ["kafka"]


def test_render_table() -> None:
    rows = [
        ServiceStatus("kafka", True, True, True, True, 42, "127.0.0.1:9092", "/s/logs/kafka.log"),
        ServiceStatus("minio", False, False, False, False, None, "127.0.0.1:9000", "/s/logs/minio.log"),
    ]
    lines = render_table(rows).splitlines()
    assert lines[0].split() == ["SERVICE", "STATE", "PID", "ADDRESS", "LOG"]
    assert lines[1].split() == ["kafka", "healthy", "42", "127.0.0.1:9092", "/s/logs/kafka.log"]
    assert lines[2].split() == ["minio", "disabled", "-", "127.0.0.1:9000", "-"]


# A guard for the runner tests: a command waiting on the test gives up after this many
# 0.02 s naps (30 s) and exits 7, so a runner that never reports fails instead of hanging.
_GIVE_UP = 'i=0; while [ ! -e "$GO" ]; do i=$((i+1)); [ $i -gt 1500 ] && exit 7; sleep 0.02; done'


def test_run_logged_reports_heartbeats_and_logs_the_output(tmp_path: Path) -> None:
    """Beats come while the command runs; each quotes the tool's newest line once, not again."""
    go = tmp_path / "go"
    log_path = tmp_path / "logs" / "build.log"
    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)
        # The command waits for the test: it ends once two beats followed the quoted line.
        quoted = [i for i, seen in enumerate(lines) if "step one" in seen]
        if quoted and len(lines) - quoted[0] >= 3:
            go.touch()

    elapsed = process.run_logged(
        ["/bin/sh", "-c", f"echo step one; {_GIVE_UP}; echo step two >&2"],
        what="building a thing",
        fix="unused",
        progress=progress,
        log_path=log_path,
        env={**os.environ, "GO": str(go)},
        heartbeat_s=0.1,
    )
    assert elapsed > 0
    assert len(lines) >= 3
    assert all(line.startswith("  ... still building a thing (") for line in lines), lines
    # Quoted once when it was new; the beats after it say only the time (the tool is quiet).
    assert sum("step one" in line for line in lines) == 1, lines
    assert lines[-1].endswith(" s)"), lines
    text = log_path.read_text()
    assert text.startswith("$ /bin/sh -c echo step one")
    assert "step one\n" in text and "step two\n" in text  # stdout and stderr both


def test_run_logged_failure_names_the_log_and_quotes_its_end(tmp_path: Path) -> None:
    log_path = tmp_path / "build.log"
    with pytest.raises(InfraError) as info:
        process.run_logged(
            ["/bin/sh", "-c", "echo compiling; echo 'error: no space left on device' >&2; exit 3"],
            what="building a thing",
            fix="free some disk space",
            progress=lambda line: None,
            log_path=log_path,
        )
    assert f"building a thing failed (exit code 3); last lines of {log_path}:" in info.value.message
    assert "error: no space left on device" in info.value.message
    assert info.value.fix == "free some disk space"


def test_run_logged_names_the_signal_that_killed_the_command(tmp_path: Path) -> None:
    with pytest.raises(InfraError, match=r"building a thing failed \(killed by SIGKILL\)"):
        process.run_logged(
            ["/bin/sh", "-c", "kill -KILL $$"],
            what="building a thing",
            fix="unused",
            progress=lambda line: None,
            log_path=tmp_path / "build.log",
        )


def test_run_logged_stops_the_command_when_interrupted(tmp_path: Path) -> None:
    """Ctrl-C during a build (here: raised by the progress callback) leaves no build behind."""
    log_path = tmp_path / "build.log"

    def progress(line: str) -> None:
        if re.search(r"child=\d+", log_path.read_text()):  # the command has started and said who it is
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        process.run_logged(
            ["/bin/sh", "-c", f"printf 'child=%s\\n' $$; {_GIVE_UP}"],
            what="building a thing",
            fix="unused",
            progress=progress,
            log_path=log_path,
            env={**os.environ, "GO": str(tmp_path / "never")},
            heartbeat_s=0.1,
        )
    found = re.search(r"child=(\d+)", log_path.read_text())
    assert found is not None
    assert not process.pid_alive(int(found.group(1)))
