"""Length: token, character and turn counts per role, with min/max filters.

Token-length filtering is a strong, stable baseline at scale ("Rethinking Data Selection at Scale:
Random Selection is Almost All You Need", Xia et al. 2024). Tokens are counted with a Hugging Face
tokenizer loaded from a local path when ``tokenizer`` names one, else with the built-in word
tokenizer (runs of word characters or single punctuation marks, :data:`pipeline.text.WORD_TOKEN_PATTERN`),
which is vectorised in Polars and needs no model.

``instruction`` means the system and user turns, ``response`` the assistant turns (all turns of a
multi-turn conversation), as defined in :mod:`pipeline.text`: an assistant turn's text is its content
plus its tool calls (``name(arguments)``), so a turn that only calls tools has response tokens.
Reasoning traces are counted on their own (``len_reasoning_tokens``, with ``min/max_reasoning_tokens``)
and are part of ``len_total_tokens`` (what a trainer sees), not of the response tokens;
``len_tool_calls`` counts the assistant's tool calls.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import Field, field_validator

from pipeline.stages.base import Col, Stage, StageParams, drop_where
from pipeline.stages.functions import stage_function
from pipeline.text import WORD_TOKEN_PATTERN, turn_text_expr


class LengthParams(StageParams):
    tokenizer: str = Field("words", description="'words' or a local path to a Hugging Face tokenizer or model dir")
    min_response_tokens: int | None = Field(1, ge=0, description="drop rows whose assistant turns have fewer tokens in all (None = no limit)")
    max_response_tokens: int | None = Field(None, ge=1, description="drop rows whose assistant turns have more tokens in all (None = no limit)")
    min_instruction_tokens: int | None = Field(None, ge=0, description="drop rows whose system and user turns have fewer tokens in all (None = no limit)")
    max_instruction_tokens: int | None = Field(None, ge=1, description="drop rows whose system and user turns have more tokens in all (None = no limit)")
    max_total_tokens: int | None = Field(None, ge=1, description="drop rows with more tokens over all messages (None = no limit)")
    min_turns: int | None = Field(None, ge=1, description="assistant turns")
    max_turns: int | None = Field(None, ge=1, description="assistant turns")
    min_reasoning_tokens: int | None = Field(None, ge=0, description="tokens of the assistant turns' reasoning traces")
    max_reasoning_tokens: int | None = Field(None, ge=1, description="tokens of the assistant turns' reasoning traces")

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_exists(cls, v: str) -> str:
        if v != "words" and not Path(v).exists():
            raise ValueError(f"tokenizer must be 'words' or an existing local path, got {v!r}")
        return v


ROLE_COLS = {"system": "len_system_tokens", "user": "len_user_tokens", "assistant": "len_response_tokens", "tool": "len_tool_tokens"}


@lru_cache(maxsize=4)
def _hf_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer  # heavy: only when a tokenizer path is configured

    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name, local_files_only=True)
    return AutoTokenizer.from_pretrained(str(p), local_files_only=True, trust_remote_code=False)


def _message_frame(df: pl.DataFrame) -> pl.DataFrame:
    """One row per message: ``role``, ``content`` (its text: content plus tool calls), ``reasoning``
    ("" when none) and ``n_calls``."""
    el = pl.element()
    return (
        df.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_r"),
                  pl.col("messages").list.eval(pl.struct(
                      el.struct.field("role").alias("role"), turn_text_expr(el).alias("content"),
                      el.struct.field("reasoning").fill_null("").alias("reasoning"),
                      el.struct.field("tool_calls").list.len().fill_null(0).cast(pl.Int64).alias("n_calls"))))
        .explode("messages")
        .unnest("messages")
        .with_columns(pl.col("content").fill_null(""), pl.col("reasoning").fill_null(""), pl.col("n_calls").fill_null(0))
    )


def _token_counts(contents: pl.Series, tokenizer: str, column: str = "content") -> pl.Expr | pl.Series:
    if tokenizer == "words":
        return pl.col(column).str.count_matches(WORD_TOKEN_PATTERN).cast(pl.Int64)
    tok = _hf_tokenizer(tokenizer)
    texts = contents.to_list()
    nonempty = [i for i, t in enumerate(texts) if t]  # most messages have no reasoning: skip the empty ones
    counts = [0] * len(texts)
    if nonempty:
        enc = tok([texts[i] for i in nonempty], add_special_tokens=False)["input_ids"]
        for i, x in zip(nonempty, enc, strict=True):
            counts[i] = len(x)
    return pl.Series("ntok", counts, dtype=pl.Int64)


class Length(Stage):
    name = "length"
    Params = LengthParams
    requires_columns = ("messages",)
    columns = {c: Col(pl.Int64, "score", "row") for c in (
        "len_instruction_tokens", "len_response_tokens", "len_total_tokens", "len_system_tokens", "len_user_tokens",
        "len_tool_tokens", "len_instruction_chars", "len_response_chars", "len_turns", "len_messages",
        "len_reasoning_tokens", "len_tool_calls")}

    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        msgs = _message_frame(df)
        ntok = _token_counts(msgs["content"], self.params.tokenizer)
        rtok = _token_counts(msgs["reasoning"], self.params.tokenizer, "reasoning")
        msgs = msgs.with_columns(ntok.alias("ntok"), rtok.alias("rtok"))
        msgs = msgs.with_columns(pl.col("content").str.len_chars().cast(pl.Int64).alias("nchar"))
        aggs = [pl.col("ntok").filter(pl.col("role") == r).sum().alias(c) for r, c in ROLE_COLS.items()]
        aggs += [
            pl.col("nchar").filter(pl.col("role").is_in(["system", "user"])).sum().alias("len_instruction_chars"),
            pl.col("nchar").filter(pl.col("role") == "assistant").sum().alias("len_response_chars"),
            (pl.col("role") == "assistant").sum().cast(pl.Int64).alias("len_turns"),
            pl.col("role").is_not_null().sum().cast(pl.Int64).alias("len_messages"),
            (pl.col("ntok").sum() + pl.col("rtok").sum()).alias("len_total_tokens"),
            pl.col("rtok").sum().alias("len_reasoning_tokens"),
            pl.col("n_calls").sum().alias("len_tool_calls"),
        ]
        per_row = msgs.group_by("_r").agg(aggs)
        out = (
            pl.DataFrame({"_r": pl.arange(0, df.height, dtype=pl.UInt32, eager=True)})
            .join(per_row, on="_r", how="left")
            .sort("_r")
            .with_columns(pl.exclude("_r").fill_null(0).cast(pl.Int64))
            .with_columns((pl.col("len_system_tokens") + pl.col("len_user_tokens")).alias("len_instruction_tokens"))
        )
        return df.with_columns(out.select(list(self.columns)))

    def decide(self, df: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        rules = [
            ("len_response_tokens", "<", p.min_response_tokens, "response_tokens"),
            ("len_response_tokens", ">", p.max_response_tokens, "response_tokens"),
            ("len_instruction_tokens", "<", p.min_instruction_tokens, "instruction_tokens"),
            ("len_instruction_tokens", ">", p.max_instruction_tokens, "instruction_tokens"),
            ("len_total_tokens", ">", p.max_total_tokens, "total_tokens"),
            ("len_turns", "<", p.min_turns, "turns"),
            ("len_turns", ">", p.max_turns, "turns"),
            ("len_reasoning_tokens", "<", p.min_reasoning_tokens, "reasoning_tokens"),
            ("len_reasoning_tokens", ">", p.max_reasoning_tokens, "reasoning_tokens"),
        ]
        for col, op, limit, label in rules:
            if limit is None:
                continue
            mask = pl.col(col) < limit if op == "<" else pl.col(col) > limit
            df = drop_where(df, mask, f"length:{label}{op}{limit}")
        return df


length = stage_function(Length)
