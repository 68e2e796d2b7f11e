"""End to end: ``tickcast dashboard`` against a small lake, driven in headless Chromium.

The test writes bars and forecasts with tickcast.lake, starts the dashboard as the platform
does (``python -m tickcast dashboard``), waits for the Live page's chart, checks that the
forecast's 80% band is drawn (its legend entry and Plotly's filled SVG path), switches the
range to the last hour, saves a
screenshot to ``test-artifacts/dashboard-live.png``, then stops the dashboard with SIGTERM
and expects a clean exit. With ``TICKCAST_UPDATE_SCREENSHOTS=1`` the screenshot also
replaces the README's ``docs/screenshots/live.png``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_lake import write_sample

from dashboard.charts import BAND_NAME
from tickcast.lake import Lake
from tickcast.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 45.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the dashboard exited with {proc.returncode} before becoming healthy")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} not healthy after {timeout_s} s")


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """A running ``tickcast dashboard`` over a lake with two sessions of minute bars and forecasts."""
    # relative, as in a local `tickcast up` (resolved from the dashboard's working directory)
    lake_url = "file://.tickcast/lake"
    port, dead = free_port(), free_port()
    env = {
        **os.environ,
        "TICKCAST_LAKE__URL": lake_url,
        "TICKCAST_DASHBOARD__PORT": str(port),
        "TICKCAST_DASHBOARD__HOST": "127.0.0.1",
        "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{dead}",
        "TICKCAST_SERVING__URL": f"http://127.0.0.1:{dead}",
        "TICKCAST_DASHBOARD__PROBE_TIMEOUT_S": "0.5",
    }
    lake = Lake(load_settings(lake={"url": f"file://{tmp_path / '.tickcast' / 'lake'}"}).lake)
    write_sample(lake, tickers=("ACME", "BOLT"), days=2, bars_per_day=390, every=1, scores=False, spike=False)
    log = tmp_path / "dashboard.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tickcast", "dashboard"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,  # its own process group: teardown can stop Streamlit with it
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/_stcore/health", proc)
        yield f"http://127.0.0.1:{port}", proc, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_live_page_draws_the_forecast_band(
    dashboard: tuple[str, subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    url, proc, log = dashboard
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard-live.png"
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 1180},
        )
        try:
            page = context.new_page()
            page.goto(f"{url}/?ticker=ACME", wait_until="domcontentloaded")
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=45_000)
            legend = page.locator(".js-plotly-plot .legendtext", has_text=BAND_NAME)
            legend.first.wait_for(timeout=20_000)
            assert page.locator(".js-plotly-plot .legendtext", has_text="forecast median").count() == 1
            # Plotly draws a filled scatter trace as an SVG path with class js-fill
            fills = page.locator(".js-plotly-plot path.js-fill")
            assert fills.count() >= 1
            assert len(fills.first.get_attribute("d") or "") > 20
            assert page.get_by_text("Live · ACME").count() == 1
            assert page.locator("[data-testid='stException']").count() == 0
            # the range selector redraws the chart in place: the last hour, where the band stands out
            page.get_by_text("1 hour", exact=True).click()
            page.locator("[data-testid='stMetricValue']", has_text="60").first.wait_for(timeout=20_000)
            page.locator(".js-plotly-plot .legendtext", has_text=BAND_NAME).first.wait_for(timeout=20_000)
            page.wait_for_timeout(1000)  # let the last frame paint
            page.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("TICKCAST_UPDATE_SCREENSHOTS") == "1":
        target = REPO / "docs" / "screenshots" / "live.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, log.read_text()[-2000:]
