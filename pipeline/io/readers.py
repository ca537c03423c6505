"""Streaming readers: files of any supported format -> batches of canonical rows + rejects.

Container formats: JSONL (``.jsonl``/``.ndjson``, optionally ``.gz``), JSON arrays (``.json``,
optionally ``.gz``; split element by element, never loaded whole, so a bad element is one
reject), Parquet (read by row group; a string cell that is not UTF-8 makes its row a reject), CSV /
TSV (``.csv``/``.tsv``, optionally ``.gz``; column types inferred over the whole file, then read in
blocks), and Hugging Face ``datasets`` (a ``save_to_disk`` directory, or any ``load_dataset``
builder over local files; a ``DatasetDict`` gives every split, with a ``split`` column, unless
``hf_split`` names one). JSON text may be UTF-8 (with or without a BOM), UTF-16 or UTF-32
(:mod:`pipeline.io.textstream`). Record formats are in :mod:`pipeline.io.formats`; the format is
detected from the first well-formed record of each source unless the source forces one. Arrow
batches of the common shapes are mapped with Polars expressions (:mod:`pipeline.io.arrow_map`).

Every input field a format does not map becomes a typed top-level column of its own (a *user
column*, named by :func:`pipeline.schema.user_column_name`): Parquet, CSV and datasets columns keep
their Arrow types; JSON values are typed by Arrow's inference per batch, and a field whose values
mix kinds (a number here, a string there) becomes a string column holding strings verbatim and other
values as JSON text. Batches of one source may still differ in a column's type (ints in one batch,
floats in the next): :func:`unify_tables` gives them one schema.

Memory is bounded by ``batch_rows`` and, per JSON/JSONL record, by ``SourceSpec.max_record_bytes``:
a longer record is one reject and is skipped without being held; ``SourceSpec.max_depth`` bounds
nesting the same way. Readers yield :class:`Batch` objects and never hold a file.

``source_row`` is the 0-based record index within the source: the line index for JSONL (blank
lines are skipped and are not rows, but still advance the index), the element index for JSON arrays,
the row index for Parquet and datasets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import polars as pl
import pyarrow as pa

from pipeline.io import arrow_map
from pipeline.io.ahead import read_ahead
from pipeline.io.containers import (
    SourceError,
    SourceSpec,
    _batch_records,
    _csv_batches,
    _hf_batches,
    _hf_parts,
    _open_parquet,
    _parquet_batches,
    _Raw,
    _raw_text,
    detect_container,
    iter_records,
)
from pipeline.io.formats import (
    FORMATS,
    REASONING_MODES,
    THINK_TAGS,
    Reject,
    apply_think,
    detect_format,
    take_tools,
    think_regex,
)
from pipeline.io.shards import unify_tables
from pipeline.schema import (
    CANONICAL,
    REJECTS,
    message_id,
    reserved_columns,
    user_column_name,
)


@dataclass
class Batch:
    rows: pa.Table  # CANONICAL
    rejects: pa.Table  # REJECTS
    format: str | None = None

    @property
    def n_read(self) -> int:
        return self.rows.num_rows + self.rejects.num_rows




def _json_text(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    return orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS, default=str).decode()


def user_array(values: list[Any], type_: pa.DataType | None = None) -> pa.Array:
    """One user column of a batch: Arrow's type for the values (``type_`` when the container gives
    one), or, where the values mix kinds, strings verbatim and other values as JSON text."""
    if type_ is not None:
        try:
            return pa.array(values, type=type_)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            pass
    try:
        return pa.array(values)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return pa.array([_json_text(v) for v in values], pa.string())


class _BatchBuilder:
    def __init__(self, source: str, spec: SourceSpec | None = None) -> None:
        self.source = source
        self.think = (think_regex(THINK_TAGS if spec is None else spec.think_tags)
                      if spec is None or spec.reasoning == "auto" else None)
        self.ids: list[str] = []
        self.rows: list[int] = []
        self.msgs: list[list[dict[str, Any]]] = []
        self.tools: list[str | None] = []
        self.rest: list[dict[str, Any]] = []
        self.rj_rows: list[int] = []
        self.rj_reason: list[str] = []
        self.rj_raw: list[str] = []

    def __len__(self) -> int:
        return len(self.ids) + len(self.rj_rows)

    def reject(self, row: int, reason: str, raw: str) -> None:
        self.rj_rows.append(row)
        self.rj_reason.append(reason)
        self.rj_raw.append(raw)

    def add(self, row: int, rec: Any, fmt: str, fallback: bool = False) -> None:
        if isinstance(rec, _Raw):
            self.reject(row, rec.reason, rec.raw)
            return
        if not isinstance(rec, dict):
            self.reject(row, f"record must be an object, got {type(rec).__name__}", _raw_text(rec))
            return
        try:
            try:
                msgs, rest = FORMATS[fmt](rec)
            except Reject:
                # auto-detected sources may mix formats: a record that lacks the source's fields
                # is mapped by its own format, so its reject reason (if any) is the meaningful one
                other = detect_format(rec) if fallback else None
                if other is None or other == fmt:
                    raise
                msgs, rest = FORMATS[other](rec)
            tools = take_tools(rec)
            rest.pop("tools", None)
            if self.think is not None:
                apply_think(msgs, self.think)
            mid = message_id(msgs, tools)
            if rest:  # lone surrogates in a user field would fail the whole batch's Arrow conversion
                orjson.dumps(rest, option=orjson.OPT_NON_STR_KEYS, default=str)
        except Reject as e:
            self.reject(row, str(e), _raw_text(rec))
            return
        except (UnicodeEncodeError, orjson.JSONEncodeError, TypeError):
            self.reject(row, "invalid Unicode (lone surrogate) in text", _raw_text(rec))
            return
        self.ids.append(mid)
        self.rows.append(row)
        self.msgs.append(msgs)
        self.tools.append(tools)
        self.rest.append(rest)

    def build(self, fmt: str | None, types: pa.Schema | None = None) -> Batch:
        """The batch's rows (canonical columns, then one column per unmapped input field, typed as in
        ``types`` when the container has a schema) and rejects."""
        n = len(self.ids)
        arrays = [
            pa.array(self.ids, pa.string()),
            pa.array([self.source] * n, pa.string()),
            pa.array(self.rows, pa.int64()),
            pa.array(self.msgs, CANONICAL.field("messages").type),
            pa.array(self.tools, pa.string()),
        ]
        fields = list(CANONICAL)
        keys = list(dict.fromkeys(k for r in self.rest for k in r))
        reserved = reserved_columns()
        for k in keys:
            t = types.field(k).type if types is not None and types.get_field_index(k) >= 0 else None
            arr = user_array([r.get(k) for r in self.rest], t)
            arrays.append(arr)
            fields.append(pa.field(user_column_name(str(k), reserved), arr.type))
        rows = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
        rejects = pa.Table.from_arrays(
            [
                pa.array([self.source] * len(self.rj_rows), pa.string()),
                pa.array(self.rj_rows, pa.int64()),
                pa.array(self.rj_reason, pa.string()),
                pa.array(self.rj_raw, pa.string()),
            ],
            schema=REJECTS,
        )
        return Batch(rows, rejects, fmt)


def _detect_in_batch(rb: Any) -> str | None:
    """The format of the first of a batch's first 100 records that has a recognisable shape."""
    for j in range(min(rb.num_rows, 100)):
        fmt = detect_format(rb.slice(j, 1).to_pylist()[0])
        if fmt is not None:
            return fmt
    return None


