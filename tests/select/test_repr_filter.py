"""Deita repr filter on real T0 rows: diversity vs random, the threshold holds, same result as the row-at-a-time walk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline import select
from pipeline.embeddings import EmbeddingStore
from pipeline.select.repr_filter import repr_walk


def picked(out: pl.DataFrame) -> pl.DataFrame:
    return out.filter(pl.col("selected").fill_null(False)).sort("select_rank")


def with_walk_order(pool: pl.DataFrame, seed: int) -> pl.DataFrame:
    """A score that walks rows in a seeded random order, so any gain over random is the filter's own."""
    return pool.with_columns(pl.Series("walk", np.random.default_rng(seed).permutation(pool.height).astype(np.float64)))


def reference_walk(x: np.ndarray, threshold: float, limit: int) -> list[int]:
    """Deita's filter one row at a time, in plain NumPy."""
    acc: list[int] = []
    for i in range(len(x)):
        if not acc or float(np.max(x[acc] @ x[i])) < threshold:
            acc.append(i)
            if len(acc) == limit:
                break
    return acc


def test_covers_more_tasks_than_random(t0_pool: pl.DataFrame, emb_cache: Path) -> None:
    budget = 50
    gains_t, gains_p = [], []
    for seed in range(3):
        r = picked(select.random(t0_pool, budget=budget, seed=seed))
        f = picked(select.repr_filter(with_walk_order(t0_pool, seed), budget=budget, score="walk", threshold=0.9,
                                      cache_dir=emb_cache))
        assert f.height == budget
        gains_t.append(f["task"].n_unique() - r["task"].n_unique())
        gains_p.append(f["passage"].n_unique() - r["passage"].n_unique())
    # measured with the paper's threshold 0.9: +4 tasks and +7 distinct passages on average
    assert np.mean(gains_t) >= 2.5, gains_t
    assert np.mean(gains_p) >= 4, gains_p


@pytest.mark.parametrize("threshold", [0.9, 0.6])
def test_no_two_selected_rows_above_threshold(t0_pool: pl.DataFrame, emb_cache: Path, threshold: float) -> None:
    pool = t0_pool.with_columns(pl.col("len_response_tokens").cast(pl.Float64).alias("deita_score"))
    out = select.repr_filter(pool, budget=pool.height, threshold=threshold, cache_dir=emb_cache)
    got = picked(out)
    x = EmbeddingStore(emb_cache, "auto", "instruction").get(got["id"].to_list())[0]
    s = x @ x.T
    np.fill_diagonal(s, -1)
    assert s.max() < threshold + 1e-5  # brute force over every selected pair
    assert got.height < pool.height  # the filter did reject near-duplicates
    # every reached row that was rejected is close to some row accepted before it
    rejected = out.filter(~pl.col("selected") & pl.col("repr_nn_sim").is_not_null())
    assert rejected.height and (rejected["repr_nn_sim"] >= threshold - 1e-5).all()
    assert (got["repr_nn_sim"].drop_nulls() < threshold).all()
    assert got["deita_score"].to_list() == sorted(got["deita_score"].to_list(), reverse=True)


def test_block_walk_equals_row_at_a_time_walk(t0_pool: pl.DataFrame, emb_cache: Path) -> None:
    x = EmbeddingStore(emb_cache, "auto", "instruction").get(t0_pool["id"].to_list())[0]
    x = x[np.random.default_rng(0).permutation(len(x))]
    for threshold, limit in ((0.9, 120), (0.7, 60), (0.95, 10_000)):
        ref = reference_walk(x, threshold, limit)
        for block in (1, 7, 64, 512):
            acc, nn = repr_walk(x, threshold, limit=limit, block=block)
            assert acc.tolist() == ref, (threshold, limit, block)
        # nn_sim of an accepted row is its max similarity to the rows accepted before it
        for j, i in enumerate(ref[1:40], start=1):
            assert abs(nn[i] - float(np.max(x[ref[:j]] @ x[i]))) < 1e-5


def test_budget_stops_the_walk_and_is_deterministic(t0_pool: pl.DataFrame, emb_cache: Path) -> None:
    pool = with_walk_order(t0_pool, 1)
    a = select.repr_filter(pool, budget=30, score="walk", cache_dir=emb_cache)
    b = select.repr_filter(pool.sample(fraction=1.0, shuffle=True, seed=2), budget=30, score="walk",
                           cache_dir=emb_cache)
    assert picked(a)["id"].to_list() == picked(b)["id"].to_list()
    got = picked(a)
    assert got.height == 30
    last = got["walk"].min()
    assert a.filter(pl.col("walk") < last)["repr_nn_sim"].is_null().all()  # never reached
    tok = picked(select.repr_filter(pool, budget=400, budget_unit="tokens", score="walk", cache_dir=emb_cache))
    assert 0 < tok["len_response_tokens"].sum() <= 400
    with pytest.raises(ValueError, match="deita_score"):
        select.repr_filter(t0_pool, budget=5, cache_dir=emb_cache)
