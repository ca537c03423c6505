"""``export``: a finished run's selection (or any filter of its scored shards) in a trainer format, with
its dataset card; ``run_exports`` for a config's ``export:`` entries."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.export.card import CARD_MARKER, dataset_card
from pipeline.export.mapping import (
    EXPORT_FORMATS,
    FORMAT_FIELDS,
    QUANTILES,
    ExportError,
    _carried,
    _conversation,
    _datasets_arrow_type,
    _json_lines,
    _stage_output_columns,
    alpaca_skip_reason,
    rich_expr,
)
from pipeline.io.shards import list_shards
from pipeline.schema import conform_messages, user_columns
from pipeline.score_columns import score_columns

#: numeric columns that are positions, not scores (left out of the card's score distributions)
NOT_SCORES: frozenset[str] = frozenset({"source_row", "select_rank"})


DATA_NAME = "train.jsonl"
BATCH_ROWS = 20_000
HF_SHARD_BYTES = 500_000_000  # datasets.config.MAX_SHARD_SIZE, the save_to_disk default




class ExportSpec(BaseModel):
    """One entry of a config's ``export:`` list (see :func:`run_exports`).

    ``out`` may be relative: it is then resolved against the run directory, so each run keeps its
    own exports (``out: export/messages`` -> ``<run_dir>/export/messages``).
    """

    model_config = ConfigDict(extra="forbid")

    format: Literal["messages", "sharegpt", "alpaca", "hf"] = "messages"
    out: str = Field(..., min_length=1)
    where: str | None = Field(None, description="Polars SQL predicate over every row of shards/, e.g. 'keep AND ifd < 0.9'")
    with_scores: bool = False
    push_to_hub: str | None = Field(None, description="a Hub dataset repo id to push to (needs credentials)")

    @field_validator("where")
    @classmethod
    def _parses(cls, v: str | None) -> str | None:
        """Fail at config load, not after the run, on a predicate Polars SQL cannot parse."""
        if v is not None:
            try:
                pl.sql_expr(v)
            except Exception as e:
                raise ValueError(f"not a valid Polars SQL predicate: {e}") from None
        return v




# ---------------------------------------------------------------- input rows


def _where_expr(where: str, columns: Sequence[str]) -> pl.Expr:
    try:
        expr = pl.sql_expr(where)
    except Exception as e:  # polars raises several SQL error types
        raise ExportError(f"--where {where!r} is not a valid Polars SQL predicate: {e}") from None
    missing = [c for c in expr.meta.root_names() if c not in columns]
    if missing:
        raise ExportError(f"--where {where!r} names unknown column(s) {', '.join(missing)}; columns: {', '.join(columns)}")
    return expr


def _unified_schema(paths: Sequence[Path]) -> dict[str, pl.DataType]:
    """Column -> dtype over all shards; the first non-null dtype wins (an all-null shard column is Null)."""
    out: dict[str, pl.DataType] = {}
    for p in paths:
        for name, dtype in pl.read_parquet_schema(p).items():
            if name not in out or out[name] == pl.Null:
                out[name] = dtype
    return out


def _batches(paths: Sequence[Path], columns: list[str], schema: dict[str, pl.DataType],
             batch_rows: int) -> Iterator[pl.DataFrame]:
    """``columns`` of every shard, ``batch_rows`` at a time, cast to ``schema`` (missing columns null)."""
    for p in paths:
        pf = pq.ParquetFile(p)
        have = [c for c in columns if c in pf.schema_arrow.names]
        for rb in pf.iter_batches(batch_size=batch_rows, columns=have):
            df = pl.from_arrow(rb)
            assert isinstance(df, pl.DataFrame)
            fix = [pl.lit(None, schema[c]).alias(c) for c in columns if c not in df.columns]
            fix += [pl.col(c).cast(schema[c]) for c in have if df.schema[c] != schema[c]]
            yield (df.with_columns(fix) if fix else df).select(columns)




# ---------------------------------------------------------------- output paths


def _is_our_card(path: Path) -> bool:
    try:
        return CARD_MARKER in path.read_text(errors="replace")
    except OSError:
        return False


def _layout(fmt: str, out: Path) -> tuple[Path, Path, Path]:
    """(data path, card path, skipped-list path) for ``out``."""
    if fmt == "hf":
        if out.suffix in (".jsonl", ".json", ".gz", ".parquet", ".arrow"):
            raise ExportError(f"format hf writes a directory (save_to_disk); got a file name {out}")
        return out, out / "README.md", out.parent / f"{out.name}.skipped.jsonl"
    if out.suffix == ".jsonl":
        return out, out.parent / "README.md", out.with_name(f"{out.stem}.skipped.jsonl")
    if out.suffix in (".json", ".gz", ".parquet", ".arrow"):
        raise ExportError(f"--out {out}: name a .jsonl file or a directory")
    return out / DATA_NAME, out / "README.md", out / f"{Path(DATA_NAME).stem}.skipped.jsonl"


def _check_targets(fmt: str, data: Path, card: Path) -> None:
    if card.exists() and not _is_our_card(card):
        raise ExportError(f"{card} exists and was not written by sft-curate; export to another directory")
    if fmt == "hf" and data.exists():
        if not data.is_dir():
            raise ExportError(f"{data} exists and is not a directory")
        if any(data.iterdir()) and not ((data / "state.json").exists() and _is_our_card(card)):
            # replacing the directory deletes it: only ever replace an earlier export of this tool
            raise ExportError(f"{data} is a non-empty directory that sft-curate did not export; export to another directory")
    if fmt != "hf" and data.is_dir():
        raise ExportError(f"{data} is a directory")


def _write_text_atomic(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _sha256(paths: Sequence[Path]) -> str:
    """SHA-256 of the files' bytes, concatenated in order."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- score distributions


