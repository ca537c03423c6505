"""Format mapping: canonical rows -> messages / ShareGPT / Alpaca / HF records (expressions and
per-record fallbacks for tool calls and reasoning)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson
import polars as pl
import pyarrow as pa

from pipeline.schema import arguments_object, original_column_name, user_columns

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


QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)


class ExportError(ValueError):
    """An export that cannot run (bad format, bad predicate, missing run); the message says why."""


def _stage_class(name: str) -> Any:
    try:
        from pipeline.stages import get_stage

        return get_stage(name)
    except Exception:  # a stage module missing from this install
        return None
