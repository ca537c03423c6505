"""Shared plumbing of the selectors: candidates, budgets, and the selection columns.

A selector is a global stage that fills ``selected`` (bool), ``select_reason`` and ``select_rank``
(1 = picked first) on the rows still kept; it never touches ``keep``. Selectors compose: a selector
only considers rows that are kept and not already rejected by an earlier selector
(``selected`` null or true), so ``kmq`` after ``select_top_k`` picks from the top-k.

A budget is a number of rows (``budget_unit: rows``) or of response tokens
(``budget_unit: tokens``, counted from ``len_response_tokens``, or ``len_total_tokens`` with
``token_column``): rows are taken in rank order while the running total stays within the budget.

Selectors over embeddings (kMQ, repr filter, RDS+, DS2) derive from :class:`VectorSelector`: their
per-shard step embeds the candidate rows missing from the run's sidecar store, their global step
reads the vectors back by ``id``. Candidates are put in ``id`` order first (:func:`canonical_order`)
so a selection does not depend on shard or input order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from pipeline.stages.base import Col, Resources, RunContext, Stage, StageParams

SELECT_COLUMNS = {"selected": Col(pl.Boolean, "flag", "global"), "select_reason": Col(pl.String, "internal", "global"),
                  "select_rank": Col(pl.Int64, "internal", "global")}


class SelectParams(StageParams):
    budget: int = Field(..., ge=0, description="rows, or tokens with budget_unit=tokens")
    budget_unit: Literal["rows", "tokens"] = Field("rows", description="rows: budget counts rows; tokens: budget counts token_column")
    token_column: str = Field("len_response_tokens", description="token count column used with budget_unit=tokens")


def candidate_mask(df: pl.DataFrame) -> np.ndarray:
    """Rows a selector may pick: kept, and not rejected by an earlier selector."""
    keep = df["keep"].to_numpy() if "keep" in df.columns else np.ones(df.height, dtype=bool)
    if "selected" in df.columns:
        keep = keep & df["selected"].fill_null(True).to_numpy()
    return keep


def take_budget(order: np.ndarray, params: SelectParams, df: pl.DataFrame) -> np.ndarray:
    """The prefix of ``order`` (row indices, best first) that fits the budget."""
    if params.budget_unit == "rows":
        return order[: params.budget]
    if params.token_column not in df.columns:
        raise ValueError(f"budget_unit=tokens needs column {params.token_column!r}; run the length stage first")
    toks = df[params.token_column].fill_null(0).to_numpy()[order]
    fits = np.cumsum(toks) <= params.budget
    return order[fits]


def mark_selected(df: pl.DataFrame, chosen: np.ndarray, reason: str | list[str]) -> pl.DataFrame:
    """Write the selection columns: ``chosen`` (row indices in pick order) selected, other candidates not.

    Rows that were not candidates (dropped, or rejected by an earlier selector) keep their values.
    """
    cand = candidate_mask(df)
    n = df.height
    picked = np.zeros(n, dtype=bool)
    picked[chosen] = True
    rank = np.zeros(n, dtype=np.int64)
    rank[chosen] = np.arange(1, len(chosen) + 1)
    if isinstance(reason, str):
        reasons = pl.Series("r", [f"{reason}:rank={r}" for r in range(1, len(chosen) + 1)], dtype=pl.String)
    else:
        reasons = pl.Series("r", reason, dtype=pl.String)
    reason_col = pl.Series("r", [None] * n, dtype=pl.String).scatter(chosen, reasons) if len(chosen) else pl.Series("r", [None] * n, dtype=pl.String)
    prev_sel = df["selected"] if "selected" in df.columns else pl.Series([None] * n, dtype=pl.Boolean)
    prev_reason = df["select_reason"] if "select_reason" in df.columns else pl.Series([None] * n, dtype=pl.String)
    prev_rank = df["select_rank"] if "select_rank" in df.columns else pl.Series([None] * n, dtype=pl.Int64)
    c = pl.Series(cand)
    return df.with_columns(
        pl.select(pl.when(c).then(pl.Series(picked)).otherwise(prev_sel)).to_series().alias("selected"),
        pl.select(pl.when(c).then(reason_col).otherwise(prev_reason)).to_series().alias("select_reason"),
        pl.select(pl.when(c & pl.Series(picked)).then(pl.Series(rank)).when(c).then(None).otherwise(prev_rank))
        .to_series().cast(pl.Int64).alias("select_rank"),
    )


class Selector(Stage):
    """Base of selectors: global, no decide step, fills the selection columns."""

    scope = "global"
    is_selector = True
    columns = SELECT_COLUMNS
    uses_columns = tuple(SELECT_COLUMNS)  # an earlier selector's picks: candidates and kept values
    Params = SelectParams

    def requires(self) -> tuple[str, ...]:
        tok = (self.params.token_column,) if self.params.budget_unit == "tokens" else ()
        return tuple(dict.fromkeys([*super().requires(), *tok]))

    def rank(self, df: pl.DataFrame, cand: np.ndarray) -> np.ndarray:
        """Candidate row indices, best first. Selectors override this or :meth:`select`."""
        raise NotImplementedError

    def select(self, df: pl.DataFrame) -> pl.DataFrame:
        cand = candidate_mask(df)
        order = self.rank(df, cand)
        chosen = take_budget(order, self.params, df)
        return mark_selected(df, chosen, self.name)

    def score_global(self, df: pl.DataFrame) -> pl.DataFrame:
        return self.select(df)

    def global_frame_columns(self) -> list[str]:
        cols = super().global_frame_columns()
        if self.params.budget_unit == "tokens":
            cols.append(self.params.token_column)
        return [*dict.fromkeys([*cols, "selected"])]


def canonical_order(df: pl.DataFrame, idx: np.ndarray) -> np.ndarray:
    """``idx`` sorted by (id, source, source_row): the same pool in any shard or input order gives the same order."""
    keys = [c for c in ("id", "source", "source_row") if c in df.columns]
    if not keys or len(idx) == 0:
        return np.asarray(idx, dtype=np.int64)
    key = df.select(keys)[idx].with_row_index("_i").sort(keys)
    return np.asarray(idx, dtype=np.int64)[key["_i"].to_numpy()]


class VectorSelectParams(SelectParams):
    """Params of selectors that read sentence embeddings (see :mod:`pipeline.embeddings`)."""

    model: str = Field("auto", description="embedding model: auto (MiniLM on a GPU, minilm-static on CPU), an alias, pkg:NAME/path, or a local sentence-transformers/model2vec directory")
    view: Literal["instruction", "response", "conversation", "both", "first_instruction", "last_response"] = Field("instruction", description="text embedded: instruction, response, conversation, both, first_instruction or last_response")
    batch_size: int = Field(64, ge=1, description="rows per embedding batch")
    device: Literal["auto", "cpu", "cuda"] | None = Field(None, description="default: the run's device")
    seed: int | None = Field(None, description="default: the run's seed")


class VectorSelector(Selector):
    """A selector over embeddings: the per-shard step fills the run's embedding sidecar for candidate
    rows, the global step reads the vectors back by ``id`` (in memory, it embeds directly)."""

    Params = VectorSelectParams
    requires_columns = ("messages", "id")  # the text embedded; vectors are stored by id
    resources = Resources(cpus=2.0, memory_gb=2.0, loads_model=True)  # the embedding model

    def global_inputs(self) -> tuple[str, ...]:
        return ("id",)

    @property
    def seed(self) -> int:
        s = self.params.seed  # type: ignore[attr-defined]
        return self.ctx.seed if s is None else s

    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        from pipeline.embeddings import ensure_embedded

        p = self.params
        ensure_embedded(df, self.ctx, p.model, p.view, np.flatnonzero(candidate_mask(df)), p.device,  # type: ignore[attr-defined]
                        p.batch_size)  # type: ignore[attr-defined]
        return df

    def models(self) -> dict[str, Any]:
        from pipeline.embeddings import describe_model

        p = self.params
        return {"embedding": describe_model(p.model, p.device or self.ctx.device)}  # type: ignore[attr-defined]

    def vectors(self, df: pl.DataFrame, rows: np.ndarray) -> np.ndarray:
        """Unit vectors (float32) of ``rows`` of ``df``."""
        from pipeline.embeddings import vectors_for

        p = self.params
        return vectors_for(df, self.ctx, p.model, p.view, rows, p.device, p.batch_size)  # type: ignore[attr-defined]


def run_in_memory(stage: Stage, table: Any, ctx: RunContext | None = None, cache_dir: str | Path | None = None,
                  seed: int | None = None) -> pl.DataFrame:
    """Run ``stage`` on an in-memory table; ``cache_dir`` keeps embeddings between calls (a sidecar store)."""
    if ctx is None:
        ctx = RunContext(cache_dir=Path(cache_dir) if cache_dir is not None else None,
                         seed=seed if seed is not None else 0)
    return stage(table, ctx)