def _score_stats(path: Path, columns: list[str]) -> dict[str, dict[str, Any]]:
    """count / mean / min / quantiles / max of each column of a Parquet file, one column at a time."""
    out: dict[str, dict[str, Any]] = {}
    lf = pl.scan_parquet(path)
    for c in columns:
        x = pl.col(c).cast(pl.Float64).fill_nan(None)
        row = lf.select(
            x.count().alias("count"), x.null_count().alias("null"), x.mean().alias("mean"), x.min().alias("min"),
            *[x.quantile(q, interpolation="linear").alias(f"p{round(q * 100):02d}") for q in QUANTILES],
            x.max().alias("max"),
        ).collect().row(0, named=True)
        out[c] = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}
    return out


# ---------------------------------------------------------------- export


def export(run_dir: Path, fmt: str, out: Path, where: str | None = None, with_scores: bool = False,
           push_to_hub: str | None = None, batch_rows: int = BATCH_ROWS) -> dict[str, Any]:
    """Export the selected rows of ``run_dir`` (or the rows of ``shards/`` matching ``where``) as ``fmt``.

    Returns counts and paths: ``rows_in`` (rows considered) = ``exported`` + ``skipped``;
    ``skipped_by_reason`` (Alpaca only), ``skipped_multiturn``, ``rows_in_dropped`` (rows with
    ``keep = false`` that ``where`` let in), the data/card/skipped paths, ``sha256`` of the data
    file(s), and the run's ``run_id`` / ``config_hash``. Writes ``README.md`` (:func:`dataset_card`).
    """
    t0 = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out)
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    mpath = run_dir / "manifest.json"
    if not mpath.exists():
        raise ExportError(f"{run_dir} has no manifest.json (not a run directory)")
    manifest = json.loads(mpath.read_text())
    if manifest.get("status") != "complete":
        raise ExportError(f"{run_dir}: run status is {manifest.get('status')!r}, not 'complete'")
    from pipeline.engine.manifest import RunIntegrityError, verify_run

    try:  # never export from a run whose files differ from what its manifest counted
        verify_run(run_dir)
    except RunIntegrityError as e:
        raise ExportError(str(e)) from e
    src_dir = run_dir / ("shards" if where else "selected")
    paths = list_shards(src_dir)
    if not paths:
        raise ExportError(f"{src_dir} holds no shards")
    schema = _unified_schema(paths)
    expr = _where_expr(where, list(schema)) if where else None
    stage_cols = _stage_output_columns(manifest)
    carried, omitted, names = _carried(schema, fmt, with_scores, stage_cols)
    user = set(user_columns(list(schema), extra_reserved=sorted(stage_cols)))
    # real scores only (no hashes, ids, ranks: the declared roles), and not the user's own columns
    score_cols = [c for c in score_columns(schema, manifest) if c not in NOT_SCORES and c not in user]
    needed = list(dict.fromkeys(["messages", "tools", *carried, *score_cols, "keep",
                                 *(expr.meta.root_names() if expr is not None else [])]))
    needed = [c for c in needed if c in schema]
    data, card, skipped_path = _layout(fmt, out)
    _check_targets(fmt, data, card)
    data.parent.mkdir(parents=True, exist_ok=True)

    counts = {"rows_in": 0, "rows_in_dropped": 0, "exported": 0}
    skipped: dict[str, int] = {}
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{data.name}.", dir=data.parent))
    try:
        stats_path = tmpdir / "scores.parquet"
        stats_writer: pq.ParquetWriter | None = None
        sink: _JsonlSink | _ArrowSink = _ArrowSink(tmpdir / "dataset") if fmt == "hf" else _JsonlSink(tmpdir / data.name)
        skip_fh = open(tmpdir / "skipped.jsonl", "wb")  # noqa: SIM115 - closed in finally
        try:
            for df in _batches(paths, needed, schema, batch_rows):
                if expr is not None:
                    try:
                        df = df.filter(expr)
                    except pl.exceptions.PolarsError as e:
                        raise ExportError(f"--where {where!r} cannot be evaluated: {e}") from None
                if df.height == 0:
                    continue
                counts["rows_in"] += df.height
                if "keep" in df.columns:
                    counts["rows_in_dropped"] += int((~df["keep"]).sum())
                if fmt == "alpaca":
                    df = df.with_columns(alpaca_skip_reason().alias("_skip"))
                    bad = df.filter(pl.col("_skip").is_not_null())
                    if bad.height:
                        for r, n in bad["_skip"].value_counts().iter_rows():
                            skipped[r] = skipped.get(r, 0) + n
                        bad.select("id", "source", "source_row", pl.col("_skip").alias("reason"),
                                   pl.col("messages").list.len().alias("turns")).write_ndjson(skip_fh)
                        df = df.filter(pl.col("_skip").is_null())
                    if df.height == 0:
                        continue
                if "tools" not in df.columns:  # shards written before tool definitions existed
                    df = df.with_columns(pl.lit(None, dtype=pl.String).alias("tools"))
                df = conform_messages(df)
                if fmt in ("messages", "sharegpt") and df.select(rich_expr().any()).item():
                    assert isinstance(sink, _JsonlSink)
                    sink.write_lines(_json_lines(fmt, df, carried, names))
                else:
                    sink.write(df.select(*_conversation(fmt), *[pl.col(c).alias(names.get(c, c)) for c in carried]))
                counts["exported"] += df.height
                if score_cols:
                    st = df.select(score_cols).to_arrow()
                    if stats_writer is None:
                        stats_writer = pq.ParquetWriter(stats_path, st.schema)
                    stats_writer.write_table(st.cast(stats_writer.schema))
            if isinstance(sink, _ArrowSink) and not sink.files:
                empty = conform_messages(pl.DataFrame(schema={"messages": schema["messages"], "tools": pl.String,
                                                              **{c: schema[c] for c in carried}}))
                sink.write(empty.select(*_conversation(fmt), *[pl.col(c).alias(names.get(c, c)) for c in carried]))
        finally:
            sink.close()
            skip_fh.close()
            if stats_writer is not None:
                stats_writer.close()

        sha = sink.sha256()
        if isinstance(sink, _ArrowSink):
            sink.finish(fingerprint=sha[:16])
        scores = _score_stats(stats_path, score_cols) if stats_path.exists() else {}
        n_skipped = sum(skipped.values())
        info: dict[str, Any] = {
            "format": fmt,
            "run_dir": str(run_dir.resolve()),
            "run_id": manifest.get("run_id"),
            "config_hash": manifest.get("config_hash"),
            "input": "shards/" if where else "selected/",
            "where": where,
            "with_scores": with_scores,
            **counts,
            "skipped": n_skipped,
            "skipped_multiturn": skipped.get("multi_turn", 0),
            "skipped_by_reason": dict(sorted(skipped.items(), key=lambda kv: -kv[1])),
            "columns": [*FORMAT_FIELDS[fmt], *(names.get(c, c) for c in carried)],
            "user_columns": [names.get(c, c) for c in carried if c in user],
            "columns_omitted": omitted,
            "data": str(data),
            "data_files": [p.name for p in sink.files] if fmt == "hf" else [data.name],
            "skipped_list": str(skipped_path) if n_skipped else None,
            "card": str(card),
            "sha256": sha,
            "score_stats": scores,
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        text = dataset_card(run_dir, info, manifest=manifest)
        if isinstance(sink, _ArrowSink):
            _write_text_atomic(text, sink.dir / "README.md")
            _replace_dir(sink.dir, data)
        else:
            os.replace(sink.path, data)
            _write_text_atomic(text, card)
        if n_skipped:
            os.replace(tmpdir / "skipped.jsonl", skipped_path)
        else:
            skipped_path.unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    if push_to_hub:
        info["pushed_to"] = _push(fmt, data, card, push_to_hub)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    return info


class _JsonlSink:
    """Appends frames as JSON lines to one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files = [path]
        self._fh = open(path, "wb")  # noqa: SIM115 - closed by close()

    def write(self, df: pl.DataFrame) -> None:
        df.write_ndjson(self._fh)

    def write_lines(self, lines: list[bytes]) -> None:
        if lines:
            self._fh.write(b"\n".join(lines) + b"\n")

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def sha256(self) -> str:
        return _sha256(self.files)


class _ArrowSink:
    """Writes frames as the Arrow IPC stream files of a ``save_to_disk`` directory, one pass, no copy.

    ``datasets.Dataset.save_to_disk`` re-reads a dataset through a memory map and rewrites it, which
    doubles the I/O and makes the resident set grow with the data; here the rows go straight into
    ``data-NNNNN-of-NNNNN.arrow`` files of at most ``HF_SHARD_BYTES``, and :meth:`finish` takes
    ``state.json`` and ``dataset_info.json`` from a real ``save_to_disk`` of an empty dataset with
    the same features, with its data-file list replaced, so the metadata is whatever the installed
    ``datasets`` writes.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True)
        self.files: list[Path] = []
        self.schema: pa.Schema | None = None
        self._fh: Any = None
        self._writer: Any = None

    def write(self, df: pl.DataFrame) -> None:
        tbl = df.to_arrow()
        if self.schema is None:
            self.schema = pa.schema([pa.field(f.name, _datasets_arrow_type(f.type)) for f in tbl.schema])
        tbl = tbl.cast(self.schema)
        if self._writer is None:
            path = self.dir / f".part-{len(self.files):05d}.arrow"
            self.files.append(path)
            self._fh = open(path, "wb")  # noqa: SIM115 - closed by _close_file()
            self._writer = pa.ipc.new_stream(self._fh, self.schema)
        # datasets needs at least one record batch per file, even an empty one
        if tbl.num_rows == 0:
            self._writer.write_batch(pa.RecordBatch.from_pylist([], schema=self.schema))
        else:
            self._writer.write_table(tbl)
        if self._fh.tell() >= HF_SHARD_BYTES:
            self._close_file()

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._writer = self._fh = None

    def close(self) -> None:
        self._close_file()

    def sha256(self) -> str:
        return _sha256(self.files)

    def finish(self, fingerprint: str) -> None:
        """Name the data files and write ``state.json`` / ``dataset_info.json``."""
        import datasets  # heavy: only for format hf

        assert self.schema is not None
        n = len(self.files)
        final = [self.dir / f"data-{i:05d}-of-{n:05d}.arrow" for i in range(n)]
        for src, dst in zip(self.files, final, strict=True):
            os.replace(src, dst)
        self.files = final
        meta = self.dir.parent / "dataset-meta"
        empty = datasets.Dataset(datasets.table.InMemoryTable(self.schema.empty_table()))
        quiet = not datasets.are_progress_bars_disabled()
        if quiet:  # a library call should not draw progress bars; restore the caller's setting after
            datasets.disable_progress_bars()
        try:
            empty.save_to_disk(str(meta), num_shards=1)
        finally:
            if quiet:
                datasets.enable_progress_bars()
        state = json.loads((meta / "state.json").read_text())
        state["_data_files"] = [{"filename": p.name} for p in final]
        state["_fingerprint"] = fingerprint
        (self.dir / "state.json").write_text(json.dumps(state, indent=2))
        shutil.copyfile(meta / "dataset_info.json", self.dir / "dataset_info.json")
        shutil.rmtree(meta, ignore_errors=True)


