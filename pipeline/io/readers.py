"""Streaming readers: files of any supported format -> batches of canonical rows + rejects.

Container formats: JSONL (``.jsonl``/``.ndjson``, optionally ``.gz``), JSON arrays (``.json``,
optionally ``.gz``; parsed incrementally, never loaded whole), Parquet (read by row group), CSV /
TSV (``.csv``/``.tsv``, optionally ``.gz``; column types inferred over the whole file, then read in
blocks), and Hugging Face ``datasets`` (a ``save_to_disk`` directory, or any ``load_dataset``
builder over local files; a ``DatasetDict`` gives every split, with a ``split`` column, unless
``hf_split`` names one). Record formats are in :mod:`pipeline.io.formats`; the format is detected
from the first well-formed record of each source unless the source forces one.

Every input field a format does not map becomes a typed top-level column of its own (a *user
column*, named by :func:`pipeline.schema.user_column_name`): Parquet, CSV and datasets columns keep
their Arrow types; JSON values are typed by Arrow's inference per batch, and a field whose values
mix kinds (a number here, a string there) becomes a string column holding strings verbatim and other
values as JSON text. Batches of one source may still differ in a column's type (ints in one batch,
floats in the next): :func:`unify_tables` gives them one schema.

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
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pyarrow as pa

from pipeline.io.formats import (
    CALL_ROLES,
    FORMATS,
    REASONING_MODES,
    THINK_TAGS,
    Reject,
    apply_think,
    detect_format,
    take_tools,
    think_pattern,
    think_regex,
)
from pipeline.io.shards import unify_tables
from pipeline.schema import (
    CANONICAL,
    RAW_LIMIT,
    REJECTS,
    ROLE_ALIASES,
    conform_messages,
    hash_payloads,
    message_id,
    message_ids,
    message_part_expr,
    reserved_columns,
    user_column_name,
)

CONTAINERS = ("auto", "jsonl", "json", "parquet", "csv", "tsv", "hf_disk", "hf_load")

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
    hf_split: str | None = None  # None: every split of a DatasetDict (a `split` column)
    hf_kwargs: dict[str, Any] = field(default_factory=dict)
    reasoning: str = "auto"  # "auto": reasoning fields, else a leading think block; "fields": fields only
    think_tags: tuple[str, str] = THINK_TAGS

    @property
    def source_name(self) -> str:
        return self.name or Path(self.path).name

    @classmethod
    def from_config(cls, sc: Any, path: str) -> SourceSpec:
        """The reader settings of a config's source entry (``pipeline.config.SourceConfig``);
        ``path`` resolved by the caller."""
        return cls(path=path, name=sc.name, container=sc.container, format=sc.format, hf_builder=sc.hf_builder,
                   hf_split=sc.hf_split, hf_kwargs=dict(getattr(sc, "hf_kwargs", None) or {}),
                   reasoning=getattr(sc, "reasoning", "auto"), think_tags=tuple(getattr(sc, "think_tags", THINK_TAGS)))

    def key_parts(self) -> tuple[Any, ...]:
        """Every reader setting that shapes the rows (for an ingest cache key)."""
        return (self.source_name, self.container, self.format, self.hf_builder, self.hf_split,
                json.dumps(self.hf_kwargs, sort_keys=True, default=str), self.reasoning, list(self.think_tags))


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


def _open_parquet(path: str) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise SourceError(f"{path}: cannot open as Parquet: {e}") from e


def _parquet_batches(pf: Any, batch_rows: int) -> Iterator[tuple[int, Any]]:
    """``(start_row, record_batch)`` over a Parquet file, one row group at a time; where a row group
    cannot be decoded (corrupt pages), ``(start_row, (n_rows, reason))`` for the rows of it not yet
    yielded, then the next row group. The footer knows every row group's size, so a corrupt region
    costs exactly its rows, each accounted for, and the rest of the file is still read."""
    start = 0
    for rg in range(pf.num_row_groups):
        end = start + pf.metadata.row_group(rg).num_rows
        try:
            for rb in pf.iter_batches(batch_size=batch_rows, row_groups=[rg]):
                yield start, rb
                start += rb.num_rows
        except (OSError, pa.ArrowException) as e:
            reason = f"unreadable Parquet row group {rg} (rows {start}-{end - 1}): {e}"
            for lo in range(start, end, batch_rows):  # in batches, like the rows that did read
                yield lo, (min(batch_rows, end - lo), reason)
        start = end


def _iter_parquet(path: str, batch_rows: int) -> Iterator[tuple[int, Any]]:
    for start, b in _parquet_batches(_open_parquet(path), batch_rows):
        if isinstance(b, tuple):
            n, reason = b
            for i in range(start, start + n):
                yield i, _Raw(reason, "")
        else:
            for j, rec in enumerate(b.to_pylist()):
                yield start + j, rec


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
        return _iter_jsonl(spec.path)
    if container == "json":
        return _iter_json_array(spec.path)
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
        self.think = think_regex(spec.think_tags) if spec is None or spec.reasoning == "auto" else None
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


# ---------------------------------------------------------------- vectorised mapping of Arrow batches
# Parquet and datasets batches of the common shapes are mapped with Polars expressions instead of
# per-record Python; the result (messages, ids, reject reasons, user columns) is the same as the record
# mappers in pipeline.io.formats give. Anything unusual (non-string columns, content parts, mixed
# answer keys) returns None and the batch takes the per-record path.

_FLAT: dict[str, tuple[str, str | None, tuple[str, ...], str | None]] = {
    # format: (prompt field, optional input field, answer fields in order of preference, system field)
    "alpaca": ("instruction", "input", ("output", "response"), "system"),
    "prompt_completion": ("prompt", None, ("completion", "canonical_solution", "response"), None),
    "question_answer": ("question", None, ("answer", "ground_truth"), None),
}

_ALIASES_LOWER = {k.lower(): v for k, v in ROLE_ALIASES.items()}


def _is_str(dtype: pl.DataType) -> bool:
    return dtype in (pl.String, pl.Null)


def _user_exprs(cols: list[str]) -> list[pl.Expr]:
    """The unmapped columns of a batch as user columns (renamed where the tool uses the name)."""
    reserved = reserved_columns()
    return [pl.col(c).alias(user_column_name(c, reserved)) for c in cols]


def _map_flat(df: pl.DataFrame, fmt: str) -> pl.DataFrame | None:
    prompt, extra, answers, system = _FLAT[fmt]
    schema = df.schema
    if "tools" in schema:  # tool definitions are parsed and canonicalised per record
        return None
    used = [c for c in (prompt, extra, system, *answers) if c is not None and c in schema]
    if any(not _is_str(schema[c]) for c in used):
        return None
    nulls = [c for c in used if schema[c] == pl.Null]
    if nulls:  # an all-null column (datasets types it Null): String, so the text expressions apply
        df = df.with_columns(pl.col(c).cast(pl.String) for c in nulls)
        schema = df.schema
    present = [a for a in answers if a in schema]
    # one answer key for the whole batch, else per-record semantics (user columns differ per row)
    key_idx = pl.coalesce([pl.when(pl.col(a).is_not_null()).then(pl.lit(i)) for i, a in enumerate(present)]) if present else pl.lit(None)
    keys = df.select(key_idx.alias("k"))["k"].drop_nulls().unique()
    if keys.len() > 1:
        return None
    out_key = present[keys[0]] if keys.len() == 1 else None
    missing_answer = f"missing field '{answers[0]}'" + (f" (or {', '.join(repr(k) for k in answers[1:])})" if len(answers) > 1 else "")
    p = pl.col(prompt) if prompt in schema else pl.lit(None, pl.String)
    reason = pl.when(p.is_null()).then(pl.lit(f"missing field '{prompt}'"))
    if out_key is None:
        reason = reason.otherwise(pl.lit(missing_answer))
        answer = pl.lit(None, pl.String)
    else:
        answer = pl.col(out_key)
        reason = reason.when(answer.is_null()).then(pl.lit(missing_answer)).otherwise(pl.lit(None, pl.String))
    user = p
    if extra is not None and extra in schema:
        inp = pl.col(extra)
        user = pl.when(inp.is_not_null() & (inp.str.strip_chars().str.len_chars() > 0)).then(
            pl.concat_str([p, pl.lit("\n\n"), inp])).otherwise(p)
    turn = lambda role, content: pl.struct(pl.lit(role).alias("role"), content.alias("content"))  # noqa: E731
    msgs = pl.concat_list([pl.concat_list([turn("user", user)]), pl.concat_list([turn("assistant", answer)])])
    # the id payload straight from the columns: same bytes as message_id(), without a list pass
    payload = pl.concat_str([message_part_expr("user", user), message_part_expr("assistant", answer)])
    if system is not None and system in schema:
        sys_ = pl.col(system)
        has_sys = sys_.is_not_null() & (sys_.str.len_chars() > 0)
        msgs = pl.when(has_sys).then(pl.concat_list([pl.concat_list([turn("system", sys_)]), msgs])).otherwise(msgs)
        payload = pl.when(has_sys).then(pl.concat_str([message_part_expr("system", sys_), payload])).otherwise(payload)
    drop = {prompt, extra, system, out_key}
    rest = [c for c in df.columns if c not in drop and c != "_row"]
    return df.select(pl.col("_row"), reason.alias("_reason"), msgs.alias("messages"), payload.alias("_payload"),
                     *_user_exprs(rest))


def _map_turns(df: pl.DataFrame, key: str) -> pl.DataFrame | None:
    schema = df.schema
    if key not in schema or "system" in schema or "tools" in schema:
        return None
    dt = schema[key]
    if not isinstance(dt, pl.List) or not isinstance(dt.inner, pl.Struct):
        return None
    fields = {f.name: f.dtype for f in dt.inner.fields}
    rk = "from" if "from" in fields else "role"
    ck = "value" if "value" in fields else "content"
    if rk not in fields or ck not in fields or not _is_str(fields[rk]) or not _is_str(fields[ck]):
        return None
    if fields[rk] == pl.Null or fields[ck] == pl.Null:
        return None
    if set(fields) - {rk, ck}:  # tool calls, reasoning, names, ...: the per-record mappers keep them
        return None
    el = pl.element()
    calls = df.select(pl.col(key).list.eval(el.struct.field(rk).str.strip_chars().str.to_lowercase()
                                            .is_in(list(CALL_ROLES))).list.any().any()).item()
    if calls:  # ShareGPT function_call turns merge into assistant messages: the per-record mappers do that
        return None
    idx = pl.int_range(pl.len()).cast(pl.String)
    raw_role = el.struct.field(rk)
    role = raw_role.str.strip_chars().str.to_lowercase().replace_strict(_ALIASES_LOWER, default=None, return_dtype=pl.String)
    content = el.struct.field(ck)
    where = pl.concat_str([pl.lit(f"{key}["), idx, pl.lit("]")])
    turn_err = (
        pl.when(el.is_null()).then(pl.concat_str([where, pl.lit(" must be an object, got NoneType")]))
        .when(raw_role.is_null()).then(pl.concat_str([where, pl.lit(": role must be a string, got NoneType")]))
        .when(role.is_null()).then(pl.concat_str([where, pl.lit(": unknown role '"), raw_role, pl.lit("'")]))
        .when(content.is_null()).then(pl.concat_str([where, pl.lit(": missing content")]))
        .otherwise(pl.lit(None, pl.String))
    )
    c = pl.col(key)
    tmp = df.select(
        pl.col("_row"),
        c.is_null().alias("_missing"),
        c.list.eval(turn_err).list.drop_nulls().list.first().alias("_turn_err"),
        c.list.eval(pl.struct(role.alias("role"), content.alias("content"))).alias("messages"),
        *_user_exprs([x for x in df.columns if x not in (key, "_row")]),
    )
    roles = pl.col("messages").list.eval(el.struct.field("role"))
    reason = (
        pl.when(pl.col("_missing")).then(pl.lit(f"missing field '{key}'"))
        .when(pl.col("_turn_err").is_not_null()).then(pl.col("_turn_err"))
        .when(pl.col("messages").list.len() == 0).then(pl.lit("empty conversation"))
        .when(~roles.list.contains("assistant")).then(pl.lit("no assistant turn"))
        .when(~roles.list.contains("user")).then(pl.lit("no user turn"))
        .otherwise(pl.lit(None, pl.String))
    )
    return tmp.select(pl.col("_row"), reason.alias("_reason"), pl.exclude("_row", "_missing", "_turn_err"))


def think_split_expr(tags: tuple[str, str] = THINK_TAGS, messages: str = "messages") -> pl.Expr:
    """:func:`pipeline.io.formats.apply_think` over a full-typed ``messages`` column, in Polars."""
    pat = think_pattern(tags)
    el = pl.element()
    content = el.struct.field("content")
    hit = (el.struct.field("role") == "assistant") & el.struct.field("reasoning").is_null() & content.str.contains(pat)
    return pl.col(messages).list.eval(el.struct.with_fields(
        pl.when(hit).then(content.str.extract(pat, 1)).otherwise(el.struct.field("reasoning")).alias("reasoning"),
        pl.when(hit).then(content.str.extract(pat, 2)).otherwise(content).alias("content"),
    ))


def map_arrow_batch(rb: pa.RecordBatch | pa.Table, fmt: str, start_row: int, source: str,
                    spec: SourceSpec | None = None) -> Batch | None:
    """Map a whole Arrow batch of records in format ``fmt`` at once; None if it needs the per-record path.

    ``spec`` gives the reasoning settings (default: split leading think blocks)."""
    if fmt not in _FLAT and fmt not in ("sharegpt", "messages"):
        return None
    try:
        df = pl.from_arrow(rb)
    except Exception:  # exotic Arrow types: let the per-record path report them
        return None
    assert isinstance(df, pl.DataFrame)
    df = df.with_row_index("_row", offset=start_row)
    mapped = _map_flat(df, fmt) if fmt in _FLAT else _map_turns(df, "conversations" if fmt == "sharegpt" else "messages")
    if mapped is None:
        return None
    n_bad = mapped["_reason"].null_count()
    if n_bad == mapped.height:  # the common case: no rejects, no copies
        good, bad = mapped, mapped.clear()
    else:
        bad = mapped.filter(pl.col("_reason").is_not_null())
        good = mapped.filter(pl.col("_reason").is_null())
    if bad.height:
        raw = df.join(bad.select("_row"), on="_row", how="semi").drop("_row")
        raw_text = raw.select(pl.struct(raw.columns).struct.json_encode().str.slice(0, RAW_LIMIT).alias("raw"))["raw"] if raw.width else pl.Series("raw", [""] * bad.height)
    else:
        raw_text = pl.Series("raw", [], dtype=pl.String)
    ids = None
    if spec is None or spec.reasoning == "auto":
        tags = THINK_TAGS if spec is None else tuple(spec.think_tags)
        has = good.select(pl.col("messages").list.eval(
            pl.element().struct.field("content").str.contains(tags[0], literal=True)).list.any().any())
        if has.item():  # the message struct gets its other fields (null) only when reasoning is split off
            good = conform_messages(good).with_columns(think_split_expr(tags))  # type: ignore[arg-type]
            ids = message_ids(good["messages"])
    if ids is None:  # role/content only: the payload straight from the columns, or from the 2-field struct
        ids = hash_payloads(good["_payload"]) if "_payload" in good.columns else message_ids(good["messages"])
    user = [c for c in good.columns if c not in ("_row", "_reason", "_payload", "messages", "tools")]
    frame = pl.DataFrame({
        "id": ids,
        "source": pl.Series([source] * good.height, dtype=pl.String),
        "source_row": good["_row"].cast(pl.Int64),
        "messages": good["messages"],
        "tools": pl.Series([None] * good.height, dtype=pl.String),  # a source with tools takes the per-record path
    }).hstack(good.select(user).get_columns())
    table = frame.to_arrow()
    canon = table.select(CANONICAL.names).cast(CANONICAL)
    extra = table.select(user)
    rows = pa.Table.from_arrays([*canon.columns, *extra.columns], schema=pa.schema([*CANONICAL, *extra.schema]))
    rejects = pl.DataFrame({
        "source": pl.Series([source] * bad.height, dtype=pl.String),
        "source_row": bad["_row"].cast(pl.Int64),
        "reason": bad["_reason"],
        "raw": raw_text,
    }).to_arrow().cast(REJECTS)
    return Batch(rows, rejects, fmt)


def _detect_in_batch(rb: Any) -> str | None:
    """The format of the first of a batch's first 100 records that has a recognisable shape."""
    for j in range(min(rb.num_rows, 100)):
        fmt = detect_format(rb.slice(j, 1).to_pylist()[0])
        if fmt is not None:
            return fmt
    return None


