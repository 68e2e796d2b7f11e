"""The Serve application builder and config file, checked without starting Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serving.app import build_app, make_app
from serving.runtime import ray_env
from tickcast.errors import ConfigError
from tickcast.settings import ServingSettings, load_settings

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
    assert ray_env(ServingSettings()) == {"RAY_USAGE_STATS_ENABLED": "0"}
    env = ray_env(ServingSettings(port=9000, throughput_optimized=True))
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" and env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "9001"
