"""Parquet shard I/O: atomic writes, rolling shard writers, lazy reads.

A shard is complete iff its final name exists: writers write ``.<name>.tmp`` and ``os.replace`` it,
so a killed process leaves at most a temp file that no reader ever globs.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.atomic import atomic_path

ROW_GROUP_ROWS = 10_000
COMPRESSION = "zstd"


def _leaves(t: pa.DataType, path: str) -> list[tuple[str, pa.DataType]]:
    if pa.types.is_struct(t):
        return [leaf for f in t for leaf in _leaves(f.type, f"{path}.{f.name}")]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _leaves(t.value_type, f"{path}.list.element")
    return [(path, t)]


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Parquet leaf paths that get dictionary encoding: text only (roles, sources, reasons repeat).

    Hashes, signatures, shingle lists and scores are near-unique, so a dictionary only costs: the
    writer builds one, overflows it and falls back to plain (measured: a MinHash step file writes in
    half the time without it, and is no larger)."""
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary,
            getattr(pa.types, "is_string_view", lambda _t: False), getattr(pa.types, "is_binary_view", lambda _t: False))
    return [path for f in schema for path, t in _leaves(f.type, f.name) if any(is_(t) for is_ in text)]


def write_table(table: pa.Table, path: str | Path, row_group_rows: int = ROW_GROUP_ROWS) -> None:
    """``pq.write_table`` with the store's settings: zstd, bounded row groups, dictionaries for text only."""
    pq.write_table(table, path, compression=COMPRESSION, row_group_size=row_group_rows,
                   use_dictionary=dictionary_columns(table.schema))


def shard_name(i: int, prefix: str = "part-") -> str:
    return f"{prefix}{i:05d}.parquet"


def write_parquet_atomic(table: pa.Table | pl.DataFrame, path: str | Path, row_group_rows: int = ROW_GROUP_ROWS) -> Path:
    """Write ``table`` to ``path`` via a temp file and rename, fsync'd, so it appears whole or not at all."""
    path = Path(path)
    if isinstance(table, pl.DataFrame):
        table = table.to_arrow()
    with atomic_path(path, fsync=True) as tmp:
        write_table(table, tmp, row_group_rows)
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
