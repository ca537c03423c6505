"""GRAPE: among responses to the same instruction, keep the one the target model fits best.

From "The Best Instruction-Tuning Data are Those That Fit" (Zhang et al., 2025): gather several
candidate responses per instruction (from different LLMs), score each by its length-normalised
log-likelihood under the model that will be fine-tuned, and train on the highest-scoring one.

Here the candidates are the rows that share an instruction: everything before the last assistant
turn (system and user turns, earlier turns), matched exactly or after normalisation (NFKC, case
fold, punctuation and whitespace folded; ``group_by: normalized``, the default). Each row's score
``grape_loglik`` is the mean log-probability per token of its last assistant turn given that
context (``turns: last``; ``turns: all`` aggregates every turn with ``turn_agg``). The stage is
global: ``grape_best`` marks, per group of kept rows, the row with the highest ``grape_loglik``
(ties: the first in source order), and ``drop_non_best`` (default on) drops the others with reason
``grape:not_best``. ``grape_group`` is a within-run group id (a hash of the instruction key);
``grape_group_size`` counts the kept, scored rows in the group.

Departure: the paper scores with the base model to be fine-tuned; any local model works here, and
the chat template of the scoring model frames the instruction.
"""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import Field

from pipeline.scoring.base import LMParams, LMStage, aggregate_turns, lm_function, per_row, turn_units
from pipeline.stages.base import Col, drop_where
from pipeline.text import normalize_expr


class GrapeParams(LMParams):
    group_by: Literal["exact", "normalized"] = Field("normalized", description="rows share an instruction when their context matches exactly or after normalisation")
    turns: Literal["last", "all"] = Field("last", description="score the last assistant turn, or every turn combined with turn_agg")
    drop_non_best: bool = Field(True, description="drop every row but the best-fitting one of its instruction group (grape:not_best)")


def instruction_key(messages: str = "messages") -> pl.Expr:
    """The messages before the last assistant turn, as one string (the GRAPE grouping key)."""
    m = pl.col(messages)
    is_a = m.list.eval((pl.element().struct.field("role") == "assistant").cast(pl.Int8))
    n = m.list.len()
    last = n - 1 - is_a.list.reverse().list.arg_max()
    has = is_a.list.sum() > 0
    head = m.list.head(pl.when(has).then(last).otherwise(n))
    el = pl.element()
    return head.list.eval(pl.concat_str([el.struct.field("role"), pl.lit("\x1f"), el.struct.field("content")])
                          ).list.join("\x1e")


class Grape(LMStage):
    """GRAPE best-fitting response per instruction (global)."""

    name = "grape"
    Params = GrapeParams
    prefix, main, label = "grape", "grape_loglik", "loglik"
    always_global = True
    scope = "global"
    extra_global_inputs = ("grape_loglik", "grape_group")
    columns = {
        "grape_loglik": Col(pl.Float64, "score", "row"),
        "grape_loglik_turns": Col(pl.List(pl.Float64), "internal", "row"),
        "grape_tokens": Col(pl.Int64, "score", "row"),
        "grape_group": Col(pl.UInt64, "internal", "row"),
        "grape_group_size": Col(pl.Int64, "internal", "global"),
        "grape_best": Col(pl.Boolean, "flag", "global"),
        "grape_truncated": Col(pl.Boolean, "flag", "row"),
        "grape_model": Col(pl.String, "internal", "row"),
        "grape_template": Col(pl.String, "internal", "row"),
    }

    def template_spec(self) -> dict:
        return {**super().template_spec(), "turns": self.params.turns}

    def compute(self, conv: pl.DataFrame) -> pl.DataFrame:
        u = self.lik_pass(conv, turn_units(conv, last_only=self.params.turns == "last"))
        u = u.with_columns((-pl.col("nll")).alias("loglik"))
        return per_row(u, [*aggregate_turns(u, "loglik", self.params.turn_agg, "grape_loglik", "grape_loglik_turns"),
                           pl.col("n_tokens").sum().cast(pl.Int64).alias("grape_tokens")])

    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        out = super().score(df)
        key = instruction_key()
        if self.params.group_by == "normalized":
            key = normalize_expr(key)
        return out.with_columns(pl.when(pl.col("keep")).then(key.hash(seed=0)).otherwise(None).alias("grape_group"))

    def score_global(self, df: pl.DataFrame) -> pl.DataFrame:
        df = super().score_global(df)
        g = df.select("keep", "grape_loglik", "grape_group").with_row_index("_i")
        cand = g.filter(pl.col("keep") & pl.col("grape_loglik").is_not_null() & pl.col("grape_group").is_not_null())
        ranked = cand.sort(["grape_group", "grape_loglik", "_i"], descending=[False, True, False]).with_columns(
            pl.col("grape_group").is_first_distinct().alias("grape_best"),
            pl.len().over("grape_group").cast(pl.Int64).alias("grape_group_size"),
        )
        back = g.select("_i").join(ranked.select("_i", "grape_best", "grape_group_size"), on="_i", how="left",
                                   maintain_order="left")
        return df.with_columns(back["grape_best"], back["grape_group_size"])

    def decide(self, df: pl.DataFrame) -> pl.DataFrame:
        df = super().decide(df)
        if self.params.drop_non_best:
            df = drop_where(df, (pl.col("grape_group_size") > 1) & ~pl.col("grape_best"), "grape:not_best")
        return df


grape = lm_function(Grape)
