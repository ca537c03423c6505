"""Heuristics: cheap quality rules in the style of Gopher (Rae et al. 2021) and FineWeb.

Computed per row, vectorised over the shard (Polars, plus two compiled loops: distinct n-grams
per row, word-character counts for the echo check):

* ``heur_empty_response``: an assistant turn is empty or whitespace only (its text is its content
  plus its tool calls, :func:`pipeline.text.turn_text_expr`: a turn that only calls tools is not
  empty; one with only a reasoning trace and no answer is);
* ``heur_response_eq_instruction``: the response equals the instruction after normalisation
  (NFKC, case fold, punctuation and whitespace folded), i.e. the model just echoes the prompt;
* ``heur_rep_ngram_ratio``: share of the response's word n-grams (``rep_ngram_n``, default 3) that
  repeat an earlier n-gram of the same response: ``1 - distinct/total``. Gopher uses character
  fractions covered by duplicate n-grams over several n; one n over word counts keeps it a single
  interpretable number and catches the degenerate loops seen in scraped chat data;
* ``heur_non_alnum_ratio``: share of the response's non-space characters that are neither letters
  nor digits (Gopher's symbol ratio, generalised);
* ``heur_code_like``: the response is code (its instruction asks for code, a regex, a query, ...
  or shows code, or the response holds a fenced block or is one quoted literal) and is printable
  ASCII with a letter or digit and at least two distinct non-space characters. Code is dense in symbols: a correct regex (``^\\d{3}-\\d{4}$``), an array
  literal (``[4]``) or a one-line expression scores 0.65-0.85 on the symbol ratio, which Gopher's
  rule was tuned on prose to reject. ``max_non_alnum_ratio`` therefore applies to prose only;
  code-like responses are held to ``max_non_alnum_ratio_code`` (default: not at all). Junk such as
  a lone zero-width space, emoji strings or ``;)`` under a prose instruction is still dropped;
* ``heur_ends_with_user``: the last turn is not an assistant turn (a truncated conversation).

Departure from Gopher: the code exemption (Gopher filtered web prose, not code answers).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from pydantic import Field

from pipeline.dedup import normalized_equal, shingles_from_words
from pipeline.stages.base import Col, Stage, StageParams, drop_where
from pipeline.stages.functions import stage_function
from pipeline.text import text_expr, turn_text_expr

#: an instruction that asks for or shows code (case-insensitive)
CODE_INSTRUCTION = (
    r"(?i-u)\b(?:regex|regexp|regular expressions?|code|coding|functions?|programs?|programming|scripts?|sql|"
    r"query|python|java|javascript|typescript|c\+\+|c#|ruby|rust|golang|php|perl|bash|shell|html|css|json|"
    r"xml|yaml|arrays?|snippet|syntax|algorithm|compile|variables?|methods?|class|loop|expression|api|"
    r"command|implement)\b|```|\bdef \w+\(|#include|=>|\bimport \w"
)
#: a response that is one quoted literal (``'A'``, ``"d"``)
QUOTED_LITERAL = r"^\s*(?:'[^'\n]*'|\"[^\"\n]*\"|`[^`\n]*`)\s*$"


class HeuristicsParams(StageParams):
    drop_empty_response: bool = Field(True, description="drop rows whose assistant turns are empty or whitespace only")
    drop_response_eq_instruction: bool = Field(True, description="drop rows whose response repeats the instruction (after normalisation)")
    rep_ngram_n: int = Field(3, ge=1, le=10, description="word n-gram size of the repetition ratio")
    max_rep_ngram_ratio: float | None = Field(0.5, ge=0, le=1, description="drop responses whose share of repeated word n-grams is above this (None = off)")
    min_rep_ngram_words: int = Field(30, ge=1, description="responses with fewer words are not judged on repetition")
    max_non_alnum_ratio: float | None = Field(0.6, ge=0, le=1, description="drop prose responses whose share of non-space characters that are neither letters nor digits is above this (None = off)")
    code_aware: bool = Field(True, description="hold code-like responses (heur_code_like) to max_non_alnum_ratio_code instead of max_non_alnum_ratio")
    max_non_alnum_ratio_code: float | None = Field(None, ge=0, le=1, description="symbol-ratio bar for code-like responses (None = they are not judged on it)")
    drop_ends_with_user: bool = Field(False, description="drop conversations whose last message is a user turn (no answer)")


def rep_ngram_ratio(words: pl.Series, n: int) -> pl.Series:
    """``1 - distinct/total`` word n-grams for each list of words (0 where there are fewer than n).

    Vectorised over the whole shard: words are hashed once (the strings are dropped), n-gram
    hashes come from :func:`pipeline.dedup.shingles_from_words` (64-bit, so a collision inside one
    response is vanishingly rare), and distinct n-grams per row are counted by a compiled hash-set
    loop (:func:`pipeline._kernels.distinct_per_row`).
    """
    from pipeline._kernels import distinct_per_row

    rows = len(words)
    lens = words.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = words.explode().drop_nulls()
    cnt = np.maximum(lens - n + 1, 0)
    if rows == 0 or not cnt.any():
        return pl.Series("ratio", np.zeros(rows))
    h, off = shingles_from_words(flat.hash(42).to_numpy().astype(np.uint64, copy=False), lens, n)
    distinct = distinct_per_row(h, off)  # a row shorter than n has one whole-row shingle: cnt is 0 there
    ratio = np.where(cnt > 0, 1.0 - distinct / np.maximum(cnt, 1), 0.0)
    return pl.Series("ratio", ratio)


class Heuristics(Stage):
    name = "heuristics"
    Params = HeuristicsParams
    version = "2"  # 2: heur_code_like; the symbol-ratio rule skips code-like responses
    requires_columns = ("messages",)
    compiled_kernels = True
    columns = {
        "heur_empty_response": Col(pl.Boolean, "flag"),
        "heur_response_eq_instruction": Col(pl.Boolean, "flag"),
        "heur_rep_ngram_ratio": Col(pl.Float64, "score"),
        "heur_response_words": Col(pl.Int64, "score"),
        "heur_non_alnum_ratio": Col(pl.Float64, "score"),
        "heur_ends_with_user": Col(pl.Boolean, "flag"),
        "heur_code_like": Col(pl.Boolean, "flag"),
    }

    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        el = pl.element()
        assistant = pl.col("messages").list.eval(turn_text_expr(el.filter(el.struct.field("role") == "assistant")))
        # the texts once: an eager select does not share common subexpressions, and each use of
        # text_expr("response") would rebuild the response from the messages again
        texts = df.select(text_expr("instruction").alias("i"), text_expr("response").alias("r"),
                          pl.col("messages").list.last().struct.field("role").alias("last_role"))
        same = normalized_equal(texts["i"], texts["r"])  # normalize_expr's equality, normalising few rows
        response = pl.col("r")
        tmp = texts.select(
            df.select(assistant.list.eval(el.fill_null("").str.strip_chars().str.len_chars() == 0).list.any())
            .to_series().alias("heur_empty_response"),
            response.str.to_lowercase().str.extract_all(r"\w+").alias("_words"),
            (response.str.len_chars() - response.str.count_matches(r"\s")).alias("_nonspace"),
            response.str.count_matches(r"[^\p{L}\p{N}\s]").alias("_sym"),
            (pl.col("last_role") != "assistant").alias("heur_ends_with_user"),
            (pl.col("i").str.contains(CODE_INSTRUCTION) | response.str.contains("```", literal=True)
             | response.str.contains(QUOTED_LITERAL)).fill_null(False).alias("_code_signal"),
            response.str.contains(r"[\p{L}\p{N}]").fill_null(False).alias("_has_alnum"),
            response.str.count_matches(r"[^\x00-\x7f]").alias("_non_ascii"),
        )
        return df.with_columns(
            tmp["heur_empty_response"],
            same.alias("heur_response_eq_instruction"),
            rep_ngram_ratio(tmp["_words"], self.params.rep_ngram_n).alias("heur_rep_ngram_ratio"),
            tmp["_words"].list.len().cast(pl.Int64).alias("heur_response_words"),
            (tmp["_sym"] / tmp["_nonspace"]).fill_nan(0.0).fill_null(0.0).cast(pl.Float64).alias("heur_non_alnum_ratio"),
            tmp["heur_ends_with_user"],
            # code: a code signal, a letter or digit (so with a symbol, 2+ distinct characters), and
            # at most 10% non-ASCII characters (emoji strings, zero-width spaces are not code)
            tmp.select((pl.col("_code_signal") & pl.col("_has_alnum")
                        & (pl.col("_non_ascii") <= 0.1 * pl.col("_nonspace"))).fill_null(False)
                       .alias("heur_code_like")).to_series(),
        )

    def decide(self, df: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        if p.drop_empty_response:
            df = drop_where(df, pl.col("heur_empty_response"), "heuristics:empty_response")
        if p.drop_response_eq_instruction:
            df = drop_where(df, pl.col("heur_response_eq_instruction"), "heuristics:response_eq_instruction")
        if p.max_rep_ngram_ratio is not None:
            df = drop_where(
                df,
                (pl.col("heur_rep_ngram_ratio") > p.max_rep_ngram_ratio)
                & (pl.col("heur_response_words") >= p.min_rep_ngram_words),
                f"heuristics:rep_ngram_ratio>{p.max_rep_ngram_ratio}",
            )
        code = pl.col("heur_code_like") if p.code_aware else pl.lit(False)
        if p.max_non_alnum_ratio is not None:
            df = drop_where(df, ~code & (pl.col("heur_non_alnum_ratio") > p.max_non_alnum_ratio),
                            f"heuristics:non_alnum_ratio>{p.max_non_alnum_ratio}")
        if p.code_aware and p.max_non_alnum_ratio_code is not None:
            df = drop_where(df, code & (pl.col("heur_non_alnum_ratio") > p.max_non_alnum_ratio_code),
                            f"heuristics:code_non_alnum_ratio>{p.max_non_alnum_ratio_code}")
        if p.drop_ends_with_user:
            df = drop_where(df, pl.col("heur_ends_with_user"), "heuristics:ends_with_user")
        return df


heuristics = stage_function(Heuristics)
