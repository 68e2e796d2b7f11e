"""The lake: Parquet tables under one root URL, ``file://`` or ``s3://``.

Layout (Hive-style partitions; partition columns live in the path, not in the files, as
Spark, Athena and DuckDB expect)::

    bars/interval=minute/ticker=AAPL/date=2024-01-02/<name>.parquet
    open_close/ticker=AAPL/date=2024-01-02/<name>.parquet
    forecasts/interval=minute/ticker=AAPL/date=2024-01-02/<name>.parquet
    scores/interval=minute/ticker=AAPL/date=2024-01-02/<name>.parquet
    reports/<name>/...            models/<name>/<version>/...

Writes are atomic: on a local disk a file is written under a dot-prefixed temporary name
(which every Parquet reader ignores) and renamed into place; on S3 an object only becomes
visible when its upload completes. Object names are chosen by the caller and should be
deterministic, so that a replay overwrites instead of duplicating.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tickcast.contracts import Bar
from tickcast.errors import ConfigError, StoreUnavailable
from tickcast.settings import LakeSettings

#: Bars as stored in Parquet (partition columns interval, ticker and date are in the path).
BAR_FILE_SCHEMA = pa.schema(
    [
        ("start", pa.timestamp("us", tz="UTC")),
        ("end", pa.timestamp("us", tz="UTC")),
        ("open", pa.float64()),
        ("high", pa.float64()),
        ("low", pa.float64()),
        ("close", pa.float64()),
        ("volume", pa.float64()),
        ("vwap", pa.float64()),
        ("trades", pa.int64()),
        ("source", pa.string()),
    ]
)

BAR_PARTITIONS = ("interval", "ticker", "date")


@dataclass(frozen=True, slots=True)
class LakeLocation:
    """A parsed lake URL: the filesystem and the root path inside it."""

    scheme: str
    root: str


def parse_lake_url(url: str) -> LakeLocation:
    """Split a lake URL into scheme and root path; relative file paths resolve from the cwd."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        raw = (parsed.netloc + parsed.path) if parsed.netloc else parsed.path
        if not raw:
            raise ConfigError("TICKCAST_LAKE__URL", f"{url!r} has no path", "use e.g. file://.tickcast/lake")
        return LakeLocation("file", str(Path(raw).expanduser().resolve()))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError("TICKCAST_LAKE__URL", f"{url!r} has no bucket", "use e.g. s3://my-lake/tickcast")
        return LakeLocation("s3", f"{parsed.netloc}{parsed.path.rstrip('/')}")
    raise ConfigError(
        "TICKCAST_LAKE__URL", f"{url!r} is not a file:// or s3:// URL", "use file://PATH or s3://BUCKET/PREFIX"
    )


def _has_aws_credentials() -> bool:
    """Whether the standard AWS credential chain finds credentials (env, profile, web identity, ...)."""
    import botocore.session

    return botocore.session.Session().get_credentials() is not None


