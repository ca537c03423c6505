"""DS2 on real rows with a rating column and injected label noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline import select
from pipeline.embeddings import EmbeddingStore
from pipeline.select.ds2 import transition_em

#: a clean rating per source file (what a consistent judge would give these rows)
CLEAN = {"gsm8k_train": 5, "code_alpaca_2k": 3, "gpteacher_roleplay": 1}


@pytest.fixture(scope="module")
def noisy(mixed_pool: pl.DataFrame) -> pl.DataFrame:
    """Clean ratings by source; 25% of rows get a different rating drawn uniformly from 1..5."""
    rng = np.random.default_rng(0)
    clean = mixed_pool["origin"].replace_strict(CLEAN).to_numpy().astype(np.int64)
    corrupt = rng.random(len(clean)) < 0.25
    other = np.array([rng.choice([v for v in range(1, 6) if v != c]) for c in clean])
    rating = np.where(corrupt, other, clean)
    return mixed_pool.with_columns(pl.Series("clean", clean), pl.Series("rating", rating), pl.Series("corrupt", corrupt))


def picked(out: pl.DataFrame) -> pl.DataFrame:
    return out.filter(pl.col("selected").fill_null(False)).sort("select_rank")


def test_corrected_ratings_move_toward_clean(noisy: pl.DataFrame, emb_cache: Path) -> None:
    out = select.ds2(noisy, budget=100, rating="rating", k=10, cache_dir=emb_cache)
    cur, raw, clean = (out[c].to_numpy() for c in ("ds2_rating", "rating", "clean"))
    bad = out["corrupt"].to_numpy()
    closer = np.abs(cur - clean) < np.abs(raw - clean)
    assert closer[bad].mean() > 0.5  # measured: about 0.9
    assert (cur[~bad] == clean[~bad]).mean() >= 0.9  # clean ratings mostly left alone
    # the corrected column is closer to the truth than the noisy one overall
    assert (cur == clean).mean() > (raw == clean).mean() + 0.15
    assert out["ds2_confidence"].min() > 0 and out["ds2_confidence"].max() <= 1.0


def test_selection_order_and_long_tail(noisy: pl.DataFrame, emb_cache: Path) -> None:
    out = select.ds2(noisy, budget=100, rating="rating", k=10, cache_dir=emb_cache)
    got = picked(out)
    assert got.height == 100
    # highest corrected rating first, then the rarest rows (largest long-tail score)
    keys = list(zip((-got["ds2_rating"]).to_list(), (-got["ds2_long_tail"]).to_list(), strict=True))
    assert keys == sorted(keys)
    assert (got["ds2_rating"] == 5).all()
    x = EmbeddingStore(emb_cache, "auto", "instruction").get(out["id"].to_list())[0]
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    brute = (1 - (-np.sort(-s, axis=1)[:, :10])).mean(axis=1)
    assert np.allclose(out["ds2_long_tail"].to_numpy(), brute, atol=1e-4)
    again = picked(select.ds2(noisy.reverse(), budget=100, rating="rating", k=10, cache_dir=emb_cache))
    assert again["id"].to_list() == got["id"].to_list()


def test_min_confidence_min_rating_and_levels(noisy: pl.DataFrame, emb_cache: Path) -> None:
    loose = select.ds2(noisy, budget=450, rating="rating", cache_dir=emb_cache)
    strict = select.ds2(noisy, budget=450, rating="rating", min_confidence=0.999, cache_dir=emb_cache)
    changed = strict.filter(pl.col("ds2_rating") != pl.col("rating"))
    assert (changed["ds2_confidence"] >= 0.999).all()
    assert changed.height < loose.filter(pl.col("ds2_rating") != pl.col("rating")).height
    high = picked(select.ds2(noisy, budget=450, rating="rating", min_rating=4, cache_dir=emb_cache))
    assert (high["ds2_rating"] >= 4).all() and high.height < 450
    floats = noisy.with_columns((pl.col("rating") + pl.col("source_row") % 7 * 0.01).alias("score"))
    with pytest.raises(ValueError, match="levels"):
        select.ds2(floats, budget=10, rating="score", cache_dir=emb_cache)
    binned = select.ds2(floats, budget=10, rating="score", levels=3, cache_dir=emb_cache)
    assert set(binned["ds2_rating"].unique().to_list()) <= {0, 1, 2}


def test_transition_em_recovers_a_known_matrix() -> None:
    """With neighbours that share the true label, EM estimates the confusion matrix that made the noise."""
    rng = np.random.default_rng(1)
    n, k, K = 3000, 10, 3
    true = rng.integers(0, K, n)
    t = np.array([[0.8, 0.15, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]])
    obs = np.array([rng.choice(K, p=t[c]) for c in true])
    same = [np.flatnonzero(true == c) for c in range(K)]
    nbr = np.stack([rng.choice(same[c][same[c] != i], k, replace=False) for i, c in enumerate(true)])
    post, t_hat, prior = transition_em(obs, nbr, K)
    assert np.abs(t_hat - t).max() < 0.05
    assert (post.argmax(1) == true).mean() > 0.97
    assert np.abs(prior - np.bincount(true) / n).max() < 0.03
