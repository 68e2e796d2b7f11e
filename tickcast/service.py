"""What every long-running tickcast service shares: a stop flag set by signals, and one
small HTTP server for ``/metrics`` (Prometheus) and ``/healthz``.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

HealthFn = Callable[[], tuple[bool, dict[str, Any]]]


class StopFlag:
    """A flag that SIGTERM and SIGINT set, so loops finish their batch and shut down in order."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def install(self) -> StopFlag:
        """Route SIGTERM and SIGINT to this flag (main thread only; a no-op elsewhere)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self._event.set()

    def set(self) -> None:
        """Ask the service to stop."""
        self._event.set()

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking early on stop; returns whether stop is set."""
        return self._event.wait(timeout)


class ObservabilityServer:
    """``/metrics`` and ``/healthz`` on one port, in a daemon thread.

    It binds loopback unless told otherwise (``TICKCAST_METRICS_HOST``): on a laptop nothing
    outside the machine should read a service's health and metrics; in a pod the chart
    binds all interfaces so Prometheus and the kubelet's probes reach it.
    """

    def __init__(self, port: int, health: HealthFn | None = None, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self.health = health or (lambda: (True, {}))
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> ObservabilityServer:
        """Start serving (port 0 disables the server)."""
        if self.port == 0:
            return self
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        health = self.health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    body, ctype, code = generate_latest(), CONTENT_TYPE_LATEST, 200
                elif self.path.startswith("/healthz"):
                    ok, details = health()
                    body = json.dumps({"ok": ok, **details}, default=str).encode()
                    ctype, code = "application/json", 200 if ok else 503
                else:
                    body, ctype, code = b"not found: try /metrics or /healthz\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes every few seconds would drown the service's own log

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="observability", daemon=True).start()
        log.info("metrics on %s:%d/metrics, health on /healthz", self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