def _read_arrow_batches(spec: SourceSpec, batches: Iterator[tuple[int, Any]], fmt: str | None) -> Iterator[Batch]:
    """Canonical batches of a stream of ``(start_row, Arrow batch | (n_lost, reason))``: vectorised
    where the format allows, else per record with the container's column types."""
    auto = spec.format == "auto"
    for start, rb in batches:
        if isinstance(rb, tuple):
            yield _lost_rows_batch(spec, start, *rb, fmt=fmt)
            continue
        if fmt is None:
            fmt = _detect_in_batch(rb)
            if fmt is None:  # nothing recognisable in the batch's head: its rows are of unknown format
                b = _BatchBuilder(spec.source_name, spec)
                for j, rec in enumerate(rb.to_pylist()):
                    b.reject(start + j, "unknown record format; set the source's format", _raw_text(rec))
                yield b.build(None)
                continue
        b = map_arrow_batch(rb, fmt, start, spec.source_name, spec)
        if b is None:  # this batch needs the per-record mappers
            builder = _BatchBuilder(spec.source_name, spec)
            for j, rec in enumerate(rb.to_pylist()):
                builder.add(start + j, rec, fmt, auto)
            b = builder.build(fmt, types=rb.schema)
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
        yield from _read_arrow_batches(spec, _parquet_batches(_open_parquet(spec.path), batch_rows), fmt)
        return
    if container in ("csv", "tsv"):
        yield from _read_arrow_batches(spec, _csv_batches(spec, container, batch_rows), fmt)
        return
    if container in ("hf_disk", "hf_load"):
        spec.container = container
        offset = 0
        for split, ds in _hf_parts(spec):
            yield from _with_split(_read_arrow_batches(spec, _hf_batches(ds, batch_rows), fmt), split, offset)
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
