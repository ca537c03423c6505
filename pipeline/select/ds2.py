"""DS2: correct LLM ratings with a score-transition matrix estimated from k-NN agreement, then select
high corrected ratings, preferring long-tail (rare) rows.

Pang, Wei, Shah, Zhu, Wang, Qian, Liu, Bao, Wei, "Improving Data Efficiency via Curating LLM-Driven
Rating Systems" (ICLR 2025; UCSC-REAL/DS2). Ratings from an LLM judge are noisy; DS2 models the
noise as a transition matrix ``T[i, j] = P(rated j | true quality i)`` and estimates it without clean
labels from the *clusterability* assumption: a row and its k nearest neighbours in embedding space
share the same true quality. Corrected ratings come from the posterior over the true rating; a
long-tail score (mean cosine distance to the k nearest neighbours) measures how rare a row is.
Selection sorts by corrected rating, then by long-tail score, both descending.

Estimation here: each row's evidence is its own rating plus its k neighbours' ratings (the k-NN
consensus DS2 builds on). ``T`` and the prior over true ratings are fitted by EM on that evidence
(Dawid-Skene with the neighbours as annotators sharing one confusion matrix), keeping ``T``
diagonally dominant (the identifiability assumption of DS2's estimator: a rating that only ever
appears as noise cannot be a true class); the corrected rating is the argmax of the posterior,
applied when its probability reaches ``min_confidence`` (``ds2_confidence`` records it).

Departures from the paper's code: DS2 estimates ``T`` with HOC (matching first-, second- and
third-order consensus statistics of 2-NN tuples) and flags corrupted rows with SimiFeat ranking
before suggesting a k-NN label; the EM above uses the same k-NN consensus signal in one likelihood
instead. Embeddings are sentence embeddings (``model: auto``: MiniLM on a GPU, its static distillation on CPU) rather than the paper's
BGE. The paper's final step caps rows per long-tail histogram bin; here long-tail only orders rows
within a rating. Ratings must be integers (e.g. a 0-5 judge scale); float scores can be binned into
``levels`` quantile bins, and then ``ds2_rating`` is the bin index. Above 10k candidates the k-NN
search is approximate (faiss IVF).
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


class DS2Params(VectorSelectParams):
    rating: str = Field(..., description="rating column (integers, or floats binned with levels)")
    k: int = Field(10, ge=1, description="neighbours per row for the consensus and the long-tail score")
    levels: int | None = Field(None, ge=2, description="bin a float rating into this many quantile bins")
    em_iters: int = Field(50, ge=1, description="EM iterations of the rating-transition estimate")
    min_confidence: float = Field(0.0, ge=0.0, le=1.0, description="keep the raw rating where the posterior is below this")
    min_rating: int | None = Field(None, description="do not select rows whose corrected rating is below this")


def transition_em(y: np.ndarray, nbr: np.ndarray, n_classes: int, iters: int = 50, smoothing: float = 0.01,
                  tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM over k-NN rating consensus: (posterior over true ratings (n, K), T (K, K), prior (K,)).

    ``y`` are observed rating codes (0..K-1); ``nbr`` (n, k) neighbour positions, -1 for none. Each
    row's evidence is the count of each rating among itself and its neighbours. As in DS2 (whose HOC
    estimator assumes it for identifiability), ``T`` must be diagonally dominant: a true class whose
    fitted row of ``T`` emits another rating more often than its own is a label switch (e.g. a rating
    that only ever appears as noise), so it is removed from the true classes and EM is run again.
    """
    n = len(y)
    valid = nbr >= 0
    rows = np.repeat(np.arange(n), nbr.shape[1])[valid.ravel()]
    labs = y[nbr[valid]]
    counts = np.bincount(rows * n_classes + labs, minlength=n * n_classes).reshape(n, n_classes).astype(np.float64)
    counts[np.arange(n), y] += 1.0
    active = np.ones(n_classes, dtype=bool)
    while True:
        post = counts * active
        post /= np.maximum(post.sum(axis=1, keepdims=True), 1e-12)
        post[post.sum(axis=1) == 0] = active / active.sum()
        t = np.eye(n_classes)
        prior = active / active.sum()
        for _ in range(iters):
            prior = post.mean(axis=0) * active + 1e-12 * active
            prior /= prior.sum()
            t = post.T @ counts + smoothing
            t /= t.sum(axis=1, keepdims=True)
            with np.errstate(divide="ignore"):
                logp = np.log(prior)[None, :] + counts @ np.log(t).T
            logp -= logp.max(axis=1, keepdims=True)
            new = np.exp(logp)
            new /= new.sum(axis=1, keepdims=True)
            delta = float(np.abs(new - post).max())
            post = new
            if delta < tol:
                break
        diag = np.diag(t)
        off = np.where(np.eye(n_classes, dtype=bool), -np.inf, t).max(axis=1)
        margin = np.where(active, diag - off, np.inf)
        if active.sum() <= 1 or margin.min() >= 0:
            return post, t, prior
        active[int(np.argmin(margin))] = False


