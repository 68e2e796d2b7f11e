"""The README's first command, run exactly as written: the whole platform end to end.

It starts the platform in the background, waits until forecasts show on the dashboard in
headless Chromium, then plays chaos: SIGKILLs the consumer, the forecaster, the producer, the
Serve replica process and the Kafka broker, one after another during the replay, and waits
each time until the platform has recovered by itself (bars and forecasts flowing again). It
stops the platform with Ctrl-C (SIGINT), checks nothing is left running and that the lake
holds every replayed bar exactly once (counted against the bundled sample, not only "no
duplicates"), starts it again, stops it again, and checks again. The lake is the built-in one,
on the platform's MinIO with a MinIO user and policy per service (a missing grant fails here);
the test reads its Delta tables with delta-rs as MinIO's root and counts with DuckDB. Ports and folders are
moved off the defaults with TICKCAST_* variables so the test never collides with a platform
a developer has running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from conftest import free_port
from listening import exposed, tree_listeners

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

DUPLICATED_BARS = "select count(*) - count(distinct (ticker, interval, start)) from {bars}"
DUPLICATED_FORECAST_STEPS = "select count(*) - count(distinct (forecast_id, step)) from {forecasts}"


def readme_up_command() -> str:
    """The first command of the README's quickstart block."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart\s+```bash\n(.*?)```", text, re.S)
    assert block, "README has no Quickstart bash block"
    first = block.group(1).strip().splitlines()[0]
    return first.split("#", 1)[0].strip()


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, proc: subprocess.Popen[bytes], log: Path) -> float:
    """Poll ``check`` until true; fail with the platform's log when it dies or times out."""
    started = time.monotonic()
    while not check():
        if proc.poll() is not None:
            pytest.fail(f"platform exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()[-4000:]}")
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(1.0)
    return time.monotonic() - started


class LakeView:
    """Reads the platform's built-in lake (``s3://tickcast/lake`` on the local MinIO) as the root user.

    The platform's services each use their own MinIO user; the test reads with the root keys, so
    what it sees does not depend on the grants it checks. MinIO must be running: after the
    platform stopped, :meth:`online` starts it alone for the reads.
    """

    def __init__(self, env: dict[str, str]) -> None:
        from tickcast.lake import Lake
        from tickcast.settings import LOCAL_LAKE_URL, InfraSettings, LakeSettings

        self.env = env
        infra = InfraSettings()
        self.lake = Lake(
            LakeSettings(
                url=LOCAL_LAKE_URL,
                s3_endpoint_url=f"http://127.0.0.1:{env['TICKCAST_INFRA__MINIO_PORT']}",
                s3_access_key_id=infra.minio_root_user,
                s3_secret_access_key=infra.minio_root_password,
            )
        )

    def table(self, name: str, columns: list[str]) -> pa.Table | None:
        """The table's current version (one snapshot), or None while it does not exist."""
        import deltalake

        try:
            table = deltalake.DeltaTable(self.lake.table_uri(name), storage_options=self.lake.storage_options)
        except deltalake.exceptions.TableNotFoundError:
            return None
        return table.to_pyarrow_table(columns=columns)

    def ready(self) -> bool:
        """Whether MinIO answers and the lake bucket exists (the platform may still be starting)."""
        from tickcast.errors import StoreUnavailable

        try:
            self.lake.check()
        except StoreUnavailable:
            return False
        return True

    @contextmanager
    def online(self) -> Iterator[None]:
        """MinIO alone (the platform is down), for reading the lake; stopped again after."""
        tickcast = str(ROOT / ".venv" / "bin" / "tickcast")
        subprocess.run([tickcast, "infra", "up", "minio"], env=self.env, check=True, capture_output=True)
        try:
            yield
        finally:
            subprocess.run([tickcast, "infra", "down", "minio"], env=self.env, check=True, capture_output=True)


#: The columns each query below needs.
COLUMNS = {
    "bars": ["ticker", "interval", "start", "close"],
    "forecasts": ["forecast_id", "step"],
}


def lake_count(lake: LakeView, sql: str) -> int:
    """Run ``sql`` (with {bars} / {forecasts} placeholders) over the tables' current versions; 0 when empty."""
    con = duckdb.connect()
    for name, columns in COLUMNS.items():
        if f"{{{name}}}" not in sql:
            continue
        table = lake.table(name, columns)
        if table is None or table.num_rows == 0:
            return 0
        con.register(name, table)
    return int(con.sql(sql.format(bars="bars", forecasts="forecasts")).fetchall()[0][0])


