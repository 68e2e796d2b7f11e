"""Benchmark: streaming inference end to end (Kafka -> forecaster -> Ray Serve -> Kafka + lake).

For each ticker count (default 100, 1,000 and 5,000), every ticker ticks once a minute. A
Bolt-tiny-sized Chronos-Bolt (~9M parameters, RANDOM weights built from a config: the
compute is real, the forecasts are not) runs in the serving app on a local Ray Serve; the
forecaster runs in this process, on the real broker, with a ``file://`` lake, its default
settings (context 512, horizon 8, micro-batches of up to 256 tickers) and no warm start:
contexts are pre-filled in memory with 512 random-walk values per ticker, so every request
carries full contexts.

Two minute shapes are measured:

- ``aligned``: every ticker's minute bar closes at the same instant (how minute bars
  really arrive: all at the minute boundary), so each minute is a burst of N bars. The
  next minute is replayed as soon as the previous one is forecast (faster than real time).
  The burst's forecasts/s is the sustained throughput; its latencies say how long the
  last ticker waits.
- ``staggered``: ticker i's bar closes at offset i*60/N s within the minute (N/60 bars/s,
  in real time), for ``--live-s`` seconds.

Latency is from the bar's end (event time; bars are stamped so that they end "now" as they
are produced) and from the Kafka record's timestamp to the forecast acknowledged by Kafka.
Because replayed minutes are not 60 s apart, forecast steps rarely line up with later
bars, so live scoring (microseconds per step) is mostly absent from these figures. Prints
one JSON document. The broker comes from TICKCAST_KAFKA__BOOTSTRAP_SERVERS (default: the test
infrastructure's 127.0.0.1:19092); start it with `tickcast infra up` or the test fixtures.
Exits 1 when the target is missed (5,000 tickers spread over the minute: bar-to-forecast p99
< 2 s), 2 when a ticker count's run crashed (``errors`` says which and why).

    .venv/bin/python bench/stream.py                         # ~5 minutes on 2 cores
    .venv/bin/python bench/stream.py --tickers 100,1000 --minutes 2 --live-s 20
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from _common import Steps, finish, run_main, target

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

TARGET_TICKERS = 5000
TARGET_P99_S = 2.0


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_serve(model_dir: Path, threads: int) -> tuple[str, Any]:
    """The serving app on a private local Ray; returns (url, settings)."""
    import ray
    from ray import serve

    from serving.app import APP_NAME, make_app
    from tickcast.settings import load_settings

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    settings = load_settings(
        serving={
            "model": str(model_dir),
            "device": "cpu",
            "torch_threads": threads,
            "num_cpus": 1,
            "port": port,
            "url": url,
            "max_batch_size": 256,
        }
    )
    ray.init(address="local", num_cpus=max(2, threads), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(make_app(settings), name=APP_NAME, route_prefix="/")
    return url, settings


def bar_bytes(ticker: str, start: datetime, close: float) -> bytes:
    from tickcast.contracts import Bar

    return Bar(
        ticker, "minute", start, start + timedelta(minutes=1), close, close + 0.1, close - 0.1, close, 10.0
    ).to_json()


class Run:
    """One ticker count: topics, a forecaster in a background thread, a load generator."""

    def __init__(self, n: int, url: str, bootstrap: str, lake_dir: Path, context: int) -> None:
        from serving.streaming.service import ForecasterService
        from tickcast.kafka import ensure_topics, make_producer
        from tickcast.settings import load_settings

        tag = uuid.uuid4().hex[:8]
        self.n = n
        self.tickers = [f"T{i:05d}" for i in range(n)]
        self.settings = load_settings(
            kafka={
                "bootstrap_servers": bootstrap,
                "topic_bars": f"bench.bars.{tag}",
                "topic_forecasts": f"bench.fc.{tag}",
            },
            lake={"url": f"file://{lake_dir / tag}"},
            serving={"url": url},
            forecaster={"group_id": f"bench-{tag}", "metrics_port": 0, "warm_start": False, "context_length": context},
        )
        ensure_topics(self.settings.kafka, {self.settings.kafka.topic_bars: 6}, retention_hours=1)
        self.producer = make_producer(self.settings.kafka)
        # a consumer that joins before the new topic's metadata is out may start with no partitions
        self.producer.partitions_for(self.settings.kafka.topic_bars)
        self.service = ForecasterService(self.settings)
        rng = np.random.default_rng(n)
        self.minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)
        self.last = {}
        for t in self.tickers:
            walk = 100 + rng.standard_normal(context).cumsum()
            starts = [self.minute - timedelta(minutes=context - i) for i in range(context)]
            self.service.context.load(t, starts, [s + timedelta(minutes=1) for s in starts], walk.tolist())
            self.last[t] = float(walk[-1])
        self.rng = rng
        self.service.start()
        self.thread = threading.Thread(target=self.service.run, name="forecaster", daemon=True)
        self.thread.start()

    def send(self, ticker: str, start: datetime) -> None:
        self.last[ticker] += float(self.rng.standard_normal())
        self.producer.send(
            self.settings.kafka.topic_bars, key=ticker.encode(), value=bar_bytes(ticker, start, self.last[ticker])
        )

    def wait_forecasts(self, target: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.service.latencies) >= target:
                return True
            time.sleep(0.02)
        return False

    def aligned(self, minutes: int, timeout: float) -> dict[str, Any]:
        """Bursts: all N bars of a minute at once; the next minute once they are forecast."""
        lat: list[tuple[float, float | None]] = []
        durations = []
        requests0 = self.service.stats.requests
        cpu0 = time.process_time()
        complete = True
        for _ in range(minutes):
            self.minute += timedelta(minutes=1)
            # the minute just closed: stamp the bars so that they end now
            start = datetime.now(UTC) - timedelta(minutes=1)
            before = len(self.service.latencies)
            t0 = time.perf_counter()
            for t in self.tickers:
                self.send(t, start)
            self.producer.flush()
            ok = self.wait_forecasts(before + self.n, timeout)
            durations.append(time.perf_counter() - t0)
            lat.extend(list(self.service.latencies)[before:])
            if not ok:
                complete = False
                break
        forecasts = len(lat)
        bar_lat = [a for a, _ in lat]
        prod_lat = [b for _, b in lat if b is not None]
        return {
            "minutes": len(durations),
            "complete": complete,
            "forecasts": forecasts,
            "burst_s": [round(d, 2) for d in durations],
            "forecasts_per_s": round(forecasts / sum(durations), 1) if durations else None,
            "bar_to_forecast_p50_s": _pct(bar_lat, 50),
            "bar_to_forecast_p99_s": _pct(bar_lat, 99),
            "produce_to_forecast_p50_s": _pct(prod_lat, 50),
            "produce_to_forecast_p99_s": _pct(prod_lat, 99),
            "requests": self.service.stats.requests - requests0,
            "mean_tickers_per_request": round(forecasts / max(1, self.service.stats.requests - requests0), 1),
            "this_process_cpu_s_per_forecast": round((time.process_time() - cpu0) / max(1, forecasts), 5),
        }

    def staggered(self, seconds: float) -> dict[str, Any]:
        """Real time: ticker i closes its minute at offset i*60/N s; N/60 bars per second."""
        before = len(self.service.latencies)
        coalesced0 = self.service.stats.coalesced
        t0 = time.perf_counter()
        sent = 0
        spacing = 60.0 / self.n
        base = datetime.now(UTC)
        while True:
            due = t0 + sent * spacing
            now = time.perf_counter()
            if due - t0 >= seconds:
                break
            if due > now:
                time.sleep(min(due - now, 0.05))
                continue
            ticker = self.tickers[sent % self.n]
            # a bar ending now: its minute started a minute ago
            self.send(ticker, base + timedelta(seconds=now - t0) - timedelta(minutes=1))
            sent += 1
            if sent % 50 == 0:
                self.producer.flush()
        self.producer.flush()
        self.wait_forecasts(before + sent - (self.service.stats.coalesced - coalesced0), 60)
        time.sleep(0.5)
        lat = list(self.service.latencies)[before:]
        bar_lat = [a for a, _ in lat]
        prod_lat = [b for _, b in lat if b is not None]
        elapsed = time.perf_counter() - t0
        return {
            "seconds": round(seconds, 1),
            "bars": sent,
            "bars_per_s": round(sent / seconds, 1),
            "forecasts": len(lat),
            "coalesced": self.service.stats.coalesced - coalesced0,
            "forecasts_per_s": round(len(lat) / elapsed, 1),
            "bar_to_forecast_p50_s": _pct(bar_lat, 50),
            "bar_to_forecast_p99_s": _pct(bar_lat, 99),
            "produce_to_forecast_p50_s": _pct(prod_lat, 50),
            "produce_to_forecast_p99_s": _pct(prod_lat, 99),
        }

    def close(self) -> None:
        self.service.stop.set()
        self.thread.join(timeout=120)
        self.service.close()
        self.producer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", default="100,1000,5000", help="comma-separated ticker counts")
    parser.add_argument("--minutes", type=int, default=3, help="aligned minutes replayed per ticker count")
    parser.add_argument("--live-s", type=float, default=30.0, help="seconds of staggered real-time ticks")
    parser.add_argument("--context", type=int, default=512, help="bars of context per ticker")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the Serve replica")
    parser.add_argument("--burst-timeout", type=float, default=120.0, help="give up on a minute after this long")
    parser.add_argument("--bootstrap", default=os.environ.get("TICKCAST_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:19092"))
    args = parser.parse_args()
    # Ray's processes inherit stdout and chat on it; keep stdout for the JSON document alone.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    from tickcast.errors import TickcastError
    from tickcast.kafka import check_broker
    from tickcast.settings import load_settings

    try:
        check_broker(load_settings(kafka={"bootstrap_servers": args.bootstrap, "request_timeout_s": 5}).kafka)
    except TickcastError as exc:
        print(f"bench/stream: {exc.one_line()}", file=sys.stderr)
        return 2

    from serving.tiny_models import build_tiny_model

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tickcast-bench-stream-") as tmp:
        model = build_tiny_model("bolt-tiny", Path(tmp) / "bolt-tiny", context_length=2048, max_horizon=64)
        params = json.loads((model / "tickcast-tiny-model.json").read_text())["parameters"]
        url, _ = start_serve(model, args.threads)
        setup_s = time.perf_counter() - t0
        results = []
        steps = Steps()
        for n in [int(x) for x in args.tickers.split(",") if x]:

            def one(n: int = n) -> dict[str, Any]:
                run = Run(n, url, args.bootstrap, Path(tmp) / "lake", args.context)
                try:
                    result: dict[str, Any] = {"tickers": n}
                    result["aligned"] = run.aligned(args.minutes, args.burst_timeout)
                    if args.live_s > 0:
                        result["staggered"] = run.staggered(args.live_s)
                    result["serve_errors"] = run.service.stats.serve_errors
                    result["records"] = run.service.stats.records
                finally:
                    run.close()
                return result

            result = steps.step(f"tickers_{n}", one)
            if result is not None:
                results.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()

    target_run = next((r for r in results if r["tickers"] == TARGET_TICKERS), None)
    verdict: dict[str, Any] = {
        "target": f"{TARGET_TICKERS} tickers each minute, p99 bar-to-forecast < {TARGET_P99_S} s"
    }
    if target_run is not None:
        for shape in ("aligned", "staggered"):
            p99 = target_run.get(shape, {}).get("bar_to_forecast_p99_s")
            verdict[f"{shape}_met"] = p99 is not None and p99 < TARGET_P99_S and target_run[shape].get("complete", True)
    # Judged: the staggered minute (how N tickers' bars really spread). The aligned burst of
    # N bars at once is recorded, not judged: on CPU it is bounded by model compute (README).
    staggered = (target_run or {}).get("staggered") or {}
    targets = {
        f"staggered_{TARGET_TICKERS}_bar_to_forecast_p99_s": target(
            staggered.get("bar_to_forecast_p99_s"), "<", TARGET_P99_S
        )
    }
    document = {
        "benchmark": "stream",
        "model": {"kind": "bolt-tiny", "parameters": params, "weights": "random", "context": args.context},
        "cpus": os.cpu_count(),
        "setup_s": round(setup_s, 1),
        "results": results,
        "verdict": verdict,
        "total_s": round(time.perf_counter() - t0, 1),
    }
    return finish(document, targets, steps.errors, out=out)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
