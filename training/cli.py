"""``tickcast train``, ``tickcast backtest`` and ``tickcast bundle-model``.

Light at import: torch, chronos, statsforecast and ray are imported by the handlers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tickcast.errors import ConfigError

if TYPE_CHECKING:
    from tickcast.settings import Settings

log = logging.getLogger(__name__)


def _when(text: str) -> datetime:
    """An ISO date or timestamp; a date or naive time is taken as UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or timestamp") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _as_of(text: str) -> int | datetime:
    """``--as-of``: a bars table version (an integer) or an ISO timestamp (naive is taken as UTC)."""
    if text.strip().isdigit():
        return int(text)
    try:
        return _when(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a table version (e.g. 12) nor an ISO timestamp (e.g. 2024-03-04T15:00:00Z)"
        ) from None


AS_OF_HELP = (
    "read the bars table as of this version (an integer, as recorded in a report or model metadata) "
    "or time (ISO timestamp, UTC when naive), to reproduce an earlier run exactly"
)


def _tickers(text: str) -> list[str]:
    return [t.strip().upper() for t in text.split(",") if t.strip()]


def register(subparsers: Any) -> None:
    """Add the training and evaluation sub-commands."""
    train = subparsers.add_parser(
        "train",
        help="fine-tune a Chronos-2 model on lake bars (or train one from scratch) into the registry",
        description=(
            "Fine-tune a Chronos-2 model (full or LoRA) on bars from the lake and write it to the lake's "
            "model registry as models/NAME/VERSION. Checkpoints go to --work-dir every --save-steps steps; "
            "running the same command again resumes from the last one."
        ),
    )
    train.add_argument("--name", required=True, help="registry name of the result (lower-case)")
    train.add_argument("--version", help="registry version (default: the next number)")
    source = train.add_mutually_exclusive_group()
    source.add_argument(
        "--base", default="bundled", help="model to start from: hub id, dir, s3://, NAME/VERSION, bundled"
    )
    source.add_argument(
        "--preset", choices=["tiny", "small"], help="train from scratch with this architecture instead of --base"
    )
    train.add_argument("--target", default="close", help="bar field or derived target (close, volume, log_return, ...)")
    train.add_argument("--interval", default="day", help="bar interval (second, minute, hour, day)")
    train.add_argument("--tickers", type=_tickers, help="comma-separated tickers (default: all in the lake)")
    train.add_argument("--start", type=_when, help="first bar start (ISO date/time, UTC)")
    train.add_argument("--end", type=_when, help="bars before this (ISO date/time, UTC)")
    train.add_argument("--as-of", type=_as_of, metavar="VERSION|TIMESTAMP", help=AS_OF_HELP)
    train.add_argument("--steps", type=int, default=200, help="optimizer steps")
    train.add_argument("--batch-size", type=int, default=32, help="series per step")
    train.add_argument("--lr", type=float, help="learning rate (default 1e-5 full, 1e-4 LoRA, 1e-3 from scratch)")
    train.add_argument("--mode", choices=["full", "lora"], default="full", help="full fine-tuning or LoRA")
    train.add_argument("--horizon", type=int, default=16, help="prediction length trained for")
    train.add_argument("--context-length", type=int, help="longest training context (default: the model's)")
    train.add_argument("--min-past", type=int, default=32, help="shortest training context")
    train.add_argument("--augment", type=float, default=0.0, help="fraction of synthetic series mixed in (0-0.95)")
    train.add_argument("--holdout", type=int, default=0, help="last values per series kept out and backtested")
    train.add_argument("--save-steps", type=int, default=50, help="checkpoint every N steps (0: never)")
    train.add_argument("--work-dir", help="checkpoint folder (default: <state_dir>/training/<name>)")
    train.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    train.add_argument("--seed", type=int, default=0, help="seed of data order (and weights with --preset)")
    train.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    train.add_argument("--label", help="one-line description stored in the registry")
    train.set_defaults(handler=_train)

    bt = subparsers.add_parser(
        "backtest",
        help="rolling-origin evaluation of models against naive, seasonal naive and AutoETS",
        description=(
            "Backtest Chronos models (bundled, registry NAME/VERSION, hub id, directory, s3://) against "
            "baselines on lake bars, the shipped real sample or a Parquet/CSV file. Writes a report "
            "(tables and plots) to reports/NAME/ in the lake."
        ),
    )
    bt.add_argument("--model", action="append", default=[], help="model spec; repeat for several (default: bundled)")
    bt.add_argument(
        "--source",
        default="lake",
        help="lake, sample (the shipped real daily bars), a .parquet/.csv path, or suite:NAME for a held-out "
        "evaluation suite of training/suites.py (e.g. suite:trend, suite:level_shift; the suite sets horizon, "
        "origins and season)",
    )
    bt.add_argument("--target", default="close", help="bar field or derived target")
    bt.add_argument("--interval", default="day", help="bar interval when reading the lake")
    bt.add_argument("--tickers", type=_tickers, help="comma-separated tickers (default: all)")
    bt.add_argument("--start", type=_when, help="first bar start (ISO date/time, UTC)")
    bt.add_argument("--end", type=_when, help="bars before this (ISO date/time, UTC)")
    bt.add_argument("--as-of", type=_as_of, metavar="VERSION|TIMESTAMP", help=AS_OF_HELP + " (--source lake only)")
    bt.add_argument("--horizon", type=int, default=8, help="steps forecast at each origin")
    bt.add_argument("--context-length", type=int, default=512, help="most past values a model sees")
    bt.add_argument("--origins", type=int, default=20, help="forecast origins per series")
    bt.add_argument("--stride", type=int, help="steps between origins (default: horizon)")
    bt.add_argument("--season", type=int, default=5, help="season of seasonal naive and AutoETS")
    bt.add_argument(
        "--baselines", default="naive,seasonal_naive,auto_ets", help="comma-separated baselines ('' for none)"
    )
    bt.add_argument("--name", help="report name (default: backtest-<UTC time>)")
    bt.add_argument("--ray", dest="ray", action="store_true", default=None, help="force Ray tasks")
    bt.add_argument("--no-ray", dest="ray", action="store_false", help="never use Ray")
    bt.add_argument("--no-report", action="store_true", help="print the table only")
    bt.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    bt.set_defaults(handler=_backtest)

    bundle = subparsers.add_parser(
        "bundle-model",
        help="train the bundled offline model from scratch on synthetic series (reproducible by seed)",
        description=(
            "Rebuild models/bundled/: a ~1M-parameter Chronos-2 trained from scratch on synthetic series, "
            "evaluated on the shipped real daily sample, with metadata.json and MODEL_CARD.md."
        ),
    )
    bundle.add_argument("--seed", type=int, default=0, help="the seed that decides weights and data")
    bundle.add_argument("--out", help="output folder (default: models/bundled in the repository)")
    bundle.add_argument("--work-dir", help="checkpoint folder (default: .tickcast/training/bundled-seed<N>)")
    bundle.add_argument(
        "--recipe",
        default="default",
        choices=("default", "check"),
        help="default: the shipped checkpoint; check: a seconds-long tiny run whose weights' hash a test reproduces",
    )
    bundle.add_argument("--steps", type=int, help="override the recipe's steps (for quick trials)")
    bundle.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    bundle.add_argument("--no-eval", action="store_true", help="skip the evaluation suites")
    bundle.add_argument(
        "--eval-only",
        action="store_true",
        help="no training: evaluate the checkpoint in --out again (after checking its SHA-256) and rewrite its "
        "metrics and model card",
    )
    bundle.set_defaults(handler=_bundle)


