"""The Serve application builder and config file, and what Ray gets to store, checked without starting Ray."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray import cloudpickle
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from serving.app import build_app, make_app
from serving.runtime import (
    attach_secrets,
    detach_secrets,
    ensure_ray_token,
    local_cluster_env,
    ray_env,
    ray_start_command,
    ray_token_path,
)
from tickcast.errors import ConfigError
from tickcast.settings import ServingSettings, Settings, env_name, load_settings

CONFIG = Path(__file__).resolve().parents[2] / "serving" / "serve-config.yaml"


def test_settings_become_deployment_options() -> None:
    app = make_app(load_settings(), {"num_gpus": "0.25", "num_cpus": 2, "model": "tiny/1", "max_batch_size": 32})
    deployment = app._bound_deployment
    config = deployment._deployment_config
    assert deployment.ray_actor_options == {"num_cpus": 2.0, "num_gpus": 0.25}
    assert config.num_replicas == 1 and config.autoscaling_config is None
    assert config.max_ongoing_requests == 256
    assert config.user_config == {"model": "tiny/1", "max_batch_size": 32, "batch_wait_timeout_s": 0.0}
    # what reconfigure can change is not in the init args, so a model swap needs no new replica
    other = make_app(load_settings(), {"num_gpus": "0.25", "num_cpus": 2, "model": "other/2", "max_batch_size": 8})
    assert other._bound_deployment.init_args == deployment.init_args


def test_autoscaling_and_builder_args() -> None:
    config = build_app({"num_replicas": "auto", "min_replicas": "2", "max_replicas": "6"})._bound_deployment
    autoscaling = config._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas, autoscaling.target_ongoing_requests) == (2, 6, 32.0)
    with pytest.raises(ConfigError, match="not a serving setting"):
        build_app({"modle": "x"})
    with pytest.raises(ConfigError):
        build_app({"num_gpus": "-1"})


def test_serve_config_file_is_valid_and_uses_the_builder() -> None:
    document = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(document)
    app = schema.applications[0]
    assert app.import_path == "serving.app:build_app" and app.deployments[0].name == "forecaster"
    assert set(app.deployments[0].user_config) == {"model", "max_batch_size", "batch_wait_timeout_s"}
    build_app(app.args)  # the args are serving settings


def test_ray_environment() -> None:
    # the default is the fast path: throughput-optimized Serve with direct ingress above the port
    env = ray_env(ServingSettings(port=9000))
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" and env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "9001"
    assert env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] == "9064" and env["RAY_SERVE_PORT_QUARANTINE_S"] == "0"
    # the fallback says so explicitly, so a cluster started with it never has direct ingress
    assert ray_env(ServingSettings(port=9000, throughput_optimized=False)) == {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0",
    }


# -- secrets stay out of what Ray stores -----------------------------------------------------
SECRETS = {
    ("serving", "auth_token"): "api-token-value-0123456789abcdef",
    ("lake", "s3_access_key_id"): "AKIAEXAMPLEKEYID0001",
    ("lake", "s3_secret_access_key"): "s3-secret-value-0123456789abcdef",
    ("polygon", "api_key"): "polygon-key-value-0123456789",
    ("kafka", "sasl_password"): "kafka-password-value-0123456789",
}


def _secret_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_env: set[str]) -> Settings:
    """Settings with every secret set: those named in ``in_env`` come from the environment, the rest in code."""
    overrides: dict[str, Any] = {"infra": {"state_dir": str(tmp_path / "state")}}
    for (group, name), value in SECRETS.items():
        if name in in_env:
            monkeypatch.setenv(env_name(group, name), value)
        else:
            overrides.setdefault(group, {})[name] = value
    return load_settings(**overrides)


def _stored(app: Application) -> bytes:
    """The deployment's init arguments as Ray serializes them into GCS."""
    deployment = app._bound_deployment
    return cloudpickle.dumps((deployment.init_args, deployment.init_kwargs))


