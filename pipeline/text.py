"""Text views of a conversation and text normalisation, as Polars expressions.

A stage that needs "the instruction" or "the response" of a row takes it from here, so every stage
means the same thing by those words:

* ``instruction``: the system and user turns, joined with a blank line (multi-turn aware: every
  user turn counts);
* ``response``: the assistant turns, joined with a blank line; a turn's text is its content and its
  tool calls, one ``name(arguments)`` line each (:func:`turn_text_expr`), so a turn that only calls
  tools is not empty and two rows that call different tools differ. Reasoning is not part of it;
* ``reasoning``: the assistant turns' reasoning traces, joined with a blank line ("" when none);
* ``conversation``: every turn as ``role: text``, one per paragraph, with each assistant turn's
  reasoning as an ``assistant reasoning: ...`` paragraph before it (tool results are ``tool`` turns);
* ``first_instruction`` / ``last_response``: the first user turn and the last assistant turn.

The views name every message field (:data:`pipeline.schema.MESSAGE_TYPE`): a frame whose
``messages`` has only role/content goes through :func:`pipeline.schema.conform_messages` first
(the stages' ``to_polars`` does that).
"""

from __future__ import annotations

from typing import Literal

import polars as pl

TextView = Literal["instruction", "response", "reasoning", "conversation", "first_instruction", "last_response"]
TEXT_VIEWS: tuple[str, ...] = ("instruction", "response", "reasoning", "conversation", "first_instruction",
                               "last_response")

SEP = "\n\n"


def calls_text_expr(el: pl.Expr | None = None) -> pl.Expr:
    """A message's tool calls as text, one ``name(arguments)`` per line ("" when it has none)."""
    el = pl.element() if el is None else el
    call = pl.element()
    return (
        el.struct.field("tool_calls")
        .list.eval(pl.concat_str([call.struct.field("name").fill_null(""), pl.lit("("),
                                  call.struct.field("arguments").fill_null(""), pl.lit(")")]))
        .list.join("\n")
        .fill_null("")
    )


def turn_text_expr(el: pl.Expr | None = None) -> pl.Expr:
    """A message's text: its content, then its tool calls (:func:`calls_text_expr`), newline-joined."""
    el = pl.element() if el is None else el
    content = el.struct.field("content").fill_null("")
    calls = calls_text_expr(el)
    return (pl.when(calls == "").then(content).when(content == "").then(calls)
            .otherwise(pl.concat_str([content, pl.lit("\n"), calls])))


def _texts(roles: tuple[str, ...], messages: str = "messages") -> pl.Expr:
    el = pl.element()
    return pl.col(messages).list.eval(el.filter(el.struct.field("role").is_in(list(roles))).struct.field("content"))


def _turn_texts(roles: tuple[str, ...], messages: str = "messages") -> pl.Expr:
    el = pl.element()
    return pl.col(messages).list.eval(turn_text_expr(el.filter(el.struct.field("role").is_in(list(roles)))))


def text_expr(view: str, messages: str = "messages") -> pl.Expr:
    """A String expression with the given view of ``messages``."""
    el = pl.element()
    if view == "instruction":
        return _texts(("system", "user"), messages).list.join(SEP)
    if view == "response":
        return _turn_texts(("assistant",), messages).list.join(SEP)
    if view == "reasoning":
        return (pl.col(messages).list.eval(el.struct.field("reasoning").drop_nulls()).list.join(SEP)
                .fill_null(""))
    if view == "conversation":
        reasoning = el.struct.field("reasoning")
        para = pl.concat_str([el.struct.field("role"), pl.lit(": "), turn_text_expr(el)])
        with_r = pl.when(reasoning.is_null()).then(para).otherwise(
            pl.concat_str([el.struct.field("role"), pl.lit(" reasoning: "), reasoning, pl.lit(SEP), para]))
        return pl.col(messages).list.eval(with_r).list.join(SEP)
    if view == "first_instruction":
        return _texts(("user",), messages).list.first().fill_null("")
    if view == "last_response":
        return _turn_texts(("assistant",), messages).list.last().fill_null("")
    raise ValueError(f"unknown text view {view!r}; allowed: {', '.join(TEXT_VIEWS)}")


def normalize_expr(expr: pl.Expr) -> pl.Expr:
    """Normalise text for exact matching: NFKC, case fold, punctuation stripped, whitespace collapsed."""
    return (
        expr.str.normalize("NFKC")
        .str.to_lowercase()
        .str.replace_all(r"[\p{P}\p{S}]+", " ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


#: The built-in word tokenizer: runs of word characters, or single other non-space characters.
WORD_TOKEN_PATTERN = r"\w+|[^\w\s]"


def word_count_expr(expr: pl.Expr) -> pl.Expr:
    return expr.str.count_matches(WORD_TOKEN_PATTERN).cast(pl.Int64)
