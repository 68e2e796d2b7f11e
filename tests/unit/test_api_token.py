"""The local API token: created once with mode 0600, reused, refused when exposed; when Serve needs one."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tickcast.api_token import (
    TOKEN_FILE,
    ensure_local_token,
    is_loopback,
    require_token_when_exposed,
    token_path,
)
from tickcast.errors import ConfigError
from tickcast.platform import Platform
from tickcast.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_token_is_created_once_private_and_reused(tmp_path: Path) -> None:
    old_umask = os.umask(0o000)  # a permissive umask must not loosen the file
    try:
        token = ensure_local_token(tmp_path / "state")
    finally:
        os.umask(old_umask)
    path = tmp_path / "state" / TOKEN_FILE
    assert token_path(tmp_path / "state") == path.resolve()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 43 and token.strip() == token  # 32 random bytes, URL-safe base64
    assert ensure_local_token(tmp_path / "state") == token  # reused, not regenerated
    assert ensure_local_token(tmp_path / "other") != token  # each state folder has its own
    assert not [p for p in path.parent.iterdir() if p.name != TOKEN_FILE]  # no temporary files left


def test_concurrent_first_use_agrees_on_one_token(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        tokens = set(pool.map(lambda _: ensure_local_token(tmp_path), range(32)))
    assert len(tokens) == 1


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    token = ensure_local_token(tmp_path)
    path = tmp_path / TOKEN_FILE
    path.chmod(0o644)
    with pytest.raises(ConfigError) as err:
        ensure_local_token(tmp_path)
    assert "readable by other users" in err.value.message and "chmod 600" in (err.value.fix or "")
    assert token not in err.value.one_line()  # the secret never appears in errors
    path.chmod(0o600)
    assert ensure_local_token(tmp_path) == token


def test_a_damaged_token_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / TOKEN_FILE
    path.write_text("short-secret\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError) as err:
        ensure_local_token(tmp_path)
    assert "at least 32 characters" in err.value.message and "short-secret" not in err.value.one_line()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("serve.example", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serve_refuses_a_non_loopback_host_without_a_token() -> None:
    require_token_when_exposed("127.0.0.1", None)
    require_token_when_exposed("0.0.0.0", "a-token")
    with pytest.raises(ConfigError) as err:
        require_token_when_exposed("0.0.0.0", None)
    assert err.value.setting == "TICKCAST_SERVING__AUTH_TOKEN" and "0.0.0.0" in err.value.message


def test_the_serve_command_and_the_app_builder_refuse_it(tmp_path: Path) -> None:
    """`tickcast serve` exits with the setting named instead of starting Ray (without the check it
    would start and block, and the subprocess would time out); build_app raises too."""
    from serving.app import make_app

    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKCAST_")}
    env.update(TICKCAST_SERVING__HOST="0.0.0.0", TICKCAST_SERVING__MODEL="bundled")
    proc = subprocess.run(
        [sys.executable, "-m", "tickcast", "serve"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert "TICKCAST_SERVING__AUTH_TOKEN" in proc.stderr and "0.0.0.0" in proc.stderr
    with pytest.raises(ConfigError, match="TICKCAST_SERVING__AUTH_TOKEN"):
        make_app(load_settings(serving={"host": "0.0.0.0"}))


def test_up_gives_the_token_to_serve_and_its_callers_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TICKCAST_SERVING__AUTH_TOKEN", raising=False)
    platform = Platform(load_settings(infra={"state_dir": str(tmp_path / "state")}))
    platform.give_api_token()
    token = (tmp_path / "state" / TOKEN_FILE).read_text().strip()
    envs = {name: app.command()[1] for name, app in platform.apps.items()}
    assert {name for name, env in envs.items() if env.get("TICKCAST_SERVING__AUTH_TOKEN") == token} == {
        "serve",
        "forecaster",
        "dashboard",
    }
    assert all("TICKCAST_SERVING__AUTH_TOKEN" not in envs[name] for name in ("producer", "consumer"))
    assert all(token not in " ".join(app.command()[0]) for app in platform.apps.values())  # never on a command line
    # a token the user configured wins over the file
    configured = Platform(load_settings(infra={"state_dir": str(tmp_path / "state")}, serving={"auth_token": "mine"}))
    configured.give_api_token()
    assert configured.apps["serve"].command()[1]["TICKCAST_SERVING__AUTH_TOKEN"] == "mine"