def map_arrow_batch(rb: pa.RecordBatch | pa.Table, fmt: str, start_row: int, source: str,
                    spec: SourceSpec | None = None, rows: Any = None) -> Batch | None:
    """Map a whole Arrow batch of records in format ``fmt`` at once; None if it needs the per-record
    path (see :func:`pipeline.io.arrow_map.map_arrow_batch`)."""
    out = arrow_map.map_arrow_batch(rb, fmt, start_row, source, spec, rows)
    return None if out is None else Batch(*out, fmt)


def _plain(batches: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any, Any, dict[int, tuple[str, str]]]]:
    """``(start, batch)`` streams (CSV, datasets) in the Parquet form ``(start, batch, offsets, bad)``."""
    for start, rb in batches:
        yield start, rb, None, {}


def _read_arrow_batches(spec: SourceSpec, batches: Iterator[tuple[int, Any, Any, dict[int, tuple[str, str]]]],
                        fmt: str | None) -> Iterator[Batch]:
    """Canonical batches of a stream of ``(start_row, Arrow batch | (n_lost, reason), offsets, bad)``
    (:func:`_parquet_batches`): vectorised where the format allows, else per record with the
    container's column types; rows taken out for bad bytes (``bad``) are rejects either way."""
    auto = spec.format == "auto"
    for start, rb, offsets, bad in batches:
        if isinstance(rb, tuple):
            yield _lost_rows_batch(spec, start, *rb, fmt=fmt)
            continue
        if fmt is None and rb.num_rows:
            fmt = _detect_in_batch(rb)
        if fmt is None:  # nothing recognisable in the batch's head: its rows are of unknown format
            b = _BatchBuilder(spec.source_name, spec)
            for row, rec in _batch_records(start, rb, offsets, bad):
                if isinstance(rec, _Raw):
                    b.reject(row, rec.reason, rec.raw)
                else:
                    b.reject(row, "unknown record format; set the source's format", _raw_text(rec))
            yield b.build(None)
            continue
        rows = None if offsets is None else start + offsets
        b = map_arrow_batch(rb, fmt, start, spec.source_name, spec, rows) if rb.num_rows else None
        if b is None:  # this batch needs the per-record mappers
            builder = _BatchBuilder(spec.source_name, spec)
            for row, rec in _batch_records(start, rb, offsets, bad):
                builder.add(row, rec, fmt, auto)
            yield builder.build(fmt, types=rb.schema)
            continue
        if bad:
            extra = _BatchBuilder(spec.source_name, spec)
            for j, (reason, raw) in bad.items():
                extra.reject(start + j, reason, raw)
            b.rejects = pa.concat_tables([b.rejects, extra.build(fmt).rejects])
        yield b


