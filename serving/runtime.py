"""Starting Ray and Serve for tickcast: environment, a local cluster, deploying the app.

Ray's workers inherit the environment of the process that starts the cluster, so the
variables that tune Serve must be in place before ``ray.init`` (or ``ray start``); on
KubeRay they go into the pod spec instead.

A cluster tickcast starts itself (``tickcast serve``, ``tickcast up``, batch forecasts and
backtests without ``RAY_ADDRESS``) is locked down to this machine's user:

- every Ray component listens on 127.0.0.1 only (GCS, raylet, object manager, workers,
  dashboard and runtime-env agents, metrics export, the Serve proxy and replicas), through
  Ray's single-machine mode (:data:`SINGLE_MACHINE_ENV`) and :func:`bind_replica_servers_locally`;
- Ray's token authentication is on, with a token generated once under the state folder
  (``ray/auth_token``, mode 0600) that Ray reads from ``RAY_AUTH_TOKEN_PATH``: a client
  without it is refused;
- settings travel to replicas and actors without their secrets (:func:`detach_secrets`),
  because Ray keeps actors' init arguments in GCS: each worker reads them back from its
  own environment (:func:`attach_secrets`).

A cluster joined through ``RAY_ADDRESS`` is left as its operator configured it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from tickcast.errors import ConfigError, TickcastError
from tickcast.private_files import create_once
from tickcast.settings import GROUPS, InfraSettings, ServingSettings, Settings, env_name

log = logging.getLogger(__name__)

#: Object store size for a local cluster: forecasts move as small HTTP bodies, not objects.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024
#: The address every component of a local cluster binds.
LOOPBACK = "127.0.0.1"
#: Ray's single-machine mode (the one it uses on macOS and Windows): the node's address is
#: the loopback address, so GCS, raylet, workers and agents bind 127.0.0.1 instead of the
#: machine's network address, and no other node can join. Ray reads it once at import.
SINGLE_MACHINE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
#: The Ray token's file under the state folder.
RAY_TOKEN_FILE = Path("ray") / "auth_token"
#: Direct-ingress HTTP ports above ``serving.port``: one per replica of the ingress on a node.
DIRECT_PORTS = 64


def ray_env(serving: ServingSettings) -> dict[str, str]:
    """Environment variables a Ray cluster running the app should start with."""
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    if serving.throughput_optimized:
        env.update(
            RAY_SERVE_THROUGHPUT_OPTIMIZED="1",
            # replica N of the ingress answers HTTP on port+N; the proxy keeps `port`
            RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT=str(serving.port + 1),
            RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT=str(serving.port + DIRECT_PORTS),
            # Serve holds a released replica port back for HAProxy's sake (minutes); without
            # HAProxy that only moves a restarted replica to another port than the one
            # `tickcast serve` printed, so it gets its old port back at once.
            RAY_SERVE_PORT_QUARANTINE_S="0",
        )
    else:
        # The fallback is explicit: a cluster started with it never turns direct ingress on.
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "0"
    return env


def apply_ray_env(serving: ServingSettings) -> None:
    """Put :func:`ray_env` into this process's environment, for clusters it starts."""
    for key, value in ray_env(serving).items():
        os.environ.setdefault(key, value)


# -- the local cluster's lock-down -----------------------------------------------------------
def ray_token_path(state_dir: Path | str) -> Path:
    """Where the local Ray cluster's authentication token lives."""
    return Path(state_dir).expanduser().resolve() / RAY_TOKEN_FILE


def ensure_ray_token(state_dir: Path | str) -> Path:
    """The local Ray token file: created once (mode 0600, folder 0700), then reused.

    The token is written to a private temporary file that is hard-linked into place, so two
    starts at once agree on one token and nobody reads a half-written file. The token itself
    is never logged: Ray is given the file's path, not its content.

    Raises:
        ConfigError: when the file is readable by other users, not ours, or empty.
    """
    path = ray_token_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    create_once(path, secrets.token_hex(32).encode())  # Ray's own format: 256 random bits
    info = path.stat()
    fix = f"delete {path} (a new token is made at the next start), after stopping the local Ray cluster"
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigError("Ray token file", f"{path} is readable by other users or not yours", fix)
    if info.st_size < 32:
        raise ConfigError("Ray token file", f"{path} does not hold a token", fix)
    return path


