"""The canonical chat schema, defined once.

Every reader produces rows of :data:`CANONICAL`; every stage adds columns to them; every shard on
disk is ``CANONICAL + stage columns + DECISION``. Rows that cannot be mapped go to shards of
:data:`REJECTS`.

``id`` is a content hash (xxh3-128 of the role/content pairs, plus the tool calls, tool-message
fields, reasoning and tool definitions where a row has them), so it is stable across sources,
reruns and export round trips: two rows with identical messages share an ``id`` and are, by
definition, exact duplicates. A row without tool calls, reasoning or tools hashes exactly as it did
before those fields existed. Within one run a row is addressed by ``(source, source_row)``.

Modern SFT data (tool use, agent traces, reasoning traces) lives in the message struct:

* ``content``: the visible text ("" for an assistant turn that only calls tools);
* ``reasoning``: the assistant's reasoning trace (``reasoning_content`` in the OpenAI-compatible
  APIs of DeepSeek / vLLM and in Qwen3-style chat templates, or a ``<think>...</think>`` block);
* ``tool_calls``: the assistant's calls, ``[{id, type, name, arguments}]``; ``arguments`` is the JSON
  text of the arguments object, verbatim when the input gave a string (OpenAI), else
  ``json.dumps(obj, ensure_ascii=False)`` (see :func:`arguments_text`);
* ``tool_call_id`` / ``name``: on a ``tool`` message, the call it answers and the function's name
  (``name`` is also kept on other roles, as OpenAI allows it there).

``tools`` is the conversation's tool definitions (the OpenAI ``tools`` list / the ShareGPT
``tools`` field) as canonical JSON text (:func:`tools_text`), null when the row has none.

Every other input field becomes a typed top-level column of its own (a *user column*); one whose
name the tool uses itself is renamed ``user.<name>`` (:func:`user_column_name`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import polars as pl
import pyarrow as pa
import xxhash

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")

#: Spellings seen in the wild (ShareGPT, FastChat, OpenAI, Gemini exports) -> canonical role.
ROLE_ALIASES: dict[str, str] = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
}

TOOL_CALL_TYPE = pa.struct([
    pa.field("id", pa.string()),
    pa.field("type", pa.string()),  # "function" in every format we read
    pa.field("name", pa.string()),
    pa.field("arguments", pa.string()),  # JSON text of the arguments object
])

MESSAGE_TYPE = pa.struct([
    pa.field("role", pa.string()),
    pa.field("content", pa.string()),
    pa.field("reasoning", pa.string()),
    pa.field("tool_calls", pa.list_(TOOL_CALL_TYPE)),
    pa.field("tool_call_id", pa.string()),
    pa.field("name", pa.string()),
])

#: the message fields besides role/content; null on a plain chat turn
MESSAGE_EXTRAS: tuple[str, ...] = ("reasoning", "tool_calls", "tool_call_id", "name")

CANONICAL = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("messages", pa.list_(MESSAGE_TYPE), nullable=False),
        pa.field("tools", pa.string()),  # JSON array of tool definitions, null when the row has none
    ]
)
#: user columns follow the canonical ones in a shard, one per unmapped input field

DECISION = pa.schema(
    [
        pa.field("keep", pa.bool_(), nullable=False),
        pa.field("drop_reason", pa.string()),  # "stage:rule[:detail]", null while kept
    ]
)

SELECTION = pa.schema(
    [
        pa.field("selected", pa.bool_()),
        pa.field("select_reason", pa.string()),
        pa.field("select_rank", pa.int64()),
    ]
)

REJECTS = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("raw", pa.string()),  # the offending input, truncated to RAW_LIMIT characters
    ]
)

RAW_LIMIT = 2000

CANONICAL_COLUMNS: tuple[str, ...] = tuple(CANONICAL.names)
KEY_COLUMNS: tuple[str, str] = ("source", "source_row")


def polars_schema(schema: pa.Schema) -> dict[str, pl.DataType]:
    """The Polars dtypes of an Arrow schema (for empty frames and casts)."""
    return dict(pl.from_arrow(schema.empty_table()).schema)


def _lp(x: str | None) -> str:
    """``|len|text`` (``|-1|`` for a missing value): one length-prefixed field of an id payload."""
    return "|-1|" if x is None else f"|{len(x)}|{x}"


def message_payload(m: dict[str, Any]) -> str:
    """One message's share of the :func:`message_id` payload.

    ``role|len(content)|content``, then, only where present, ``+reasoning``, ``+call`` (one per tool
    call: id, type, name, arguments), ``+tool_call_id`` and ``+name`` fields, each length-prefixed.
    A message without those fields gives exactly the payload of the role/content-only schema, so
    ids of plain chat rows did not change when the fields were added.
    """
    c = m["content"]
    out = f"{m['role']}|{len(c)}|{c}"
    if len(m) == 2:  # role and content only: most messages
        return out
    r = m.get("reasoning")
    if r is not None:
        out += "+reasoning" + _lp(r)
    for call in m.get("tool_calls") or ():
        out += "+call" + "".join(_lp(call.get(k)) for k in ("id", "type", "name", "arguments"))
    for k in ("tool_call_id", "name"):
        v = m.get(k)
        if v is not None:
            out += f"+{k}" + _lp(v)
    return out


def message_id(messages: Sequence[dict[str, Any]], tools: str | None = None) -> str:
    """Stable content id of a conversation: xxh3-128 (hex) of its length-prefixed message payloads.

    The payload is ``+tools|len|tools`` when the row has tool definitions, then
    :func:`message_payload` of each message, concatenated, UTF-8: unambiguous (every free text is
    length-prefixed; roles never start with ``+``), and the same bytes :func:`message_id_payload_expr`
    builds in Polars. Raises ``UnicodeEncodeError`` on text that is not valid Unicode (lone
    surrogates), which the readers turn into a reject.
    """
    payload = ("" if tools is None else "+tools" + _lp(tools)) + "".join(message_payload(m) for m in messages)
    return xxhash.xxh3_128_hexdigest(payload.encode("utf-8"))


def _lp_expr(x: pl.Expr) -> pl.Expr:
    return pl.when(x.is_null()).then(pl.lit("|-1|")).otherwise(
        pl.concat_str([pl.lit("|"), x.str.len_chars().cast(pl.String), pl.lit("|"), x]))


def _opt_expr(tag: str, x: pl.Expr) -> pl.Expr:
    return pl.when(x.is_null()).then(pl.lit("")).otherwise(pl.concat_str([pl.lit(f"+{tag}"), _lp_expr(x)]))


def message_id_payload_expr(messages: str = "messages", tools: str | None = None,
                            fields: Sequence[str] = MESSAGE_EXTRAS) -> pl.Expr:
    """The :func:`message_id` payload of each row as a Polars String expression.

    ``fields``: the message extras the column's struct has (a role/content-only struct: ``()``);
    ``tools``: the name of the tool-definitions column, if the frame has one.
    """
    el = pl.element()
    role, content = el.struct.field("role"), el.struct.field("content")
    parts = [role, pl.lit("|"), content.str.len_chars().cast(pl.String), pl.lit("|"), content]
    if "reasoning" in fields:
        parts.append(_opt_expr("reasoning", el.struct.field("reasoning")))
    if "tool_calls" in fields:
        call = pl.element()
        calls = el.struct.field("tool_calls").list.eval(pl.concat_str(
            [pl.lit("+call"), *(_lp_expr(call.struct.field(k)) for k in ("id", "type", "name", "arguments"))]
        )).list.join("")
        parts.append(calls.fill_null(""))
    for k in ("tool_call_id", "name"):
        if k in fields:
            parts.append(_opt_expr(k, el.struct.field(k)))
    body = pl.col(messages).list.eval(pl.concat_str(parts)).list.join("")
    if tools is None:
        return body
    return pl.concat_str([_opt_expr("tools", pl.col(tools)), body])


def message_part_expr(role: str, content: pl.Expr) -> pl.Expr:
    """One role/content-only message's share of the :func:`message_id` payload, from a content expression."""
    return pl.concat_str([pl.lit(f"{role}|"), content.str.len_chars().cast(pl.String), pl.lit("|"), content])