def make_filesystem(settings: LakeSettings) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and root path for the lake settings.

    Raises:
        ConfigError: for a malformed URL or missing S3 credentials.
    """
    location = parse_lake_url(settings.url)
    if location.scheme == "file":
        return pafs.LocalFileSystem(), location.root
    key = settings.s3_access_key_id.get_secret_value() if settings.s3_access_key_id else None
    secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
    if bool(key) != bool(secret):
        missing = "TICKCAST_LAKE__S3_SECRET_ACCESS_KEY" if key else "TICKCAST_LAKE__S3_ACCESS_KEY_ID"
        raise ConfigError(missing, "only one of the S3 access key id and secret access key is set", f"set {missing}")
    if not key and not _has_aws_credentials():
        raise ConfigError(
            "TICKCAST_LAKE__S3_ACCESS_KEY_ID",
            f"no S3 credentials for {settings.url}",
            "set TICKCAST_LAKE__S3_ACCESS_KEY_ID and TICKCAST_LAKE__S3_SECRET_ACCESS_KEY, "
            "or provide AWS credentials (environment, profile or IRSA)",
        )
    kwargs: dict[str, Any] = {
        "region": settings.s3_region,
        "connect_timeout": settings.s3_timeout_s,
        "request_timeout": settings.s3_timeout_s,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    if key:
        kwargs.update(access_key=key, secret_key=secret)
    if settings.s3_endpoint_url:
        endpoint = urlparse(settings.s3_endpoint_url)
        if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
            raise ConfigError(
                "TICKCAST_LAKE__S3_ENDPOINT_URL",
                f"{settings.s3_endpoint_url!r} is not an http(s)://host:port URL",
                "use e.g. http://127.0.0.1:9000",
            )
        kwargs.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme)
    return pafs.S3FileSystem(**kwargs), location.root


def partition_path(table: str, values: Sequence[tuple[str, str]]) -> str:
    """``table/k1=v1/k2=v2`` for the given partition values."""
    return "/".join([table, *(f"{k}={v}" for k, v in values)])


class Lake:
    """Read and write the lake's Parquet tables and blobs."""

    def __init__(self, settings: LakeSettings) -> None:
        self.settings = settings
        self.url = settings.url
        self.fs, self.root = make_filesystem(settings)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    # -- plumbing -----------------------------------------------------------------------
    def path(self, relpath: str) -> str:
        """Absolute path inside the filesystem of a lake-relative path."""
        return f"{self.root}/{relpath.strip('/')}" if relpath else self.root

    def uri(self, relpath: str) -> str:
        """A URL other tools understand (``file:///...`` or ``s3://...``)."""
        return f"file://{self.path(relpath)}" if self.is_local else f"s3://{self.path(relpath)}"

    def _store_error(self, action: str, exc: Exception) -> StoreUnavailable:
        hint = (
            f"check that the object store at {self.settings.s3_endpoint_url or 'AWS S3'} is up and "
            f"TICKCAST_LAKE__URL / TICKCAST_LAKE__S3_ENDPOINT_URL are right"
            if not self.is_local
            else f"check that {self.root} is writable"
        )
        # pyarrow's message can be long; keep the first line, which names the cause.
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StoreUnavailable(f"lake {action} failed at {self.url}: {first}", hint)

    def check(self) -> None:
        """Health check: the root is reachable (the bucket exists on S3). Raises StoreUnavailable."""
        try:
            if self.is_local:
                os.makedirs(self.root, exist_ok=True)
                return
            bucket = self.root.split("/", 1)[0]
            info = self.fs.get_file_info(bucket)
        except (OSError, pa.ArrowException) as exc:
            raise self._store_error("health check", exc) from None
        if info.type == pafs.FileType.NotFound:
            raise StoreUnavailable(
                f"bucket {bucket!r} of {self.url} does not exist", "create it or fix TICKCAST_LAKE__URL"
            )

    def write_bytes(self, relpath: str, data: bytes) -> str:
        """Write a blob atomically; returns its lake-relative path."""
        target = self.path(relpath)
        try:
            if self.is_local:
                directory = os.path.dirname(target)
                os.makedirs(directory, exist_ok=True)
                tmp = os.path.join(directory, f".{os.path.basename(target)}.{uuid.uuid4().hex}.tmp")
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            else:
                with self.fs.open_output_stream(target) as out:
                    out.write(data)
        except (OSError, pa.ArrowException) as exc:
            raise self._store_error(f"write of {relpath}", exc) from None
        return relpath

    def read_bytes(self, relpath: str) -> bytes:
        """Read a blob; raises FileNotFoundError when absent."""
        try:
            with self.fs.open_input_stream(self.path(relpath)) as handle:
                return bytes(handle.read())
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowException) as exc:
            if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
                raise FileNotFoundError(relpath) from None
            raise self._store_error(f"read of {relpath}", exc) from None

    def exists(self, relpath: str) -> bool:
        """Whether a file or directory exists."""
        try:
            return self.fs.get_file_info(self.path(relpath)).type != pafs.FileType.NotFound
        except (OSError, pa.ArrowException) as exc:
            raise self._store_error(f"lookup of {relpath}", exc) from None

    def list_files(self, prefix: str, suffix: str = "") -> list[str]:
        """Lake-relative paths of files under ``prefix`` (recursive), sorted; hidden files skipped."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path(prefix), recursive=True, allow_not_found=True))
        except (OSError, pa.ArrowException) as exc:
            raise self._store_error(f"listing of {prefix}", exc) from None
        base = len(self.root) + 1
        out = [
            info.path[base:]
            for info in infos
            if info.type == pafs.FileType.File
            and not info.base_name.startswith((".", "_"))
            and info.path.endswith(suffix)
        ]
        return sorted(out)

    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate sub-directories of ``prefix``."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path(prefix), recursive=False, allow_not_found=True))
        except (OSError, pa.ArrowException) as exc:
            raise self._store_error(f"listing of {prefix}", exc) from None
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def delete(self, relpath: str) -> None:
        """Delete a file (missing is fine)."""
        try:
            self.fs.delete_file(self.path(relpath))
        except FileNotFoundError:
            pass
        except (OSError, pa.ArrowException) as exc:
            if "not found" not in str(exc).lower():
                raise self._store_error(f"delete of {relpath}", exc) from None

    # -- tables -------------------------------------------------------------------------
    def write_parquet(self, relpath: str, table: pa.Table) -> str:
        """Write one Parquet file atomically (zstd, statistics on)."""
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd", write_statistics=True)
        return self.write_bytes(relpath, buffer.getvalue())

    def write_partitioned(
        self, table_name: str, data: pa.Table, partition_by: Sequence[str], file_name: str
    ) -> list[str]:
        """Split ``data`` by the partition columns and write one file per partition.

        The partition columns are dropped from the files (they are in the path). Every
        partition's file is called ``file_name`` (add ``.parquet`` yourself), so the same
        input always maps to the same objects.
        """
        if data.num_rows == 0:
            return []
        keys = pa.Table.from_arrays([data[c] for c in partition_by], names=list(partition_by))
        groups = keys.group_by(list(partition_by)).aggregate([])
        written = []
        body = data.drop_columns(list(partition_by))
        for row in groups.to_pylist():
            mask = None
            for col in partition_by:
                cond = pc.equal(data[col], pa.scalar(row[col], data.schema.field(col).type))
                mask = cond if mask is None else pc.and_(mask, cond)
            part = body.filter(mask)
            rel = f"{partition_path(table_name, [(c, str(row[c])) for c in partition_by])}/{file_name}"
            written.append(self.write_parquet(rel, part))
        return written

    def dataset(self, prefix: str, partition_names: Sequence[str] = ()) -> ds.Dataset | None:
        """A pyarrow dataset of the Parquet files under ``prefix``, None when there are none."""
        if not self.exists(prefix):
            return None
        partitioning = (
            ds.partitioning(pa.schema([(n, pa.string()) for n in partition_names]), flavor="hive")
            if partition_names
            else None
        )
        try:
            return ds.dataset(self.path(prefix), filesystem=self.fs, format="parquet", partitioning=partitioning)
        except (OSError, pa.ArrowException) as exc:
            raise self._store_error(f"scan of {prefix}", exc) from None

    def read_table(
        self,
        prefix: str,
        partition_names: Sequence[str] = (),
        filter: ds.Expression | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table | None:
        """Read the Parquet files under ``prefix`` with a filter; None when there are none."""
        dataset = self.dataset(prefix, partition_names)
        if dataset is None:
            return None
        try:
            return dataset.to_table(filter=filter, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise self._store_error(f"read of {prefix}", exc) from None

    # -- bars ---------------------------------------------------------------------------
    def write_bars(self, bars: Iterable[Bar] | pa.Table, file_name: str) -> list[str]:
        """Write bars (objects or a table with the bar columns plus interval and ticker)."""
        table = bars if isinstance(bars, pa.Table) else bars_to_table(list(bars))
        if "date" not in table.column_names:
            dates = pc.strftime(table["start"], format="%Y-%m-%d")
            table = table.append_column("date", dates)
        return self.write_partitioned("bars", table, BAR_PARTITIONS, file_name)

    def bar_tickers(self, interval: str = "minute") -> list[str]:
        """Tickers with bars of this interval in the lake."""
        return [d.removeprefix("ticker=") for d in self.list_dirs(f"bars/interval={interval}")]

    def read_bars(
        self,
        ticker: str,
        interval: str = "minute",
        start: datetime | None = None,
        end: datetime | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Bars of one ticker with ``start <= bar.start < end``, sorted by start.

        Only the ticker's folder is scanned, and date partitions outside the range are
        pruned before any file is opened.
        """
        prefix = f"bars/interval={interval}/ticker={ticker}"
        expr: ds.Expression | None = None
        if start is not None:
            start = start.astimezone(UTC)
            expr = (ds.field("date") >= start.date().isoformat()) & (ds.field("start") >= pa.scalar(start))
        if end is not None:
            end = end.astimezone(UTC)
            last_day = (end - timedelta(microseconds=1)).date().isoformat()
            cond = (ds.field("date") <= last_day) & (ds.field("start") < pa.scalar(end))
            expr = cond if expr is None else expr & cond
        wanted = None if columns is None else list(dict.fromkeys([*columns, "start"]))
        table = self.read_table(prefix, ("date",), filter=expr, columns=wanted)
        if table is None:
            return BAR_FILE_SCHEMA.empty_table()
        if "date" in table.column_names:
            table = table.drop_columns(["date"])
        return table.sort_by("start")


