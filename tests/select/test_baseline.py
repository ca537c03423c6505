"""Baselines (random, top-k, Long-is-More): determinism, budgets in rows and tokens, composition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline import select
from pipeline.select.long_is_more import long_is_more
from pipeline.stages import length
from pipeline.stages.length_filter import Length


@pytest.fixture(scope="module")
def pool(real_dir: Path) -> pl.DataFrame:
    from pipeline.io.readers import read_table

    rows, _ = read_table(str(real_dir / "sharegpt_17k.parquet"))
    return Length(min_response_tokens=None).score(rows.head(2000))


def picked(out: pl.DataFrame) -> pl.DataFrame:
    return out.filter(pl.col("selected").fill_null(False)).sort("select_rank")


def test_random_is_seeded_and_order_independent(pool: pl.DataFrame) -> None:
    a = picked(select.random(pool, budget=300, seed=7))
    b = picked(select.random(pool.sample(fraction=1.0, shuffle=True, seed=3), budget=300, seed=7))
    c = picked(select.random(pool, budget=300, seed=8))
    assert a.height == 300
    assert a["source_row"].to_list() == b["source_row"].to_list()  # same rows, same ranks, any input order
    assert len(set(a["source_row"]) & set(c["source_row"])) < 150  # another seed, another sample
    assert a["select_rank"].to_list() == list(range(1, 301))
    assert a["select_reason"][0] == "select_random:rank=1"
    rest = select.random(pool, budget=300, seed=7).filter(~pl.col("selected"))
    assert rest.height == pool.height - 300 and rest["select_rank"].is_null().all()


def test_token_budget_is_a_prefix_that_fits(pool: pl.DataFrame) -> None:
    budget = 20_000
    out = picked(select.random(pool, budget=budget, budget_unit="tokens", seed=1))
    used = out["len_response_tokens"].sum()
    assert 0 < used <= budget
    # the next row in the seeded order would not have fitted
    full = picked(select.random(pool, budget=pool.height, seed=1))
    nxt = full.row(out.height, named=True)["len_response_tokens"]
    assert used + nxt > budget
    with pytest.raises(ValueError, match="len_total_tokens"):
        select.random(pool.drop("len_total_tokens"), budget=10, budget_unit="tokens", token_column="len_total_tokens")


def test_top_k_and_thresholds(pool: pl.DataFrame) -> None:
    out = picked(select.top_k(pool, budget=50, column="len_instruction_tokens"))
    top = pool["len_instruction_tokens"].sort(descending=True)[:50].to_list()
    assert out["len_instruction_tokens"].to_list() == top
    low = picked(select.top_k(pool, budget=10_000, column="len_response_tokens", min_value=100, max_value=200))
    assert low.height == pool.filter(pl.col("len_response_tokens").is_between(100, 200)).height
    with pytest.raises(ValueError, match="not in table"):
        select.top_k(pool, budget=5, column="nope")


def test_long_is_more_and_composition(pool: pl.DataFrame) -> None:
    out = picked(long_is_more(pool, budget=100))
    assert out["len_response_tokens"].to_list() == pool["len_response_tokens"].sort(descending=True)[:100].to_list()
    again = picked(long_is_more(pool, budget=100))
    assert again["source_row"].to_list() == out["source_row"].to_list()
    # dropped rows are never selected; a later selector only picks among an earlier one's picks
    filtered = length(pool, min_response_tokens=50)
    first = select.top_k(filtered, budget=400, column="len_instruction_tokens")
    second = select.random(first, budget=100, seed=0)
    chosen = picked(second)
    assert chosen.height == 100
    assert chosen["keep"].all() and (chosen["len_response_tokens"] >= 50).all()
    first_ids = set(picked(first)["source_row"])
    assert set(chosen["source_row"]) <= first_ids
    assert second.filter(~pl.col("keep"))["selected"].is_null().all()
    # the earlier selector's rejects keep its verdict
    assert second.filter(pl.col("select_reason").is_null() & pl.col("keep"))["selected"].sum() == 0
    assert np.all(second.filter(pl.col("keep"))["selected"].sum() == 100)
