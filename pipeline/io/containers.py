"""Containers: where records come from. A source's settings (:class:`SourceSpec`) and, per container
(JSONL, JSON array, Parquet, CSV/TSV, Hugging Face ``datasets``), an iterator of ``(source_row,
record)`` pairs; a record that failed before it was a dict (bad JSON, bad bytes, over a size or
depth limit) comes as a :class:`_Raw` with its reason. Mapping records to canonical rows is
:mod:`pipeline.io.readers`' concern; bytes to text is :mod:`pipeline.io.textstream`'s.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pyarrow as pa

from pipeline.io.arrow_map import split_invalid_utf8
from pipeline.io.formats import THINK_TAGS
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
from pipeline.schema import RAW_LIMIT

CONTAINERS = ("auto", "jsonl", "json", "parquet", "csv", "tsv", "hf_disk", "hf_load")
#: bumped whenever the readers decide a record differently (a new reject rule, another split of a
#: file): part of the ingest cache key, so a stored ingest made by older readers is not reused.
#: 2: JSON arrays split per element, BOM/UTF-16/32, size and depth limits, invalid UTF-8 Parquet
#: cells and invisible-only turns as rejects; tool calls, reasoning, tools and user columns.
READER_VERSION = 2

#: every ``hf_*`` key of a source, with what it means (``curate formats`` prints these)
HF_KEYS: dict[str, str] = {
    "hf_builder": "container hf_load: the `datasets.load_dataset` builder over the local path "
                  "(json, parquet, csv, text, arrow, ...); required there",
    "hf_split": "container hf_disk / hf_load: the split to read (train, test, ...); unset: every split "
                "of a DatasetDict, with a `split` column (a single Dataset has none)",
    "hf_kwargs": "container hf_load: extra keyword arguments for `datasets.load_dataset` "
                 "(e.g. {delimiter: ';'} for csv, {field: data} for json)",
}


class SourceError(RuntimeError):
    """A source that cannot be opened or read at all; the message names the file."""


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
    hf_split: str | None = None  # None: every split of a DatasetDict (a `split` column)
    hf_kwargs: dict[str, Any] = field(default_factory=dict)
    reasoning: str = "auto"  # "auto": reasoning fields, else a leading think block; "fields": fields only
    think_tags: tuple[str, str] = THINK_TAGS
    #: a JSON/JSONL record longer than this is one reject, skipped without being held in memory
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    #: a JSON/JSONL record nested deeper than this is one reject (found while scanning, not parsed)
    max_depth: int = DEFAULT_MAX_DEPTH
    #: only the first ``limit`` records, and of those a seeded ``sample`` fraction (by record index):
    #: a slice to try a config on; the others are not read and not counted
    limit: int | None = None
    sample: float | None = None
    seed: int = 0

    @property
    def source_name(self) -> str:
        return self.name or Path(self.path).name

    @classmethod
    def from_config(cls, sc: Any, path: str) -> SourceSpec:
        """The reader settings of a config's source entry (``pipeline.config.SourceConfig``);
        ``path`` resolved by the caller."""
        return cls(path=path, name=sc.name, container=sc.container, format=sc.format, hf_builder=sc.hf_builder,
                   hf_split=sc.hf_split, hf_kwargs=dict(getattr(sc, "hf_kwargs", None) or {}),
                   reasoning=getattr(sc, "reasoning", "auto"), think_tags=tuple(getattr(sc, "think_tags", THINK_TAGS)),
                   limit=getattr(sc, "limit", None), sample=getattr(sc, "sample", None))

    def key_parts(self) -> tuple[Any, ...]:
        """Every reader setting that shapes the rows (for an ingest cache key), and the readers' version."""
        return (READER_VERSION, self.source_name, self.container, self.format, self.hf_builder, self.hf_split,
                json.dumps(self.hf_kwargs, sort_keys=True, default=str), self.reasoning, list(self.think_tags),
                self.max_record_bytes, self.max_depth, self.limit, self.sample,
                self.seed if self.sample is not None else None)


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
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".tsv", ".tab")):
        return "tsv"
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


_HF_LOAD_LOCK = threading.Lock()


