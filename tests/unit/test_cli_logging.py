"""Where log lines go: a quiet console for the commands a person watches, all of it for services."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tickcast.cli import cli_log_path, configure_logging, is_own_logger, main
from tickcast.settings import load_settings


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """configure_logging changes the root logger; put it back so later tests see no trace."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def test_third_party_info_goes_to_the_file_and_own_lines_to_the_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_file = tmp_path / "logs" / "tickcast-cli.log"
    configure_logging("INFO", third_party_log=log_file)

    logging.getLogger("kafka.conn").info("connecting to 127.0.0.1:19092")
    logging.getLogger("urllib3.connectionpool").warning("retrying a request")
    logging.getLogger("tickcast.kafka").info("created topics bars")
    logging.getLogger("consumer.sink").debug("below the configured level")

    err = capsys.readouterr().err
    assert "connecting to 127.0.0.1:19092" not in err  # third-party INFO: file only
    assert "WARNING urllib3.connectionpool: retrying a request" in err  # third-party WARNING: console too
    assert "INFO tickcast.kafka: created topics bars" in err
    assert "below the configured level" not in err
    text = log_file.read_text()
    assert "INFO kafka.conn: connecting to 127.0.0.1:19092" in text
    assert "retrying a request" in text and "created topics bars" in text
    assert "below the configured level" not in text


def test_without_a_file_every_logger_reaches_the_console(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A service's console is its log (a file under `tickcast up`, the pod log on Kubernetes).
    configure_logging("INFO")
    logging.getLogger("kafka.conn").info("connecting to 127.0.0.1:19092")
    logging.getLogger("tickcast.kafka").info("created topics bars")
    err = capsys.readouterr().err
    assert "INFO kafka.conn: connecting to 127.0.0.1:19092" in err
    assert "INFO tickcast.kafka: created topics bars" in err


def test_configuring_again_replaces_the_earlier_handlers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", third_party_log=tmp_path / "first.log")
    configure_logging("INFO", third_party_log=tmp_path / "second.log")
    logging.getLogger("tickcast.platform").info("once")
    logging.getLogger("botocore.credentials").info("found credentials")
    assert capsys.readouterr().err.count("tickcast.platform: once") == 1
    assert not (tmp_path / "first.log").exists()
    assert "found credentials" in (tmp_path / "second.log").read_text()


def test_the_file_is_created_only_when_a_line_comes(tmp_path: Path) -> None:
    # `tickcast status` on a fresh clone should not create a state folder just to log nothing.
    log_file = tmp_path / "state" / "logs" / "tickcast-cli.log"
    configure_logging("INFO", third_party_log=log_file)
    assert not log_file.parent.exists()
    # Not a Ray logger: once ray is imported (by another test), its loggers stop propagating.
    logging.getLogger("botocore.hooks").info("hello")
    assert log_file.is_file()


def test_own_loggers() -> None:
    for name in ("tickcast", "tickcast.infra.process", "consumer.sink", "serving.app", "producer", "__main__"):
        assert is_own_logger(name), name
    for name in ("kafka", "kafka.conn", "urllib3", "botocore.hooks", "ray", "tickcastle", "root"):
        assert not is_own_logger(name), name


def test_console_commands_log_third_parties_to_the_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tickcast infra status` (a console command) routes third-party INFO to <state_dir>/logs."""
    monkeypatch.setenv("TICKCAST_INFRA__STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("TICKCAST_INFRA__KAFKA_PORT", "1")  # nothing listens: status only reports
    monkeypatch.setenv("TICKCAST_INFRA__KAFKA_CONTROLLER_PORT", "2")
    monkeypatch.setenv("TICKCAST_INFRA__MINIO_PORT", "3")
    main(["infra", "status", "--json"])
    log_file = cli_log_path(load_settings())
    assert log_file == (tmp_path / "state" / "logs" / "tickcast-cli.log").resolve()
    capsys.readouterr()
    logging.getLogger("kafka.client").info("bootstrap")
    logging.getLogger("tickcast.platform").info("starting")
    err = capsys.readouterr().err
    assert "bootstrap" not in err and "tickcast.platform: starting" in err
    assert "kafka.client: bootstrap" in log_file.read_text()


def test_a_service_under_up_logs_everything_to_its_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --instance (how `tickcast up` starts its services) nothing is diverted to a file."""
    monkeypatch.setenv("TICKCAST_INFRA__STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("TICKCAST_INFRA__KAFKA_PORT", "1")
    monkeypatch.setenv("TICKCAST_INFRA__KAFKA_CONTROLLER_PORT", "2")
    monkeypatch.setenv("TICKCAST_INFRA__MINIO_PORT", "3")
    main(["--instance", str(tmp_path / "marker"), "infra", "status", "--json"])
    capsys.readouterr()
    logging.getLogger("kafka.client").info("bootstrap")
    assert "INFO kafka.client: bootstrap" in capsys.readouterr().err
    assert not (tmp_path / "state" / "logs" / "tickcast-cli.log").exists()


def test_the_console_follows_sys_stderr_when_it_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    # A handler holding the stream of its time would write to a closed capture or redirect.
    configure_logging("INFO")
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    logging.getLogger("tickcast.platform").info("after the swap")
    assert "tickcast.platform: after the swap" in later.getvalue()
