"""Settings: env names, one-line errors, secrets masked, README reference in sync."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from tickcast.errors import ConfigError
from tickcast.settings import all_env_names, load_settings, reference_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_nested_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKCAST_KAFKA__BOOTSTRAP_SERVERS", "b1:9092,b2:9092")
    monkeypatch.setenv("TICKCAST_FORECASTER__QUANTILES", "[0.05, 0.5, 0.95]")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "b1:9092,b2:9092"
    assert s.forecaster.quantiles == (0.05, 0.5, 0.95)
    with pytest.raises(ValidationError):
        s.log_level = "DEBUG"  # type: ignore[misc]  # frozen


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKCAST_SERVING__PORT", "not-a-port")
    with pytest.raises(ConfigError, match="TICKCAST_SERVING__PORT"):
        load_settings()


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKCAST_POLYGON__API_KEY", "sk-very-secret-123")
    s = load_settings()
    assert "sk-very-secret-123" not in repr(s)
    assert "sk-very-secret-123" not in s.model_dump_json()


def test_readme_configuration_reference_matches_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    assert reference_markdown() in readme, "README's configuration reference is stale: run `tickcast config docs`"
    for name in all_env_names():
        assert f"`{name}`" in readme


def test_cli_bad_config_is_one_line_without_traceback() -> None:
    env = {**os.environ, "TICKCAST_LAKE__URL": "ftp://nowhere"}
    proc = subprocess.run(
        [sys.executable, "-m", "tickcast", "config", "show"], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "TICKCAST_LAKE__URL" in lines[0] and "Traceback" not in proc.stderr


def test_msk_iam_auth_builds_a_token_provider() -> None:
    from kafka.net.sasl.oauth import AbstractTokenProvider

    from tickcast.kafka import common_config
    from tickcast.settings import KafkaSettings

    config = common_config(
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", aws_region="us-east-1")
    )
    assert config["sasl_mechanism"] == "OAUTHBEARER"
    assert isinstance(config["sasl_oauth_token_provider"], AbstractTokenProvider)
