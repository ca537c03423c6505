"""The canonical chat schema, defined once.

Every reader produces rows of :data:`CANONICAL`; every stage adds columns to them; every shard on
disk is ``CANONICAL + stage columns + DECISION``. Rows that cannot be mapped go to shards of
:data:`REJECTS`.

``id`` is a content hash (xxh3-128 of the role/content pairs), so it is stable across sources,
reruns and export round trips: two rows with identical messages share an ``id`` and are, by
definition, exact duplicates. Within one run a row is addressed by ``(source, source_row)``.
"""

from __future__ import annotations

from collections.abc import Sequence

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

MESSAGE_TYPE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])

CANONICAL = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("messages", pa.list_(MESSAGE_TYPE), nullable=False),
        pa.field("meta", pa.string()),  # JSON object of every input field the reader did not map
    ]
)

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


def message_id(messages: Sequence[dict[str, str]]) -> str:
    """Stable content id of a conversation: xxh3-128 (hex) of its length-prefixed (role, content) pairs.

    The payload is ``role|len(content)|content`` per message, concatenated, UTF-8: unambiguous, and
    the same bytes :func:`message_id_payload_expr` builds in Polars. Raises ``UnicodeEncodeError``
    on text that is not valid Unicode (lone surrogates), which the readers turn into a reject.
    """
    payload = "".join(f"{m['role']}|{len(m['content'])}|{m['content']}" for m in messages)
    return xxhash.xxh3_128_hexdigest(payload.encode("utf-8"))


def message_id_payload_expr(messages: str = "messages") -> pl.Expr:
    """The :func:`message_id` payload of each row as a Polars String expression."""
    el = pl.element()
    role, content = el.struct.field("role"), el.struct.field("content")
    return pl.col(messages).list.eval(
        pl.concat_str([role, pl.lit("|"), content.str.len_chars().cast(pl.String), pl.lit("|"), content])
    ).list.join("")


def message_part_expr(role: str, content: pl.Expr) -> pl.Expr:
    """One message's share of the :func:`message_id` payload, from a content expression."""
    return pl.concat_str([pl.lit(f"{role}|"), content.str.len_chars().cast(pl.String), pl.lit("|"), content])


def hash_payloads(payloads: pl.Series) -> pl.Series:
    """xxh3-128 hex of each UTF-8 string, hashed straight from the Arrow buffers (no Python strings)."""
    import numpy as np
    import pyarrow as pa

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


def message_ids(messages: pl.Series) -> pl.Series:
    """:func:`message_id` of every row of a ``messages`` column (payload built in Polars, hashed in C)."""
    return hash_payloads(pl.DataFrame({"m": messages}).select(message_id_payload_expr("m"))["m"])


def empty_canonical() -> pl.DataFrame:
    return pl.from_arrow(CANONICAL.empty_table())


def with_decision(df: pl.DataFrame) -> pl.DataFrame:
    """Add ``keep=True`` / ``drop_reason=null`` to a frame that has no decision columns yet."""
    if "keep" in df.columns:
        return df
    return df.with_columns(pl.lit(True).alias("keep"), pl.lit(None, dtype=pl.String).alias("drop_reason"))
