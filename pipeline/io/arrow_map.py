"""Vectorised mapping of Arrow batches (Parquet row groups) to canonical rows, and the checks that
keep bad bytes out of the store.

Parquet and datasets batches of the common shapes are mapped with Polars expressions instead of
per-record Python; the result (messages, ids, reject reasons, user columns) is the same as the record
mappers in :mod:`pipeline.io.formats` give. Anything unusual (non-string columns, content parts,
mixed answer keys) returns None and the batch takes the per-record path.

Arrow does not check that Parquet string cells are UTF-8, and Polars takes them as they are, so one
bad cell would be written into a store shard that no reader can open again. :func:`split_invalid_utf8`
finds such rows (one full validation per batch on the hot path; only a batch that fails it is
looked at cell by cell) so they become rejects and never reach a shard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.io.formats import (
    CALL_ROLES,
    INVISIBLE_CLASS,
    INVISIBLE_REASON,
    THINK_TAGS,
    WHITESPACE_CLASS,
    think_pattern,
)
from pipeline.schema import (
    CANONICAL,
    RAW_LIMIT,
    REJECTS,
    ROLE_ALIASES,
    conform_messages,
    hash_payloads,
    message_ids,
    message_part_expr,
    reserved_columns,
    user_column_name,
)

if TYPE_CHECKING:
    from pipeline.io.readers import SourceSpec

_VISIBLE = f"[^{INVISIBLE_CLASS}]"
_NOT_SPACE = f"[^{WHITESPACE_CLASS}]"


def _invisible_only(text: pl.Expr) -> pl.Expr:
    """:func:`pipeline.io.formats.invisible_only` on a string column (null stays null)."""
    return ~text.str.contains(_VISIBLE) & text.str.contains(_NOT_SPACE)



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
    has_sys_col = system is not None and system in schema
    checks = [(has_sys & _invisible_only(sys_), "system")] if has_sys_col else []
    checks += [(_invisible_only(user), "user"), (_invisible_only(answer), "assistant")]
    invisible = pl.when(checks[0][0]).then(pl.lit(INVISIBLE_REASON.format(checks[0][1])))
    for cond, role in checks[1:]:
        invisible = invisible.when(cond).then(pl.lit(INVISIBLE_REASON.format(role)))
    reason = pl.coalesce([reason, invisible.otherwise(pl.lit(None, pl.String))])
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
        c.list.eval(pl.when(_invisible_only(content)).then(role)).list.drop_nulls().list.first().alias("_invisible"),
        *_user_exprs([x for x in df.columns if x not in (key, "_row")]),
    )
    roles = pl.col("messages").list.eval(el.struct.field("role"))
    reason = (
        pl.when(pl.col("_missing")).then(pl.lit(f"missing field '{key}'"))
        .when(pl.col("_turn_err").is_not_null()).then(pl.col("_turn_err"))
        .when(pl.col("messages").list.len() == 0).then(pl.lit("empty conversation"))
        .when(~roles.list.contains("assistant")).then(pl.lit("no assistant turn"))
        .when(~roles.list.contains("user")).then(pl.lit("no user turn"))
        .when(pl.col("_invisible").is_not_null()).then(
            pl.concat_str([pl.col("_invisible"), pl.lit(INVISIBLE_REASON.format(""))]))
        .otherwise(pl.lit(None, pl.String))
    )
    return tmp.select(pl.col("_row"), reason.alias("_reason"), pl.exclude("_row", "_missing", "_turn_err", "_invisible"))


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
                    spec: SourceSpec | None = None, rows: np.ndarray | None = None
                    ) -> tuple[pa.Table, pa.Table] | None:
    """Map a whole Arrow batch of records in format ``fmt`` at once: ``(rows, rejects)`` (canonical
    columns then user columns; REJECTS), or None if it needs the per-record path.

    ``spec`` gives the reasoning settings (default: split leading think blocks). Records are rows
    ``start_row, start_row + 1, ...`` of the source, or ``rows`` when given (a batch with some rows
    taken out, e.g. for bad bytes)."""
    if fmt not in _FLAT and fmt not in ("sharegpt", "messages"):
        return None
    try:
        df = pl.from_arrow(rb)
    except Exception:  # exotic Arrow types: let the per-record path report them
        return None
    assert isinstance(df, pl.DataFrame)
    if rows is None:
        df = df.with_row_index("_row", offset=start_row)
    else:
        df = df.select(pl.Series("_row", rows, dtype=pl.UInt32 if rows.max(initial=0) < 2**32 else pl.UInt64), pl.all())
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
    table_rows = pa.Table.from_arrays([*canon.columns, *extra.columns], schema=pa.schema([*CANONICAL, *extra.schema]))
    rejects = pl.DataFrame({
        "source": pl.Series([source] * bad.height, dtype=pl.String),
        "source_row": bad["_row"].cast(pl.Int64),
        "reason": bad["_reason"],
        "raw": raw_text,
    }).to_arrow().cast(REJECTS)
    return table_rows, rejects


# ---------------------------------------------------------------- invalid UTF-8 in string cells


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", lambda _t: False)(t)


def _find_bad_utf8(arr: pa.Array, rows: np.ndarray, path: str, bad: dict[int, tuple[str, str]]) -> None:
    """Record in ``bad`` (row -> (reason, raw)) every row of ``arr`` whose text holds invalid UTF-8;
    ``rows[i]`` is the batch row of ``arr[i]``. Only arrays that fail validation are looked into."""
    try:
        arr.validate(full=True)
        return
    except pa.ArrowInvalid:
        pass
    t = arr.type
    if _is_text(t):
        binary = arr.view(pa.large_binary() if pa.types.is_large_string(t) else pa.binary())
        for i, v in enumerate(binary.to_pylist()):  # only in a batch that holds a bad cell
            if v is None:
                continue
            try:
                v.decode("utf-8")
            except UnicodeDecodeError as e:
                bad.setdefault(int(rows[i]), (f"invalid UTF-8 in column '{path}' (byte {e.start})",
                                              v.decode("utf-8", "replace")[:RAW_LIMIT]))
    elif pa.types.is_struct(t):
        for f, child in zip(t, arr.flatten(), strict=True):
            _find_bad_utf8(child, rows, f"{path}.{f.name}", bad)
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        values, parents = arr.flatten(), pc.list_parent_indices(arr).to_numpy()
        if len(values) == len(parents):
            _find_bad_utf8(values, rows[parents], f"{path}[]", bad)


def split_invalid_utf8(rb: pa.RecordBatch) -> tuple[pa.RecordBatch, np.ndarray | None, dict[int, tuple[str, str]]]:
    """``(rb without its bad rows, their batch offsets or None when none was taken out, bad rows)``
    where a bad row (offset -> (reason, raw)) holds a string cell that is not UTF-8. A batch that
    fails validation for another reason has every row bad, with Arrow's message."""
    try:
        rb.validate(full=True)
        return rb, None, {}
    except pa.ArrowInvalid as e:
        error = str(e)
    bad: dict[int, tuple[str, str]] = {}
    all_rows = np.arange(rb.num_rows)
    for name, col in zip(rb.schema.names, rb.columns, strict=True):
        _find_bad_utf8(col, all_rows, name, bad)
    if not bad:  # not a text problem this code can pin to rows
        bad = {i: (f"invalid Arrow data in this row group: {error}", "") for i in range(rb.num_rows)}
    keep = np.ones(rb.num_rows, dtype=bool)
    keep[list(bad)] = False
    return rb.filter(pa.array(keep)), np.flatnonzero(keep), bad