def _with_split(batches: Iterator[Batch], split: str | None, offset: int) -> Iterator[Batch]:
    """Batches of one split of a DatasetDict: ``source_row`` continues across splits, ``split`` names it."""
    import pyarrow.compute as pc

    for b in batches:
        rows, rej = b.rows, b.rejects
        if offset:
            rows = rows.set_column(rows.schema.get_field_index("source_row"), CANONICAL.field("source_row"),
                                   pc.add(rows["source_row"], offset))
            rej = rej.set_column(rej.schema.get_field_index("source_row"), REJECTS.field("source_row"),
                                 pc.add(rej["source_row"], offset))
        if split is not None:
            rows = rows.add_column(len(CANONICAL), pa.field("split", pa.string()),
                                   pa.array([split] * rows.num_rows, pa.string()))
        yield Batch(rows, rej, b.format)


def _lost_rows_batch(spec: SourceSpec, start: int, n: int, reason: str, fmt: str | None) -> Batch:
    """Rows ``start .. start + n - 1`` that could not be decoded: one reject each."""
    b = _BatchBuilder(spec.source_name, spec)
    for row in range(start, start + n):
        b.reject(row, reason, "")
    return b.build(fmt)


def read_source(spec: SourceSpec, batch_rows: int = 10_000) -> Iterator[Batch]:
    """Stream one source as canonical batches of at most ``batch_rows`` input records.

    Raises :class:`SourceError` when the source cannot be opened at all; everything wrong with an
    individual record becomes a reject row instead. Batches carry the canonical columns, ``split``
    for a DatasetDict read whole, then the source's user columns.
    """
    if spec.format != "auto" and spec.format not in FORMATS:
        raise SourceError(f"{spec.path}: unknown format {spec.format!r}; allowed: auto, {', '.join(FORMATS)}")
    if spec.reasoning not in REASONING_MODES:
        raise SourceError(f"{spec.path}: unknown reasoning mode {spec.reasoning!r}; allowed: {', '.join(REASONING_MODES)}")
    fmt = None if spec.format == "auto" else spec.format
    container = spec.container if spec.container != "auto" else detect_container(spec.path)
    if container in ("parquet", "csv", "tsv") and not os.path.exists(spec.path):
        raise SourceError(f"{spec.path}: no such file")
    if container == "parquet":
        # decoding runs a batch ahead of the mapping (both release the GIL)
        yield from _read_arrow_batches(spec, read_ahead(_parquet_batches(_open_parquet(spec.path), batch_rows)), fmt)
        return
    if container in ("csv", "tsv"):
        yield from _read_arrow_batches(spec, _plain(_csv_batches(spec, container, batch_rows)), fmt)
        return
    if container in ("hf_disk", "hf_load"):
        spec.container = container
        offset = 0
        for split, ds in _hf_parts(spec):
            yield from _with_split(_read_arrow_batches(spec, _plain(_hf_batches(ds, batch_rows)), fmt), split, offset)
            offset += ds.num_rows
        return
    records = iter_records(spec, batch_rows)
    auto = fmt is None
    builder = _BatchBuilder(spec.source_name, spec)
    undetected: list[tuple[int, Any]] = []
    for row, rec in records:
        if fmt is None:
            fmt = detect_format(rec)
            if fmt is None:
                undetected.append((row, rec))
                if len(undetected) >= batch_rows:  # bounded: give up guessing, reject what we held
                    _reject_undetected(builder, undetected)
                    undetected.clear()
                continue
            for r, x in undetected:
                builder.add(r, x, fmt, auto)
            undetected.clear()
        builder.add(row, rec, fmt, auto)
        if len(builder) >= batch_rows:
            yield builder.build(fmt)
            builder = _BatchBuilder(spec.source_name, spec)
    _reject_undetected(builder, undetected)
    if len(builder):
        yield builder.build(fmt)