def test_deployment_init_args_hold_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _secret_settings(tmp_path, monkeypatch, in_env={"auth_token", "s3_secret_access_key"})
    stored = _stored(make_app(settings))
    assert str(tmp_path / "state").encode() in stored  # non-secret settings do travel
    for (group, name), value in SECRETS.items():
        assert value.encode() not in stored, f"{group}.{name} is in the deployment's init arguments"
    # build_app (serve run, KubeRay) reads everything from the environment: nothing in a file
    for (group, name), value in SECRETS.items():
        monkeypatch.setenv(env_name(group, name), value)
    monkeypatch.setenv("TICKCAST_INFRA__STATE_DIR", str(tmp_path / "state2"))
    app = build_app({})
    stored = _stored(app)
    assert not any(value.encode() in stored for value in SECRETS.values())
    detached = app._bound_deployment.init_args[0]
    assert set(detached.refs.values()) == {env_name(g, n) for g, n in SECRETS}
    assert not (tmp_path / "state2" / "run" / "secrets").exists()


def test_replica_reads_its_secrets_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _secret_settings(tmp_path, monkeypatch, in_env={"auth_token", "api_key"})
    detached = detach_secrets(settings)
    # secrets given in code went through a private file, secrets in the environment stay there
    files = {ref.removeprefix("file:") for ref in detached.refs.values() if ref.startswith("file:")}
    assert len(files) == 1
    handoff = Path(files.pop())
    assert stat.S_IMODE(handoff.stat().st_mode) == 0o600 and stat.S_IMODE(handoff.parent.stat().st_mode) == 0o700
    assert detached.refs["serving.auth_token"] == "TICKCAST_SERVING__AUTH_TOKEN"
    assert detach_secrets(settings).refs == detached.refs  # the same secrets reuse one file
    restored = attach_secrets(cloudpickle.loads(cloudpickle.dumps(detached)))
    for (group, name), value in SECRETS.items():
        assert getattr(getattr(restored, group), name).get_secret_value() == value
    assert restored.infra.state_dir == settings.infra.state_dir
    # a worker whose environment lacks one is told which variable, never the value
    monkeypatch.delenv("TICKCAST_SERVING__AUTH_TOKEN")
    with pytest.raises(ConfigError, match="TICKCAST_SERVING__AUTH_TOKEN") as caught:
        attach_secrets(detached)
    assert SECRETS[("serving", "auth_token")] not in str(caught.value)


def test_settings_without_secrets_travel_as_they_are(tmp_path: Path) -> None:
    # a file:// lake: the built-in lake on the local MinIO carries the root keys, which are secrets
    settings = load_settings(infra={"state_dir": str(tmp_path / "state")}, lake={"url": f"file://{tmp_path}/lake"})
    detached = detach_secrets(settings)
    assert detached.refs == {} and detached.settings == settings
    assert not (tmp_path / "state" / "run").exists()


# -- the local Ray cluster's lock-down -------------------------------------------------------
def test_ray_token_is_private_and_created_once(tmp_path: Path) -> None:
    path = ensure_ray_token(tmp_path / "state")
    token = path.read_text()
    assert path == ray_token_path(tmp_path / "state") and len(token) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ensure_ray_token(tmp_path / "state").read_text() == token  # reused, not regenerated
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by other users"):
        ensure_ray_token(tmp_path / "state")


def test_local_cluster_binds_loopback_with_token_auth(tmp_path: Path) -> None:
    settings = load_settings(infra={"state_dir": str(tmp_path / "state")})
    env = local_cluster_env(settings)
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == str(ray_token_path(tmp_path / "state"))
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # Ray's single-machine mode: node IP 127.0.0.1
    cmd = ray_start_command("ray", num_cpus=2)
    assert "--node-ip-address=127.0.0.1" in cmd and "--dashboard-host=127.0.0.1" in cmd
    assert "--num-cpus=2" in cmd