def local_cluster_env(settings: Settings | None = None) -> dict[str, str]:
    """Environment of a Ray cluster tickcast starts: loopback only, token authentication on."""
    state_dir = (settings.infra if settings else InfraSettings.model_validate({})).state_dir
    return {
        **SINGLE_MACHINE_ENV,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(ensure_ray_token(state_dir)),
    }


def _joins_existing_cluster() -> bool:
    return bool(os.environ.get("RAY_ADDRESS"))


def prepare_local_cluster(settings: Settings | None = None) -> None:
    """Put :func:`local_cluster_env` into this process, for the cluster it is about to start.

    Ray reads the single-machine flag once, when it is imported, and the authentication mode
    when its config is first loaded; this process has usually imported Ray already, so both
    are also refreshed here, and the token Ray cached from an earlier cluster is dropped. The
    processes Ray starts read them from the environment.
    """
    apply_ray_env(settings.serving if settings else ServingSettings.model_validate({}))
    os.environ.update(local_cluster_env(settings))
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # compiled, no stubs

    Config.initialize("")  # reload RAY_AUTH_MODE, as Ray does when it enables token auth itself
    # Ray keeps the first token it read for the life of the process: a process that starts (or
    # joins) a cluster of another state folder, with another token, would present the old one
    # and be refused (tests and benchmarks start several clusters in one process).
    AuthenticationTokenLoader.instance().reset_cache()


def init_ray(settings: Settings | None, **kwargs: Any) -> None:
    """``ray.init``: join the cluster at ``RAY_ADDRESS`` when set, else start a locked-down local one.

    ``kwargs`` go to ``ray.init``; ``num_cpus`` and ``object_store_memory`` only when starting.
    Without settings the defaults apply (the token lives under ``.tickcast``).
    """
    import ray

    if ray.is_initialized():
        return
    apply_ray_env(settings.serving if settings else ServingSettings.model_validate({}))
    kwargs = {"include_dashboard": False, **kwargs}
    if _joins_existing_cluster():
        kwargs.pop("num_cpus", None)
        kwargs.pop("object_store_memory", None)
    else:
        prepare_local_cluster(settings)
    ray.init(**kwargs)


def ray_start_command(ray_bin: str, num_cpus: int | None = None) -> list[str]:
    """``ray start --head`` for a detached local cluster, every address on loopback.

    Run it with :func:`local_cluster_env` in its environment.
    """
    cmd = [
        ray_bin,
        "start",
        "--head",
        f"--node-ip-address={LOOPBACK}",
        "--include-dashboard=false",
        f"--dashboard-host={LOOPBACK}",
        # a free port instead of Ray's fixed 52365: local clusters of other checkouts or tests
        # would collide on it now that every cluster binds 127.0.0.1
        "--dashboard-agent-listen-port=0",
        "--disable-usage-stats",
    ]
    if num_cpus:
        cmd.append(f"--num-cpus={num_cpus}")
    return cmd