def bars_to_table(bars: Sequence[Bar]) -> pa.Table:
    """Bars as an Arrow table with the file columns plus ``interval`` and ``ticker``."""
    columns: dict[str, list[Any]] = {name: [] for name in BAR_FILE_SCHEMA.names}
    intervals, tickers = [], []
    for bar in bars:
        columns["start"].append(bar.start)
        columns["end"].append(bar.end)
        columns["open"].append(bar.open)
        columns["high"].append(bar.high)
        columns["low"].append(bar.low)
        columns["close"].append(bar.close)
        columns["volume"].append(bar.volume)
        columns["vwap"].append(bar.vwap)
        columns["trades"].append(bar.trades)
        columns["source"].append(bar.source)
        intervals.append(bar.interval)
        tickers.append(bar.ticker)
    table = pa.Table.from_pydict(columns, schema=BAR_FILE_SCHEMA)
    return table.append_column("interval", pa.array(intervals, pa.string())).append_column(
        "ticker", pa.array(tickers, pa.string())
    )


def table_to_bars(table: pa.Table, ticker: str, interval: str) -> list[Bar]:
    """Rows of a bars table (as read by :meth:`Lake.read_bars`) back into Bar objects."""
    out = []
    for row in table.to_pylist():
        out.append(
            Bar(
                ticker=ticker,
                interval=interval,
                start=row["start"],
                end=row["end"],
                open=row["open"],
                high=row["high"],
                low=row["low"],
                close=row["close"],
                volume=row["volume"],
                vwap=row.get("vwap"),
                trades=row.get("trades"),
                source=row.get("source") or "lake",
            )
        )
    return out