def _threads(n: int) -> None:
    if n > 0:
        import torch

        torch.set_num_threads(n)


def _train(settings: Settings, args: argparse.Namespace) -> int:
    from training.train import TrainConfig

    if not 0.0 <= args.augment < 1.0:
        raise ConfigError("--augment", f"{args.augment} is not in [0, 1)", "use e.g. --augment 0.3")
    scratch = args.preset is not None
    lr = args.lr or (1e-3 if scratch else 1e-4 if args.mode == "lora" else 1e-5)
    config = TrainConfig(
        num_steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=lr,
        prediction_length=args.horizon,
        context_length=args.context_length,
        min_past=args.min_past,
        finetune_mode=args.mode,
        save_steps=args.save_steps,
        logging_steps=max(1, min(25, args.steps // 10)),
        seed=args.seed,
        torch_threads=args.threads,
        progress=sys.stderr.isatty(),
    )
    base = _scratch_base(settings, args) if scratch else args.base
    label = args.label or (
        f"{args.name}: Chronos-2 ({args.preset} preset) trained from scratch by tickcast "
        f"on {args.interval} {args.target}"
        if scratch
        else None
    )
    from training.finetune import finetune

    entry, result = finetune(
        settings,
        base,
        args.name,
        target=args.target,
        interval=args.interval,
        tickers=args.tickers,
        start=args.start,
        end=args.end,
        as_of=args.as_of,
        config=config,
        augment=args.augment,
        holdout=args.holdout,
        version=args.version,
        work_dir=args.work_dir,
        resume=not args.no_resume,
        label=label,
    )
    summary = result.summary() if result is not None else {"note": "already registered; nothing trained"}
    print(json.dumps({"registered": entry.ref, "label": entry.label, **summary}, indent=2, default=str))
    return 0


def _scratch_base(settings: Settings, args: argparse.Namespace) -> str:
    """Save a freshly initialized model of the preset and return its directory as the base."""
    from pathlib import Path

    from training.train import build_model

    directory = Path(settings.infra.state_dir) / "training" / f"{args.name}-init-{args.preset}-seed{args.seed}"
    if not (directory / "config.json").is_file():
        build_model(args.preset, seed=args.seed).save_pretrained(directory)
    return str(directory.resolve())


def _backtest(settings: Settings, args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    import pandas as pd

    from serving.models import resolve_model
    from tickcast.lake import Lake
    from training.evaluation import BacktestConfig, backtest, summary_markdown, write_report
    from training.targets import bars_version, series_from_frame, series_from_lake

    _threads(args.threads)
    lake = Lake(settings.lake)
    lake_meta: dict[str, Any] = {}
    if args.source == "lake":
        version = bars_version(lake, args.as_of)
        series = (
            series_from_lake(lake, args.target, args.interval, args.tickers, args.start, args.end, as_of=version)
            if version is not None
            else {}
        )
        data_desc = f"{args.interval} bars of {lake.url} (bars table version {version})"
        lake_meta = {"table_versions": {"bars": version}, "as_of": args.as_of}
    elif args.as_of is not None:
        raise ConfigError(
            "--as-of", f"--source {args.source} is not the lake: only the lake's tables have versions", "drop --as-of"
        )
    elif args.source.startswith("suite:"):
        from training.suites import SUITES

        suite = args.source.removeprefix("suite:")
        if suite not in SUITES:
            raise ConfigError(
                "--source", f"unknown suite {suite!r}", f"use suite:NAME with NAME in {', '.join(SUITES)}"
            )
        series, suite_config = SUITES[suite]()
        data_desc = f"suite {suite} (training/suites.py)"
    else:
        if args.source == "sample":
            from training.samples import load_real_daily

            frame = load_real_daily()
        else:
            path = Path(args.source)
            if not path.is_file():
                raise ConfigError("--source", f"{path} does not exist", "pass lake, sample or a .parquet/.csv file")
            frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
            for col in ("start", "timestamp"):
                if col in frame:
                    frame[col] = pd.to_datetime(frame[col], utc=True)
            if "ticker" not in frame:
                frame["ticker"] = path.stem.upper()
        if args.tickers:
            frame = frame[frame["ticker"].isin(args.tickers)]
        time_col = "start" if "start" in frame else "timestamp"
        if args.start is not None:
            frame = frame[frame[time_col] >= args.start]
        if args.end is not None:
            frame = frame[frame[time_col] < args.end]
        series = series_from_frame(frame, args.target)
        data_desc = args.source
    if not series:
        raise ConfigError("--source", f"no {args.target} series found in {data_desc}", "check --tickers/--interval")
    models: dict[str, Any] = {}
    for spec in args.model or ["bundled"]:
        resolve_model(settings, spec)  # fail early, with serving's message, on a spec that names nothing
        models[spec] = spec
    baselines = tuple(b for b in args.baselines.split(",") if b)
    if args.source.startswith("suite:"):
        config = replace(suite_config, baselines=baselines)  # the suite's windows, so its figures compare
    else:
        config = BacktestConfig(
            horizon=args.horizon,
            context_length=args.context_length,
            n_origins=args.origins,
            stride=args.stride,
            season_length=args.season,
            baselines=baselines,
        )
    result = backtest(series, models, config, use_ray=args.ray, settings=settings)
    print(summary_markdown(result.summary))
    if not args.no_report:
        name = args.name or f"backtest-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
        meta = {"data": data_desc, "target": args.target, "interval": args.interval, **lake_meta}
        written = write_report(lake, name, result, series, meta)
        print(f"report: {lake.uri(f'reports/{name}')} ({len(written)} files)")
    if lake_meta:
        version = lake_meta["table_versions"]["bars"]
        print(f"read bars table version {version}; rerun with --as-of {version} to reproduce")
    return 0


def _bundle(settings: Settings, args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from training.bundle import BUNDLED_DIR, RECIPES, bundle_model, refresh_evaluation

    if args.eval_only:
        logging.getLogger("training").setLevel(logging.INFO)
        meta = refresh_evaluation(args.out or BUNDLED_DIR)
        print(json.dumps({k: meta[k] for k in ("id", "version", "sha256")}, indent=2))
        return 0

    recipe = RECIPES[args.recipe] if args.steps is None else replace(RECIPES[args.recipe], steps=args.steps)
    if recipe != RECIPES["default"] and not args.out:
        raise ConfigError(
            "--out",
            f"--recipe {args.recipe}{' with --steps' if args.steps is not None else ''} would overwrite the shipped "
            f"checkpoint in {BUNDLED_DIR}",
            "pass --out DIR for trial or check runs",
        )
    work = args.work_dir or str(Path(settings.infra.state_dir) / "training" / f"bundled-seed{args.seed}")
    logging.getLogger("training").setLevel(logging.INFO)
    meta = bundle_model(
        seed=args.seed,
        out_dir=args.out or BUNDLED_DIR,
        work_dir=work,
        recipe=recipe,
        resume=not args.no_resume,
        evaluate=not args.no_eval,
        progress=sys.stderr.isatty(),
    )
    print(json.dumps({k: meta[k] for k in ("id", "version", "parameters", "training")}, indent=2, default=str))
    return 0