@dataclass
class LocalNodes:
    """Ray nodes started as separate processes on this machine (``ray start``), all on loopback.

    The layout KubeRay runs (a head and worker nodes, each its own raylet with its own CPUs),
    on one machine: for scale-out tests and benchmarks. Stop it with :meth:`stop`.
    """

    address: str  # the head's GCS address, for ray.init(address=...) and RAY_ADDRESS
    env: dict[str, str]  # the environment every node was started with (no secret values)
    ray_bin: str
    temp_dir: Path
    nodes: int = 1
    cpus_per_node: int = 1
    remove_temp: bool = False  # the temp folder was made for these nodes: removed by stop()
    pin_cores: bool = False  # each node's processes run on its own cpus_per_node cores

    def _cores(self, node: int) -> set[int] | None:
        """The cores node number ``node`` is pinned to (None: not pinned, or too few cores)."""
        cores = sorted(os.sched_getaffinity(0))
        if not self.pin_cores or len(cores) < self.cpus_per_node:
            return None
        start = node * self.cpus_per_node
        return {cores[(start + i) % len(cores)] for i in range(self.cpus_per_node)}

    def add_node(self) -> None:
        """Start one more worker node joining the head (``cpus_per_node`` CPUs, loopback, token auth)."""
        import sys

        _run_ray_start(
            [
                sys.executable,
                "-c",
                _JOIN_LOCALLY,
                "start",
                f"--address={self.address}",
                f"--node-ip-address={LOOPBACK}",
                f"--num-cpus={self.cpus_per_node}",
                "--dashboard-agent-listen-port=0",
                "--disable-usage-stats",
            ],
            self.env,
            self._cores(self.nodes),
        )
        self.nodes += 1

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop every process of these nodes, found by this cluster's temp folder in its command line.

        Not ``ray stop``, which stops every Ray cluster of this user on the machine.
        """
        import psutil

        mine = []
        for proc in psutil.process_iter(["uids", "cmdline"]):
            try:
                if proc.info["uids"].real == os.getuid() and str(self.temp_dir) in " ".join(proc.info["cmdline"] or []):
                    mine.append(proc)
            except (psutil.Error, AttributeError):
                continue
        for proc in mine:
            try:
                proc.terminate()
            except psutil.Error:
                continue
        _, alive = psutil.wait_procs(mine, timeout=timeout_s)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                continue
        if self.remove_temp:
            import shutil

            shutil.rmtree(self.temp_dir, ignore_errors=True)


#: ``ray start`` for a worker node of a loopback-only cluster. Ray refuses to add a node in
#: single-machine mode, and outside it turns a 127.0.0.1 head address into the machine's
#: network address, where nothing of this cluster listens. So this ``ray start`` alone lifts
#: the refusal and keeps the address as given; the node it starts (raylet, agents, workers)
#: inherits single-machine mode and binds 127.0.0.1 like the head.
_JOIN_LOCALLY = """
import sys
from ray._private import ray_constants, services
ray_constants.ENABLE_RAY_CLUSTER = True
services.resolve_ip_for_localhost = lambda host: host
from ray.scripts.scripts import main
sys.argv[0] = "ray"
main()
"""


def _run_ray_start(cmd: list[str], env: dict[str, str], cores: set[int] | None = None) -> None:
    """Run ``ray start``; with ``cores``, it and every process of the node it starts run on those cores only."""
    import subprocess

    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    proc = subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=300, check=False, preexec_fn=pin
    )
    if proc.returncode != 0:
        raise TickcastError(
            f"`ray start` of a local node failed: {(proc.stderr or proc.stdout).strip()[-500:]}",
            "run `ray stop`, check that the port is free, and retry",
        )


def start_local_nodes(
    settings: Settings | None,
    port: int,
    nodes: int = 2,
    cpus_per_node: int = 1,
    temp_dir: Path | None = None,
    pin_cores: bool = False,
) -> LocalNodes:
    """A head and ``nodes - 1`` worker nodes on this machine, locked down like a local cluster.

    Every node binds 127.0.0.1 (``--node-ip-address``), runs Serve's tuning environment
    (:func:`ray_env`) and requires the local Ray token; the head's GCS listens on ``port``.
    Connect with ``ray.init(address=nodes.address)`` after :func:`prepare_local_cluster`.

    Ray's ``--num-cpus`` only counts: a node's processes may still use every core. With
    ``pin_cores`` each node runs on its own ``cpus_per_node`` cores (CPU affinity), as on
    separate machines, which is what a scale-out measurement needs.
    """
    import shutil
    import sys
    import tempfile

    ray_bin = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
    temp = temp_dir or Path(tempfile.mkdtemp(prefix="tickcast-ray-"))
    env = {
        **ray_env(settings.serving if settings else ServingSettings.model_validate({})),
        **local_cluster_env(settings),
        "RAY_TMPDIR": str(temp),
    }
    head = LocalNodes(
        f"{LOOPBACK}:{port}", env, ray_bin, temp, 1, cpus_per_node, remove_temp=temp_dir is None, pin_cores=pin_cores
    )
    cmd = ray_start_command(ray_bin, cpus_per_node)
    _run_ray_start([*cmd, f"--port={port}", f"--temp-dir={temp}"], env, head._cores(0))
    try:
        for _ in range(nodes - 1):
            head.add_node()
    except BaseException:
        head.stop()
        raise
    return head


def replica_nodes(app: str = "tickcast", deployment: str = "forecaster") -> list[str]:
    """The Ray node id of each live replica of ``app``'s ``deployment`` (sorted; call after ``ray.init``).

    Read from GCS's actor table, which needs no dashboard (local clusters run without one).
    """
    from ray._private import state

    name = f"ServeReplica:{app}:{deployment}"
    alive = state.actors(actor_state_name="ALIVE").values()
    return sorted(a["Address"]["NodeID"] for a in alive if a["ActorClassName"] == name)


def bind_replica_servers_locally() -> None:
    """Make this Serve replica's own gRPC server bind the node's address when that is loopback.

    Serve starts each replica's inter-deployment gRPC server on ``[::]`` (every interface,
    Ray 2.60), with no setting to change it, while the rest of a single-machine cluster binds
    127.0.0.1. Call this in the deployment's constructor: Serve starts that server right
    after it. On a cluster whose node address is not loopback (KubeRay) it does nothing.
    """
    import ray
    from ray.serve._private import replica

    if ray.util.get_node_ip_address() != LOOPBACK or getattr(replica, "_tickcast_loopback", False):
        return
    original = replica.add_port_to_grpc_server

    def add_port(server: Any, address: str) -> Any:
        if address.startswith("[::]:"):
            address = f"{LOOPBACK}:{address.rsplit(':', 1)[1]}"
        return original(server, address)

    replica.add_port_to_grpc_server = add_port
    replica._tickcast_loopback = True  # type: ignore[attr-defined]


def start_local(
    settings: Settings, num_cpus: int | None = None, object_store_memory: int | None = LOCAL_OBJECT_STORE_BYTES
) -> None:
    """Start (or join, when ``RAY_ADDRESS`` is set) Ray, then Serve's HTTP proxy on the configured host and port."""
    from ray import serve

    init_ray(settings, log_to_driver=True, num_cpus=num_cpus, object_store_memory=object_store_memory)
    serve.start(http_options={"host": settings.serving.host, "port": settings.serving.port})


