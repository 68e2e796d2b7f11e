"""Benchmark: the producer's ingest throughput into the real broker, against two baselines.

In one run, on fresh topics of the same broker, it measures:

- ``generator``: the synthetic market alone (GBM steps + JSON), no Kafka: what the source costs;
- ``producer``: the synthetic producer end to end (generation, serialization,
  :class:`producer.sink.BarPublisher` with acks=all, idempotence, lz4, delivery checks),
  flushed at the end, in bars/s;
- ``publisher``: the same pre-serialized records through ``BarPublisher.send_encoded``;
- ``raw``: a bare kafka-python ``send(topic, value, key)`` loop over the same records, with
  the same producer configuration, flushed: the ceiling kafka-python itself allows;
- ``java``: Kafka's own producer perf tool (``org.apache.kafka.tools.ProducerPerformance``,
  from the broker's jars) with 200-byte records and with our JSON bars as payloads, same
  acks/idempotence/compression/batching.

Modes alternate over ``--rounds`` and the best round of each is reported, because the two
cores are shared with the broker (and, on a busy machine, with everything else). CPU
seconds per record are reported next to wall-clock rates: when the machine is busy they
say more. Prints one JSON document; exits 1 when a target is missed (>= 50,000 bars/s, >= 0.8
of the raw send loop), 2 when a mode crashed (``errors`` says which and why).

    .venv/bin/python bench/ingest.py                          # broker from TICKCAST_KAFKA__*
    .venv/bin/python bench/ingest.py --bootstrap 127.0.0.1:19092 --records 200000
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from _common import Steps, finish, run_main, target

TARGET_BARS_PER_S = 50_000
TARGET_RATIO = 0.8


def _records(n: int, tickers: int) -> list[tuple[str, bytes]]:
    from producer.synthetic import SyntheticMarket, ticker_names

    market = SyntheticMarket(ticker_names(tickers), "minute", seed=11)
    out: list[tuple[str, bytes]] = []
    for names, values, _ in market.encoded():
        out.extend(zip(names, values, strict=True))
        if len(out) >= n:
            return out[:n]
    return out


def _topic(settings: Any, partitions: int) -> str:
    from tickcast.kafka import ensure_topics

    name = f"bench.ingest.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings.kafka, {name: partitions}, retention_hours=1)
    return name


def _delete(settings: Any, topics: list[str]) -> None:
    from tickcast.kafka import make_admin

    admin = make_admin(settings.kafka)
    try:
        admin.delete_topics(topics)
    except Exception as exc:  # cleanup only; the numbers are already in
        print(f"bench: could not delete topics {topics}: {exc}", file=sys.stderr)
    finally:
        admin.close()


def _timed(fn: Any) -> tuple[float, float]:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall0, time.process_time() - cpu0


def _result(n: int, wall: float, cpu: float) -> dict[str, Any]:
    return {
        "records": n,
        "seconds": round(wall, 3),
        "bars_per_s": round(n / wall),
        "cpu_us_per_record": round(cpu / n * 1e6, 2),
    }


def bench_generator(n: int, tickers: int) -> dict[str, Any]:
    """The synthetic market's own speed (no Kafka)."""
    from producer.synthetic import SyntheticMarket, ticker_names

    market = SyntheticMarket(ticker_names(tickers), "minute", seed=3)
    count = 0

    def run() -> None:
        nonlocal count
        for _, values, _ in market.encoded():
            count += len(values)
            if count >= n:
                return

    wall, cpu = _timed(run)
    return _result(count, wall, cpu)


def bench_producer(settings: Any, n: int, tickers: int, partitions: int) -> dict[str, Any]:
    """The synthetic producer end to end into a fresh topic."""
    from producer.sink import BarPublisher
    from producer.synthetic import SyntheticMarket, run_synthetic, ticker_names

    topic = _topic(settings, partitions)
    publisher = BarPublisher(settings.kafka, settings.producer, "synthetic", topic=topic)
    publisher.client.partitions_for(topic)
    market = SyntheticMarket(ticker_names(tickers), "minute", seed=5)
    try:
        wall, cpu = _timed(lambda: run_synthetic(market, publisher, rate=None, max_bars=n))
        assert publisher.sent == n
    finally:
        publisher.close()
        _delete(settings, [topic])
    return _result(n, wall, cpu)


