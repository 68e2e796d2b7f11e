"""Local Ray locked down, checked on a real ``tickcast serve``: loopback only, token auth, no secrets in GCS.

One ``tickcast serve`` (its own Ray cluster, a tiny random-weight Chronos model) runs for
the module, with secrets in its environment as ``tickcast up`` passes them. Then:

- every socket its process tree listens on (GCS, raylet, object manager, agents, metrics
  export, Serve proxy, replica) is on loopback, and each of those components is there;
- Ray refuses a client without the token, and one with a wrong token, and accepts one
  with the token from the state folder (mode 0600), which no log contains;
- no secret value is anywhere in GCS's key-value store, where Serve keeps the deployment's
  init arguments (a non-secret setting is found there, so the scan does see them), while
  the replica still has its secrets: the API demands the bearer token from its environment.

Clients run as separate processes, as another user of the machine would connect.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from conftest import free_port, stop_process_group
from listening import LOOPBACK, exposed, tree_listeners

from serving.runtime import SINGLE_MACHINE_ENV, ray_token_path
from serving.tiny_models import build_tiny_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SMALL_BOLT = {"d_model": 64, "d_ff": 256, "num_layers": 2, "num_heads": 2, "d_kv": 32}
#: Ray on 2 shared cores takes a minute or two to start Serve and load a model.
START_TIMEOUT_S = 300.0


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    state_dir: Path
    secrets: dict[str, str]
    lake_url: str
    log: Path
    home: Path


def _wait_healthy(served: Served) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if served.proc.poll() is not None:
            pytest.fail(f"tickcast serve exited ({served.proc.returncode}):\n{served.log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{served.url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    pytest.fail(f"tickcast serve not healthy after {START_TIMEOUT_S:.0f} s:\n{served.log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("ray-lockdown")
    model = build_tiny_model("bolt-tiny", root / "bolt", context_length=256, **SMALL_BOLT)
    state_dir, home = root / "state", root / "home"
    home.mkdir()
    values = {
        "TICKCAST_SERVING__AUTH_TOKEN": "api-" + secrets.token_hex(20),
        "TICKCAST_LAKE__S3_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
        "TICKCAST_LAKE__S3_SECRET_ACCESS_KEY": "s3-" + secrets.token_hex(20),
        "TICKCAST_POLYGON__API_KEY": "pk-" + secrets.token_hex(16),
        "TICKCAST_KAFKA__SASL_PASSWORD": "kafka-" + secrets.token_hex(16),
    }
    lake_url = f"file://{root / 'lake-not-a-secret'}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TICKCAST_", "RAY_"))}
    env.update(values)
    env.update(
        HOME=str(home),  # Ray's default token (~/.ray/auth_token) must play no part
        RAY_USAGE_STATS_ENABLED="0",
        # Ray waits about 30 s for its raylet and agents to come up; on 2 cores shared with a CI
        # run they have taken longer (seen: "Failed to get node info: Deadline Exceeded", and the
        # raylet giving up on the agent's metrics_agent_port file), which is load, not lock-down.
        RAY_raylet_start_wait_time_s="180",
        RAY_agent_register_timeout_ms="180000",
        HF_HUB_OFFLINE="1",
        TICKCAST_INFRA__STATE_DIR=str(state_dir),
        TICKCAST_LAKE__URL=lake_url,
        TICKCAST_SERVING__PORT=str(port),
        TICKCAST_SERVING__URL=f"http://127.0.0.1:{port}",
        TICKCAST_SERVING__MODEL=str(model),
        TICKCAST_SERVING__NUM_CPUS="0.5",
        TICKCAST_SERVING__TORCH_THREADS="1",
    )
    log = root / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tickcast", "serve", "--num-cpus", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    served = Served(proc, f"http://127.0.0.1:{port}", state_dir, values, lake_url, log, home)
    try:
        _wait_healthy(served)
        yield served
    finally:
        stop_process_group(proc)


def _gcs_port(served: Served) -> int:
    ports = [item.port for item in tree_listeners(served.proc.pid) if "gcs_server" in item.process]
    assert ports, "no GCS server in the process tree of tickcast serve"
    return min(ports)


def _client(served: Served, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh Python with a clean Ray environment plus ``env``.

    The client runs in Ray's single-machine mode too: otherwise Ray turns 127.0.0.1 into the
    machine's network address, where nothing of this cluster listens.
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TICKCAST_", "RAY_"))}
    base.update(HOME=str(served.home / "client"), RAY_USAGE_STATS_ENABLED="0", **SINGLE_MACHINE_ENV, **env)
    try:
        return subprocess.run(
            [sys.executable, "-c", code], env=base, capture_output=True, text=True, timeout=240, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the Ray client neither connected nor failed within 240 s: {str(exc.stderr)[-2000:]}")


CONNECT = """
import json, sys
import ray
ray.init(address=sys.argv[1] if len(sys.argv) > 1 else "{address}", log_to_driver=False)
print("CONNECTED", json.dumps(len(ray.nodes())))
"""

#: Every value in GCS's key-value store, in the namespaces Ray and Serve use.
SCAN_KV = """
import json
import ray
ray.init(address="{address}", log_to_driver=False)
gcs = ray._private.worker.global_worker.gcs_client
values = []
for ns in (b"serve", b"fun", None, b"session", b"job", b"cluster", b"dashboard", b"tracing", b"healthcheck"):
    for key in gcs.internal_kv_keys(b"", ns):
        value = gcs.internal_kv_get(key, ns)
        values.append((key + b"=" + (value or b"")).hex())
