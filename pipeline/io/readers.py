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
from pipeline.schema import (
    CANONICAL,
    RAW_LIMIT,
    REJECTS,
    ROLE_ALIASES,
    hash_payloads,
    message_id,
    message_ids,
    message_part_expr,
)

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


# ---------------------------------------------------------------- vectorised mapping of Arrow batches
# Parquet and datasets batches of the common shapes are mapped with Polars expressions instead of
# per-record Python; the result (messages, ids, reject reasons, meta) is the same as the record
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


def _meta_expr(cols: list[str]) -> pl.Expr:
    if not cols:
        return pl.lit(None, dtype=pl.String)
    return pl.struct(cols).struct.json_encode()


def _map_flat(df: pl.DataFrame, fmt: str) -> pl.DataFrame | None:
    prompt, extra, answers, system = _FLAT[fmt]
    schema = df.schema
    used = [c for c in (prompt, extra, system, *answers) if c is not None and c in schema]
    if any(not _is_str(schema[c]) for c in used):
        return None
    present = [a for a in answers if a in schema]
    # one answer key for the whole batch, else per-record semantics (meta differs per row)
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
    return df.select(pl.col("_row"), reason.alias("_reason"), msgs.alias("messages"), _meta_expr(rest).alias("meta"),
                     payload.alias("_payload"))


def _map_turns(df: pl.DataFrame, key: str) -> pl.DataFrame | None:
    schema = df.schema
    if key not in schema or "system" in schema:
        return None
    dt = schema[key]
    if not isinstance(dt, pl.List) or not isinstance(dt.inner, pl.Struct):
        return None
    fields = {f.name: f.dtype for f in dt.inner.fields}
    rk = "from" if "from" in fields else "role"
    ck = "value" if "value" in fields else "content"
    if rk not in fields or ck not in fields or not _is_str(fields[rk]) or not _is_str(fields[ck]):
        return None
    el = pl.element()
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
        _meta_expr([x for x in df.columns if x not in (key, "_row")]).alias("meta"),
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
    return tmp.select(pl.col("_row"), reason.alias("_reason"), pl.col("messages"), pl.col("meta"))


def map_arrow_batch(rb: pa.RecordBatch | pa.Table, fmt: str, start_row: int, source: str) -> Batch | None:
    """Map a whole Arrow batch of records in format ``fmt`` at once; None if it needs the per-record path."""
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
    rows = pl.DataFrame({
        "id": hash_payloads(good["_payload"]) if "_payload" in good.columns else message_ids(good["messages"]),
        "source": pl.Series([source] * good.height, dtype=pl.String),
        "source_row": good["_row"].cast(pl.Int64),
        "messages": good["messages"],
        "meta": good["meta"],
    }).to_arrow().cast(CANONICAL)
    rejects = pl.DataFrame({
        "source": pl.Series([source] * bad.height, dtype=pl.String),
        "source_row": bad["_row"].cast(pl.Int64),
        "reason": bad["_reason"],
        "raw": raw_text,
    }).to_arrow().cast(REJECTS)
    return Batch(rows, rejects, fmt)


def _read_arrow_source(spec: SourceSpec, batch_rows: int, fmt: str | None) -> Iterator[Batch] | None:
    """Vectorised reading of a Parquet source; None when the format needs the per-record path."""
    pf = _open_parquet(spec.path)
    if fmt is None:
        first = next((b for _, b in _parquet_batches(pf, 1) if not isinstance(b, tuple)), None)
        if first is None:
            # empty, or not one readable row: the per-record path rejects what is unreadable
            return iter(()) if pf.metadata.num_rows == 0 else None
        fmt = detect_format(first.to_pylist()[0])
        if fmt is None:
            return None

    def gen() -> Iterator[Batch]:
        for start, rb in _parquet_batches(pf, batch_rows):
            if isinstance(rb, tuple):
                yield _lost_rows_batch(spec, start, *rb, fmt=fmt)
                continue
            b = map_arrow_batch(rb, fmt, start, spec.source_name)
            if b is None:  # this batch needs the per-record mappers
                builder = _BatchBuilder(spec.source_name)
                for j, rec in enumerate(rb.to_pylist()):
                    builder.add(start + j, rec, fmt, spec.format == "auto")
                b = builder.build(fmt)
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