def _hf_parts(spec: SourceSpec) -> list[tuple[str | None, Any]]:
    """``(split, datasets.Dataset)`` of a Hugging Face source: one per split of a ``DatasetDict``
    (in its order) unless ``hf_split`` names one; ``split`` is None for a plain ``Dataset``."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - depends on the install
        raise SourceError(f"{spec.path}: reading Hugging Face datasets needs `pip install datasets`") from e
    if spec.container == "hf_load" and not spec.hf_builder:
        raise SourceError(f"{spec.path}: container hf_load needs hf_builder (e.g. json, parquet, csv)")
    try:
        # one load at a time per process: `datasets` loads on threads race on tqdm's class lock
        # ("tqdm has no attribute '_lock'") when two sources of a run open at once
        with _HF_LOAD_LOCK:
            if spec.container == "hf_disk":
                ds = datasets.load_from_disk(spec.path)
            else:
                ds = datasets.load_dataset(spec.hf_builder, data_files=spec.path, split=spec.hf_split, **spec.hf_kwargs)
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"{spec.path}: cannot load as a Hugging Face dataset: {e}") from e
    if isinstance(ds, datasets.DatasetDict):
        if spec.hf_split is not None:
            if spec.hf_split not in ds:
                raise SourceError(f"{spec.path}: no split {spec.hf_split!r}; splits: {', '.join(ds)}")
            return [(None, ds[spec.hf_split])]  # one split named: no split column, as for a Dataset
        return list(ds.items())
    return [(None, ds)]


def _hf_batches(ds: Any, batch_rows: int) -> Iterator[tuple[int, pa.Table]]:
    start = 0
    for tbl in ds.with_format("arrow").iter(batch_size=batch_rows):
        yield start, tbl
        start += tbl.num_rows


def _iter_hf(spec: SourceSpec, batch_rows: int) -> Iterator[tuple[int, Any]]:
    i = 0
    for _split, ds in _hf_parts(spec):
        for _, tbl in _hf_batches(ds, batch_rows):
            for rec in tbl.to_pylist():
                yield i, rec
                i += 1


def _csv_batches(spec: SourceSpec, container: str, batch_rows: int) -> Iterator[tuple[int, Any]]:
    """``(start_row, record_batch)`` of a CSV/TSV file: column types inferred by Polars over the whole
    file (Int64, Float64, Boolean, else String), then read in blocks by Arrow's streaming reader."""
    import pyarrow.csv as pacsv

    delim = "\t" if container == "tsv" else ","
    try:
        schema = pl.scan_csv(spec.path, separator=delim, infer_schema_length=None).collect_schema()
        arrow = {pl.Int64: pa.int64(), pl.Float64: pa.float64(), pl.Boolean: pa.bool_()}
        types = {n: arrow.get(t, pa.string()) for n, t in schema.items()}
    except Exception:  # noqa: BLE001 - e.g. a gzip file Polars cannot scan: every column a string
        types = None
    try:
        stream = pa.input_stream(spec.path, compression="gzip" if spec.path.endswith(".gz") else None)
        reader = pacsv.open_csv(
            stream, read_options=pacsv.ReadOptions(block_size=1 << 22),
            parse_options=pacsv.ParseOptions(delimiter=delim, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types=types or {}, strings_can_be_null=False,
                                                 auto_dict_encode=False))
        if types is None:
            reader_schema = reader.schema
            if any(not pa.types.is_string(f.type) for f in reader_schema):
                stream = pa.input_stream(spec.path, compression="gzip" if spec.path.endswith(".gz") else None)
                reader = pacsv.open_csv(stream, parse_options=pacsv.ParseOptions(delimiter=delim, newlines_in_values=True),
                                        convert_options=pacsv.ConvertOptions(
                                            column_types={f.name: pa.string() for f in reader_schema}))
    except (OSError, pa.ArrowException) as e:
        raise SourceError(f"{spec.path}: cannot read as {container.upper()}: {e}") from e
    start = 0
    try:
        for rb in reader:
            for off in range(0, rb.num_rows, batch_rows):
                part = rb.slice(off, batch_rows)
                yield start, part
                start += part.num_rows
    except (OSError, pa.ArrowException) as e:
        yield start, (1, f"unreadable {container.upper()} after row {start}: {e}; rest of file unreadable")


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
    if container in ("csv", "tsv"):
        return ((start + j, rec) for start, rb in _csv_batches(spec, container, batch_rows)
                for j, rec in (enumerate(rb.to_pylist()) if not isinstance(rb, tuple) else [(0, _Raw(rb[1], ""))]))
    if container in ("hf_disk", "hf_load"):
        spec.container = container
        return _iter_hf(spec, batch_rows)
    raise SourceError(f"{spec.path}: unknown container {container!r}; allowed: {', '.join(CONTAINERS)}")


# ---------------------------------------------------------------- mapping to canonical rows