def missing_and_extra_bars(lake: LakeView) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Sample bars missing from the lake, and lake bars not in the sample, per ticker.

    The replay sends each ticker's bars in time order, resuming after the last one the topic
    holds, and Kafka keeps a ticker's bars in order; so whatever crashed, the lake must hold,
    for each ticker, exactly the sample's bars up to the newest one it has.
    """
    from tickcast.platform import SAMPLE_FILE

    con = duckdb.connect()
    bars = lake.table("bars", COLUMNS["bars"])
    assert bars is not None, "the lake has no bars table"
    con.register("lake_bars", bars)
    query = f"""
        with lake as (select ticker, start, close from lake_bars),
             sample as (select ticker, start, close from read_parquet('{SAMPLE_FILE}')),
             newest as (select ticker, max(start) as last from lake group by ticker),
             expected as (select s.* from sample s join newest n on s.ticker = n.ticker and s.start <= n.last)
        select 'missing', ticker, cast(start as varchar) from (
            select ticker, start, close from expected except all select ticker, start, close from lake)
        union all
        select 'extra', ticker, cast(start as varchar) from (
            select ticker, start, close from lake except all select ticker, start, close from expected)
    """
    rows = con.sql(query).fetchall()
    return [(t, s) for kind, t, s in rows if kind == "missing"], [(t, s) for kind, t, s in rows if kind == "extra"]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def service_pid(state: Path, name: str) -> int:
    """The pid (and process group) ``tickcast up`` recorded for service ``name``."""
    from tickcast.infra import process

    record = process.read_pid(state / "run" / f"{name}.pid")
    assert record is not None and process.pid_alive(record.pid), f"{name} does not run"
    return record.pid


def serve_replica_pid(state: Path) -> int:
    """The Ray worker process running the forecast Serve replica of this platform."""
    for pid in descendants(service_pid(state, "serve")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ServeReplica" in cmd:
            return pid
    pytest.fail("no Serve replica process under the serve service")


def processes_with(marker: str) -> list[str]:
    """Command lines of live processes that mention ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append(f"{entry.name}: {cmd[:200]}")
    return found


def dashboard_shows_forecast(url: str, screenshot: Path) -> bool:
    """Open the dashboard in headless Chromium; True when the forecast band is drawn."""
    from playwright.sync_api import sync_playwright

    from dashboard.charts import BAND_NAME

    with sync_playwright() as pw:
        browser = chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="domcontentloaded", timeout=60_000)
            try:
                page.get_by_text(BAND_NAME).first.wait_for(timeout=45_000)
            except Exception:
                page.screenshot(path=str(screenshot.with_name("platform-no-band.png")), full_page=True)
                return False
            page.screenshot(path=str(screenshot), full_page=True)
            return True
        finally:
            browser.close()