class DS2(VectorSelector):
    """DS2 under a budget (see the module docstring)."""

    name = "ds2"
    Params = DS2Params
    columns = {**SELECT_COLUMNS, "ds2_rating": Col(pl.Int64, "score", "global"),
               "ds2_confidence": Col(pl.Float32, "score", "global"), "ds2_long_tail": Col(pl.Float32, "score", "global")}
    input_params = ("rating",)

    def global_inputs(self) -> tuple[str, ...]:
        return ("id", self.params.rating)

    def _codes(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes 0..K-1, value of each code) from a rating array without NaN."""
        p: DS2Params = self.params  # type: ignore[assignment]
        if p.levels is not None:
            edges = np.unique(np.quantile(raw, np.linspace(0, 1, p.levels + 1)[1:-1]))
            codes = np.searchsorted(edges, raw, side="right")
            return codes.astype(np.int64), np.arange(len(edges) + 1)
        if not np.all(raw == np.round(raw)):
            raise ValueError(f"ds2: column {p.rating!r} has non-integer ratings; set levels to bin it")
        values, codes = np.unique(raw.astype(np.int64), return_inverse=True)
        return codes.astype(np.int64), values

    def select(self, df: pl.DataFrame) -> pl.DataFrame:
        from pipeline.embeddings import knn

        p: DS2Params = self.params  # type: ignore[assignment]
        if p.rating not in df.columns:
            raise ValueError(f"ds2: column {p.rating!r} not in table; columns: {', '.join(df.columns)}")
        raw_all = df[p.rating].cast(pl.Float64).fill_null(np.nan).to_numpy()
        idx = canonical_order(df, np.flatnonzero(candidate_mask(df) & ~np.isnan(raw_all)))
        rating = np.zeros(df.height, dtype=np.int64)
        conf = np.full(df.height, np.nan, dtype=np.float32)
        tail = np.full(df.height, np.nan, dtype=np.float32)
        self._summary: dict[str, Any] = {"candidates": int(len(idx))}
        chosen = np.zeros(0, dtype=np.int64)
        if len(idx):
            codes, values = self._codes(raw_all[idx])
            x = self.vectors(df, idx)
            sims, nbr = knn(x, p.k, seed=self.seed)
            post, t, prior = transition_em(codes, nbr, len(values), p.em_iters)
            best = post.argmax(axis=1)
            best_p = post[np.arange(len(idx)), best]
            cured = np.where(best_p >= p.min_confidence, best, codes)
            rating[idx] = values[cured]
            conf[idx] = best_p
            tail[idx] = np.nanmean(1.0 - sims, axis=1) if sims.shape[1] else 0.0
            ok = np.ones(len(idx), dtype=bool) if p.min_rating is None else values[cured] >= p.min_rating
            pos = np.flatnonzero(ok)
            order = pos[np.lexsort((-tail[idx][pos], -values[cured][pos]))]
            chosen = take_budget(idx[order], p, df)
            self._summary.update(
                levels=values.tolist(), prior=np.round(prior, 4).tolist(), transition=np.round(t, 4).tolist(),
                changed=int((cured != codes).sum()), selected=int(len(chosen)))
        reasons = pl.select(pl.format("ds2:rating={}:raw={}:long_tail={}", pl.Series(rating[chosen]),
                                      pl.Series(raw_all[chosen]), pl.Series(np.round(tail[chosen], 4)))).to_series().to_list()
        out = mark_selected(df, chosen, reasons)
        rated = pl.Series(~np.isnan(conf))
        return out.with_columns(
            pl.when(rated).then(pl.Series(rating)).otherwise(None).cast(pl.Int64).alias("ds2_rating"),
            pl.Series("ds2_confidence", conf).fill_nan(None).cast(pl.Float32),
            pl.Series("ds2_long_tail", tail).fill_nan(None).cast(pl.Float32),
        )

    def summary(self) -> dict[str, Any]:
        return dict(getattr(self, "_summary", {}))


ds2 = stage_function(DS2, ("budget", "rating", "k"))


