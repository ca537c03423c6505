"""Baselines: seeded uniform random selection, and top-k / threshold on any score column.

Random selection is the baseline every selector is compared with ("Rethinking Data Selection at
Scale: Random Selection is Almost All You Need", Xia et al. 2024). The permutation is drawn from
NumPy's PCG64 seeded with ``seed`` over rows ordered by ``id`` (then source, source_row), so the
same pool gives the same selection regardless of shard or input order.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from pydantic import Field

from pipeline.select.base import Selector, SelectParams
from pipeline.stages.functions import stage_function


class RandomParams(SelectParams):
    seed: int = Field(0, description="seed of the permutation")


class RandomSelect(Selector):
    name = "select_random"
    Params = RandomParams
    requires_columns = ("id",)  # the canonical order the permutation is drawn over

    def global_inputs(self) -> tuple[str, ...]:
        return ("id",)

    def rank(self, df: pl.DataFrame, cand: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(cand)
        key = df.select("id", "source", "source_row")[idx].with_row_index("_i").sort(["id", "source", "source_row"])
        canonical = idx[key["_i"].to_numpy()]
        rng = np.random.default_rng(self.params.seed)
        return canonical[rng.permutation(len(canonical))]


class TopKParams(SelectParams):
    column: str = Field(..., description="score column to rank by")
    descending: bool = Field(True, description="rank the highest values first (False: lowest first)")
    min_value: float | None = Field(None, description="only rows with column >= this are candidates")
    max_value: float | None = Field(None, description="only rows with column <= this are candidates")


class TopKSelect(Selector):
    """Top-k (or all within [min_value, max_value], up to the budget) by a score column."""

    name = "select_top_k"
    Params = TopKParams
    input_params = ("column",)

    def global_inputs(self) -> tuple[str, ...]:
        return (self.params.column,)

    def rank(self, df: pl.DataFrame, cand: np.ndarray) -> np.ndarray:
        p = self.params
        if p.column not in df.columns:
            raise ValueError(f"select_top_k: column {p.column!r} not in table; columns: {', '.join(df.columns)}")
        vals = df[p.column].cast(pl.Float64).to_numpy()
        ok = cand & ~np.isnan(vals)
        if p.min_value is not None:
            ok &= vals >= p.min_value
        if p.max_value is not None:
            ok &= vals <= p.max_value
        idx = np.flatnonzero(ok)
        key = -vals[idx] if p.descending else vals[idx]
        return idx[np.argsort(key, kind="stable")]


#: under their config names (``pipeline.stages.select_top_k``) and their short names (``select.top_k``)
select_random = stage_function(RandomSelect, ("budget", "seed"))
select_top_k = stage_function(TopKSelect, ("budget", "column"))
random = stage_function(RandomSelect, ("budget", "seed"), name="random")
top_k = stage_function(TopKSelect, ("budget", "column"), name="top_k")
