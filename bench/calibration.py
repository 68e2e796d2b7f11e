"""Benchmark: live band calibration (ACI) on the platform's replay of the bundled sample.

Replays what the offline platform's forecaster does with the bundled daily sample
(``training/data/daily_real.parquet``): for each of the last ``--bars`` bars of every
ticker (the platform's live tail), in time order, the bar first scores the pending
forecasts whose step it is (feeding the calibrator), then the bundled model forecasts the
next ``--horizon`` bars from the context up to it, and the calibrator draws the
calibrated band. The same :class:`~serving.streaming.scoring.Scorer` and
:class:`~serving.streaming.calibration.AdaptiveCalibrator` as the forecaster service; the
model runs in-process (no Kafka, no Serve: what they add is transport, not numbers).
Steps that fall on days without a bar (weekends, holidays) are never scored, as live.

Prints one JSON object: raw and calibrated 80% coverage and WQL over all scored steps and
after the first ``--burn-in`` scored steps of each key, the rolling coverage as the
dashboard shows it (the last ``--window`` scores of each ticker), and the scored steps
after which the running mean of the calibrated coverage (what ACI's bound is about) stays
within 0.80 +/- 0.05, and a time profile by blocks of scored steps. Targets: calibrated coverage
after the burn-in within 0.80 +/- 0.05, calibrated WQL at most the raw WQL.

    .venv/bin/python bench/calibration.py [--bars 1500] [--gamma 0.05] [--scope ticker]
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections import defaultdict
from typing import Any

import numpy as np
from _common import Steps, finish, run_main, target

TOL = 0.05


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=1500, help="live-tail bars per ticker (the platform's 1500)")
    parser.add_argument("--gamma", type=float, default=None, help="ACI step (default: the setting's)")
    parser.add_argument("--scope", choices=("ticker", "model"), default=None)
    parser.add_argument("--horizon", type=int, default=None)
    parser.add_argument("--context", type=int, default=None)
    parser.add_argument(
        "--burn-in",
        type=int,
        default=None,
        help="scored steps per key before the settled figures (default: where ACI's bound reaches 0.05)",
    )
    parser.add_argument("--window", type=int, default=None, help="rolling window (default: score_window)")
    parser.add_argument("--block", type=int, default=2000, help="scored steps per block in the time profile")
    parser.add_argument("--model", default="models/bundled")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import pyarrow.parquet as pq

    from serving.forecaster import Forecaster
    from serving.streaming.calibration import AdaptiveCalibrator
    from serving.streaming.scoring import Scorer
    from tickcast.contracts import Forecast
    from tickcast.platform import SAMPLE_FILE
    from tickcast.settings import load_settings

    cfg = load_settings().forecaster
    gamma = args.gamma if args.gamma is not None else cfg.calibration_gamma
    if args.burn_in is None:
        # ACI's bound on a key's mean coverage after T updates: (max(c, 1 - c) + 2 gamma) / (gamma T);
        # settled = from where it is within the benchmark's tolerance
        c = cfg.calibration_coverage
        args.burn_in = math.ceil((max(c, 1 - c) + 2 * gamma) / (gamma * TOL))
    scope = args.scope or cfg.calibration_scope
    horizon = args.horizon or cfg.horizon
    context = args.context or cfg.context_length
    window = args.window or cfg.score_window
    levels = tuple(cfg.quantiles)
    steps = Steps()
    result: dict[str, Any] = {
        "sample": str(SAMPLE_FILE.name),
        "model": args.model,
        "gamma": gamma,
        "scope": scope,
        "target_coverage": cfg.calibration_coverage,
        "horizon": horizon,
        "context": context,
        "quantiles": list(levels),
        "bars_per_ticker": args.bars,
    }

    table = pq.read_table(SAMPLE_FILE, columns=["ticker", "start", "close"]).sort_by(
        [("ticker", "ascending"), ("start", "ascending")]
    )
    series: dict[str, tuple[list[Any], np.ndarray]] = {}
    for ticker in sorted(set(table["ticker"].to_pylist())):
        rows = table.filter(table["ticker"].to_numpy(zero_copy_only=False) == ticker)
        starts = [s.to_pydatetime() for s in rows["start"].to_pandas()]
        series[ticker] = (starts, rows["close"].to_numpy().astype(np.float64))

    def forecast_all() -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
        model = Forecaster.from_pretrained(args.model, device=args.device, torch_threads=2)
        result["model_id"] = f"{model.info.id} {model.info.version}"
        jobs = [(t, i) for t, (_, closes) in series.items() for i in range(len(closes) - args.bars, len(closes))]
        out: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        t0 = time.monotonic()
        for k in range(0, len(jobs), 256):
            chunk = jobs[k : k + 256]
            ctx = [series[t][1][max(0, i + 1 - context) : i + 1] for t, i in chunk]
            pred = model.predict(ctx, horizon, levels)
            for j, key in enumerate(chunk):
                out[key] = (pred.mean[j], pred.quantiles[j])
        result["forecast_s"] = round(time.monotonic() - t0, 1)
        result["forecasts"] = len(jobs)
        return out

    raw = steps.step("forecast", forecast_all)
    if raw is None:
        return finish(result, {}, steps.errors)

    def replay() -> list[Any]:
        from datetime import timedelta

        cal = AdaptiveCalibrator(cfg.calibration_coverage, gamma, scope)
        scorer = Scorer(window, max_pending=max(2 * horizon, 8), calibrator=cal)
        events = sorted(
            (series[t][0][i], t, i)
            for t, (_, closes) in series.items()
            for i in range(len(closes) - args.bars, len(closes))
        )
        scores = []
        for start, ticker, i in events:
            close = float(series[ticker][1][i])
            scores.extend(scorer.on_bar(ticker, start, close))
            mean, quant = raw[(ticker, i)]
            f = Forecast(
                ticker=ticker,
                interval="day",
                model_id="bundled",
                model_version="bench",
                issued_at=start + timedelta(days=1),
                last_bar_start=start,
                horizon=horizon,
                target="close",
                mean=[float(v) for v in mean],
                quantiles={repr(q): [float(v) for v in quant[:, j]] for j, q in enumerate(levels)},
            )
            scorer.add_forecast(cal.calibrate(f), close)
        result["calibrator_keys"] = len(cal)
        return scores

    scores = steps.step("replay", replay)
    if not scores:
        return finish(result, {}, steps.errors)
    raw_cov = np.array([s.covered_80 for s in scores], dtype=float)
    cal_cov = np.array([s.calibrated_covered for s in scores], dtype=float)
    ql = np.array([s.quantile_loss for s in scores])
    cql = np.array([s.calibrated_quantile_loss for s in scores])
    act = np.array([abs(s.actual) for s in scores])
    # the k-th update of its key (ticker or model, version, step): the burn-in is per key, as the bound
    seen: dict[tuple[str, int], int] = defaultdict(int)
    rank = []
    for s in scores:
        key = (s.ticker if scope == "ticker" else "*", s.step)
        seen[key] += 1
        rank.append(seen[key])
    settled = np.array(rank) > args.burn_in
    # the dashboard's live coverage: the last `window` scores of each ticker, after every score
    rolling_raw, rolling_cal = [], []
    per_ticker: dict[str, list[int]] = defaultdict(list)
    for n, s in enumerate(scores):
        per_ticker[s.ticker].append(n)
        idx = per_ticker[s.ticker][-window:]
        rolling_raw.append(raw_cov[idx].mean())
        rolling_cal.append(cal_cov[idx].mean())
    rolling_cal_a = np.array(rolling_cal)
    # ACI's guarantee is on the running mean: the scored steps after which it stays within TOL
    running = np.cumsum(cal_cov) / np.arange(1, len(cal_cov) + 1)
    outside = np.nonzero(np.abs(running - cfg.calibration_coverage) > TOL)[0]
    converged_after = int(outside[-1] + 1) if len(outside) else 0
    # coverage by consecutive blocks of scored steps (time order), raw and calibrated
    block = args.block
    blocks = [
        {
            "first_bar": str(scores[k].target_start.date()),
            "raw": round(float(raw_cov[k : k + block].mean()), 3),
            "calibrated": round(float(cal_cov[k : k + block].mean()), 3),
        }
        for k in range(0, len(scores), block)
    ]
    result.update(
        {
            "scored_steps": len(scores),
            "scored_steps_per_key": max(seen.values()),
            "coverage_raw": round(float(raw_cov.mean()), 4),
            "coverage_calibrated": round(float(cal_cov.mean()), 4),
            "coverage_raw_settled": round(float(raw_cov[settled].mean()), 4) if settled.any() else None,
            "coverage_calibrated_settled": round(float(cal_cov[settled].mean()), 4) if settled.any() else None,
            "wql_raw": round(float(ql.sum() / act.sum()), 6),
            "wql_calibrated": round(float(cql.sum() / act.sum()), 6),
            "rolling_coverage_raw_last": round(float(rolling_raw[-1]), 4),
            "rolling_coverage_calibrated_last": round(float(rolling_cal[-1]), 4),
            "rolling_coverage_calibrated_share_within_tol": round(
                float(np.mean(np.abs(rolling_cal_a - cfg.calibration_coverage) <= TOL)), 4
            ),
            "rolling_coverage_raw_share_within_tol": round(
                float(np.mean(np.abs(np.array(rolling_raw) - cfg.calibration_coverage) <= TOL)), 4
            ),
            "rolling_window": window,
            "running_coverage_converged_after_scored_steps": converged_after,
            "running_coverage_converged_after_scored_steps_per_key": round(converged_after / len(seen)),
            "blocks": blocks,
            "per_ticker": {
                t: {
                    "coverage_raw": round(float(raw_cov[idx].mean()), 4),
                    "coverage_calibrated": round(float(cal_cov[idx].mean()), 4),
                    "wql_raw": round(float(ql[idx].sum() / act[idx].sum()), 6),
                    "wql_calibrated": round(float(cql[idx].sum() / act[idx].sum()), 6),
                }
                for t, idx in per_ticker.items()
            },
        }
    )
    settled_cov = result["coverage_calibrated_settled"]
    targets = {
        "coverage_calibrated_settled_min": target(settled_cov, ">=", cfg.calibration_coverage - TOL),
        "coverage_calibrated_settled_max": target(settled_cov, "<=", cfg.calibration_coverage + TOL),
        "wql_calibrated_over_raw": target(result["wql_calibrated"] / result["wql_raw"], "<=", 1.0),
    }
    return finish(result, targets, steps.errors)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