def _replace_dir(staged: Path, out: Path) -> None:
    """Move ``staged`` to ``out``; an earlier export at ``out`` is swapped out first, then removed."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staged, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _push(fmt: str, data: Path, card: Path, repo_id: str) -> str:
    """Upload the export and its card to a (private, if new) Hub dataset repo; needs credentials."""
    from huggingface_hub import HfApi, get_token

    if get_token() is None:
        raise PermissionError("push_to_hub needs Hugging Face credentials: run `hf auth login` or set HF_TOKEN")
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=True, exist_ok=True)
    if fmt == "hf":
        import datasets

        datasets.load_from_disk(str(data)).push_to_hub(repo_id, private=True)
    else:
        api.upload_file(path_or_fileobj=str(data), path_in_repo=data.name, repo_id=repo_id, repo_type="dataset")
    api.upload_file(path_or_fileobj=str(card), path_in_repo="README.md", repo_id=repo_id, repo_type="dataset")
    return f"https://huggingface.co/datasets/{repo_id}"


def run_exports(run_dir: Path, cfg_export_list: Sequence[ExportSpec | dict[str, Any]]) -> list[dict[str, Any]]:
    """Run a config's ``export:`` entries on a finished run; relative ``out`` is under ``run_dir``."""
    run_dir = Path(run_dir)
    infos = []
    for entry in cfg_export_list:
        spec = entry if isinstance(entry, ExportSpec) else ExportSpec.model_validate(entry)
        out = Path(spec.out).expanduser()
        if not out.is_absolute():
            out = run_dir / out
        infos.append(export(run_dir, spec.format, out, where=spec.where, with_scores=spec.with_scores,
                            push_to_hub=spec.push_to_hub))
    return infos


