"""Streaming readers: files of any supported format -> batches of canonical rows + rejects.

Container formats: JSONL (``.jsonl``/``.ndjson``, optionally ``.gz``), JSON arrays (``.json``,
optionally ``.gz``; split element by element, never loaded whole, so a bad element is one reject),
Parquet (read by row group; a string cell that is not UTF-8 makes its row a reject), and Hugging
Face ``datasets`` (a ``save_to_disk`` directory, or any ``load_dataset`` builder over local files).
JSON text may be UTF-8 (with or without a BOM), UTF-16 or UTF-32 (:mod:`pipeline.io.textstream`).
Record formats are in :mod:`pipeline.io.formats`; the format is detected from the first
well-formed record of each source unless the source forces one.

Memory is bounded by ``batch_rows`` and, per JSON/JSONL record, by ``SourceSpec.max_record_bytes``:
a longer record is one reject and is skipped without being held; ``SourceSpec.max_depth`` bounds
nesting the same way. Readers yield :class:`Batch` objects and never hold a file.

``source_row`` is the 0-based record index within the source: the line index for JSONL (blank
lines are skipped and are not rows, but still advance the index), the element index for JSON arrays,
the row index for Parquet and datasets.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pyarrow as pa

from pipeline.io import arrow_map
from pipeline.io.arrow_map import split_invalid_utf8
from pipeline.io.formats import FORMATS, Reject, detect_format
from pipeline.io.textstream import (
    CHUNK,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_RECORD_BYTES,
    Oversize,
    TooDeep,
    Trailing,
    Utf8Stream,
    iter_json_values,
    iter_lines,
    json_depth,
    open_utf8,
)
from pipeline.schema import (
    CANONICAL,
    RAW_LIMIT,
    REJECTS,
    message_id,
)

CONTAINERS = ("auto", "jsonl", "json", "parquet", "hf_disk", "hf_load")
#: bumped whenever the readers decide a record differently (a new reject rule, another split of a
#: file): part of the ingest cache key, so a stored ingest made by older readers is not reused.
#: 2: JSON arrays split per element, BOM/UTF-16/32, size and depth limits, invalid UTF-8 Parquet
#: cells and invisible-only turns as rejects.
READER_VERSION = 2


class SourceError(RuntimeError):
    """A source that cannot be opened or read at all; the message names the file."""


@dataclass
class Batch:
    rows: pa.Table  # CANONICAL
    rejects: pa.Table  # REJECTS
    format: str | None = None

    @property
    def n_read(self) -> int:
        return self.rows.num_rows + self.rejects.num_rows


@dataclass
class _Raw:
    """A record that failed before it was a dict (bad JSON line, bad bytes)."""

    reason: str
    raw: str


@dataclass
class SourceSpec:
    path: str
    name: str | None = None
    container: str = "auto"
    format: str = "auto"
    hf_builder: str | None = None  # for container=hf_load: "json", "parquet", "csv", ...
    hf_split: str = "train"
    hf_kwargs: dict[str, Any] = field(default_factory=dict)
    #: a JSON/JSONL record longer than this is one reject, skipped without being held in memory
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    #: a JSON/JSONL record nested deeper than this is one reject (found while scanning, not parsed)
    max_depth: int = DEFAULT_MAX_DEPTH

    @property
    def source_name(self) -> str:
        return self.name or Path(self.path).name


def _raw_text(rec: Any) -> str:
    try:
        s = rec if isinstance(rec, str) else orjson.dumps(rec, default=str).decode()
    except (TypeError, orjson.JSONEncodeError):
        s = repr(rec)
    return s[:RAW_LIMIT]


def detect_container(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "state.json").exists() or (p / "dataset_dict.json").exists():
            return "hf_disk"
        raise SourceError(f"{path}: a directory that is not a saved Hugging Face dataset; list its files instead")
    name = p.name.lower()
    for suffix in (".gz",):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    raise SourceError(f"{path}: cannot tell the container from the name; set container to one of {CONTAINERS[1:]}")


def _open_binary(path: str) -> io.BufferedIOBase:
    try:
        f = open(path, "rb")  # noqa: SIM115 - returned to the caller
    except OSError as e:
        raise SourceError(f"{path}: cannot open: {e.strerror or e}") from e
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=f)  # type: ignore[return-value]
    return f


# ---------------------------------------------------------------- container iterators
# Each yields (source_row, record-or-_Raw). A truncated/corrupt stream yields one _Raw and stops.


def _head_text(b: bytes) -> str:
    return b[: RAW_LIMIT * 2].decode("utf-8", "replace")[:RAW_LIMIT]


def _oversize(size: int, limit: int, head: bytes) -> _Raw:
    return _Raw(f"record of {size:,} bytes exceeds the per-record limit of {limit:,} bytes (max_record_mb)",
                _head_text(head))


def _too_deep(limit: int, head: bytes) -> _Raw:
    return _Raw(f"nesting deeper than the limit of {limit} levels (max_depth)", _head_text(head))


def _open_utf8(path: str) -> Utf8Stream:
    try:
        return open_utf8(path)
    except OSError as e:
        raise SourceError(f"{path}: cannot open: {e.strerror or e}") from e


def _iter_jsonl(path: str, max_bytes: int = DEFAULT_MAX_RECORD_BYTES, max_depth: int = DEFAULT_MAX_DEPTH
                ) -> Iterator[tuple[int, Any]]:
    """JSONL records by line index; a line over ``max_bytes`` is skipped as it streams (one reject), a
    line nested deeper than ``max_depth`` is rejected before it is parsed."""
    f = _open_utf8(path)
    i = -1
    try:
        with f:
            for i, line in enumerate(iter_lines(f, max_bytes)):  # noqa: B007 - i is read after the loop
                if isinstance(line, Oversize):
                    yield i, _oversize(line.size, max_bytes, line.head)
                    continue
                if not line or line.isspace():  # blank lines are not rows (no copy, unlike strip)
                    continue
                # exact depth only where the bracket count allows a too-deep record (cheap C counts)
                if line.count(b"[") + line.count(b"{") > max_depth and json_depth(line) > max_depth:
                    yield i, _too_deep(max_depth, line)
                    continue
                try:
                    yield i, orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    try:
                        line.decode("utf-8")
                        reason = f"malformed JSON: {e}"
                    except UnicodeDecodeError:
                        reason = "invalid UTF-8"
                    yield i, _Raw(reason, _head_text(line))
    except UnicodeDecodeError as e:
        yield i + 1, _Raw(f"undecodable {f.encoding} text after line {i + 1}: {e.reason}; rest of file unreadable", "")
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        yield i + 1, _Raw(f"unreadable stream after line {i + 1}: {e}", "")


def _parse_element(idx: int, el: bytes | bytearray) -> Any:
    if not el or el.isspace():
        return _Raw(f"malformed JSON at element {idx}: empty element", "")
    try:
        return orjson.loads(el)
    except orjson.JSONDecodeError as e:
        try:
            el.decode("utf-8")
            reason = f"malformed JSON at element {idx}: {e}"
        except UnicodeDecodeError:
            reason = f"invalid UTF-8 in element {idx}"
        return _Raw(reason, _head_text(el))


def _iter_json_array(path: str, chunk: int = CHUNK, max_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                     max_depth: int = DEFAULT_MAX_DEPTH) -> Iterator[tuple[int, Any]]:
    """Elements of a top-level JSON array (or concatenated JSON values in a .json), one at a time:
    a bad element is one reject and the next one is read (see :mod:`pipeline.io.textstream`)."""
    f = _open_utf8(path)
    idx = 0
    try:
        with f:
            for el in iter_json_values(f, max_bytes, max_depth, chunk):
                if isinstance(el, (bytes, bytearray)):
                    yield idx, _parse_element(idx, el)
                elif isinstance(el, Oversize):
                    yield idx, _oversize(el.size, max_bytes, el.head)
                elif isinstance(el, TooDeep):
                    yield idx, _too_deep(max_depth, el.head)
                elif isinstance(el, Trailing):
                    yield idx, _Raw(f"data after the end of the JSON array (after element {idx - 1})", _head_text(el.head))
                elif el.data.strip():  # Unterminated: the file ends inside this element
                    rec = _parse_element(idx, el.data)
                    if isinstance(rec, _Raw):
                        rec.reason = f"malformed JSON at element {idx}: the file ends inside it (unterminated array)"
                        yield idx, rec
                    else:  # complete, only the closing bracket is missing: keep it, say so once
                        yield idx, rec
                        yield idx + 1, _Raw(f"unterminated JSON array after element {idx}", "")
                else:
                    yield idx, _Raw("unterminated JSON array" + (f" after element {idx - 1}" if idx else ""), "")
                idx += 1
    except UnicodeDecodeError as e:
        yield idx, _Raw(f"undecodable {f.encoding} text after element {idx - 1}: {e.reason}; rest of file unreadable", "")
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        yield idx, _Raw(f"unreadable stream after element {idx - 1}: {e}", "")


def _open_parquet(path: str) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise SourceError(f"{path}: cannot open as Parquet: {e}") from e


def _parquet_batches(pf: Any, batch_rows: int) -> Iterator[tuple[int, Any, Any, dict[int, tuple[str, str]]]]:
    """``(start_row, record_batch, offsets, bad)`` over a Parquet file, one row group at a time, where
    ``bad`` maps batch offsets to ``(reason, raw)`` for rows with a string cell that is not UTF-8:
    they are taken out of the batch (``offsets``: the batch offsets of the rows left, None when all
    are) so they never reach Polars or a shard. Where a row group cannot be decoded (corrupt pages),
    ``(start_row, (n_rows, reason), None, {})`` for the rows of it not yet yielded, then the next row
    group. The footer knows every row group's size, so a corrupt region costs exactly its rows, each
    accounted for, and the rest of the file is still read."""
    start = 0
    for rg in range(pf.num_row_groups):
        end = start + pf.metadata.row_group(rg).num_rows
        try:
            for rb in pf.iter_batches(batch_size=batch_rows, row_groups=[rg]):
                yield (start, *split_invalid_utf8(rb))
                start += rb.num_rows
        except (OSError, pa.ArrowException) as e:
            reason = f"unreadable Parquet row group {rg} (rows {start}-{end - 1}): {e}"
            for lo in range(start, end, batch_rows):  # in batches, like the rows that did read
                yield lo, (min(batch_rows, end - lo), reason), None, {}
        start = end


def _batch_records(start: int, rb: pa.RecordBatch, offsets: Any, bad: dict[int, tuple[str, str]]
                   ) -> list[tuple[int, Any]]:
    """``(source_row, record or _Raw)`` for every row of a batch from :func:`_parquet_batches`, in order."""
    recs = rb.to_pylist()
    items = list(zip(range(start, start + len(recs)) if offsets is None else (start + int(o) for o in offsets),
                     recs, strict=True))
    if bad:
        items = sorted(items + [(start + j, _Raw(*v)) for j, v in bad.items()], key=lambda x: x[0])
    return items


def _iter_parquet(path: str, batch_rows: int) -> Iterator[tuple[int, Any]]:
    for start, b, offsets, bad in _parquet_batches(_open_parquet(path), batch_rows):
        if isinstance(b, tuple):
            n, reason = b
            for i in range(start, start + n):
                yield i, _Raw(reason, "")
        else:
            yield from _batch_records(start, b, offsets, bad)


def _iter_hf(spec: SourceSpec, batch_rows: int) -> Iterator[tuple[int, Any]]:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - depends on the install
        raise SourceError(f"{spec.path}: reading Hugging Face datasets needs `pip install datasets`") from e
    try:
        if spec.container == "hf_disk":
            ds = datasets.load_from_disk(spec.path)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[spec.hf_split]
        else:
            if not spec.hf_builder:
                raise SourceError(f"{spec.path}: container hf_load needs hf_builder (e.g. json, parquet, csv)")
            ds = datasets.load_dataset(spec.hf_builder, data_files=spec.path, split=spec.hf_split, **spec.hf_kwargs)
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"{spec.path}: cannot load as a Hugging Face dataset: {e}") from e
    i = 0
    for b in ds.iter(batch_size=batch_rows):
        keys = list(b)
        n = len(b[keys[0]]) if keys else 0
        for j in range(n):
            yield i, {k: b[k][j] for k in keys}
            i += 1


def iter_records(spec: SourceSpec, batch_rows: int = 10_000) -> Iterator[tuple[int, Any]]:
    container = spec.container if spec.container != "auto" else detect_container(spec.path)
    if container in ("jsonl", "json", "parquet") and not os.path.exists(spec.path):
        raise SourceError(f"{spec.path}: no such file")
    if container == "jsonl":
        return _iter_jsonl(spec.path, spec.max_record_bytes, spec.max_depth)
    if container == "json":
        return _iter_json_array(spec.path, CHUNK, spec.max_record_bytes, spec.max_depth)
    if container == "parquet":
        return _iter_parquet(spec.path, batch_rows)
    if container in ("hf_disk", "hf_load"):
        spec.container = container
        return _iter_hf(spec, batch_rows)
    raise SourceError(f"{spec.path}: unknown container {container!r}; allowed: {', '.join(CONTAINERS)}")


# ---------------------------------------------------------------- mapping to canonical rows


class _BatchBuilder:
    def __init__(self, source: str) -> None:
        self.source = source
        self.ids: list[str] = []
        self.rows: list[int] = []
        self.msgs: list[list[dict[str, str]]] = []
        self.meta: list[str | None] = []
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
            mid = message_id(msgs)
            meta = orjson.dumps(rest, option=orjson.OPT_NON_STR_KEYS, default=str).decode() if rest else None
        except Reject as e:
            self.reject(row, str(e), _raw_text(rec))
            return
        except (UnicodeEncodeError, orjson.JSONEncodeError, TypeError):
            self.reject(row, "invalid Unicode (lone surrogate) in text", _raw_text(rec))
            return
        self.ids.append(mid)
        self.rows.append(row)
        self.msgs.append(msgs)
        self.meta.append(meta)

    def build(self, fmt: str | None) -> Batch:
        n = len(self.ids)
        rows = pa.Table.from_arrays(
            [
                pa.array(self.ids, pa.string()),
                pa.array([self.source] * n, pa.string()),
                pa.array(self.rows, pa.int64()),
                pa.array(self.msgs, CANONICAL.field("messages").type),
                pa.array(self.meta, pa.string()),
            ],
            schema=CANONICAL,
        )
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


def map_arrow_batch(rb: pa.RecordBatch | pa.Table, fmt: str, start_row: int, source: str,
                    rows: Any = None) -> Batch | None:
    """Map a whole Arrow batch of records in format ``fmt`` at once; None if it needs the per-record
    path (see :func:`pipeline.io.arrow_map.map_arrow_batch`)."""
    out = arrow_map.map_arrow_batch(rb, fmt, start_row, source, rows)
    return None if out is None else Batch(*out, fmt)


def _read_arrow_source(spec: SourceSpec, batch_rows: int, fmt: str | None) -> Iterator[Batch] | None:
    """Vectorised reading of a Parquet source; None when the format needs the per-record path."""
    pf = _open_parquet(spec.path)
    if fmt is None:
        first = next((b for _, b, _, _ in _parquet_batches(pf, 1) if not isinstance(b, tuple) and b.num_rows), None)
        if first is None:
            # empty, or not one readable row: the per-record path rejects what is unreadable
            return iter(()) if pf.metadata.num_rows == 0 else None
        fmt = detect_format(first.to_pylist()[0])
        if fmt is None:
            return None

    def gen() -> Iterator[Batch]:
        for start, rb, offsets, bad in _parquet_batches(pf, batch_rows):
            if isinstance(rb, tuple):
                yield _lost_rows_batch(spec, start, *rb, fmt=fmt)
                continue
            rows = None if offsets is None else start + offsets
            b = map_arrow_batch(rb, fmt, start, spec.source_name, rows) if rb.num_rows else None
            if b is None or bad:  # the per-record mappers (this batch's shape needs them), or bad bytes
                builder = _BatchBuilder(spec.source_name)
                if b is None:
                    for row, rec in _batch_records(start, rb, offsets, bad):
                        builder.add(row, rec, fmt, spec.format == "auto")
                    yield builder.build(fmt)
                    continue
                for j, (reason, raw) in bad.items():
                    builder.reject(start + j, reason, raw)
                b.rejects = pa.concat_tables([b.rejects, builder.build(fmt).rejects])
            yield b

    return gen()


def _lost_rows_batch(spec: SourceSpec, start: int, n: int, reason: str, fmt: str | None) -> Batch:
    """Rows ``start .. start + n - 1`` that could not be decoded: one reject each."""
    b = _BatchBuilder(spec.source_name)
    for row in range(start, start + n):
        b.reject(row, reason, "")
    return b.build(fmt)


def read_source(spec: SourceSpec, batch_rows: int = 10_000) -> Iterator[Batch]:
    """Stream one source as canonical batches of at most ``batch_rows`` input records.

    Raises :class:`SourceError` when the source cannot be opened at all; everything wrong with an
    individual record becomes a reject row instead.
    """
    if spec.format != "auto" and spec.format not in FORMATS:
        raise SourceError(f"{spec.path}: unknown format {spec.format!r}; allowed: auto, {', '.join(FORMATS)}")
    fmt = None if spec.format == "auto" else spec.format
    container = spec.container if spec.container != "auto" else detect_container(spec.path)
    if container == "parquet":
        if not os.path.exists(spec.path):
            raise SourceError(f"{spec.path}: no such file")
        fast = _read_arrow_source(spec, batch_rows, fmt)
        if fast is not None:
            yield from fast
            return
    records = iter_records(spec, batch_rows)
    auto = fmt is None
    builder = _BatchBuilder(spec.source_name)
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
            builder = _BatchBuilder(spec.source_name)
    _reject_undetected(builder, undetected)
    if len(builder):
        yield builder.build(fmt)


def _reject_undetected(builder: _BatchBuilder, held: list[tuple[int, Any]]) -> None:
    """Reject records held while no format could be detected: an unreadable one with its own
    reason, a readable one as of unknown format."""
    for r, x in held:
        if isinstance(x, _Raw):
            builder.reject(r, x.reason, x.raw)
        else:
            builder.reject(r, "unknown record format; set the source's format", _raw_text(x))


def read_table(path: str, fmt: str = "auto", name: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read a whole (small) file into memory: ``(rows, rejects)`` as Polars frames."""
    spec = SourceSpec(path=str(path), format=fmt, name=name)
    rows, rejects = [], []
    for b in read_source(spec):
        rows.append(b.rows)
        rejects.append(b.rejects)
    r = pa.concat_tables(rows) if rows else CANONICAL.empty_table()
    j = pa.concat_tables(rejects) if rejects else REJECTS.empty_table()
    return pl.from_arrow(r), pl.from_arrow(j)  # type: ignore[return-value]