print("KV", json.dumps(values))
"""


def test_every_ray_listener_is_on_loopback(served: Served) -> None:
    listeners = tree_listeners(served.proc.pid)
    assert not exposed(listeners), "listening beyond loopback:\n" + "\n".join(exposed(listeners))
    names = " | ".join(sorted({item.process for item in listeners}))
    # The check covers what Ray actually started, not an empty list.
    for part in ("gcs_server", "raylet", "DashboardAgent", "RuntimeEnvAgent", "ProxyActor", "ServeReplica"):
        assert part in names, f"no listening {part} in the tree of tickcast serve: {names}"
    assert {item.ip for item in listeners} <= LOOPBACK


def test_ray_token_is_required(served: Served) -> None:
    path = ray_token_path(served.state_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = path.read_text()
    address = f"127.0.0.1:{_gcs_port(served)}"
    code = CONNECT.format(address=address)

    # Refused by the GCS itself ("Unauthenticated: InvalidAuthToken"), not by a network error.
    anonymous = _client(served, code)
    assert anonymous.returncode != 0 and "CONNECTED" not in anonymous.stdout
    assert "InvalidAuthToken" in anonymous.stderr, anonymous.stderr[-2000:]

    wrong = _client(served, code, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    assert wrong.returncode != 0 and "CONNECTED" not in wrong.stdout
    assert "InvalidAuthToken" in wrong.stderr, wrong.stderr[-2000:]

    ok = _client(served, code, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(path))
    assert ok.returncode == 0 and "CONNECTED 1" in ok.stdout, ok.stderr[-3000:]

    # The token is in no log: not tickcast serve's output, not Ray's session logs.
    assert token not in served.log.read_text()
    logs = _session_logs(served)
    assert logs, "found no Ray session logs to check"
    leaked = [p for p in logs if token.encode() in p.read_bytes()]
    assert not leaked, f"the Ray token is written in {leaked}"
    # Ray's own default token file was not used.
    assert not (served.home / ".ray" / "auth_token").exists()


def _session_logs(served: Served) -> list[Path]:
    """The log files of this cluster's Ray session (from the raylet's command line)."""
    for proc in psutil.Process(served.proc.pid).children(recursive=True):
        for arg in proc.cmdline():
            if arg.startswith("--session_dir="):
                return [p for p in (Path(arg.split("=", 1)[1]) / "logs").rglob("*") if p.is_file()]
    return []


def test_no_secret_reaches_gcs_and_the_replica_reads_its_own(served: Served) -> None:
    path = ray_token_path(served.state_dir)
    scan = _client(
        served,
        SCAN_KV.format(address=f"127.0.0.1:{_gcs_port(served)}"),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(path),
    )
    assert scan.returncode == 0, scan.stderr[-3000:]
    line = next(x for x in scan.stdout.splitlines() if x.startswith("KV "))
    blob = b"\n".join(bytes.fromhex(v) for v in json.loads(line[3:]))
    # The deployment's init arguments are in there (the non-secret lake URL travels with them)...
    assert served.lake_url.encode() in blob, "the scan did not see the deployment's init arguments"
    # ...and no secret does, in any form pickle would write it.
    found = [name for name, value in served.secrets.items() if value.encode() in blob]
    assert not found, f"secret values stored in GCS: {found}"

    # The replica read the API token from its own environment: the API demands it.
    assert httpx.get(f"{served.url}/v1/models", timeout=30).status_code == 401
    bearer = {"Authorization": f"Bearer {served.secrets['TICKCAST_SERVING__AUTH_TOKEN']}"}
    answer = httpx.get(f"{served.url}/v1/models", headers=bearer, timeout=30)
    assert answer.status_code == 200, answer.text


def test_service_metrics_servers_bind_loopback_locally_and_all_interfaces_in_the_chart() -> None:
    """The producer's, consumer's and forecaster's /metrics and /healthz server: loopback by default."""
    from tickcast.service import ObservabilityServer
    from tickcast.settings import load_settings

    settings = load_settings()
    assert settings.metrics_host == "127.0.0.1"
    server = ObservabilityServer(free_port(), host=settings.metrics_host).start()
    try:
        mine = [item for item in tree_listeners(os.getpid()) if item.port == server.port]
        assert [item.ip for item in mine] == ["127.0.0.1"]
        assert ObservabilityServer(0).host == "127.0.0.1"  # the default, for callers that pass no host
    finally:
        server.stop()
    # In a pod, Prometheus and the kubelet's probes come from outside: the chart says so explicitly.
    values = yaml.safe_load((Path(__file__).resolve().parents[2] / "helm" / "tickcast" / "values.yaml").read_text())
    assert values["config"]["metrics_host"] == "0.0.0.0"
