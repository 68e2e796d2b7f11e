"""Benchmark: the Kafka-to-lake sink, end to end, on file:// and on MinIO; Parquet size vs JSON.

For each lake (``file://`` in a temporary folder; ``s3://`` on MinIO when an endpoint is
given) and each round it measures, on fresh topics and consumer groups of the real broker:

- ``sustained``: the topic is loaded first, then one sink (:class:`consumer.sink.Sink`,
  in this process) consumes it into the lake: bars/s from its first record to its last
  commit, and bars per CPU-second of the sink process;
- ``end_to_end``: a producer process (kafka-python, acks=all, idempotence, lz4) and the
  sink run at the same time: bars/s from the first send to the sink's last commit of the
  last bar.

The bars come from the producer's synthetic market (GBM prices, realistic volumes).
Bytes per bar: the bars table's data files after the run (from its Delta log: one commit
per flush at the default flush size, bin-packed by the sink's running compaction), the
JSON record values, and, for reference, those JSON values zstd-compressed as one stream.
The best round of each measurement is reported (the two cores are shared with the broker,
MinIO and, on a busy machine, everyone else), with the load average seen. Prints JSON;
exits 1 when a target is missed (sustained sink >= 50,000 bars/s into ``file://``, >= 25,000
into MinIO; Parquet >= 5x smaller than JSON), 2 when a lake's run crashed (``errors`` says
which and why).

    .venv/bin/python bench/sink.py --bootstrap 127.0.0.1:19092 \\
        --s3-endpoint http://127.0.0.1:19000 --s3-key tickcast --s3-secret tickcast-local-only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import Steps, finish, run_main, target

TARGET_BARS_PER_S = 50_000
TARGET_S3_BARS_PER_S = 25_000
TARGET_SIZE_RATIO = 5.0
REPO = Path(__file__).resolve().parents[1]

_PRODUCER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from sink import synthetic
from tickcast.kafka import make_producer
from tickcast.settings import load_settings
settings = load_settings(kafka={"bootstrap_servers": sys.argv[2]})
topic, n, tickers = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
records = [(k.encode(), v) for k, v in synthetic(n, tickers)]
producer = make_producer(settings.kafka)
start = time.time()
for key, value in records:
    producer.send(topic, key=key, value=value)
producer.flush(120)
producer.close()
print(json.dumps({"start": start, "end": time.time()}))
"""


def synthetic(n: int, tickers: int) -> list[tuple[str, bytes]]:
    """n realistic bars (key, JSON value) from the producer's synthetic market."""
    from datetime import date

    from producer.synthetic import SyntheticMarket, ticker_names

    market = SyntheticMarket(ticker_names(tickers), "minute", start=date(2024, 1, 2), seed=5)
    out: list[tuple[str, bytes]] = []
    for names, values, _ in market.encoded():
        out.extend(zip(names, values, strict=True))
        if len(out) >= n:
            break
    return out[:n]


def load(settings: Any, topic: str, records: list[tuple[str, bytes]]) -> float:
    from tickcast.kafka import make_producer

    producer = make_producer(settings.kafka)
    start = time.perf_counter()
    for key, value in records:
        producer.send(topic, key=key.encode(), value=value)
    producer.flush(120)
    producer.close()
    return time.perf_counter() - start


def lake_bytes(lake: Any) -> tuple[int, int]:
    """(bytes, data files) of the bars table's current version, from its Delta log."""
    from tickcast.lake import BARS
    from tickcast.lake.maintenance import file_stats

    files, size, _rows = file_stats(lake, BARS)
    return size, files


def fresh(base: Any, lake_url: str, topic: str, dlq: str) -> Any:
    return base.model_copy(
        update={
            "kafka": base.kafka.model_copy(update={"topic_bars": topic, "topic_dlq": dlq}),
            "lake": base.lake.model_copy(update={"url": lake_url}),
            "consumer": base.consumer.model_copy(
                update={"group_id": f"bench-{uuid.uuid4().hex[:8]}", "metrics_port": 0}
            ),
        }
    )


