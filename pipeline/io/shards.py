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
            whole = pa.concat_tables(unify_tables(self._pending))
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
            self._flush(pa.concat_tables(unify_tables(self._pending)))
            self._pending, self._n, self._bytes = [], 0, 0
        if not self.paths and self.schema is not None:
            # an empty result is still a readable shard with the right columns
            self._flush(self.schema.empty_table())
        self._unify_written()
        return self.paths

    def _unify_written(self) -> None:
        """Give every shard one schema: a source's user columns can change type between batches (an
        int column that turns float, or string, later in the file); only the shards that differ from
        the unified schema are rewritten, so a homogeneous source costs nothing here."""
        if len(self.paths) < 2:
            return
        schemas = [pq.read_schema(p) for p in self.paths]
        if all(sc.equals(schemas[0]) for sc in schemas[1:]):
            return
        schema, as_text = unified_schema([sc.remove_metadata() for sc in schemas])
        for p, sc in zip(self.paths, schemas, strict=True):
            if not sc.remove_metadata().equals(schema):
                write_parquet_atomic(conform_table(pq.read_table(p), schema, as_text), p)


def _json_strings(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A column as strings: strings verbatim, other values as JSON text (a column of mixed kinds)."""
    import json

    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col.cast(pa.string())
    return pa.array([v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
                     for v in col.to_pylist()], pa.string())


def unified_schema(schemas: list[pa.Schema]) -> tuple[pa.Schema, set[str]]:
    """One schema for tables of one source whose user columns differ in type from batch to batch:
    Arrow's permissive promotion (null -> any, int -> float, struct fields merged), and a string
    column (JSON text for non-strings) where types do not promote. Returns it and the names of the
    columns that fell back to strings. Columns are ordered by first appearance."""
    try:
        return pa.unify_schemas(schemas, promote_options="permissive"), set()
    except (pa.ArrowException, TypeError):
        pass
    fields: dict[str, list[pa.DataType]] = {}
    for sc in schemas:
        for f in sc:
            fields.setdefault(f.name, []).append(f.type)
    out, as_text = [], set()
    for name, types in fields.items():
        try:
            t = pa.unify_schemas([pa.schema([pa.field(name, x)]) for x in types], promote_options="permissive").field(name).type
        except (pa.ArrowException, TypeError):
            t = pa.string()
            as_text.add(name)
        out.append(pa.field(name, t))
    return pa.schema(out), as_text


def conform_table(table: pa.Table, schema: pa.Schema, as_text: set[str] = frozenset()) -> pa.Table:  # type: ignore[assignment]
    """``table`` in ``schema``: missing columns null, promoted types cast, ``as_text`` columns as strings."""
    if table.schema.equals(schema):
        return table
    cols = []
    for f in schema:
        if f.name not in table.column_names:
            cols.append(pa.nulls(table.num_rows, f.type))
        elif f.name in as_text:
            cols.append(_json_strings(table[f.name]))
        else:
            cols.append(table[f.name].cast(f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def unify_tables(tables: list[pa.Table]) -> list[pa.Table]:
    """``tables`` conformed to their :func:`unified_schema` (no copies when they already agree)."""
    if len(tables) < 2 or all(t.schema.equals(tables[0].schema) for t in tables[1:]):
        return tables
    schema, as_text = unified_schema([t.schema for t in tables])
    return [conform_table(t, schema, as_text) for t in tables]


def union_schema(paths: Iterable[str | Path]) -> tuple[pa.Schema, set[str]]:
    """The :func:`unified_schema` of Parquet files (their footers only): e.g. of every source's ingest
    shards, the run-wide schema of the canonical and user columns that final shards share."""
    return unified_schema([pq.read_schema(p).remove_metadata() for p in paths])


def conform_frame(df: pl.DataFrame, schema: pa.Schema, as_text: set[str] = frozenset()) -> pl.DataFrame:  # type: ignore[assignment]
    """``df`` with every column of ``schema`` (missing ones typed null, promoted ones cast, ``as_text``
    ones as strings), those first in ``schema``'s order, then ``df``'s other columns (stage columns)
    as they were. Final shards of every source conformed to one :func:`union_schema` read as one
    table (``pl.read_parquet("shards/*.parquet")``)."""
    have = df.schema
    fix = []
    for f in schema:
        want = pl.from_arrow(pa.table({f.name: pa.nulls(0, f.type)})).schema[f.name]  # type: ignore[union-attr]
        if f.name not in have:
            fix.append(pl.lit(None, dtype=want).alias(f.name))
        elif f.name in as_text and have[f.name] != pl.String:
            fix.append(pl.Series(f.name, _json_strings(df[f.name].to_arrow()).to_pylist(), dtype=pl.String))
        elif have[f.name] != want:
            fix.append(pl.col(f.name).cast(want))
    out = df.with_columns(fix) if fix else df
    first = [f.name for f in schema]
    return out.select([*first, *(c for c in out.columns if c not in set(first))])


def concat_frames(frames: Iterable[pl.DataFrame]) -> pl.DataFrame:
    frames = list(frames)
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
