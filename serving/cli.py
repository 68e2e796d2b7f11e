"""``tickcast serve`` and ``tickcast batch-forecast``. Heavy imports happen inside the handlers."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from datetime import datetime

from tickcast.api_token import require_token_when_exposed
from tickcast.errors import ConfigError, TickcastError
from tickcast.settings import Settings

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the serving sub-commands."""
    serve = subparsers.add_parser(
        "serve",
        help="run the Chronos forecast API on Ray Serve",
        description="Start Ray Serve with the forecast app on TICKCAST_SERVING__HOST:PORT and block until Ctrl-C. "
        "Joins the cluster at RAY_ADDRESS when set.",
    )
    serve.add_argument("--model", help="model spec (overrides TICKCAST_SERVING__MODEL)")
    serve.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster (default: all)")
    serve.add_argument(
        "--detach",
        action="store_true",
        help="start a background Ray cluster, deploy, and return; stop it with `ray stop`",
    )
    serve.set_defaults(handler=run_serve)

    batch = subparsers.add_parser(
        "batch-forecast",
        help="forecast tickers from the lake into its forecasts table on Ray",
        description="Forecast every ticker with bars (or --tickers) and write the forecasts to the lake in one "
        "commit. The JSON report names the bars table version read; --as-of that version reproduces the run.",
    )
    batch.add_argument("--tickers", help="comma-separated tickers (default: all in the lake)")
    batch.add_argument("--interval", default="minute", choices=["second", "minute", "hour", "day"])
    batch.add_argument("--horizon", type=int, help="steps to forecast (default TICKCAST_FORECASTER__HORIZON)")
    batch.add_argument("--quantiles", help="comma-separated levels (default TICKCAST_FORECASTER__QUANTILES)")
    batch.add_argument(
        "--context-length", type=int, help="bars of context (default TICKCAST_FORECASTER__CONTEXT_LENGTH)"
    )
    batch.add_argument("--target", help="bar field to forecast (default TICKCAST_FORECASTER__TARGET)")
    batch.add_argument("--end", help="use bars starting before this ISO-8601 time (default: all)")
    batch.add_argument(
        "--as-of",
        metavar="VERSION|TIMESTAMP",
        help="read the bars table as of this version (as in a report's bars_version) or ISO-8601 time "
        "with a UTC offset, to reproduce an earlier run (default: the latest version)",
    )
    batch.add_argument("--model", help="model spec (overrides TICKCAST_SERVING__MODEL)")
    batch.add_argument("--actors", type=int, help="actor pool size (default: one per GPU share or per 2 CPUs)")
    batch.add_argument("--num-gpus", type=float, help="GPUs per actor (default TICKCAST_SERVING__NUM_GPUS)")
    batch.add_argument(
        "--chunk-size", type=int, help="tickers per model call (default TICKCAST_SERVING__MAX_BATCH_SIZE)"
    )
    batch.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    batch.set_defaults(handler=run_batch)


def _with_model(settings: Settings, model: str | None) -> Settings:
    if not model:
        return settings
    return settings.model_copy(update={"serving": settings.serving.model_copy(update={"model": model})})


def run_serve(settings: Settings, args: argparse.Namespace) -> int:
    """Start Serve and block until SIGINT/SIGTERM (or return at once with ``--detach``)."""
    token = settings.serving.auth_token
    # Before Ray is even imported: an API reachable from the network is never open.
    require_token_when_exposed(settings.serving.host, token.get_secret_value() if token else None)

    from ray import serve

    from serving.models import resolve_model
    from serving.runtime import deploy, direct_url, start_local
    from tickcast.service import StopFlag

    settings = _with_model(settings, args.model)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # Fail here with one clear line rather than deep inside a replica's start-up.
    resolve_model(settings)
    if args.detach:
        _start_detached_cluster(settings, args.num_cpus)
    stop = StopFlag().install()
    start_local(settings, num_cpus=args.num_cpus)
    url = deploy(settings)
    s = settings.serving
    print(f"tickcast serve: forecast API at {url} (docs: {url}/docs, model spec {s.model!r})", file=sys.stderr)
    direct = direct_url(s)
    if direct:
        print(f"tickcast serve: direct ingress: a replica also answers at {direct} (no proxy hop)", file=sys.stderr)
    if args.detach:
        print("tickcast serve: running in the background; stop it with `ray stop`", file=sys.stderr)
        return 0
    try:
        while not stop.wait(1.0):
            pass
    finally:
        print("tickcast serve: shutting down", file=sys.stderr)
        serve.shutdown()
        import ray

        ray.shutdown()
    return 0


def _start_detached_cluster(settings: Settings, num_cpus: int | None) -> None:
    """``ray start --head`` in the background, so the app outlives this command."""
    from serving.runtime import prepare_local_cluster, ray_start_command

    if os.environ.get("RAY_ADDRESS"):
        return
    ray_bin = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
    if not os.path.exists(ray_bin):
        raise ConfigError("PATH", "the `ray` command is not installed", "install tickcast[serving]")
    # Loopback only and token authentication on, for `ray start` and for this process joining it.
    prepare_local_cluster(settings)
    cmd = ray_start_command(ray_bin, num_cpus)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0 and "already" not in (proc.stderr + proc.stdout).lower():
        raise TickcastError(f"`ray start --head` failed: {proc.stderr.strip()[-300:]}", "run `ray stop` and retry")
    os.environ["RAY_ADDRESS"] = "auto"


def run_batch(settings: Settings, args: argparse.Namespace) -> int:
    """Run :func:`serving.batch.batch_forecast` and print its report as JSON."""
    from serving.batch import batch_forecast
    from tickcast.lake_cli import parse_as_of

    as_of = parse_as_of(args.as_of)
    end = None
    if args.end:
        try:
            end = datetime.fromisoformat(args.end)
        except ValueError:
            raise ConfigError(
                "--end", f"{args.end!r} is not an ISO-8601 time", "use e.g. 2024-01-02T16:00:00Z"
            ) from None
    quantiles = None
    if args.quantiles:
        try:
            quantiles = [float(q) for q in args.quantiles.split(",")]
        except ValueError:
            raise ConfigError(
                "--quantiles", f"{args.quantiles!r} is not a list of numbers", "use e.g. 0.1,0.5,0.9"
            ) from None
        if not all(0 < q < 1 for q in quantiles):
            raise ConfigError("--quantiles", "levels must be strictly between 0 and 1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    report = batch_forecast(
        settings,
        [t for t in args.tickers.split(",") if t.strip()] if args.tickers else None,
        interval=args.interval,
        horizon=args.horizon,
        quantile_levels=quantiles,
        context_length=args.context_length,
        target=args.target,
        end=end,
        as_of=as_of,
        model=args.model,
        actors=args.actors,
        num_gpus=args.num_gpus,
        chunk_size=args.chunk_size,
        progress=not args.no_progress,
    )
    print(json.dumps(report.to_dict(), indent=2))
    return 0 if not report.failed else 1
