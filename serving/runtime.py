"""Starting Ray and Serve for tickcast: environment, a local cluster, deploying the app.

Ray's workers inherit the environment of the process that starts the cluster, so the
variables that tune Serve must be in place before ``ray.init`` (or ``ray start``); on
KubeRay they go into the pod spec instead.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from tickcast.settings import ServingSettings, Settings

log = logging.getLogger(__name__)

#: Object store size for a local cluster: forecasts move as small HTTP bodies, not objects.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024


def ray_env(serving: ServingSettings) -> dict[str, str]:
    """Environment variables a Ray cluster running the app should start with."""
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    if serving.throughput_optimized:
        env.update(
            RAY_SERVE_THROUGHPUT_OPTIMIZED="1",
            # replica N of the ingress answers HTTP on port+N; the proxy keeps `port`
            RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT=str(serving.port + 1),
            RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT=str(serving.port + 64),
        )
    return env


def apply_ray_env(serving: ServingSettings) -> None:
    """Put :func:`ray_env` into this process's environment, for clusters it starts."""
    for key, value in ray_env(serving).items():
        os.environ.setdefault(key, value)


def start_local(
    settings: Settings, num_cpus: int | None = None, object_store_memory: int | None = LOCAL_OBJECT_STORE_BYTES
) -> None:
    """Start (or join, when ``RAY_ADDRESS`` is set) Ray, then Serve's HTTP proxy on the configured host and port."""
    import ray
    from ray import serve

    apply_ray_env(settings.serving)
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        if not os.environ.get("RAY_ADDRESS"):
            kwargs.update(num_cpus=num_cpus, object_store_memory=object_store_memory)
        ray.init(**kwargs)
    serve.start(http_options={"host": settings.serving.host, "port": settings.serving.port})


def deploy(settings: Settings, overrides: dict[str, Any] | None = None, blocking: bool = False) -> str:
    """Deploy (or update in place) the forecast app; returns its base URL."""
    from ray import serve

    from serving.app import APP_NAME, make_app

    serve.run(make_app(settings, overrides), name=APP_NAME, route_prefix="/", blocking=blocking)
    return f"http://{settings.serving.host}:{settings.serving.port}"


def direct_url(serving: ServingSettings, timeout_s: float = 30.0) -> str | None:
    """In throughput-optimized mode, the URL a replica answers on directly (None if none does).

    Replicas take the first free port above ``serving.port``; a restarted replica may land on
    another one while its old port is quarantined, so this asks rather than assumes.
    """
    import time

    import httpx

    if not serving.throughput_optimized:
        return None
    deadline = time.monotonic() + timeout_s
    while True:
        for port in range(serving.port + 1, serving.port + 65):
            url = f"http://{serving.host}:{port}"
            try:
                if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                    return url
            except httpx.HTTPError:
                continue
        if time.monotonic() > deadline:
            return None
        time.sleep(1.0)
