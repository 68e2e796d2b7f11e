"""The lake: Delta Lake tables (and a few blobs) under one root URL, ``file://`` or ``s3://``.

Only this package knows paths, partitions and file names:

- :mod:`~tickcast.lake.specs`: each table's name, Arrow schema, partition and sort columns, key;
- :mod:`~tickcast.lake.tables`: Delta operations (create, append, merge, scan, time travel);
- :mod:`~tickcast.lake.bars`: the bars table's exactly-once writer and readers;
- :mod:`~tickcast.lake.results`: forecasts, scores and score aggregates;
- :mod:`~tickcast.lake.maintenance`: optimize and vacuum;
- :mod:`~tickcast.lake.migrate`: conversion of the earlier Hive-partitioned Parquet layout;
- :mod:`~tickcast.lake.store`: the root, storage options, and blobs (models, reports, state).
"""

from tickcast.lake.bars import (
    BarWriter,
    bar_days,
    bar_intervals,
    bar_periods,
    bar_tickers,
    bars_to_table,
    latest_bars,
    read_bars,
    recent_bars,
    scan_bars,
    table_to_bars,
    write_bars,
)
from tickcast.lake.location import LakeLocation, delta_storage_options, make_filesystem, parse_lake_url
from tickcast.lake.results import (
    aggregates_to_table,
    forecast_periods,
    forecasts_to_table,
    latest_forecasts,
    latest_scores,
    read_forecasts,
    read_latest_aggregates,
    read_scores,
    score_periods,
    scores_to_table,
    write_aggregates,
    write_forecasts,
    write_scores,
)
from tickcast.lake.specs import (
    BAR_COLUMNS,
    BAR_SCHEMA,
    BARS,
    FORECASTS,
    OPEN_CLOSE,
    SCORE_AGGREGATES,
    SCORES,
    TABLES,
    TableSpec,
    period_bounds,
    period_of,
)
from tickcast.lake.store import Lake
from tickcast.lake.tables import AlreadyCommitted, AsOf, SchemaVersionError

__all__ = [
    "BARS",
    "BAR_COLUMNS",
    "BAR_SCHEMA",
    "FORECASTS",
    "OPEN_CLOSE",
    "SCORES",
    "SCORE_AGGREGATES",
    "TABLES",
    "AlreadyCommitted",
    "AsOf",
    "BarWriter",
    "Lake",
    "LakeLocation",
    "SchemaVersionError",
    "TableSpec",
    "aggregates_to_table",
    "bar_days",
    "bar_intervals",
    "bar_periods",
    "bar_tickers",
    "bars_to_table",
    "delta_storage_options",
    "forecast_periods",
    "forecasts_to_table",
    "latest_bars",
    "latest_forecasts",
    "latest_scores",
    "make_filesystem",
    "parse_lake_url",
    "period_bounds",
    "period_of",
    "read_bars",
    "read_forecasts",
    "read_latest_aggregates",
    "read_scores",
    "recent_bars",
    "scan_bars",
    "score_periods",
    "scores_to_table",
    "table_to_bars",
    "write_aggregates",
    "write_bars",
    "write_forecasts",
    "write_scores",
]
