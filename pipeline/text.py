"""Text views of a conversation and text normalisation, as Polars expressions.

A stage that needs "the instruction" or "the response" of a row takes it from here, so every stage
means the same thing by those words:

* ``instruction``: the system and user turns, joined with a blank line (multi-turn aware: every
  user turn counts);
* ``response``: the assistant turns, joined with a blank line;
* ``conversation``: every turn as ``role: content``, one per paragraph;
* ``first_instruction`` / ``last_response``: the first user turn and the last assistant turn.
"""

from __future__ import annotations

from typing import Literal

import polars as pl

TextView = Literal["instruction", "response", "conversation", "first_instruction", "last_response"]
TEXT_VIEWS: tuple[str, ...] = ("instruction", "response", "conversation", "first_instruction", "last_response")

SEP = "\n\n"


def _contents(roles: tuple[str, ...], messages: str = "messages") -> pl.Expr:
    el = pl.element()
    return pl.col(messages).list.eval(
        el.filter(el.struct.field("role").is_in(list(roles))).struct.field("content")
    )


def text_expr(view: str, messages: str = "messages") -> pl.Expr:
    """A String expression with the given view of ``messages``."""
    if view == "instruction":
        return _contents(("system", "user"), messages).list.join(SEP)
    if view == "response":
        return _contents(("assistant",), messages).list.join(SEP)
    if view == "conversation":
        el = pl.element()
        return (
            pl.col(messages)
            .list.eval(pl.concat_str([el.struct.field("role"), pl.lit(": "), el.struct.field("content")]))
            .list.join(SEP)
        )
    if view == "first_instruction":
        return _contents(("user",), messages).list.first().fill_null("")
    if view == "last_response":
        return _contents(("assistant",), messages).list.last().fill_null("")
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