def day_range(start: date, end: date) -> list[date]:
    """Every calendar day from ``start`` to ``end`` inclusive."""
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


# -- forecasts and scores -----------------------------------------------------------------
#: One row per forecast step. ``p10``/``p50``/``p90`` are the 80% band and median when the
#: forecast has those levels (null otherwise); every level is in the two list columns.
FORECAST_FILE_SCHEMA = pa.schema(
    [
        ("forecast_id", pa.string()),
        ("model_id", pa.string()),
        ("model_version", pa.string()),
        ("target", pa.string()),
        ("issued_at", pa.timestamp("us", tz="UTC")),
        ("last_bar_start", pa.timestamp("us", tz="UTC")),
        ("bar_event_time", pa.timestamp("us", tz="UTC")),
        ("horizon", pa.int32()),
        ("step", pa.int32()),
        ("step_start", pa.timestamp("us", tz="UTC")),
        ("mean", pa.float64()),
        ("p10", pa.float64()),
        ("p50", pa.float64()),
        ("p90", pa.float64()),
        ("quantile_levels", pa.list_(pa.float64())),
        ("quantile_values", pa.list_(pa.float64())),
    ]
)

SCORE_FILE_SCHEMA = pa.schema(
    [
        ("forecast_id", pa.string()),
        ("model_id", pa.string()),
        ("model_version", pa.string()),
        ("target", pa.string()),
        ("step", pa.int32()),
        ("target_start", pa.timestamp("us", tz="UTC")),
        ("issued_at", pa.timestamp("us", tz="UTC")),
        ("actual", pa.float64()),
        ("median", pa.float64()),
        ("mean", pa.float64()),
        ("abs_error", pa.float64()),
        ("quantile_loss", pa.float64()),
        ("lower_80", pa.float64()),
        ("upper_80", pa.float64()),
        ("covered_80", pa.bool_()),
        ("naive_abs_error", pa.float64()),
    ]
)


