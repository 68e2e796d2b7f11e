"""Where the sink puts things in the lake: deterministic file names and pending markers.

Bar files (Hive-style folders, as :mod:`tickcast.lake` lays them out)::

    bars/interval=minute/ticker=AAPL/date=2024-01-02/bars-{topic}-p{partition}-o{first_offset}.parquet

One flush of a Kafka partition covers the offsets ``[first, last]`` and writes one file
per (interval, ticker, date) it holds, all with the same name: the name depends only on
(topic, partition, first offset), so a replay of the same flush overwrites instead of
duplicating.

Pending markers (outside ``bars/``, so no bar reader ever sees them)::

    _sink/{topic}/p{partition}/pending-o{first_offset}.json

A marker lists the files a flush is about to write; it is written before the first file
and deleted after the offsets are committed. A marker whose ``first`` offset is at or
after the group's committed offset names files that were never committed; whoever owns
the partition next deletes them before consuming (see :mod:`consumer.sink`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Final

#: Parquet key-value metadata the sink writes into every bar file.
META_TOPIC: Final = b"tickcast.topic"
META_PARTITION: Final = b"tickcast.partition"
META_FIRST: Final = b"tickcast.first_offset"
META_LAST: Final = b"tickcast.last_offset"
META_COMPACTED_FROM: Final = b"tickcast.compacted_from"

MARKER_ROOT: Final = "_sink"
_OFFSET_WIDTH: Final = 20

_FILE_RE: Final = re.compile(r"^bars-(?P<topic>.+)-p(?P<partition>\d+)-o(?P<first>\d{20})\.parquet$")
_MARKER_RE: Final = re.compile(r"^pending-o(?P<first>\d{20})\.json$")


def file_name(topic: str, partition: int, first_offset: int) -> str:
    """The deterministic name of every file of the flush starting at ``first_offset``."""
    return f"bars-{topic}-p{partition}-o{first_offset:0{_OFFSET_WIDTH}d}.parquet"


@dataclass(frozen=True, slots=True)
class SinkFile:
    """What a sink file's name says about it."""

    topic: str
    partition: int
    first_offset: int


def parse_file_name(name: str) -> SinkFile | None:
    """Parse a sink file name (a base name); None for other files (compacted, foreign)."""
    match = _FILE_RE.match(name)
    if not match:
        return None
    return SinkFile(match["topic"], int(match["partition"]), int(match["first"]))


def marker_dir(topic: str, partition: int) -> str:
    """The lake-relative folder of a partition's pending markers."""
    return f"{MARKER_ROOT}/{topic}/p{partition}"


def marker_path(topic: str, partition: int, first_offset: int) -> str:
    """The lake-relative path of the marker of the flush starting at ``first_offset``."""
    return f"{marker_dir(topic, partition)}/pending-o{first_offset:0{_OFFSET_WIDTH}d}.json"


def is_marker_name(name: str) -> bool:
    """Whether a base name is a pending marker's."""
    return _MARKER_RE.match(name) is not None


@dataclass(frozen=True, slots=True)
class PendingMarker:
    """A flush that wrote (or was writing) ``files`` and has not been confirmed committed."""

    topic: str
    partition: int
    first: int
    last: int
    files: tuple[str, ...]
    owner: str = ""

    def to_json(self) -> bytes:
        """The marker's stored form."""
        data = asdict(self)
        data["files"] = list(self.files)
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> PendingMarker:
        """Parse a stored marker."""
        data = json.loads(payload)
        return cls(
            topic=str(data["topic"]),
            partition=int(data["partition"]),
            first=int(data["first"]),
            last=int(data["last"]),
            files=tuple(str(f) for f in data["files"]),
            owner=str(data.get("owner", "")),
        )
