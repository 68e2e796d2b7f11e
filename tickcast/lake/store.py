"""The lake's store: blobs (models, reports, service state) and where each table lives.

Tables are Delta Lake tables (see :mod:`tickcast.lake.tables`); blobs are plain objects
written atomically: on a local disk under a dot-prefixed temporary name then renamed, on
S3 visible only once the upload completes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from datetime import datetime
from functools import cached_property

import pyarrow as pa
import pyarrow.fs as pafs

from tickcast.contracts import Bar
from tickcast.errors import StoreUnavailable
from tickcast.lake.location import delta_storage_options, make_filesystem
from tickcast.lake.tables import AsOf
from tickcast.settings import LakeSettings


class Lake:
    """One lake root: its blobs, and the URI, storage options and filesystem of its tables.

    Table reads and writes go through :mod:`tickcast.lake.tables` and the readers of
    :mod:`tickcast.lake.bars` and :mod:`tickcast.lake.results`; this class is what they share.
    """

    def __init__(self, settings: LakeSettings) -> None:
        self.settings = settings
        self.url = settings.url
        self.fs, self.root = make_filesystem(settings)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    # -- tables -------------------------------------------------------------------------
    def table_uri(self, name: str) -> str:
        """The URI delta-rs opens a table at (a plain path locally, ``s3://`` otherwise)."""
        return self.path(name) if self.is_local else f"s3://{self.path(name)}"

    @cached_property
    def storage_options(self) -> dict[str, str]:
        """delta-rs storage options (see :func:`tickcast.lake.location.delta_storage_options`)."""
        return delta_storage_options(self.settings)

    def delta_filesystem(self, name: str) -> pafs.FileSystem:
        """A pyarrow filesystem rooted at a table, for reading its data files natively."""
        return pafs.SubTreeFileSystem(self.path(name), self.fs)

    # -- bars (shortcuts to tickcast.lake.bars) ----------------------------------------
    def read_bars(
        self,
        ticker: str,
        interval: str = "minute",
        start: datetime | None = None,
        end: datetime | None = None,
        columns: list[str] | None = None,
        as_of: AsOf = None,
    ) -> pa.Table:
        """See :func:`tickcast.lake.bars.read_bars`."""
        from tickcast.lake.bars import read_bars

        return read_bars(self, ticker, interval, start, end, columns, as_of)

    def write_bars(self, bars: Iterable[Bar] | pa.Table) -> int:
        """See :func:`tickcast.lake.bars.write_bars`."""
        from tickcast.lake.bars import write_bars

        return write_bars(self, bars)

    def bar_tickers(self, interval: str = "minute", as_of: AsOf = None) -> list[str]:
        """See :func:`tickcast.lake.bars.bar_tickers`."""
        from tickcast.lake.bars import bar_tickers

        return bar_tickers(self, interval, as_of)

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
