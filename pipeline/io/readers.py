"""Streaming readers: files of any supported format -> batches of canonical rows + rejects.

Container formats: JSONL (``.jsonl``/``.ndjson``, optionally ``.gz``), JSON arrays (``.json``,
optionally ``.gz``; parsed incrementally, never loaded whole), Parquet (read by row group), and
Hugging Face ``datasets`` (a ``save_to_disk`` directory, or any ``load_dataset`` builder over local
files). Record formats are in :mod:`pipeline.io.formats`; the format is detected from the first
well-formed record of each source unless the source forces one.

Memory is bounded by ``batch_rows``: readers yield :class:`Batch` objects and never hold a file.

``source_row`` is the 0-based record index within the source: the line index for JSONL (blank
lines are skipped and are not rows, but still advance the index), the element index for JSON arrays,
the row index for Parquet and datasets.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pyarrow as pa

from pipeline.io.formats import FORMATS, Reject, detect_format
from pipeline.schema import CANONICAL, RAW_LIMIT, REJECTS, message_id

CONTAINERS = ("auto", "jsonl", "json", "parquet", "hf_disk", "hf_load")


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


def _iter_jsonl(path: str) -> Iterator[tuple[int, Any]]:
    f = _open_binary(path)
    i = -1
    try:
        with f:
            for i, line in enumerate(f):  # noqa: B007 - i is read after the loop
                if not line.strip():
                    continue
                try:
                    yield i, orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    try:
                        line.decode("utf-8")
                        reason = f"malformed JSON: {e}"
                    except UnicodeDecodeError:
                        reason = "invalid UTF-8"
                    yield i, _Raw(reason, line[:RAW_LIMIT].decode("utf-8", "replace"))
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        yield i + 1, _Raw(f"unreadable stream after line {i + 1}: {e}", "")


class _JsonStream:
    """A text buffer over a byte stream that drops consumed text when it refills."""

    def __init__(self, f: io.BufferedIOBase, chunk: int) -> None:
        self.f, self.chunk = f, chunk
        self.buf, self.pos, self.pending, self.eof = "", 0, b"", False

    def fill(self) -> bool:
        if self.eof:
            return False
        data = self.f.read(self.chunk)
        if not data:
            self.eof = True
            if self.pending:
                raise UnicodeDecodeError("utf-8", self.pending, 0, len(self.pending), "truncated UTF-8 at end of file")
            return False
        data = self.pending + data
        cut = len(data)  # keep an incomplete trailing UTF-8 sequence for the next read
        for back in range(1, min(4, len(data)) + 1):
            b = data[-back]
            if b & 0xC0 == 0x80:
                continue
            if b & 0x80:
                need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4
                if back < need:
                    cut = len(data) - back
            break
        self.pending = data[cut:]
        self.buf = self.buf[self.pos :] + data[:cut].decode("utf-8")
        self.pos = 0
        return True

    def skip_ws(self) -> bool:
        """Advance past whitespace; False at end of input."""
        while True:
            buf, pos = self.buf, self.pos
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            self.pos = pos
            if pos < len(buf):
                return True
            if not self.fill():
                return False

    def peek(self) -> str:
        return self.buf[self.pos]


def _iter_json_array(path: str, chunk: int = 1 << 20) -> Iterator[tuple[int, Any]]:
    """Incremental parse of a top-level JSON array (or of concatenated JSON values in a .json)."""
    f = _open_binary(path)
    decoder = json.JSONDecoder()
    s = _JsonStream(f, chunk)
    idx = 0
    try:
        with f:
            if not s.skip_ws():
                return  # empty file: zero rows
            array = s.peek() == "["
            if array:
                s.pos += 1
                if s.skip_ws() and s.peek() == "]":
                    return
            while True:
                if not s.skip_ws():
                    if array:
                        yield idx, _Raw(f"unterminated JSON array after element {idx}", "")
                    return
                while True:
                    try:
                        obj, end = decoder.raw_decode(s.buf, s.pos)
                        # a number or literal cut at a chunk edge parses short: re-read with more data
                        if end == len(s.buf) and s.fill():
                            continue
                        break
                    except json.JSONDecodeError as e:
                        if s.fill():
                            continue
                        yield idx, _Raw(f"malformed JSON at element {idx}: {e.msg}; rest of file unreadable", s.buf[s.pos : s.pos + RAW_LIMIT])
                        return
                yield idx, obj
                idx += 1
                s.pos = end
                if not array:
                    continue
                if not s.skip_ws():
                    yield idx, _Raw(f"unterminated JSON array after element {idx}", "")
                    return
                c = s.peek()
                if c == ",":
                    s.pos += 1
                elif c == "]":
                    return
                else:
                    yield idx, _Raw(f"expected ',' or ']' after element {idx - 1}; rest of file unreadable", s.buf[s.pos : s.pos + RAW_LIMIT])
                    return
    except UnicodeDecodeError:
        yield idx, _Raw(f"invalid UTF-8 after element {idx}; rest of file unreadable", "")
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        yield idx, _Raw(f"unreadable stream after element {idx}: {e}", "")


def _iter_parquet(path: str, batch_rows: int) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise SourceError(f"{path}: cannot open as Parquet: {e}") from e
    i = 0
    try:
        for rb in pf.iter_batches(batch_size=batch_rows):
            for rec in rb.to_pylist():
                yield i, rec
                i += 1
    except (OSError, pa.ArrowException) as e:
        yield i, _Raw(f"unreadable Parquet data after row {i}: {e}", "")


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
        return _iter_jsonl(spec.path)
    if container == "json":
        return _iter_json_array(spec.path)
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
        except (orjson.JSONEncodeError, TypeError):
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


def read_source(spec: SourceSpec, batch_rows: int = 10_000) -> Iterator[Batch]:
    """Stream one source as canonical batches of at most ``batch_rows`` input records.

    Raises :class:`SourceError` when the source cannot be opened at all; everything wrong with an
    individual record becomes a reject row instead.
    """
    if spec.format != "auto" and spec.format not in FORMATS:
        raise SourceError(f"{spec.path}: unknown format {spec.format!r}; allowed: auto, {', '.join(FORMATS)}")
    records = iter_records(spec, batch_rows)
    fmt = None if spec.format == "auto" else spec.format
    auto = fmt is None
    builder = _BatchBuilder(spec.source_name)
    undetected: list[tuple[int, Any]] = []
    for row, rec in records:
        if fmt is None:
            fmt = detect_format(rec)
            if fmt is None:
                undetected.append((row, rec))
                if len(undetected) >= batch_rows:  # bounded: give up guessing, reject what we held
                    for r, x in undetected:
                        builder.reject(r, "unknown record format; set the source's format", _raw_text(x) if not isinstance(x, _Raw) else x.raw)
                    undetected.clear()
                continue
            for r, x in undetected:
                builder.add(r, x, fmt, auto)
            undetected.clear()
        builder.add(row, rec, fmt, auto)
        if len(builder) >= batch_rows:
            yield builder.build(fmt)
            builder = _BatchBuilder(spec.source_name)
    for r, x in undetected:
        if isinstance(x, _Raw):
            builder.reject(r, x.reason, x.raw)
        else:
            builder.reject(r, "unknown record format; set the source's format", _raw_text(x))
    if len(builder):
        yield builder.build(fmt)


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
