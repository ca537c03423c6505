"""Error-Uncertainty plane: per-sample NLL (error) and mean predictive entropy (uncertainty).

From Q-Tuning ("Winning the Pruning Gamble: A Unified Approach to Joint Sample and Token Pruning
for Efficient Supervised Fine-Tuning", Wang et al., 2025). Each sample is placed by

* error: the NLL per token of the response given its context (Q-Tuning uses its perplexity, the
  exponential, which orders samples the same way), ``eu_nll``;
* uncertainty: the mean over response tokens of the entropy of the model's predictive
  distribution, ``eu_entropy``.

Quadrants (``eu_quadrant``), split at the ``split_quantile`` (default 0.5: the median) of each axis
over the kept, scored rows of the run:

==== ============== ============== ============================= =========================
     error (NLL)    uncertainty    Q-Tuning's name               sample-level triage
==== ============== ============== ============================= =========================
Q1   high           high           harmful noise                 discard
Q2   high           low            valuable misconception        keep (prune tokens)
Q3   low            low            redundant knowledge           discard
Q4   low            high           calibration data              keep whole
==== ============== ============== ============================= =========================

``drop_quadrants: [Q1, Q3]`` applies that triage on the median split (reason
``error_uncertainty:quadrant=Q1``). ``keep_ratio`` applies Q-Tuning's own rule instead: a joint
bisection on a quantile level a such that rows with ``nll > Q(1-a)`` and ``entropy <= Q(a)`` (Q2)
or ``nll <= Q(a)`` and ``entropy > Q(1-a)`` (Q4) make up about ``keep_ratio`` of the pool; the
result is in ``eu_triage_keep`` and the rest are dropped (reason
``error_uncertainty:triage:<quadrant>``).

Departures: Q-Tuning triages each training mini-batch dynamically with the model being trained;
here the triage is static, over the whole pool, with the scoring model. Q-Tuning's reference code
averages entropy over all attended positions; here (as in its paper's definition) over the
response tokens. Multi-turn rows: mean over turns (``turn_agg``). Its token-level pruning stage is
out of scope (this pipeline selects samples, not tokens).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from pipeline.scoring.base import LMParams, LMStage, aggregate_turns, lm_function, per_row, turn_units
from pipeline.stages.base import Col, drop_where

Quadrant = Literal["Q1", "Q2", "Q3", "Q4"]


def quadrants(nll: np.ndarray, ent: np.ndarray, q: float = 0.5) -> np.ndarray:
    """Quadrant labels Q1..Q4 split at the ``q`` quantile of each axis."""
    hi_e = nll > np.quantile(nll, q)
    hi_u = ent > np.quantile(ent, q)
    return np.where(hi_e, np.where(hi_u, "Q1", "Q2"), np.where(hi_u, "Q4", "Q3"))


def qtuning_triage(nll: np.ndarray, ent: np.ndarray, keep_ratio: float, tol: float = 0.01,
                   max_iter: int = 30) -> np.ndarray:
    """Q-Tuning's joint bisection: keep mask of the Q2/Q4 regions covering about ``keep_ratio`` of rows."""
    n = len(nll)
    if n == 0:
        return np.zeros(0, dtype=bool)
    lo, hi = 0.0, 0.49
    keep = np.zeros(n, dtype=bool)
    for _ in range(max_iter):
        a = (lo + hi) / 2
        q2 = (nll > np.quantile(nll, 1 - a)) & (ent <= np.quantile(ent, a))
        q4 = (nll <= np.quantile(nll, a)) & (ent > np.quantile(ent, 1 - a))
        keep = q2 | q4
        frac = keep.mean()
        if abs(frac - keep_ratio) < tol:
            break
        if frac < keep_ratio:
            lo = a
        else:
            hi = a
    return keep