def forecasts_to_table(forecasts: Sequence[Any]) -> pa.Table:
    """Forecasts as one row per step, with partition columns interval, ticker and date."""
    rows: dict[str, list[Any]] = {name: [] for name in FORECAST_FILE_SCHEMA.names}
    parts: dict[str, list[Any]] = {"interval": [], "ticker": [], "date": []}
    for f in forecasts:
        levels = sorted(f.quantiles, key=float)
        starts = f.step_starts()
        for i in range(f.horizon):
            rows["forecast_id"].append(f.id)
            rows["model_id"].append(f.model_id)
            rows["model_version"].append(f.model_version)
            rows["target"].append(f.target)
            rows["issued_at"].append(f.issued_at)
            rows["last_bar_start"].append(f.last_bar_start)
            rows["bar_event_time"].append(f.bar_event_time)
            rows["horizon"].append(f.horizon)
            rows["step"].append(i + 1)
            rows["step_start"].append(starts[i])
            rows["mean"].append(f.mean[i])
            by_level = {float(k): f.quantiles[k][i] for k in levels}
            rows["p10"].append(by_level.get(0.1))
            rows["p50"].append(by_level.get(0.5))
            rows["p90"].append(by_level.get(0.9))
            rows["quantile_levels"].append([float(k) for k in levels])
            rows["quantile_values"].append([f.quantiles[k][i] for k in levels])
            parts["interval"].append(f.interval)
            parts["ticker"].append(f.ticker)
            parts["date"].append(f.last_bar_start.astimezone(UTC).date().isoformat())
    table = pa.Table.from_pydict(rows, schema=FORECAST_FILE_SCHEMA)
    for name, values in parts.items():
        table = table.append_column(name, pa.array(values, pa.string()))
    return table


def scores_to_table(scores: Sequence[Any]) -> pa.Table:
    """Scores as rows, with partition columns interval, ticker and date (of the target bar)."""
    rows: dict[str, list[Any]] = {name: [] for name in SCORE_FILE_SCHEMA.names}
    parts: dict[str, list[Any]] = {"interval": [], "ticker": [], "date": []}
    for s in scores:
        data = s.to_dict()
        for name in SCORE_FILE_SCHEMA.names:
            rows[name].append(data[name])
        parts["interval"].append(s.interval)
        parts["ticker"].append(s.ticker)
        parts["date"].append(s.target_start.astimezone(UTC).date().isoformat())
    table = pa.Table.from_pydict(rows, schema=SCORE_FILE_SCHEMA)
    for name, values in parts.items():
        table = table.append_column(name, pa.array(values, pa.string()))
    return table


def _read_ticker_table(
    lake: Lake,
    table_name: str,
    time_column: str,
    ticker: str,
    interval: str,
    start: datetime | None,
    end: datetime | None,
) -> pa.Table | None:
    prefix = f"{table_name}/interval={interval}/ticker={ticker}"
    expr: ds.Expression | None = None
    if start is not None:
        # forecasts are partitioned by their last bar's date, which is before their steps
        expr = ds.field(time_column) >= pa.scalar(start.astimezone(UTC))
    if end is not None:
        cond = ds.field(time_column) < pa.scalar(end.astimezone(UTC))
        expr = cond if expr is None else expr & cond
    return lake.read_table(prefix, ("date",), filter=expr)


def read_forecasts(
    lake: Lake, ticker: str, interval: str = "minute", start: datetime | None = None, end: datetime | None = None
) -> pa.Table:
    """Forecast rows of one ticker whose last bar is in ``[start, end)``, sorted by last bar and step."""
    table = _read_ticker_table(lake, "forecasts", "last_bar_start", ticker, interval, start, end)
    if table is None:
        return FORECAST_FILE_SCHEMA.empty_table()
    return table.sort_by([("last_bar_start", "ascending"), ("step", "ascending")])


def read_scores(
    lake: Lake, ticker: str, interval: str = "minute", start: datetime | None = None, end: datetime | None = None
) -> pa.Table:
    """Score rows of one ticker whose target bar is in ``[start, end)``, sorted by target time."""
    table = _read_ticker_table(lake, "scores", "target_start", ticker, interval, start, end)
    if table is None:
        return SCORE_FILE_SCHEMA.empty_table()
    return table.sort_by([("target_start", "ascending"), ("step", "ascending")])