def source_schema(spec: SourceSpec, sample_rows: int = 1000) -> pa.Schema:
    """The columns a source's rows will have (canonical, ``split``, user columns), before any work:
    for a config check that a stage's or selector's column exists (``score: preference``), or to
    declare a run's shard schema. Exact for Parquet, CSV and datasets (their own schema maps the
    first batch); for JSON/JSONL the user columns of the first ``sample_rows`` records (a field that
    first appears later is still read, just not known here). Raises :class:`SourceError` like
    :func:`read_source`."""
    import dataclasses

    probe = dataclasses.replace(spec)  # read_source may resolve the container on the spec
    for b in read_source(probe, sample_rows):
        if b.rows.num_rows:
            return b.rows.schema
    return CANONICAL


def _reject_undetected(builder: _BatchBuilder, held: list[tuple[int, Any]]) -> None:
    """Reject records held while no format could be detected: an unreadable one with its own
    reason, a readable one as of unknown format."""
    for r, x in held:
        if isinstance(x, _Raw):
            builder.reject(r, x.reason, x.raw)
        else:
            builder.reject(r, "unknown record format; set the source's format", _raw_text(x))


def read_table(path: str, fmt: str = "auto", name: str | None = None, **settings: Any) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read a whole (small) file into memory: ``(rows, rejects)`` as Polars frames.

    ``settings``: any other :class:`SourceSpec` field (``container``, ``hf_split``, ``reasoning``, ...)."""
    spec = SourceSpec(path=str(path), format=fmt, name=name, **settings)
    rows, rejects = [], []
    for b in read_source(spec):
        rows.append(b.rows)
        rejects.append(b.rejects)
    r = pa.concat_tables(unify_tables(rows)) if rows else CANONICAL.empty_table()
    j = pa.concat_tables(rejects) if rejects else REJECTS.empty_table()
    return pl.from_arrow(r), pl.from_arrow(j)  # type: ignore[return-value]
