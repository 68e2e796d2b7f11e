"""The default Serve path (direct ingress) and its fallback (the proxy), on a real `tickcast serve`.

Each mode runs its own ``tickcast serve`` (its own locked-down Ray cluster, a tiny
random-weight Chronos-Bolt) with nothing but the environment a user would set:

- default settings: Serve starts in throughput-optimized mode and a replica answers HTTP
  itself on the first free port above ``TICKCAST_SERVING__PORT``, which ``tickcast serve``
  prints; forecasts through that port and through the proxy both equal the in-process
  pipeline; every listener stays on loopback;
- ``TICKCAST_SERVING__THROUGHPUT_OPTIMIZED=false``: no replica answers above the port,
  and the proxy serves the same correct forecasts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import free_port_block, stop_process_group
from forecast_reference import assert_forecasts_close, reference_quantiles
from listening import exposed, tree_listeners

from serving.runtime import DIRECT_PORTS, direct_urls
from serving.tiny_models import build_tiny_model
from tickcast.settings import ServingSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SMALL_BOLT = {"d_model": 64, "d_ff": 256, "num_layers": 2, "num_heads": 2, "d_kv": 32}
#: Ray on 2 shared cores takes a minute or two to start Serve and load a model.
START_TIMEOUT_S = 300.0
LEVELS = [0.1, 0.5, 0.9]


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    optimized: bool
    model: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module", params=["default", "proxy-fallback"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    optimized = request.param == "default"
    root = tmp_path_factory.mktemp(f"serve-{request.param}")
    model = build_tiny_model("bolt-tiny", root / "bolt", context_length=256, **SMALL_BOLT)
    port = free_port_block(DIRECT_PORTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TICKCAST_", "RAY_"))}
    env.update(
        HOME=str(root),
        RAY_USAGE_STATS_ENABLED="0",
        # see test_ray_lockdown: Ray's start-up waits are too short for 2 loaded cores
        RAY_raylet_start_wait_time_s="180",
        RAY_agent_register_timeout_ms="180000",
        HF_HUB_OFFLINE="1",
        TICKCAST_INFRA__STATE_DIR=str(root / "state"),
        TICKCAST_LAKE__URL=f"file://{root / 'lake'}",
        TICKCAST_SERVING__PORT=str(port),
        TICKCAST_SERVING__MODEL=str(model),
        TICKCAST_SERVING__NUM_CPUS="0.5",
        TICKCAST_SERVING__TORCH_THREADS="1",
    )
    if not optimized:
        env["TICKCAST_SERVING__THROUGHPUT_OPTIMIZED"] = "false"
    log = root / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tickcast", "serve", "--num-cpus", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    served = Served(proc, port, optimized, model, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "forecast API at" not in log.read_text():
            if proc.poll() is not None:
                pytest.fail(f"tickcast serve exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"tickcast serve not up after {START_TIMEOUT_S:.0f} s:\n{log.read_text()[-4000:]}")
            time.sleep(1.0)
        yield served
    finally:
        stop_process_group(proc)


def _forecast(url: str, series: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    response = httpx.post(
        f"{url}/v1/forecast", json={"series": series, "horizon": 8, "quantile_levels": LEVELS}, timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()["forecasts"]
    q = np.array([[f["quantiles"][repr(lv)] for lv in LEVELS] for f in body]).transpose(0, 2, 1)
    return q, np.array([f["mean"] for f in body])


def test_each_path_serves_the_in_process_pipelines_forecasts(served: Served) -> None:
    rng = np.random.default_rng(11)
    series = [(100 + rng.standard_normal(n).cumsum()).round(3).tolist() for n in (40, 256, 300)]
    q_ref, m_ref, limit = reference_quantiles(served.model, series, 8, LEVELS, threads=1)
    serving = ServingSettings(port=served.port, throughput_optimized=True)
    # the default mode has a replica answering on its own port; the fallback has none
    direct = direct_urls(serving, timeout_s=60.0 if served.optimized else 3.0)
    if served.optimized:
        assert len(direct) == 1 and direct[0] == f"http://127.0.0.1:{served.port + 1}", direct
        assert f"direct ingress: a replica also answers at {direct[0]}" in served.log.read_text()
    else:
        assert direct == [] and "direct ingress" not in served.log.read_text()
    for url in [served.url, *direct]:
        q, m = _forecast(url, series)
        assert_forecasts_close(q, q_ref, series, limit)
        assert_forecasts_close(m, m_ref, series, limit)


def test_every_listener_stays_on_loopback(served: Served) -> None:
    listeners = tree_listeners(served.proc.pid)
    assert not exposed(listeners), "listening beyond loopback:\n" + "\n".join(exposed(listeners))
    ports = {item.port for item in listeners}
    assert served.port in ports  # the proxy, in both modes
    assert (served.port + 1 in ports) is served.optimized  # direct ingress only in the default mode