def chromium(pw: Any) -> Any:
    """Headless Chromium from Debian's package, quiet on the network."""
    return pw.chromium.launch(
        executable_path="/usr/bin/chromium",
        args=[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    )


def pipeline_latency(url: str, screenshot: Path) -> dict[str, str]:
    """The Pipeline page's Kafka-ingest-to-forecast figures as shown, e.g. {"p50": "0.412 s"}."""
    from playwright.sync_api import sync_playwright

    from dashboard.views.pipeline import INGEST_P50, INGEST_P95

    with sync_playwright() as pw:
        browser = chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(f"{url}/pipeline", wait_until="domcontentloaded", timeout=60_000)
            shown = {}
            for key, label in (("p50", INGEST_P50), ("p95", INGEST_P95)):
                metric = page.locator('[data-testid="stMetric"]', has_text=label).first
                metric.wait_for(timeout=60_000)
                shown[key] = metric.locator('[data-testid="stMetricValue"]').inner_text().strip()
            page.screenshot(path=str(screenshot), full_page=True)
            return shown
        finally:
            browser.close()


def kafka_ingest_to_forecast_s(bootstrap: str, state: Path) -> list[float]:
    """Per forecast on the ``forecasts`` topic: its record's Kafka timestamp minus its bar's.

    Both timestamps are CreateTime, set by the client at send: the producer's for the bar, the
    forecaster's for the forecast. The forecaster's histogram uses the same two.
    """
    from kafka import KafkaConsumer, TopicPartition

    from tickcast.contracts import Bar, Forecast, to_iso
    from tickcast.infra import kafka_acls
    from tickcast.kafka import common_config
    from tickcast.settings import load_settings

    # The platform's broker enforces logins and ACLs: read the topics as its admin.
    settings = load_settings(infra={"state_dir": str(state)}, kafka={"bootstrap_servers": bootstrap})
    consumer = KafkaConsumer(**common_config(kafka_acls.admin_settings(settings)), enable_auto_commit=False)
    try:
        records: dict[str, list[Any]] = {}
        for topic in ("bars", "forecasts"):
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            consumer.assign(parts)
            consumer.seek_to_beginning(*parts)
            end = consumer.end_offsets(parts)
            records[topic] = []
            while any(consumer.position(tp) < end[tp] for tp in parts):
                for batch in consumer.poll(timeout_ms=1000).values():
                    records[topic].extend(batch)
    finally:
        consumer.close()
    entered: dict[tuple[str, str], int] = {}
    for record in records["bars"]:
        bar = Bar.from_json(record.value, validate=False)
        entered.setdefault((bar.ticker, to_iso(bar.start)), record.timestamp)
    latencies = []
    for record in records["forecasts"]:
        forecast = Forecast.from_json(record.value)
        sent = entered.get((forecast.ticker, to_iso(forecast.last_bar_start)))
        if sent is not None:
            latencies.append(max(0.0, (record.timestamp - sent) / 1000))
    return latencies


def test_readme_up_runs_the_whole_platform_and_resumes(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    state = tmp_path / "state"
    ports = {
        name: free_port() for name in ("kafka", "ctrl", "minio", "console", "serve", "prod", "cons", "fcst", "dash")
    }
    # No lake settings: the README's command runs the built-in lake on its MinIO, every service
    # with its own MinIO user, so a grant missing from lake_access.py fails this test.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TICKCAST_LAKE__")},
        "TICKCAST_INFRA__STATE_DIR": str(state),
        "TICKCAST_INFRA__MINIO_PORT": str(ports["minio"]),
        "TICKCAST_INFRA__MINIO_CONSOLE_PORT": str(ports["console"]),
        "TICKCAST_INFRA__KAFKA_PORT": str(ports["kafka"]),
        "TICKCAST_INFRA__KAFKA_CONTROLLER_PORT": str(ports["ctrl"]),
        "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{ports['kafka']}",
        "TICKCAST_SERVING__PORT": str(ports["serve"]),
        "TICKCAST_SERVING__URL": f"http://127.0.0.1:{ports['serve']}",
        "TICKCAST_PRODUCER__METRICS_PORT": str(ports["prod"]),
        "TICKCAST_CONSUMER__METRICS_PORT": str(ports["cons"]),
        "TICKCAST_FORECASTER__METRICS_PORT": str(ports["fcst"]),
        "TICKCAST_DASHBOARD__PORT": str(ports["dash"]),
        "TICKCAST_DASHBOARD__PRODUCER_URL": f"http://127.0.0.1:{ports['prod']}",
        "TICKCAST_DASHBOARD__CONSUMER_URL": f"http://127.0.0.1:{ports['cons']}",
        "TICKCAST_DASHBOARD__FORECASTER_URL": f"http://127.0.0.1:{ports['fcst']}",
        "TICKCAST_CONSUMER__FLUSH_INTERVAL_S": "5",
        "TICKCAST_PLATFORM__SUPERVISE_INTERVAL_S": "1",
    }
    command = readme_up_command()
    timings: dict[str, float] = {}
    lake = LakeView(env)

    def start(log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                command, shell=True, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"platform did not stop within 180 s of Ctrl-C:\n{log.read_text()[-4000:]}")
        leftovers = processes_with(str(state))
        assert not leftovers, "orphan processes after Ctrl-C:\n" + "\n".join(leftovers)

    # -- first run ---------------------------------------------------------------------
    log1 = tmp_path / "up-1.log"
    proc = start(log1)
    try:
        timings["first_forecast_s"] = wait_for(
            "the first forecast in the lake",
            lambda: lake.ready() and lake_count(lake, "select count(*) from {forecasts}") > 0,
            600,
            proc,
            log1,
        )
        dashboard = f"http://127.0.0.1:{ports['dash']}"
        wait_for(
            "the dashboard", lambda: "running" in log1.read_text() or "platform up" in log1.read_text(), 120, proc, log1
        )
        shown = False
        for _ in range(4):
            shown = dashboard_shows_forecast(dashboard, ARTIFACTS / "platform-live.png")
            if shown:
                break
            time.sleep(5)
        assert shown, "the dashboard never drew the forecast band"

        # -- with everything up, nothing listens beyond this machine (`ss -ltnp`, by process tree)
        listeners = tree_listeners(proc.pid)
        assert not exposed(listeners), "listening beyond loopback:\n" + "\n".join(exposed(listeners))
        # MinIO's console port is set but never bound (its web console is off)
        missing = {p for name, p in ports.items() if name != "console"} - {item.port for item in listeners}
        assert not missing, f"service ports {sorted(missing)} not among the platform's listeners (is the check blind?)"
        assert any("gcs_server" in item.process for item in listeners)
        assert any("ServeReplica" in item.process for item in listeners)

        # -- the Pipeline page's latency is what the Kafka timestamps say ---------------
        page = pipeline_latency(dashboard, ARTIFACTS / "platform-pipeline.png")
        measured = kafka_ingest_to_forecast_s(f"127.0.0.1:{ports['kafka']}", state)
        assert measured, "no forecast on the forecasts topic matches a bar"
        for key, q in (("p50", 50), ("p95", 95)):
            shown_s = float(page[key].removesuffix(" s"))
            truth = float(np.percentile(measured, q))
            timings[f"pipeline_ingest_to_forecast_{key}_s"] = shown_s
            timings[f"kafka_ingest_to_forecast_{key}_s"] = truth
            # The forecaster computes each figure from the same two Kafka timestamps as this
            # check; the page then interpolates inside the histogram bucket holding the
            # quantile, and no bucket's upper bound exceeds 1.5x its lower one. 0.05 s absorbs
            # the forecasts made between reading the page and reading the topics (about one a
            # second, out of dozens).
            assert truth / 1.5 - 0.05 <= shown_s <= truth * 1.5 + 0.05, (key, page, truth, len(measured))
        assert lake_count(lake, "select count(*) from {bars}") > 0
        # one query, one snapshot of the files: the lake grows while the platform runs
        assert lake_count(lake, DUPLICATED_BARS) == 0

        # -- chaos: SIGKILL each part once; the platform recovers by itself -------------
        def flowing_again(what: str) -> None:
            """New bars and new forecasts land after ``what`` was killed."""
            bars = lake_count(lake, "select count(*) from {bars}")
            forecasts = lake_count(lake, "select count(distinct forecast_id) from {forecasts}")
            timings[f"recovered_after_{what}_s"] = wait_for(
                f"bars and forecasts flowing again after killing {what}",
                lambda: (
                    lake_count(lake, "select count(*) from {bars}") > bars
                    and lake_count(lake, "select count(distinct forecast_id) from {forecasts}") > forecasts
                ),
                300,
                proc,
                log1,
            )

        for name in ("consumer", "forecaster", "producer", "kafka"):
            pid = service_pid(state, name)
            os.killpg(pid, signal.SIGKILL)
            flowing_again(name)
            assert service_pid(state, name) != pid, f"{name} was not restarted"
        replica = serve_replica_pid(state)
        os.kill(replica, signal.SIGKILL)  # Ray Serve's controller replaces its replica
        flowing_again("serve-replica")
        assert serve_replica_pid(state) != replica
        statuses = json.loads(
            subprocess.run(
                [str(ROOT / ".venv" / "bin" / "tickcast"), "status", "--json"], env=env, capture_output=True, text=True
            ).stdout
        )
        restarts = {entry["name"]: (entry["restarts"] or {}).get("restarts") for entry in statuses}
        for name in ("consumer", "forecaster", "producer", "kafka"):
            assert restarts[name] >= 1, restarts
        assert "stopping everything" not in log1.read_text()
        # The restarts as the Pipeline page shows them (an artifact for people to look at).
        pipeline_latency(dashboard, ARTIFACTS / "platform-pipeline-after-chaos.png")
    finally:
        stop(proc, log1)
    with lake.online():
        bars_after_stop = lake_count(lake, "select count(*) from {bars}")
        forecasts_after_stop = lake_count(lake, "select count(distinct forecast_id) from {forecasts}")
        missing, extra = missing_and_extra_bars(lake)
    assert not missing and not extra, f"after the kills: missing {missing[:10]}, extra {extra[:10]}"

    # -- second run resumes ------------------------------------------------------------
    log2 = tmp_path / "up-2.log"
    proc = start(log2)
    try:
        wait_for(
            "new bars after the restart",
            lambda: lake.ready() and lake_count(lake, "select count(*) from {bars}") > bars_after_stop,
            300,
            proc,
            log2,
        )
        wait_for(
            "new forecasts after the restart",
            lambda: (
                lake.ready()
                and lake_count(lake, "select count(distinct forecast_id) from {forecasts}") > forecasts_after_stop
            ),
            300,
            proc,
            log2,
        )
    finally:
        stop(proc, log2)

    # -- nothing duplicated across the restart -----------------------------------------
    with lake.online():
        duplicated_bars = lake_count(lake, DUPLICATED_BARS)
        duplicated_steps = lake_count(lake, DUPLICATED_FORECAST_STEPS)
        missing, extra = missing_and_extra_bars(lake)
        total = lake_count(lake, "select count(*) from {bars}")
        steps = lake_count(lake, "select count(*) from {forecasts}")
    assert duplicated_bars == 0, f"{duplicated_bars} duplicated bars in the lake"
    assert duplicated_steps == 0, f"{duplicated_steps} duplicated forecast steps in the lake"
    assert not missing and not extra, f"after the restart: missing {missing[:10]}, extra {extra[:10]}"
    (ARTIFACTS / "platform-timings.json").write_text(json.dumps(timings, indent=2))
    print(json.dumps({"platform_e2e": timings, "bars": total, "forecast_steps": steps}))
