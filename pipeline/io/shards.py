"""Parquet shard I/O: atomic writes, rolling shard writers, lazy reads.

A shard is complete iff its final name exists: writers write ``.<name>.tmp`` and ``os.replace`` it,
so a killed process leaves at most a temp file that no reader ever globs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP_ROWS = 10_000
COMPRESSION = "zstd"


def shard_name(i: int, prefix: str = "part-") -> str:
    return f"{prefix}{i:05d}.parquet"


def write_parquet_atomic(table: pa.Table | pl.DataFrame, path: str | Path, row_group_rows: int = ROW_GROUP_ROWS) -> Path:
    """Write ``table`` to ``path`` via a temp file and rename, fsync'd, so it appears whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(table, pl.DataFrame):
        table = table.to_arrow()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(table, tmp, compression=COMPRESSION, row_group_size=row_group_rows)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def list_shards(directory: str | Path) -> list[Path]:
    """Complete shards of a directory, in order (temp files are never listed)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("part-*.parquet") if not p.name.startswith("."))


def scan_shards(directory: str | Path) -> pl.LazyFrame:
    """A lazy frame over every complete shard of a directory."""
    shards = list_shards(directory)
    if not shards:
        raise FileNotFoundError(f"no shards in {directory}")
    return pl.scan_parquet([str(p) for p in shards])


class ShardWriter:
    """Accumulate tables and write them as ``part-NNNNN.parquet`` of about ``shard_rows`` rows, or
    fewer when ``max_bytes`` (Arrow size) comes first: memory per shard then follows text volume,
    not the row count (a 50k-row ShareGPT shard is ~360 MB of text, a 50k-row Alpaca one ~20 MB)."""

    def __init__(self, directory: str | Path, shard_rows: int, schema: pa.Schema | None = None, prefix: str = "part-",
                 max_bytes: int | None = None) -> None:
        self.dir = Path(directory)
        self.prefix = prefix
        self.shard_rows = shard_rows
        self.max_bytes = max_bytes
        self.schema = schema
        self._pending: list[pa.Table] = []
        self._n = 0
        self._bytes = 0
        self.paths: list[Path] = []
        self.rows_written = 0

    def _cut(self) -> int:
        """Rows of the next shard if one is due now, else 0."""
        rows = self.shard_rows if self._n >= self.shard_rows else 0
        if self.max_bytes and self._bytes >= self.max_bytes and self._n:
            by_bytes = max(1, int(self._n * self.max_bytes / self._bytes))  # rows of about max_bytes
            rows = min(rows, by_bytes) if rows else by_bytes
        return rows

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._n += table.num_rows
        self._bytes += table.nbytes
        while (rows := self._cut()) > 0:
            whole = pa.concat_tables(self._pending)
            self._flush(whole.slice(0, rows))
            rest = whole.slice(rows)
            self._pending = [rest] if rest.num_rows else []
            self._n = rest.num_rows
            self._bytes = rest.nbytes if rest.num_rows else 0

    def _flush(self, table: pa.Table) -> None:
        path = self.dir / shard_name(len(self.paths), self.prefix)
        write_parquet_atomic(table, path)
        self.paths.append(path)
        self.rows_written += table.num_rows

    def close(self) -> list[Path]:
        if self._pending:
            self._flush(pa.concat_tables(self._pending))
            self._pending, self._n, self._bytes = [], 0, 0
        if not self.paths and self.schema is not None:
            # an empty result is still a readable shard with the right columns
            self._flush(self.schema.empty_table())
        return self.paths


def concat_frames(frames: Iterable[pl.DataFrame]) -> pl.DataFrame:
    frames = list(frames)
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
