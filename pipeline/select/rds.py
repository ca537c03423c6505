"""RDS+: select the pool rows most similar to a target set.

Ivison, Zhang, Brahman, Koh, Dasigi, "Large-Scale Data Selection for Instruction Tuning" (2025,
arXiv:2503.01807; hamishivi/automated-instruction-selection). Every pool row and every target
("query") row is embedded; a pool row's score is its cosine similarity to the target set, aggregated
over the target rows by ``mean`` or ``max``; rows are taken by score, highest first. With several
target files (several tasks) the selection goes round-robin over the targets, each taking its
best remaining row in turn, so that no task's score scale dominates (the paper's multi-task
selection, ``get_top_aggregated_influences.py --aggregation_method minmax``).

Targets are any file :func:`pipeline.io.readers.read_table` reads (GSM8K test, HumanEval,
user_oriented_instructions, ...), embedded in the same view as the pool.

Departures: RDS+ embeds with the *pretrained LM being fine-tuned*, using position-weighted mean
pooling of its last hidden states; here sentence embeddings (MiniLM by default on any device: its static distillation ranks target
similarity poorly, see docs/architecture.md; any local
sentence-transformers directory configurable), so scores measure topical/format similarity rather than
the target model's own representation. ``rds_score`` holds the aggregated similarity to the nearest
(best-scoring) target set.
"""

from __future__ import annotations

from typing import Any, Literal

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
from pipeline.stages.base import Col, LocalPath, RunContext
from pipeline.stages.functions import stage_function


class RDSParams(VectorSelectParams):
    target: LocalPath | list[LocalPath] = Field(..., description="target/query file(s): any supported format")
    target_format: str = Field("auto", description="record format of the target files (auto: detected)")
    target_view: str | None = Field(None, description="view of the target rows to embed; default: view")
    aggregate: Literal["mean", "max"] = Field("mean", description="similarity to the target set: mean or max cosine")
    # MiniLM on CPU too: the static model ranks by target similarity far worse (tests/select/test_rds.py:
    # 53% GSM8K rows in the top 150 for a GSM8K target, MiniLM >= 95%); see docs/architecture.md
    model: str = Field("minilm", description="embedding model (MiniLM by default, even on CPU: static vectors "
                       "rank target similarity poorly); auto, an alias, pkg:NAME/path or a local directory")


def target_scores(pool: np.ndarray, target: np.ndarray, aggregate: str = "mean") -> np.ndarray:
    """Cosine similarity of each pool vector to a target set (unit vectors), aggregated by mean or max."""
    if len(target) == 0:
        raise ValueError("rds_plus: the target set is empty")
    if aggregate == "mean":
        # mean of dot products = dot product with the mean vector
        return (pool @ target.mean(axis=0)).astype(np.float32)
    import faiss

    index = faiss.IndexFlatIP(target.shape[1])
    index.add(np.ascontiguousarray(target, dtype=np.float32))
    return index.search(np.ascontiguousarray(pool, dtype=np.float32), 1)[0][:, 0].astype(np.float32)


def round_robin(scores: np.ndarray, limit: int | None = None) -> np.ndarray:
    """Row order that takes, target by target in turn, each target's best row not taken yet.

    ``scores`` is (targets, rows); ``limit`` stops after that many rows. With one target this is a
    plain sort by score.
    """
    t, n = scores.shape
    by_target = [np.argsort(-scores[i], kind="stable") for i in range(t)]
    if t == 1:
        return by_target[0] if limit is None else by_target[0][:limit]
    stop = n if limit is None else min(limit, n)
    order: list[int] = []
    taken = np.zeros(n, dtype=bool)
    ptr = [0] * t
    # sequential by nature (a row taken by one target is skipped by the others); O(rows x targets)
    while len(order) < stop:
        for i in range(t):
            seq = by_target[i]
            while ptr[i] < n and taken[seq[ptr[i]]]:
                ptr[i] += 1
            if ptr[i] < n and len(order) < stop:
                j = int(seq[ptr[i]])
                taken[j] = True
                order.append(j)
    return np.asarray(order, dtype=np.int64)


class RDSPlus(VectorSelector):
    """RDS+ under a budget (see the module docstring)."""

    name = "rds_plus"
    Params = RDSParams
    columns = {**SELECT_COLUMNS, "rds_score": Col(pl.Float32, "score", "global")}

    def setup(self, ctx: RunContext | None = None) -> None:
        super().setup(ctx)
        self._targets: list[np.ndarray] | None = None

    def target_vectors(self) -> list[np.ndarray]:
        """Embeddings of each target file (cached in the run's sidecar store when there is one)."""
        if getattr(self, "_targets", None) is None:
            from pipeline.embeddings import embed_frame, store_for
            from pipeline.io.readers import read_table

            p: RDSParams = self.params  # type: ignore[assignment]
            view = p.target_view or p.view
            paths = [p.target] if isinstance(p.target, str) else list(p.target)
            out = []
            for path in paths:
                rows, rejects = read_table(path, p.target_format)
                if rows.height == 0:
                    raise ValueError(f"rds_plus: target {path} has no readable rows ({rejects.height} rejected)")
                out.append(embed_frame(rows, view=view, model=p.model, store=store_for(self.ctx, p.model, view),
                                       device=p.device or self.ctx.device, batch_size=p.batch_size))
            self._targets = out
        return self._targets  # type: ignore[return-value]

    def select(self, df: pl.DataFrame) -> pl.DataFrame:
        p: RDSParams = self.params  # type: ignore[assignment]
        idx = canonical_order(df, np.flatnonzero(candidate_mask(df)))
        score_col = np.full(df.height, np.nan, dtype=np.float32)
        if len(idx):
            x = self.vectors(df, idx)
            per_target = np.stack([target_scores(x, t, p.aggregate) for t in self.target_vectors()])
            order = round_robin(per_target, p.budget if p.budget_unit == "rows" else None)
            score_col[idx] = per_target.max(axis=0)
        else:
            order = np.zeros(0, dtype=np.int64)
        chosen = take_budget(idx[order], p, df)
        reasons = pl.select(pl.format("rds_plus:{}={}", pl.lit(p.aggregate),
                                      pl.Series(np.round(score_col[chosen], 4)))).to_series().to_list()
        out = mark_selected(df, chosen, reasons)
        self._summary = {"candidates": int(len(idx)), "selected": int(len(chosen)),
                         "targets": [len(t) for t in (self._targets or [])],
                         "mean_selected_score": float(np.mean(score_col[chosen])) if len(chosen) else None}
        return out.with_columns(pl.Series("rds_score", score_col).fill_nan(None).cast(pl.Float32))

    def summary(self) -> dict[str, Any]:
        return dict(getattr(self, "_summary", {}))


rds_plus = stage_function(RDSPlus, ("budget", "target", "aggregate"))