def hash_payloads(payloads: pl.Series) -> pl.Series:
    """xxh3-128 hex of each UTF-8 string, hashed straight from the Arrow buffers (no Python strings)."""
    import numpy as np

    arr = payloads.cast(pl.String).to_arrow(compat_level=pl.CompatLevel.oldest())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if len(arr) == 0:
        return pl.Series("id", [], dtype=pl.String)
    bufs = arr.buffers()
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    off = np.frombuffer(bufs[1], dtype=width)[arr.offset : arr.offset + len(arr) + 1].tolist()
    data = memoryview(bufs[2]) if bufs[2] is not None else memoryview(b"")
    h = xxhash.xxh3_128_hexdigest
    return pl.Series("id", [h(data[a:b]) for a, b in zip(off[:-1], off[1:], strict=True)], dtype=pl.String)


def message_fields(dtype: pl.DataType) -> tuple[str, ...]:
    """The message extras (:data:`MESSAGE_EXTRAS`) a ``messages`` column's dtype has."""
    inner = dtype.inner if isinstance(dtype, pl.List) else None  # type: ignore[union-attr]
    names = {f.name for f in inner.fields} if isinstance(inner, pl.Struct) else set()
    return tuple(k for k in MESSAGE_EXTRAS if k in names)


def message_ids(messages: pl.Series, tools: pl.Series | None = None) -> pl.Series:
    """:func:`message_id` of every row of a ``messages`` column (payload built in Polars, hashed in C)."""
    cols = {"m": messages} if tools is None else {"m": messages, "t": tools}
    fields = message_fields(messages.dtype)
    expr = message_id_payload_expr("m", None if tools is None else "t", fields)
    return hash_payloads(pl.DataFrame(cols).select(expr.alias("p"))["p"])