# -- secrets stay out of Ray's object store and GCS ------------------------------------------
@dataclass(frozen=True)
class DetachedSettings:
    """Settings without their secret values, and where a worker finds each secret again.

    ``refs`` maps ``group.field`` to the environment variable that holds the value, or to
    a private file (``file:PATH``) for a value that was not in the builder's environment.
    """

    settings: Settings
    refs: dict[str, str] = field(default_factory=dict)


def _secret_fields(settings: Settings) -> list[tuple[str, str, SecretStr]]:
    """``(group, field, value)`` of every secret that is set and differs from its default."""
    found = []
    for group in GROUPS:
        model = getattr(settings, group)
        for name, info in type(model).model_fields.items():
            value = getattr(model, name)
            if isinstance(value, SecretStr) and value != info.default:
                found.append((group, name, value))
    return found


def _handoff_file(state_dir: Path, values: dict[str, str]) -> Path:
    """A private file (0600) holding ``values``, named by an HMAC of them (so no duplicates)."""
    folder = Path(state_dir).expanduser().resolve() / "run" / "secrets"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    key = ensure_ray_token(state_dir).read_bytes()  # a local secret the name can be keyed with
    payload = json.dumps(values, sort_keys=True).encode()
    path = folder / hmac.new(key, payload, hashlib.sha256).hexdigest()[:32]
    if not path.exists():
        tmp = folder / f".{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    return path