def bench_publisher(settings: Any, records: list[tuple[str, bytes]], partitions: int) -> dict[str, Any]:
    """Pre-serialized records through BarPublisher.send_encoded, flushed."""
    from producer.sink import BarPublisher

    topic = _topic(settings, partitions)
    publisher = BarPublisher(settings.kafka, settings.producer, "bench", topic=topic)
    publisher.client.partitions_for(topic)
    end_ts = time.time()

    def run() -> None:
        send = publisher.send_encoded
        for ticker, value in records:
            send(ticker, value, end_ts)
        publisher.flush()

    try:
        wall, cpu = _timed(run)
    finally:
        publisher.close()
        _delete(settings, [topic])
    return _result(len(records), wall, cpu)


def bench_raw(settings: Any, records: list[tuple[str, bytes]], partitions: int) -> dict[str, Any]:
    """A bare kafka-python send loop (key-hashed partitions), same configuration, flushed."""
    from producer.sink import producer_config
    from tickcast.kafka import make_producer

    topic = _topic(settings, partitions)
    client = make_producer(settings.kafka, **producer_config(settings.producer))
    client.partitions_for(topic)
    keyed = [(t.encode(), v) for t, v in records]

    def run() -> None:
        send = client.send
        for key, value in keyed:
            send(topic, value=value, key=key)
        client.flush()

    try:
        wall, cpu = _timed(run)
    finally:
        client.close()
        _delete(settings, [topic])
    return _result(len(records), wall, cpu)


def _kafka_libs(settings: Any) -> Path:
    from tickcast.infra.kafka_server import KafkaServer

    return KafkaServer(settings.infra, settings.kafka).libs


def _java_login_config(kafka: Any, folder: Path) -> Path | None:
    """A 0600 client properties file with the SASL login of ``kafka`` (None without one).

    A file, not ``--producer-props``, so the password never shows in the process list.
    """
    if kafka.sasl_mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        return None
    module = "plain.PlainLoginModule" if kafka.sasl_mechanism == "PLAIN" else "scram.ScramLoginModule"
    password = kafka.sasl_password.get_secret_value() if kafka.sasl_password is not None else ""
    path = folder / "login.properties"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(
            f"security.protocol={kafka.security_protocol}\n"
            f"sasl.mechanism={kafka.sasl_mechanism}\n"
            f"sasl.jaas.config=org.apache.kafka.common.security.{module} required "
            f'username="{kafka.sasl_username}" password="{password}";\n'
        )
    return path


