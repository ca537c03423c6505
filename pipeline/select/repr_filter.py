"""Deita's representation filter: walk rows by score, keep a row only if it is not too close to any kept row.

Liu, Zeng, He, Jiang, He, "What Makes Good Data for Alignment? A Comprehensive Study of Automatic
Data Selection in Instruction Tuning" (ICLR 2024; hkust-nlp/deita, ``IterativeFilter``). Rows are
sorted by a score (the Deita score = complexity x quality, or any score column), best first; a row is
accepted only if the cosine similarity to its nearest already-accepted row is below ``threshold``
(0.9 in the paper); the walk stops when the budget is full. This is the iterative filter: whether a
row is accepted depends on what was accepted before it, not on its neighbours in the whole pool.

Implementation: accepted rows live in a faiss ``IndexFlatIP`` over unit vectors that grows as rows are
accepted. Candidates are taken in blocks: one index search gives each block row its nearest accepted
row so far; rows that pass are then checked against each other inside the block, in walk order. The
result is exactly the row-at-a-time walk. Each considered row gets ``repr_nn_sim``, its similarity to
the nearest row accepted before it (null for rows the walk never reached).

Departures: Deita embeds with the scorer LLM (mean-pooled last hidden states); here a
embedding model (``model: auto``: MiniLM on a GPU, its static distillation on CPU). Deita's batched filter also rejects a row that is
close to a *rejected* row of the same batch; this one compares only with accepted rows, as the
unbatched algorithm does. Ties in the score are broken by row ``id`` so the walk does not depend on
shard order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from pydantic import Field

from pipeline.select.base import (
    SELECT_COLUMNS,
    VectorSelector,
    VectorSelectParams,
    candidate_mask,
    canonical_order,
    mark_selected,
    take_budget,
)
from pipeline.stages.base import Col
from pipeline.stages.functions import stage_function


class ReprFilterParams(VectorSelectParams):
    score: str = Field("deita_score", description="walk rows by this column, highest first")
    threshold: float = Field(0.9, gt=-1.0, le=1.0, description="accept a row only if its max cosine to accepted rows is below this")
    block: int = Field(2048, ge=1, description="candidates checked per index search")


def repr_walk(x: np.ndarray, threshold: float, limit: int | None = None, tokens: np.ndarray | None = None,
              token_budget: int | None = None, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """The Deita walk over unit vectors ``x`` (rows already in walk order).

    Returns (accepted positions in walk order, nearest-accepted similarity per row, NaN where not
    reached). Stops after ``limit`` accepted rows, or once accepted ``tokens`` exceed ``token_budget``.
    """
    import faiss

    n, d = x.shape
    x = np.ascontiguousarray(x, dtype=np.float32)
    nn_sim = np.full(n, np.nan, dtype=np.float32)
    index = faiss.IndexFlatIP(d)
    accepted: list[np.ndarray] = []
    n_acc = 0
    tok_total = 0
    for start in range(0, n, block):
        xb = x[start:start + block]
        m = len(xb)
        prev = index.search(xb, 1)[0][:, 0] if index.ntotal else np.full(m, -np.inf, dtype=np.float32)
        ok = np.flatnonzero(prev < threshold)
        s = xb[ok] @ xb[ok].T
        conflict = np.triu(s >= threshold, 1)
        keep = np.ones(len(ok), dtype=bool)
        involved = np.flatnonzero(conflict.any(axis=0) | conflict.any(axis=1))
        # the walk is sequential only among rows that are close to another row of the same block
        for j in involved:
            if keep[j]:
                later = conflict[j]
                keep &= ~later
        acc = ok[keep]
        # similarity to the nearest row accepted before each row: earlier blocks, or earlier in this block
        inblock = np.full(m, -np.inf, dtype=np.float32)
        if len(acc):
            sa = xb @ xb[acc].T
            before = acc[None, :] < np.arange(m)[:, None]
            inblock = np.where(before, sa, -np.inf).max(axis=1)
        reached, done = m, False
        if limit is not None and n_acc + len(acc) >= limit:
            acc = acc[: limit - n_acc]
            reached = int(acc[-1]) + 1 if len(acc) else 0
            done = True
        elif tokens is not None and token_budget is not None:
            run = tok_total + np.cumsum(tokens[start + acc])
            over = np.flatnonzero(run > token_budget)
            if len(over):
                # keep the row that overflows: the caller's budget cut drops it, and the walk ends here
                acc = acc[: over[0] + 1]
                reached = int(acc[-1]) + 1
                done = True
            tok_total = int(run[len(acc) - 1]) if len(acc) else tok_total
        nn_sim[start:start + reached] = np.maximum(prev, inblock)[:reached]
        if len(acc):
            index.add(xb[acc])
            accepted.append(start + acc)
            n_acc += len(acc)
        if done:
            break
    nn_sim[np.isneginf(nn_sim)] = np.nan  # the very first row has no accepted neighbour
    return (np.concatenate(accepted) if accepted else np.zeros(0, dtype=np.int64)), nn_sim


class ReprFilter(VectorSelector):
    """Deita repr filter under a budget (see the module docstring)."""

    name = "repr_filter"
    Params = ReprFilterParams
    columns = {**SELECT_COLUMNS, "repr_nn_sim": Col(pl.Float32, "score", "global")}
    input_params = ("score",)

    def global_inputs(self) -> tuple[str, ...]:
        return ("id", self.params.score)

    def select(self, df: pl.DataFrame) -> pl.DataFrame:
        p: ReprFilterParams = self.params  # type: ignore[assignment]
        if p.score not in df.columns:
            raise ValueError(f"repr_filter: column {p.score!r} not in table; columns: {', '.join(df.columns)}")
        vals = df[p.score].cast(pl.Float64).fill_null(np.nan).to_numpy()
        cand = candidate_mask(df) & ~np.isnan(vals)
        idx = canonical_order(df, np.flatnonzero(cand))
        walk = idx[np.argsort(-vals[idx], kind="stable")]
        x = self.vectors(df, walk) if len(walk) else np.zeros((0, 1), np.float32)
        if p.budget_unit == "tokens":
            if p.token_column not in df.columns:
                raise ValueError(f"budget_unit=tokens needs column {p.token_column!r}; run the length stage first")
            tok = df[p.token_column].fill_null(0).to_numpy()[walk]
            acc, nn = repr_walk(x, p.threshold, tokens=tok, token_budget=p.budget, block=p.block)
        else:
            acc, nn = repr_walk(x, p.threshold, limit=p.budget, block=p.block)
        chosen = take_budget(walk[acc], p, df)
        sims = nn[acc[: len(chosen)]]
        reasons = pl.select(pl.format("repr_filter:{}={}:nn_sim={}", pl.lit(p.score), pl.Series(np.round(vals[chosen], 4)),
                                      pl.Series(np.round(sims, 3)).fill_nan(None).cast(pl.String).fill_null("none"))
                            ).to_series().to_list()
        out = mark_selected(df, chosen, reasons)
        col = np.full(df.height, np.nan, dtype=np.float32)
        col[walk] = nn
        self._summary = {"candidates": int(len(walk)), "selected": int(len(chosen)), "threshold": p.threshold,
                         "walked": int(acc[len(chosen) - 1]) + 1 if len(chosen) else 0}
        return out.with_columns(pl.Series("repr_nn_sim", col).fill_nan(None).cast(pl.Float32))

    def summary(self) -> dict[str, Any]:
        return dict(getattr(self, "_summary", {}))


repr_filter = stage_function(ReprFilter, ("budget", "score", "threshold"))