class ErrorUncertaintyParams(LMParams):
    split_quantile: float = Field(0.5, gt=0, lt=1, description="quantile of each axis (NLL, entropy) that splits rows into quadrants")
    drop_quadrants: list[Quadrant] = Field(default_factory=list, description="quadrants to drop, e.g. [Q1, Q3] (Q-Tuning's triage on the median split)")
    keep_ratio: float | None = Field(None, gt=0, le=1, description="keep about this share of the pool by Q-Tuning's joint bisection (Q2 + Q4); None = off")


class ErrorUncertainty(LMStage):
    """Q-Tuning's Error-Uncertainty plane (global: quadrants need the pool)."""

    name = "error_uncertainty"
    Params = ErrorUncertaintyParams
    prefix, main, label = "eu", "eu_nll", "nll"
    always_global = True
    scope = "global"
    extra_global_inputs = ("eu_nll", "eu_entropy")
    columns = {
        "eu_nll": Col(pl.Float64, "score", "row"),
        "eu_entropy": Col(pl.Float64, "score", "row"),
        "eu_nll_turns": Col(pl.List(pl.Float64), "internal", "row"),
        "eu_entropy_turns": Col(pl.List(pl.Float64), "internal", "row"),
        "eu_tokens": Col(pl.Int64, "score", "row"),
        "eu_quadrant": Col(pl.String, "internal", "global"),
        "eu_triage_keep": Col(pl.Boolean, "flag", "global"),
        "eu_truncated": Col(pl.Boolean, "flag", "row"),
        "eu_model": Col(pl.String, "internal", "row"),
        "eu_template": Col(pl.String, "internal", "row"),
    }

    def compute(self, conv: pl.DataFrame) -> pl.DataFrame:
        u = self.lik_pass(conv, turn_units(conv))
        agg = self.params.turn_agg
        return per_row(u, [*aggregate_turns(u, "nll", agg, "eu_nll", "eu_nll_turns"),
                           *aggregate_turns(u, "entropy", agg, "eu_entropy", "eu_entropy_turns"),
                           pl.col("n_tokens").sum().cast(pl.Int64).alias("eu_tokens")])

    def score_global(self, df: pl.DataFrame) -> pl.DataFrame:
        df = super().score_global(df)
        p = self.params
        pool = (pl.col("keep") & pl.col("eu_nll").is_not_null() & pl.col("eu_entropy").is_not_null()).fill_null(False)
        mask = df.select(pool).to_series().to_numpy()
        idx = np.flatnonzero(mask)
        nll = df["eu_nll"].to_numpy()[idx].astype(np.float64)
        ent = df["eu_entropy"].to_numpy()[idx].astype(np.float64)
        quad = pl.Series([None] * df.height, dtype=pl.String)
        keep = pl.Series([None] * df.height, dtype=pl.Boolean)
        if len(idx):
            quad = quad.scatter(idx, pl.Series(quadrants(nll, ent, p.split_quantile), dtype=pl.String))
            self._cutoffs.update({f"nll_q{p.split_quantile}": float(np.quantile(nll, p.split_quantile)),
                                  f"entropy_q{p.split_quantile}": float(np.quantile(ent, p.split_quantile))})
            if p.keep_ratio is not None:
                keep = keep.scatter(idx, pl.Series(qtuning_triage(nll, ent, p.keep_ratio)))
        return df.with_columns(quad.alias("eu_quadrant"), keep.alias("eu_triage_keep"))

    def decide(self, df: pl.DataFrame) -> pl.DataFrame:
        df = super().decide(df)
        p = self.params
        if p.drop_quadrants:
            df = drop_where(df, pl.col("eu_quadrant").is_in(list(p.drop_quadrants)),
                            pl.concat_str([pl.lit(f"{self.name}:quadrant="), pl.col("eu_quadrant")]))
        if p.keep_ratio is not None:
            df = drop_where(df, ~pl.col("eu_triage_keep"),
                            pl.concat_str([pl.lit(f"{self.name}:triage:"), pl.col("eu_quadrant")]))
        return df


error_uncertainty = lm_function(ErrorUncertainty)