def bench_java(settings: Any, n: int, partitions: int, payload: Path | None) -> dict[str, Any]:
    """Kafka's ProducerPerformance on a fresh topic; parses its summary line."""
    from tickcast.infra.kafka_server import LOG4J_PATH

    libs = _kafka_libs(settings)
    if not any(libs.glob("kafka-tools-*.jar")):
        return {"skipped": f"no kafka-tools jar in {libs} (run `tickcast infra install`)"}
    topic = _topic(settings, partitions)
    p = settings.producer
    props = [
        f"bootstrap.servers={settings.kafka.bootstrap_servers}",
        "acks=all",
        "enable.idempotence=true",
        f"compression.type={p.compression}",
        f"linger.ms={p.linger_ms}",
        f"batch.size={p.batch_size}",
    ]
    cmd = [
        "java",
        "-Xmx256m",
        f"-Dlog4j2.configurationFile={LOG4J_PATH}",
        "-cp",
        f"{libs}/*",
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(n),
        "--throughput",
        "-1",
    ]
    cmd += ["--payload-file", str(payload)] if payload else ["--record-size", "200"]
    cmd += ["--producer-props", *props]
    with tempfile.TemporaryDirectory() as tmp:
        login = _java_login_config(settings.kafka, Path(tmp))
        if login is not None:
            cmd += ["--producer.config", str(login)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        finally:
            _delete(settings, [topic])
    lines = [ln for ln in proc.stdout.splitlines() if "records sent" in ln]
    match = re.search(
        r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency",
        lines[-1] if lines else "",
    )
    if proc.returncode != 0 or match is None:
        return {"error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-400:]}"}
    return {
        "records": int(match.group(1)),
        "bars_per_s": round(float(match.group(2))),
        "mb_per_s": float(match.group(3)),
        "avg_latency_ms": float(match.group(4)),
        "record_bytes": "our JSON bars" if payload else 200,
    }


def _best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(rounds, key=lambda r: r["bars_per_s"])
    return {**best, "rounds_bars_per_s": [r["bars_per_s"] for r in rounds]}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: TICKCAST_KAFKA__BOOTSTRAP_SERVERS)")
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--tickers", type=int, default=500)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--java-records", type=int, help="records for the Java tool (default: 2x --records)")
    parser.add_argument("--no-java", action="store_true")
    args = parser.parse_args(argv)

    import logging

    from tickcast.kafka import check_broker
    from tickcast.settings import load_settings

    logging.basicConfig(level=logging.WARNING)
    # on a busy machine kafka-python warns about its own slow event loop; that is what we measure
    logging.getLogger("kafka").setLevel(logging.ERROR)
    overrides: dict[str, Any] = {"producer": {"metrics_port": 0}}
    if args.bootstrap:
        overrides["kafka"] = {"bootstrap_servers": args.bootstrap}
    settings = load_settings(**overrides)
    check_broker(settings.kafka)

    records = _records(args.records, args.tickers)
    mean_bytes = sum(len(v) for _, v in records) / len(records)
    out: dict[str, Any] = {
        "benchmark": "ingest",
        "broker": settings.kafka.bootstrap_servers,
        "records": args.records,
        "tickers": args.tickers,
        "partitions": args.partitions,
        "mean_record_bytes": round(mean_bytes, 1),
        "producer_config": {
            "acks": "all",
            "idempotence": True,
            "compression": settings.producer.compression,
            "linger_ms": settings.producer.linger_ms,
            "batch_size": settings.producer.batch_size,
        },
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    import kafka

    out["kafka_python"] = kafka.__version__
    steps = Steps()
    out["generator"] = steps.step("generator", lambda: bench_generator(args.records, args.tickers))
    modes: dict[str, Any] = {
        "raw": lambda: bench_raw(settings, records, args.partitions),
        "producer": lambda: bench_producer(settings, args.records, args.tickers, args.partitions),
        "publisher": lambda: bench_publisher(settings, records, args.partitions),
    }
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in modes}
    for k in range(args.rounds):
        for name, fn in modes.items():
            if name in steps.errors:
                continue  # a mode that crashed once is not run again
            result = steps.step(name, fn)
            if result is not None:
                rounds[name].append(result)
            elif name in steps.errors:
                steps.errors[name] = f"round {k + 1}: {steps.errors[name]}"
    for name, values in rounds.items():
        out[name] = _best(values) if values else None
    if not args.no_java:
        with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as handle:
            handle.write(b"\n".join(v for _, v in records[:20_000]))
            payload = Path(handle.name)
        try:
            java_records = args.java_records or 2 * args.records  # the JVM needs time to warm up
            for name, file in (("java_200b", None), ("java_json", payload)):
                run_java = partial(bench_java, settings, java_records, args.partitions, file)
                out[name] = steps.step(name, run_java)
                if out[name] and "error" in out[name]:  # the tool ran and failed: a crashed mode
                    steps.fail(name, out[name]["error"])
        finally:
            payload.unlink(missing_ok=True)
    producer = (out["producer"] or {}).get("bars_per_s")
    raw = (out["raw"] or {}).get("bars_per_s")
    ratio = producer / raw if producer is not None and raw else None
    # Like for like on CPU: the busy machine inflates wall time, not CPU time per record.
    both = out["raw"] and out["producer"]
    cpu_ratio = out["raw"]["cpu_us_per_record"] / out["producer"]["cpu_us_per_record"] if both else None
    out["summary"] = {
        "producer_bars_per_s": producer,
        "raw_kafka_python_bars_per_s": raw,
        "producer_over_raw": None if ratio is None else round(ratio, 3),
        "producer_over_raw_cpu": None if cpu_ratio is None else round(cpu_ratio, 3),
        "java_bars_per_s": (out.get("java_json") or {}).get("bars_per_s"),
        "target_bars_per_s": TARGET_BARS_PER_S,
        "target_ratio": TARGET_RATIO,
        "meets_rate": producer is not None and producer >= TARGET_BARS_PER_S,
        "meets_ratio": ratio is not None and ratio >= TARGET_RATIO,
        "kafka_python_ceiling_bars_per_s": round(1e6 / out["raw"]["cpu_us_per_record"]) if out["raw"] else None,
    }
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    targets = {
        "producer_bars_per_s": target(producer, ">=", TARGET_BARS_PER_S),
        "producer_over_raw": target(out["summary"]["producer_over_raw"], ">=", TARGET_RATIO),
    }
    return finish(out, targets, steps.errors)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