def run_round(
    base: Any, lake_url: str, records: list[tuple[str, bytes]], partitions: int, tickers: int, mode: str
) -> dict[str, Any]:
    from consumer.sink import Sink
    from tickcast.kafka import ensure_topics
    from tickcast.lake import Lake

    tag = uuid.uuid4().hex[:8]
    topic, dlq = f"bench.sink.{tag}", f"bench.sink.{tag}.dlq"
    ensure_topics(base.kafka, {topic: partitions, dlq: 1}, retention_hours=1)
    settings = fresh(base, f"{lake_url.rstrip('/')}/{tag}", topic, dlq)
    n = len(records)
    result: dict[str, Any] = {"load": os.getloadavg()[0]}
    if mode == "sustained":
        result["preload_s"] = round(load(settings, topic, records), 2)
        stats = Sink(settings).run(max_records=n, timeout=600)
        result["bars_per_s"] = round(n / stats.active_s)
    else:
        producer = subprocess.Popen(
            [sys.executable, "-c", _PRODUCER, str(REPO / "bench"), settings.kafka.bootstrap_servers, topic, str(n),
             str(tickers)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        stats = Sink(settings).run(max_records=n, timeout=600)
        done = time.time()
        produced = json.loads(producer.communicate(timeout=300)[0])
        result["bars_per_s"] = round(n / (done - produced["start"]))
        result["producer_bars_per_s"] = round(n / (produced["end"] - produced["start"]))
    assert stats.committed == n and stats.rejected == 0, stats
    result["bars_per_cpu_s"] = round(n / stats.cpu_s) if stats.cpu_s else None
    lake = Lake(settings.lake)
    size, files = lake_bytes(lake)
    result.update(
        parquet_bytes=size, files=files, flushes=stats.flushes, commits=stats.commits, compactions=stats.compactions
    )
    return result


def measure(
    base: Any,
    lake_url: str,
    records: list[tuple[str, bytes]],
    partitions: int,
    tickers: int,
    rounds: int,
    modes: tuple[str, ...] = ("sustained", "end_to_end"),
    steps: Steps | None = None,
    label: str = "",
) -> dict[str, Any]:
    """The best of ``rounds`` rounds of each mode (``sustained``, ``end_to_end``) into one lake root.

    With ``steps``, a round that crashes is recorded there as ``<label>/<mode>`` and that mode
    is not run again, while the other mode's figures are kept; without, the crash propagates.
    """
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for k in range(rounds):
        for mode in runs:

            def one(mode: str = mode) -> dict[str, Any]:
                return run_round(base, lake_url, records, partitions, tickers, mode)

            name = f"{label}/{mode}"
            if steps is None:
                runs[mode].append(one())
            elif name not in steps.errors:
                result = steps.step(name, one)
                if result is None:
                    steps.errors[name] = f"round {k + 1}: {steps.errors[name]}"
                else:
                    runs[mode].append(result)
    best = {mode: max(r, key=lambda x: x["bars_per_s"]) for mode, r in runs.items() if r}
    n = len(records)
    out: dict[str, Any] = {}
    if "sustained" in best:
        sustained = best["sustained"]
        out.update(
            sustained_bars_per_s=sustained["bars_per_s"],
            sustained_bars_per_cpu_s=sustained["bars_per_cpu_s"],
            parquet_bytes_per_bar=round(sustained["parquet_bytes"] / n, 2),
            files_written=sustained["files"],
            commits=sustained["commits"],
        )
    if "end_to_end" in best:
        out.update(
            end_to_end_bars_per_s=best["end_to_end"]["bars_per_s"],
            producer_alone_bars_per_s=best["end_to_end"]["producer_bars_per_s"],
        )
    out["rounds"] = runs
    return out


def s3_settings(base: Any, endpoint: str, key: str, secret: str) -> Any:
    """``base`` settings with the lake's S3 endpoint and keys (the lake URL is set per round)."""
    from pydantic import SecretStr

    lake = base.lake.model_copy(
        update={
            "s3_endpoint_url": endpoint,
            "s3_access_key_id": SecretStr(key),
            "s3_secret_access_key": SecretStr(secret),
        }
    )
    return base.model_copy(update={"lake": lake})


@contextlib.contextmanager
def s3_bucket(endpoint: str, key: str, secret: str, prefix: str = "bench-sink") -> Iterator[str]:
    """A fresh bucket on MinIO/S3 for one benchmark, emptied and deleted afterwards."""
    import boto3

    bucket = f"{prefix}-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1"
    )
    s3.create_bucket(Bucket=bucket)
    try:
        yield bucket
    finally:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        s3.delete_bucket(Bucket=bucket)


def quiet_logs() -> None:
    """Warnings only; kafka-python's connection chatter off."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.ERROR)


def main() -> int:
    """Run the benchmark and print one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: TICKCAST_KAFKA__BOOTSTRAP_SERVERS)")
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--tickers", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--s3-endpoint", help="MinIO/S3 endpoint, e.g. http://127.0.0.1:19000 (omit to skip s3)")
    parser.add_argument("--s3-key", default="tickcast")
    parser.add_argument("--s3-secret", default="tickcast-local-only")
    parser.add_argument("--s3-records", type=int, default=None, help="records for the s3 runs (default --records)")
    args = parser.parse_args()

    import pyarrow as pa

    quiet_logs()
    from tickcast.settings import load_settings

    overrides: dict[str, Any] = {}
    if args.bootstrap:
        overrides["kafka"] = {"bootstrap_servers": args.bootstrap}
    base = load_settings(**overrides)
    records = synthetic(args.records, args.tickers)
    json_bytes = sum(len(v) for _, v in records)
    zstd_bytes = pa.compress(b"\n".join(v for _, v in records), codec="zstd").size
    out: dict[str, Any] = {
        "records": args.records,
        "tickers": args.tickers,
        "partitions": args.partitions,
        "flush_records": base.consumer.flush_records,
        "cpus": os.cpu_count(),
        "json_bytes_per_bar": round(json_bytes / len(records), 2),
        "json_zstd_bytes_per_bar": round(zstd_bytes / len(records), 2),
    }
    steps = Steps()
    with tempfile.TemporaryDirectory(prefix="bench-sink-") as tmp:
        out["file"] = steps.step(
            "file",
            lambda: measure(
                base, f"file://{tmp}", records, args.partitions, args.tickers, args.rounds, steps=steps, label="file"
            ),
        )
    if args.s3_endpoint:
        s3_records = records[: args.s3_records] if args.s3_records else records

        def on_s3() -> dict[str, Any]:
            with s3_bucket(args.s3_endpoint, args.s3_key, args.s3_secret) as bucket:
                s3_base = s3_settings(base, args.s3_endpoint, args.s3_key, args.s3_secret)
                return measure(
                    s3_base, f"s3://{bucket}/lake", s3_records, args.partitions, args.tickers, args.rounds, steps=steps,
                    label="s3",
                )  # fmt: skip

        out["s3"] = steps.step("s3", on_s3)
    file = out["file"] or {}
    parquet = file.get("parquet_bytes_per_bar")
    out["size_ratio_json_over_parquet"] = round(out["json_bytes_per_bar"] / parquet, 2) if parquet else None
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    targets = {
        "sustained_file_bars_per_s": target(file.get("sustained_bars_per_s"), ">=", TARGET_BARS_PER_S),
        "sustained_s3_bars_per_s": target(
            (out.get("s3") or {}).get("sustained_bars_per_s"), ">=", TARGET_S3_BARS_PER_S
        ),
        "size_ratio_json_over_parquet": target(out["size_ratio_json_over_parquet"], ">=", TARGET_SIZE_RATIO),
    }
    return finish(out, targets, steps.errors)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