def conform_messages(df: pl.DataFrame, column: str = "messages") -> pl.DataFrame:
    """``df`` with its ``messages`` column cast to the full :data:`MESSAGE_TYPE` (missing message
    fields null), so stages and text views can name every field. A no-op on frames read from shards."""
    if column not in df.columns:
        return df
    want = polars_schema(pa.schema([pa.field(column, pa.list_(MESSAGE_TYPE))]))[column]
    out = df
    have_type = df.schema[column]
    if not isinstance(have_type, pl.List | pl.Null):
        if df.height == 0:
            # an empty pandas frame's object column arrives as text: nothing to convert
            return df.with_columns(pl.Series(column, [], dtype=want))
        raise ValueError(f"column `{column}` must hold lists of {{role, content}} messages, not {have_type} "
                         "(pipeline.frames.canonicalize converts instruction/response, ShareGPT and text tables)")
    if have_type != want:
        have = message_fields(have_type)
        if len(have) < len(MESSAGE_EXTRAS):
            el = pl.element()
            add = [pl.lit(None, dtype=want.inner.to_schema()[k]).alias(k)  # type: ignore[union-attr]
                   for k in MESSAGE_EXTRAS if k not in have]
            out = out.with_columns(pl.col(column).list.eval(el.struct.with_fields(add)))
        out = out.with_columns(pl.col(column).cast(want))
    return out


def arguments_text(args: Any) -> str:
    """A tool call's arguments as stored: a string verbatim (OpenAI gives JSON text), anything else
    as ``json.dumps(obj, ensure_ascii=False)`` (the separators ShareGPT tool datasets and
    LLaMA-Factory use), so an object read back from a ShareGPT export gives the same text."""
    if isinstance(args, str):
        return args
    return json.dumps(args, ensure_ascii=False)


def arguments_object(text: str | None) -> Any:
    """The arguments text as the JSON value it encodes, when that value dumps back to exactly the
    same text (:func:`arguments_text`); else the text itself, so an export never changes it."""
    if text is None:
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return text
    return obj if isinstance(obj, (dict, list)) and json.dumps(obj, ensure_ascii=False) == text else text


def tools_text(tools: Any) -> str | None:
    """Tool definitions (a list, or JSON text of one) as canonical JSON text; None when absent or
    empty. Raises ``ValueError`` when they are not a list of objects."""
    if tools is None:
        return None
    if isinstance(tools, str):
        if not tools.strip():
            return None
        try:
            tools = json.loads(tools)
        except ValueError as e:
            raise ValueError(f"field 'tools' is not valid JSON: {e}") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ValueError(f"field 'tools' must be a list of objects, got {type(tools).__name__}")
    return json.dumps(tools, ensure_ascii=False) if tools else None


# ---------------------------------------------------------------- user columns

#: column names the tool writes itself besides the stages' columns (``split``: the DatasetDict split)
TOOL_COLUMNS: frozenset[str] = frozenset(
    {*CANONICAL.names, *DECISION.names, *SELECTION.names, "meta", "split"})
USER_PREFIX = "user."


@functools.lru_cache(maxsize=1)
def stage_columns() -> frozenset[str]:
    """Every column a registered stage declares (best effort: a stage that cannot be imported here
    contributes nothing)."""
    try:
        from pipeline.stages import REGISTRY, get_stage
    except Exception:  # noqa: BLE001 - a partial install still reads data
        return frozenset()
    out: set[str] = set()
    for name in REGISTRY:
        try:
            out.update(getattr(get_stage(name), "columns", {}) or {})
        except Exception:  # noqa: BLE001
            continue
    return frozenset(out)


def reserved_columns() -> frozenset[str]:
    """Names a user column may not take: the tool's own columns and every stage's columns."""
    return TOOL_COLUMNS | stage_columns()


def user_column_name(name: str, reserved: frozenset[str] | None = None) -> str:
    """The column an input field ``name`` becomes: itself, or ``user.<name>`` when the tool uses that
    name (``source``, ``id``, ``keep``, a stage's score column, ...) or it starts with ``_`` (scratch)."""
    res = reserved_columns() if reserved is None else reserved
    if name in res or name.startswith("_") or name.startswith(USER_PREFIX):
        return USER_PREFIX + name
    return name


def original_column_name(column: str) -> str:
    """Inverse of :func:`user_column_name`: the input field a user column came from."""
    return column[len(USER_PREFIX):] if column.startswith(USER_PREFIX) else column


def user_columns(columns: Sequence[str], extra_reserved: Sequence[str] = ()) -> list[str]:
    """The user columns among ``columns`` (a shard's): those that are neither the tool's nor a stage's."""
    res = reserved_columns() | set(extra_reserved)
    return [c for c in columns if c.startswith(USER_PREFIX) or (c not in res and not c.startswith("_"))]


def empty_canonical() -> pl.DataFrame:
    return pl.from_arrow(CANONICAL.empty_table())


def with_decision(df: pl.DataFrame) -> pl.DataFrame:
    """Add ``keep=True`` / ``drop_reason=null`` to a frame that has no decision columns yet."""
    if "keep" in df.columns:
        return df
    return df.with_columns(pl.lit(True).alias("keep"), pl.lit(None, dtype=pl.String).alias("drop_reason"))
