"""Training-ready export of a run: JSONL for trainers, a Hugging Face dataset, and a dataset card.

``export(run_dir, fmt, out)`` writes the selected subset of a run (``selected/``), or, with
``where``, the rows of ``shards/`` (every row, kept or dropped) that match a Polars SQL predicate
such as ``"keep AND ifd < 0.9"``. Formats:

* ``messages``: JSONL, ``{"messages": [{"role", "content"}, ...], "tools": [...], ...}``, the OpenAI
  chat layout that TRL's ``SFTTrainer`` and most trainers read; a system turn stays a message.
  Assistant turns carry ``tool_calls: [{id, type, function: {name, arguments}}]`` (arguments as
  JSON text, as OpenAI gives them) and ``reasoning_content``; tool messages ``tool_call_id`` and
  ``name``; ``tools`` is the conversation's tool definitions. A field a message does not have is
  left out (plain chat rows look exactly as before).
* ``sharegpt``: JSONL, ``{"conversations": [{"from", "value"}, ...], "tools": "...", ...}`` as
  LLaMA-Factory and axolotl read it; roles become ``human``/``gpt``/``system``/``observation`` (a
  tool result, as in LLaMA-Factory) and ``function_call`` (a call, ``value`` the JSON of
  ``{name, arguments}``, or of a list of them for parallel calls; a call's ``id`` rides along in
  that object); ``tools`` is a JSON string as LLaMA-Factory expects. Reasoning is written inline as
  a leading ``<think>\n...\n</think>\n\n`` block of the ``gpt`` turn, the way ShareGPT reasoning data
  holds it; an observation's ``tool_call_id`` / ``name`` are extra keys of its turn.
* ``alpaca``: JSONL, ``{"instruction", "input": "", "output", "system"}``. Alpaca holds one exchange,
  so only ``[system?] user assistant`` conversations are exported; every other row (more than one
  exchange, a tool turn or tool calls or tool definitions, a message ``name``, turns out of order, an
  empty system prompt that Alpaca readers would drop) is skipped, counted by reason, and listed with its
  ``id``/``source``/``source_row`` in ``<name>.skipped.jsonl`` beside the export: never truncated.
  Reasoning is written inline as a ``<think>`` block of ``output``.
* ``hf``: a ``datasets.save_to_disk`` directory with the ``messages`` layout (every message struct
  has every field, null where absent; ``tools`` is JSON text, since tool schemas differ from row to
  row), readable with ``datasets.load_from_disk``. The Arrow files are written in the same streaming
  pass (see :class:`_ArrowSink`: calling ``save_to_disk`` itself would re-read and rewrite the data).

Every exported record also carries ``id`` (the content hash of its messages), ``source`` and
``source_row``, so a record traces back to its input row, and the input's own fields (the user
columns, :func:`pipeline.schema.user_columns`) under the names and types they came in with (one
renamed ``user.<name>`` at ingest because the tool uses that name keeps the ``user.`` name where
the record has a field of that name too); ``with_scores`` adds every stage column (scores,
``keep``, ``drop_reason``, selection columns). The readers (:mod:`pipeline.io.readers`) read every
format back to the same ``messages``, ``tools`` and therefore the same ``id``; reading an export
back, its trace fields become user columns ``user.id`` / ``user.source`` / ``user.source_row``.

Lossless, with two documented exceptions of the ShareGPT layout: a reasoning trace that begins or
ends with a newline loses it (the ``<think>`` block is parsed as Qwen3's template parses it), and two
consecutive assistant messages, the second of which only calls tools, read back as one.

``out`` is a directory (``<out>/train.jsonl`` or the ``save_to_disk`` files, plus ``README.md``),
or for the JSONL formats a ``*.jsonl`` file with ``README.md`` beside it. ``README.md`` is a
Hugging Face dataset card (:func:`dataset_card`) that traces the data to the run that made it.

One directory holds one export: a second ``*.jsonl`` export into the same directory rewrites its
``README.md``.

The export streams: it reads ``batch_rows`` rows of one shard at a time and appends them to the
output, so memory does not grow with the number of rows. Files appear atomically (temp name, then
rename); a ``README.md`` or a dataset directory that this tool did not write is never overwritten.

``push_to_hub`` (only when asked; never in tests) uploads the export and its card to a Hub dataset
repo, created private if it does not exist, with the credentials ``huggingface_hub`` finds.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.io.shards import list_shards
from pipeline.schema import arguments_object, conform_messages, original_column_name, user_columns
from pipeline.score_columns import score_columns

EXPORT_FORMATS: tuple[str, ...] = ("messages", "sharegpt", "alpaca", "hf")
JSONL_FORMATS: tuple[str, ...] = ("messages", "sharegpt", "alpaca")

#: canonical role -> ShareGPT ``from`` (the names the readers map back, see pipeline.schema.ROLE_ALIASES)
SHAREGPT_ROLES: dict[str, str] = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}

#: columns every exported record carries besides the conversation, for tracing it to its input row
TRACE_COLUMNS: tuple[str, ...] = ("id", "source", "source_row")

#: the fields a format itself writes; score columns of these names would clash and are left out
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "messages": ("messages", "tools"),
    "hf": ("messages", "tools"),
    "sharegpt": ("conversations", "tools"),
    "alpaca": ("instruction", "input", "output", "system"),
}

#: the message fields of the messages layout besides role/content (left out where null)
OPENAI_MESSAGE_EXTRAS: tuple[str, ...] = ("reasoning_content", "tool_calls", "tool_call_id", "name")

#: numeric columns that are positions, not scores (left out of the card's score distributions)
NOT_SCORES: frozenset[str] = frozenset({"source_row", "select_rank"})

CARD_MARKER = "<!-- generated by sft-curate export; safe to regenerate -->"
DATA_NAME = "train.jsonl"
BATCH_ROWS = 20_000
HF_SHARD_BYTES = 500_000_000  # datasets.config.MAX_SHARD_SIZE, the save_to_disk default
QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)


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


class ExportError(ValueError):
    """An export that cannot run (bad format, bad predicate, missing run); the message says why."""


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


# ---------------------------------------------------------------- format mapping


def _roles() -> pl.Expr:
    return pl.col("messages").list.eval(pl.element().struct.field("role"))


def _turn(role: str) -> pl.Expr:
    """Content of the first turn with ``role`` (null when there is none)."""
    return (
        pl.col("messages")
        .list.eval(pl.element().filter(pl.element().struct.field("role") == role).struct.field("content"))
        .list.first()
    )


def alpaca_skip_reason() -> pl.Expr:
    """Why a row cannot be one exact Alpaca record (null when it can).

    Alpaca readers build ``[system?, user(instruction + input), assistant(output)]`` and drop an
    empty system prompt, so anything else would not read back to the same messages.
    """
    roles = _roles()
    n_user = roles.list.eval(pl.element() == "user").list.sum()
    n_asst = roles.list.eval(pl.element() == "assistant").list.sum()
    n_tool = roles.list.eval(pl.element() == "tool").list.sum()
    seq = roles.list.join(",")
    el = pl.element()
    n_calls = pl.col("messages").list.eval(el.struct.field("tool_calls").list.len().fill_null(0)).list.sum()
    has_tools = pl.col("tools").is_not_null()
    named = pl.col("messages").list.eval(el.struct.field("name").is_not_null()).list.any()
    return (
        pl.when((n_user > 1) | (n_asst > 1)).then(pl.lit("multi_turn"))
        .when(n_tool > 0).then(pl.lit("tool_turn"))
        .when(n_calls > 0).then(pl.lit("tool_calls"))
        .when(has_tools).then(pl.lit("tools"))
        .when(named).then(pl.lit("message_name"))
        .when(~seq.is_in(["user,assistant", "system,user,assistant"])).then(pl.lit("turn_order"))
        .when((seq == "system,user,assistant") & (_turn("system") == "")).then(pl.lit("empty_system"))
        .otherwise(None)
    )


def _inline_think(reasoning: pl.Expr, content: pl.Expr) -> pl.Expr:
    return pl.when(reasoning.is_null()).then(content).otherwise(
        pl.concat_str([pl.lit("<think>\n"), reasoning, pl.lit("\n</think>\n\n"), content]))


def think_text(reasoning: str | None, content: str) -> str:
    """An assistant turn with its reasoning inline, as ShareGPT / Alpaca reasoning data holds it."""
    return content if reasoning is None else f"<think>\n{reasoning}\n</think>\n\n{content}"


def openai_messages_expr() -> pl.Expr:
    """``messages`` in the OpenAI layout with every field (the ``hf`` format's struct)."""
    el, call = pl.element(), pl.element()
    calls = el.struct.field("tool_calls").list.eval(pl.struct(
        call.struct.field("id").alias("id"), call.struct.field("type").alias("type"),
        pl.struct(call.struct.field("name").alias("name"), call.struct.field("arguments").alias("arguments")).alias("function"),
    ))
    return pl.col("messages").list.eval(pl.struct(
        el.struct.field("role").alias("role"), el.struct.field("content").alias("content"),
        el.struct.field("reasoning").alias("reasoning_content"), calls.alias("tool_calls"),
        el.struct.field("tool_call_id").alias("tool_call_id"), el.struct.field("name").alias("name"),
    )).alias("messages")


def rich_expr() -> pl.Expr:
    """Rows that carry tool definitions or any message field besides role/content."""
    el = pl.element()
    extras = pl.col("messages").list.eval(
        el.struct.field("reasoning").is_not_null() | (el.struct.field("tool_calls").list.len().fill_null(0) > 0)
        | el.struct.field("tool_call_id").is_not_null() | el.struct.field("name").is_not_null()
    ).list.any()
    return extras.fill_null(False) | pl.col("tools").is_not_null()


def _conversation(fmt: str) -> list[pl.Expr]:
    """The format's own fields, built from ``messages`` (for JSONL: of rows without tool calls,
    reasoning or tools; :func:`rich_record` writes those)."""
    if fmt == "hf":
        return [openai_messages_expr(), pl.col("tools")]
    if fmt == "messages":
        el = pl.element()
        return [pl.col("messages").list.eval(pl.struct(el.struct.field("role"), el.struct.field("content")))]
    if fmt == "sharegpt":
        role = pl.element().struct.field("role").replace_strict(SHAREGPT_ROLES, return_dtype=pl.String)
        conv = pl.col("messages").list.eval(pl.struct(role.alias("from"), pl.element().struct.field("content").alias("value")))
        return [conv.alias("conversations")]
    if fmt == "alpaca":
        el = pl.element()
        output = (pl.col("messages").list.eval(el.filter(el.struct.field("role") == "assistant"))
                  .list.first())
        return [_turn("user").alias("instruction"), pl.lit("").alias("input"),
                _inline_think(output.struct.field("reasoning"), output.struct.field("content")).alias("output"),
                _turn("system").alias("system")]
    raise ExportError(f"unknown export format {fmt!r}; allowed: {', '.join(EXPORT_FORMATS)}")


def _openai_message(m: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m["role"], "content": m["content"]}
    if m.get("reasoning") is not None:
        out["reasoning_content"] = m["reasoning"]
    if m.get("tool_calls"):
        out["tool_calls"] = [{**({"id": c["id"]} if c.get("id") is not None else {}), "type": c.get("type") or "function",
                              "function": {"name": c["name"], "arguments": c["arguments"]}} for c in m["tool_calls"]]
    for k in ("tool_call_id", "name"):
        if m.get(k) is not None:
            out[k] = m[k]
    return out


def _sharegpt_call(c: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": c["name"], "arguments": arguments_object(c["arguments"])}
    if c.get("id") is not None:
        out["id"] = c["id"]
    if c.get("type") not in (None, "function"):
        out["type"] = c["type"]
    return out


def _sharegpt_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for m in messages:
        role = m["role"]
        if role == "assistant":
            text = think_text(m.get("reasoning"), m["content"])
            calls = m.get("tool_calls") or []
            if text or not calls:
                turns.append({"from": "gpt", "value": text})
            if calls:
                value = _sharegpt_call(calls[0]) if len(calls) == 1 else [_sharegpt_call(c) for c in calls]
                turns.append({"from": "function_call", "value": json.dumps(value, ensure_ascii=False)})
            continue
        t: dict[str, Any] = {"from": SHAREGPT_ROLES[role], "value": m["content"]}
        for k in ("tool_call_id", "name"):
            if m.get(k) is not None:
                t[k] = m[k]
        turns.append(t)
    return turns


def rich_record(fmt: str, row: dict[str, Any], carried: Sequence[str], names: dict[str, str]) -> dict[str, Any]:
    """One JSONL record of a row with tool calls, reasoning or tools (messages / sharegpt layouts)."""
    tools = row.get("tools")
    if fmt == "messages":
        rec: dict[str, Any] = {"messages": [_openai_message(m) for m in row["messages"]]}
        if tools is not None:
            rec["tools"] = json.loads(tools)
    else:
        rec = {"conversations": _sharegpt_turns(row["messages"])}
        if tools is not None:
            rec["tools"] = tools
    for c in carried:
        rec[names.get(c, c)] = row[c]
    return rec


def _stage_output_columns(manifest: dict[str, Any]) -> set[str]:
    """Columns the run's stages declare (with their params), best effort."""
    out: set[str] = set()
    for st in manifest.get("stages", []):
        cls = _stage_class(st["name"])
        if cls is None:
            continue
        try:
            out.update(cls(**(st.get("params") or {})).output_schema())
        except Exception:  # noqa: BLE001 - a stage that cannot be built here still has its class columns
            out.update(getattr(cls, "columns", {}) or {})
    return out


def _carried(schema: dict[str, pl.DataType], fmt: str, with_scores: bool,
             stage_cols: set[str] | frozenset[str] = frozenset()) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Extra columns written after the conversation, the ones left out with the reason, and the
    output name of each user column (its input name, unless the record has a field of that name)."""
    cols = [c for c in (*TRACE_COLUMNS, "split") if c in schema]
    omitted: dict[str, str] = {}
    names: dict[str, str] = {}
    taken = {*FORMAT_FIELDS[fmt], *cols}
    for c in user_columns([n for n in schema if n not in ("messages", "tools")], extra_reserved=sorted(stage_cols)):
        if c in cols:
            continue
        cols.append(c)
        orig = original_column_name(c)
        if orig != c and orig not in taken and orig not in schema:
            names[c] = orig
    if not with_scores:
        return cols, omitted, names
    for name, dtype in schema.items():
        if name in cols or name in ("messages", "tools"):
            continue
        base = dtype
        while isinstance(base, (pl.List, pl.Array)):
            base = base.inner  # type: ignore[assignment]
        if name in FORMAT_FIELDS[fmt]:
            omitted[name] = f"clashes with the {fmt} field of that name"
        elif base in (pl.Binary, pl.Object):
            omitted[name] = f"{dtype} has no JSON form"
        else:
            cols.append(name)
    return cols, omitted, names


def _json_lines(fmt: str, df: pl.DataFrame, carried: list[str], names: dict[str, str]) -> list[bytes]:
    """The JSONL records of a batch with rows that carry tool calls, reasoning or tools: plain rows
    encoded by Polars, the others by :func:`rich_record`, in row order."""
    rich = df.select(rich_expr().alias("r"))["r"].to_list()
    plain = df.filter(~pl.Series(rich)).select(
        pl.struct(*_conversation(fmt), *[pl.col(c).alias(names.get(c, c)) for c in carried]).struct.json_encode().alias("j"))["j"]
    rows = df.filter(pl.Series(rich)).select("messages", "tools", *carried).to_dicts()
    it_plain, it_rich = iter(plain.to_list()), iter(rows)
    opt = orjson.OPT_NON_STR_KEYS
    return [orjson.dumps(rich_record(fmt, next(it_rich), carried, names), option=opt, default=str) if r
            else next(it_plain).encode() for r in rich]


def _datasets_arrow_type(t: pa.DataType) -> pa.DataType:
    """Polars' large/view Arrow types -> the plain ones ``datasets`` features use."""
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return pa.list_(_datasets_arrow_type(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _datasets_arrow_type(f.type), f.nullable) for f in t])
    if pa.types.is_dictionary(t):
        return _datasets_arrow_type(t.value_type)
    return t


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


# ---------------------------------------------------------------- the dataset card


def _size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < bound:
            return label
    return "10M<n<100M"


class _Safe(str):
    """A table cell already rendered (by :func:`_code`)."""


def _code(s: str) -> _Safe:
    """``s`` as a code span in a table cell: HTML inside a code span is shown, not rendered, so only
    what could end the span or the cell is replaced."""
    return _Safe("`" + s.replace("`", "'").replace("|", "\\|").replace("\n", " ") + "`")


def _md(v: Any) -> str:
    """A table cell: pipes and newlines escaped, and HTML too (reasons and names can carry row text,
    and the Hub renders raw HTML in a card)."""
    if isinstance(v, _Safe):
        return str(v)
    s = "-" if v is None else (f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
    return html.escape(s, quote=False).replace("|", "\\|").replace("\n", " ")


def _relativise(obj: Any, base: Path) -> Any:
    """``obj`` with every absolute local path in it (a string naming something under an existing
    top-level folder) made relative to ``base``: a card is published, local folders are not."""
    if isinstance(obj, dict):
        return {k: _relativise(v, base) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relativise(v, base) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj) and "\n" not in obj and len(obj) < 4096:
        top = Path(obj).parts[:2]
        if len(top) == 2 and Path(*top).exists():
            with contextlib.suppress(ValueError):  # another drive: left as it is
                return Path(os.path.relpath(obj, base)).as_posix()
    return obj


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return f"{v:,}"


def _stage_class(name: str) -> Any:
    try:
        from pipeline.stages import get_stage

        return get_stage(name)
    except Exception:  # a stage module missing from this install
        return None


def _stage_rules(manifest: dict[str, Any]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Drop counts by rule per stage, and the rules that name no stage.

    A rule belongs to a stage when its first part is the stage's name or the stage's
    ``reason_prefix`` (``decontaminate`` writes ``decontam:...``, ``minhash_dedup`` ``minhash:...``).
    """
    owner: dict[str, str] = {}
    for s in manifest.get("stages", []):
        cls = _stage_class(s["name"])
        owner.setdefault(s["name"], s["name"])
        owner.setdefault(getattr(cls, "reason_prefix", None) or s["name"], s["name"])
    per: dict[str, dict[str, int]] = {s["name"]: {} for s in manifest.get("stages", [])}
    other: dict[str, int] = {}
    for rule, n in manifest.get("counts", {}).get("dropped_by_rule", {}).items():
        stage = owner.get(rule.split(":", 1)[0])
        (per[stage] if stage is not None else other)[rule] = n
    return per, other


def _is_selector(name: str, params: dict[str, Any]) -> bool:
    cls = _stage_class(name)
    return bool(cls.is_selector) if cls is not None else "budget" in params


def dataset_card(run_dir: Path, export_info: dict[str, Any], manifest: dict[str, Any] | None = None) -> str:
    """A Hugging Face dataset card (``README.md``) for an export of ``run_dir``.

    It names the run (id, config hash, versions), the sources with their row counts, every stage
    with its config and drop counts by rule, the selection method and budget, the decontamination
    checks, the models, the score distributions of the exported rows, and a JSON provenance block
    with the same numbers for machines.
    """
    run_dir = Path(run_dir)
    m = manifest if manifest is not None else json.loads((run_dir / "manifest.json").read_text())
    base = Path(export_info["card"]).parent if export_info.get("card") else run_dir  # paths are relative to the card
    m, info = _relativise(m, base), _relativise(export_info, base)
    c = m.get("counts", {})
    stages = m.get("stages", [])
    fmt = info["format"]
    data_name = Path(info["data"]).name
    front: dict[str, Any] = {
        "pretty_name": f"{m.get('run_id')} ({fmt})",
        "task_categories": ["text-generation"],
        "tags": ["sft", "instruction-tuning", "sft-curate"],
        "size_categories": [_size_category(int(info["exported"]))],
    }
    if fmt != "hf":
        front["configs"] = [{"config_name": "default", "data_files": [{"split": "train", "path": data_name}]}]
    L: list[str] = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", CARD_MARKER, ""]
    L += [f"# {m.get('run_id')}: {info['exported']:,} training rows ({fmt})", ""]
    L += [
        f"Curated with sft-curate, run `{m.get('run_id')}`, config hash "
        f"`{m.get('config_hash')}`, created {m.get('created')}, exported {info.get('exported_at')}.",
        "",
    ]
    layout = {
        "messages": "JSONL, one `{\"messages\": [{\"role\", \"content\"}, ...]}` per line (TRL `SFTTrainer` layout; "
                    "`tool_calls`, `reasoning_content`, `tool_call_id`, `name` and `tools` where a row has them)",
        "sharegpt": "JSONL, one `{\"conversations\": [{\"from\", \"value\"}, ...]}` per line (LLaMA-Factory / axolotl ShareGPT; "
                    "`function_call` / `observation` turns and a `tools` JSON string where a row has them)",
        "alpaca": "JSONL, one `{\"instruction\", \"input\", \"output\", \"system\"}` per line (single-turn only)",
        "hf": "a Hugging Face `datasets` directory (`datasets.load_from_disk`), `messages` layout",
    }[fmt]
    L += ["## Export", "", "| field | value |", "|---|---|"]
    rows = [
        ("format", layout),
        ("files", ", ".join(f"`{n}`" for n in info.get("data_files") or [data_name])),
        ("rows", "`selected/` (kept and selected)" if not info.get("where") else _Safe(f"`shards/` where {_code(info['where'])}")),
        ("rows considered", info["rows_in"]),
        ("rows exported", info["exported"]),
        ("rows skipped", info["skipped"]),
        ("rows with keep = false exported", info.get("rows_in_dropped", 0)),
        ("columns", ", ".join(f"`{x}`" for x in info["columns"])),
        ("scores carried", "yes" if info.get("with_scores") else "no"),
        ("sha256", f"`{info['sha256']}`" if info.get("sha256") else "-"),
    ]
    L += [f"| {k} | {_md(v)} |" for k, v in rows]
    if info["skipped"]:
        L += ["", f"Skipped rows are listed in `{Path(info['skipped_list']).name}` (id, source, source_row, reason):", "",
              "| reason | rows |", "|---|---:|"]
        L += [f"| {_md(r)} | {n:,} |" for r, n in info["skipped_by_reason"].items()]
    if info.get("columns_omitted"):
        L += ["", "Columns left out: " + "; ".join(f"`{k}` ({v})" for k, v in info["columns_omitted"].items())]

    L += ["", "## Row accounting", "", "| read | rejected | kept | dropped | selected |", "|---:|---:|---:|---:|---:|",
          f"| {_num(c.get('read'))} | {_num(c.get('rejected'))} | {_num(c.get('kept'))} | {_num(c.get('dropped'))} "
          f"| {_num(c.get('selected'))} |", "",
          f"read = kept + dropped + rejected: **{'balanced' if c.get('balanced') else 'NOT balanced'}**."]

    L += ["", "## Sources", "", "| source | path | format | read | rejected | rows |", "|---|---|---|---:|---:|---:|"]
    for s in m.get("sources", []):
        L.append(f"| {_md(s.get('name'))} | {_code(str(s.get('path')))} | {_md(s.get('format'))} | {_num(s.get('read'))} "
                 f"| {_num(s.get('rejected'))} | {_num(s.get('rows'))} |")
    rej = {f"{s['name']}: {r}": n for s in m.get("sources", []) for r, n in (s.get("reject_reasons") or {}).items()}
    if rej:
        L += ["", "Reject reasons:", "", "| source: reason | rows |", "|---|---:|"]
        L += [f"| {_md(r)} | {n:,} |" for r, n in rej.items()]
    L += ["", "Licences are those of the sources; check each before redistributing."]

    per_rule, other = _stage_rules(m)
    L += ["", "## Stages", "", "In order; a row is dropped by the first stage whose rule it fails.", "",
          "| # | stage | scope | dropped | rules (rows) |", "|---:|---|---|---:|---|"]
    for i, s in enumerate(stages):
        rules = _Safe(", ".join(f"{_code(r)} ({n:,})" for r, n in per_rule.get(s["name"], {}).items()) or "-")
        dropped = sum(per_rule.get(s["name"], {}).values())
        L.append(f"| {i} | {s['name']} | {s.get('scope', '-')} | {_num(dropped)} | {_md(rules)} |")
    if other:
        L += ["", "Drops whose reason names no stage: " + ", ".join(f"`{r}` ({n:,})" for r, n in other.items())]
    if stages:
        L += ["", "Stage configs:", "", "```yaml",
              yaml.safe_dump([{"stage": s["name"], **(s.get("params") or {})} for s in stages], sort_keys=False).rstrip(),
              "```"]

    sel = [s for s in stages if _is_selector(s["name"], s.get("params") or {})]
    L += ["", "## Selection", ""]
    if sel:
        L += ["| selector | budget | unit | params |", "|---|---:|---|---|"]
        for s in sel:
            p = dict(s.get("params") or {})
            budget, unit = p.pop("budget", None), p.pop("budget_unit", "rows")
            L.append(f"| {s['name']} | {_num(budget)} | {unit} | {_md(json.dumps(p, sort_keys=True))} |")
        L += ["", f"{_num(c.get('selected'))} of {_num(c.get('kept'))} kept rows were selected."]
    else:
        L += [f"No selector ran: every kept row ({_num(c.get('kept'))}) is selected."]

    dec = [s for s in stages if s["name"].startswith("decontam")]
    L += ["", "## Decontamination", ""]
    if dec:
        for s in dec:
            L += [f"Stage `{s['name']}` dropped {_num(sum(per_rule.get(s['name'], {}).values()))} rows. "
                  "Benchmarks and settings:", "",
                  "```yaml", yaml.safe_dump(s.get("params") or {}, sort_keys=False).rstrip(), "```"]
            rules = per_rule.get(s["name"], {})
            if rules:
                L += ["", "| match | rows |", "|---|---:|"] + [f"| {_code(r)} | {n:,} |" for r, n in rules.items()]
            if s.get("summary"):
                L += ["", "```json", json.dumps(s["summary"], indent=2, default=str), "```"]
    else:
        L += ["No decontamination stage ran: this data was **not** checked against any benchmark."]

    models = {s["name"]: s["models"] for s in stages if s.get("models")}
    L += ["", "## Models", ""]
    if models:
        L += ["| stage | models |", "|---|---|"] + [f"| {k} | {_md(json.dumps(v, default=str))} |" for k, v in models.items()]
    else:
        L += ["No model was used for scoring or embedding."]

    st = info.get("score_stats") or {}
    L += ["", "## Score distributions of the exported rows", ""]
    if st:
        qs = [f"p{round(q * 100):02d}" for q in QUANTILES]
        L += ["| column | count | null | mean | min | " + " | ".join(qs) + " | max |",
              "|---|" + "---:|" * (len(qs) + 5)]
        for col, d in st.items():
            L.append(f"| {_md(col)} | {_num(d['count'])} | {_num(d['null'])} | {_num(d['mean'])} | {_num(d['min'])} | "
                     + " | ".join(_num(d[q]) for q in qs) + f" | {_num(d['max'])} |")
    else:
        L += ["No numeric score columns."]

    L += ["", "## Reproduce", "", f"Run directory `{info['run_dir']}`; versions:", "", "```json",
          json.dumps(m.get("versions", {}), indent=2), "```", "", "Config:", "", "```yaml",
          yaml.safe_dump(m.get("config", {}), sort_keys=False).rstrip(), "```"]
    provenance = {
        "run_id": m.get("run_id"),
        "config_hash": m.get("config_hash"),
        "created": m.get("created"),
        "counts": {k: c.get(k) for k in ("read", "rejected", "kept", "dropped", "selected", "balanced")},
        "dropped_by_rule": c.get("dropped_by_rule", {}),
        "sources": [{k: s.get(k) for k in ("name", "path", "format", "read", "rejected", "rows")} for s in m.get("sources", [])],
        "stages": [{"name": s["name"], "fingerprint": s.get("fingerprint"),
                    "dropped": sum(per_rule.get(s["name"], {}).values()), "dropped_by_rule": per_rule.get(s["name"], {}),
                    "params": s.get("params")} for s in stages],
        "export": {k: info.get(k) for k in ("format", "input", "where", "with_scores", "rows_in", "rows_in_dropped",
                                            "exported", "skipped", "skipped_by_reason", "columns", "sha256", "exported_at")},
    }
    L += ["", "## Provenance (machine-readable)", "", "```json", json.dumps(provenance, indent=2, default=str), "```", ""]
    return "\n".join(L)


def card_provenance(card_text: str) -> dict[str, Any]:
    """The JSON provenance block of a card written by :func:`dataset_card`."""
    head = "## Provenance (machine-readable)"
    i = card_text.index(head)
    body = card_text[i + len(head):]
    start = body.index("```json") + len("```json")
    return json.loads(body[start: body.index("```", start)])

__all__ = ["export", "dataset_card", "run_exports", "card_provenance", "ExportSpec", "ExportError",
           "alpaca_skip_reason", "EXPORT_FORMATS"]
