"""Perplexity of each assistant turn given its context: ``exp(NLL(y | x))`` (standard).

``x`` is everything before the turn rendered with the scoring model's chat template, ``y`` the
turn's content plus its end-of-turn marker (:mod:`pipeline.scoring.render`); NLL is the mean
negative log-likelihood per token of ``y``. A multi-turn row gets the mean of its turns'
perplexities (``turn_agg``); the per-turn values stay in ``ppl_turns``.

Columns: ``ppl``, ``ppl_turns``, ``ppl_nll`` (aggregated per-turn NLL), ``ppl_tokens`` (target
tokens scored), ``ppl_truncated``, ``ppl_model``, ``ppl_template``. The likelihood pass is cached
per (row id, turn) and shared with :mod:`~pipeline.scoring.error_uncertainty`, :mod:`~pipeline.scoring.ifd`
(conditional pass) and :mod:`~pipeline.scoring.grape`: scoring a pool with several of them runs the
model over each turn once.
"""

from __future__ import annotations

import polars as pl

from pipeline.scoring.base import LMParams, LMStage, aggregate_turns, lm_function, per_row, turn_units


class PerplexityParams(LMParams):
    pass


class Perplexity(LMStage):
    """Perplexity of the responses under the scoring model; lower = more expected by the model."""

    name = "perplexity"
    Params = PerplexityParams
    prefix, main, label = "ppl", "ppl", ""
    columns = {
        "ppl": pl.Float64,
        "ppl_turns": pl.List(pl.Float64),
        "ppl_nll": pl.Float64,
        "ppl_tokens": pl.Int64,
        "ppl_truncated": pl.Boolean,
        "ppl_model": pl.String,
        "ppl_template": pl.String,
    }

    def compute(self, conv: pl.DataFrame) -> pl.DataFrame:
        u = self.lik_pass(conv, turn_units(conv)).with_columns(pl.col("nll").exp().alias("ppl"))
        agg = self.params.turn_agg
        return per_row(u, [*aggregate_turns(u, "ppl", agg, "ppl", "ppl_turns"),
                           *aggregate_turns(u, "nll", agg, "ppl_nll"),
                           pl.col("n_tokens").sum().cast(pl.Int64).alias("ppl_tokens")])


perplexity = lm_function(Perplexity)
