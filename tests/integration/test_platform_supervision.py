"""``tickcast up`` supervises what it started: a SIGKILLed consumer or broker comes back by
itself, ``tickcast status`` counts the restarts, ``tickcast down`` from another terminal ends
``up`` with exit 0, and a crash loop stops everything with a one-line reason.

The real command runs as a user runs it (``tickcast up --only consumer``: a private Kafka on
free ports and the consumer, writing to a file lake), in its own session so the test can
SIGKILL its services like an OOM killer would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import free_port

from tickcast.infra import process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
#: Kafka's first start on two busy cores (JIT, storage format) can take a minute.
START_TIMEOUT_S = 240.0


def platform_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Settings that keep this platform off every default port and folder."""
    kafka = free_port()
    return {
        **os.environ,
        "TICKCAST_INFRA__STATE_DIR": str(tmp_path / "state"),
        "TICKCAST_INFRA__KAFKA_PORT": str(kafka),
        "TICKCAST_INFRA__KAFKA_CONTROLLER_PORT": str(free_port()),
        "TICKCAST_INFRA__START_TIMEOUT_S": "180",
        "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka}",
        "TICKCAST_LAKE__URL": f"file://{tmp_path / 'lake'}",
        "TICKCAST_CONSUMER__METRICS_PORT": str(free_port()),
        "TICKCAST_PLATFORM__SUPERVISE_INTERVAL_S": "0.5",
        **extra,
    }


def tickcast(env: dict[str, str], *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """Run one ``tickcast`` command to completion."""
    return subprocess.run(
        [sys.executable, "-m", "tickcast", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s
    )


def wait_until(what: str, check: Callable[[], bool], up: subprocess.Popen[str], log: Path, timeout_s: float) -> None:
    """Poll ``check``; fail with ``up``'s output when ``up`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if up.poll() is not None:
            pytest.fail(f"`tickcast up` exited ({up.returncode}) while waiting for {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def status(env: dict[str, str]) -> dict[str, dict]:
    """``tickcast status --json`` by service name."""
    result = tickcast(env, "status", "--json", timeout_s=60)
    return {entry["name"]: entry for entry in json.loads(result.stdout)}


def service_pid(state: Path, name: str) -> int:
    """The pid ``up`` recorded for ``name``."""
    record = process.read_pid(state / "run" / f"{name}.pid")
    assert record is not None, f"{name} has no pid file"
    return record.pid


def restarted(env: dict[str, str], name: str, count: int) -> Callable[[], bool]:
    """True once ``status`` shows ``name`` healthy after ``count`` restarts, the last one done.

    The count goes up when a restart begins; the port can answer before the supervisor has
    seen the start through ("restarting"), and a kill in between is a failed restart.
    """

    def check() -> bool:
        entry = status(env)[name]
        record = entry["restarts"] or {}
        return bool(entry["healthy"] and record.get("restarts") == count and record.get("state") == "running")

    return check


def assert_stopped(env: dict[str, str]) -> None:
    """What this `up` started (the broker and the consumer) no longer runs.

    Only those two: the other services' ports are the defaults, where a developer's own
    platform may be running.
    """
    entries = status(env)
    assert not entries["kafka"]["running"] and not entries["consumer"]["running"], entries


def start_up(env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tickcast", "up", "--only", "consumer"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


def stop_everything(env: dict[str, str], up: subprocess.Popen[str]) -> None:
    if up.poll() is None:
        os.killpg(up.pid, signal.SIGINT)
        up.wait(timeout=180)
    tickcast(env, "down")


def test_up_restarts_a_killed_consumer_and_broker_and_down_ends_it_cleanly(tmp_path: Path) -> None:
    env = platform_env(tmp_path)
    state, log = tmp_path / "state", tmp_path / "up.log"
    up = start_up(env, log)
    try:
        wait_until("the platform", lambda: "running; a crashed service" in log.read_text(), up, log, START_TIMEOUT_S)
        assert {n: e["restarts"]["restarts"] for n, e in status(env).items() if e["restarts"]} == {
            "kafka": 0,
            "consumer": 0,
        }

        consumer = service_pid(state, "consumer")
        os.killpg(consumer, signal.SIGKILL)
        wait_until("the consumer's restart", restarted(env, "consumer", 1), up, log, START_TIMEOUT_S)
        assert service_pid(state, "consumer") != consumer
        assert "consumer stopped unexpectedly (killed by SIGKILL); restarting in 1 s" in log.read_text()

        broker = service_pid(state, "kafka")
        os.killpg(broker, signal.SIGKILL)
        wait_until("the broker's restart", restarted(env, "kafka", 1), up, log, START_TIMEOUT_S)
        table = tickcast(env, "status").stdout
        assert any(line.split()[:1] == ["kafka"] and "killed by SIGKILL" in line for line in table.splitlines()), table

        # `tickcast down` from another terminal: `up` stops everything and exits 0.
        down = tickcast(env, "down")
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=180) == 0, log.read_text()[-3000:]
        output = log.read_text()
        assert "stopping everything" not in output
        assert output.count("stopped unexpectedly") == 2  # the two kills above, nothing from `down`
        assert_stopped(env)
    finally:
        stop_everything(env, up)


def test_a_crash_loop_stops_everything_with_a_one_line_reason(tmp_path: Path) -> None:
    env = platform_env(tmp_path, TICKCAST_PLATFORM__CRASH_LOOP_RESTARTS="1")
    state, log = tmp_path / "state", tmp_path / "up.log"
    up = start_up(env, log)
    try:
        wait_until("the platform", lambda: "running; a crashed service" in log.read_text(), up, log, START_TIMEOUT_S)
        os.killpg(service_pid(state, "consumer"), signal.SIGKILL)
        wait_until("the consumer's restart", restarted(env, "consumer", 1), up, log, START_TIMEOUT_S)
        os.killpg(service_pid(state, "consumer"), signal.SIGKILL)
        assert up.wait(timeout=180) == 1
        reasons = [line for line in log.read_text().splitlines() if "stopping everything:" in line]
        assert reasons == [
            "tickcast: stopping everything: consumer crashed again (killed by SIGKILL) after 1 restarts within "
            "10 min (fix: see its log "
            f"{state / 'logs' / 'consumer.log'}; raise TICKCAST_PLATFORM__CRASH_LOOP_RESTARTS to keep retrying)"
        ]
        assert_stopped(env)
    finally:
        stop_everything(env, up)