def detach_secrets(settings: Settings) -> DetachedSettings:
    """``settings`` with every secret removed, for actor and deployment init arguments.

    A secret whose environment variable holds the same value is looked up there again by
    the worker (on KubeRay every pod has them from the chart's Secret; locally the workers
    inherit the environment of the process that started Ray). A secret given in code
    instead goes through a 0600 file under the state folder's ``run/secrets``, which only
    a worker on this machine can read.
    """
    updates: dict[str, dict[str, Any]] = {}
    refs: dict[str, str] = {}
    in_files: dict[str, str] = {}
    for group, name, value in _secret_fields(settings):
        var = env_name(group, name)
        if os.environ.get(var) == value.get_secret_value():
            refs[f"{group}.{name}"] = var
        else:
            in_files[f"{group}.{name}"] = value.get_secret_value()
        default = type(getattr(settings, group)).model_fields[name].default
        updates.setdefault(group, {})[name] = default
    if in_files:
        path = _handoff_file(settings.infra.state_dir, in_files)
        refs.update({key: f"file:{path}" for key in in_files})
    public = settings.model_copy(
        update={group: getattr(settings, group).model_copy(update=fields) for group, fields in updates.items()}
    )
    return DetachedSettings(public, refs)


def attach_secrets(detached: DetachedSettings | Settings) -> Settings:
    """The full settings again, inside a worker: each secret read from where ``refs`` says.

    Raises:
        ConfigError: naming the environment variable a worker lacks (never a value).
    """
    if isinstance(detached, Settings):
        return detached
    updates: dict[str, dict[str, Any]] = {}
    files: dict[str, dict[str, str]] = {}
    for key, ref in detached.refs.items():
        group, name = key.split(".", 1)
        if ref.startswith("file:"):
            path = ref.removeprefix("file:")
            try:
                files.setdefault(path, json.loads(Path(path).read_text()))
            except (OSError, ValueError):
                raise ConfigError(
                    env_name(group, name),
                    f"was given in code where the app was built, and its hand-off file {path} is unreadable here",
                    "set it in the environment of the process that starts Ray (or the pod spec) instead",
                ) from None
            value = files[path].get(key)
        else:
            value = os.environ.get(ref)
        if value is None:
            raise ConfigError(
                env_name(group, name),
                "is set where the app was built but not in this Ray worker's environment",
                "set it in the environment of the process that starts Ray, or in the pod spec on Kubernetes",
            )
        updates.setdefault(group, {})[name] = SecretStr(value)
    s = detached.settings
    return s.model_copy(update={g: getattr(s, g).model_copy(update=f) for g, f in updates.items()})


def deploy(settings: Settings, overrides: dict[str, Any] | None = None, blocking: bool = False) -> str:
    """Deploy (or update in place) the forecast app; returns its base URL."""
    from ray import serve

    from serving.app import APP_NAME, make_app

    serve.run(make_app(settings, overrides), name=APP_NAME, route_prefix="/", blocking=blocking)
    return f"http://{settings.serving.host}:{settings.serving.port}"


def direct_url(serving: ServingSettings, timeout_s: float = 30.0) -> str | None:
    """In throughput-optimized mode, the URL a replica answers on directly (None if none does).

    Replicas take the first free port above ``serving.port``; a port another replica or
    program held when a replica started moves it further up, so this asks rather than assumes.
    """
    urls = direct_urls(serving, timeout_s)
    return urls[0] if urls else None


def direct_urls(serving: ServingSettings, timeout_s: float = 30.0, at_least: int = 1) -> list[str]:
    """Every direct-ingress URL above ``serving.port`` where a healthy tickcast replica answers.

    Waits up to ``timeout_s`` for ``at_least`` of them; returns what answers then (maybe
    fewer, maybe none). A port counts only when its ``/healthz`` is tickcast's (``ok`` and a
    model), not whatever else might listen in the range. Empty when not throughput-optimized.
    """
    import time

    import httpx

    if not serving.throughput_optimized:
        return []
    deadline = time.monotonic() + timeout_s
    while True:
        found = []
        for port in range(serving.port + 1, serving.port + DIRECT_PORTS + 1):
            url = f"http://{serving.host}:{port}"
            try:
                answer = httpx.get(f"{url}/healthz", timeout=0.5)
                if answer.status_code == 200 and answer.json().get("ok") is True and "model" in answer.json():
                    found.append(url)
            except (httpx.HTTPError, ValueError, AttributeError):
                continue
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(1.0)
