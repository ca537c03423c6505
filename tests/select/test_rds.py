"""RDS+ with real targets: GSM8K test questions pull GSM8K train rows above code and roleplay rows."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline import select
from pipeline.select.rds import round_robin


def picked(out: pl.DataFrame) -> pl.DataFrame:
    return out.filter(pl.col("selected").fill_null(False)).sort("select_rank")


def head_of(src: Path, n: int, dst: Path) -> Path:
    """The first ``n`` records of a real JSONL.gz file, as a plain JSONL file."""
    with gzip.open(src, "rt") as f:
        lines = [json.loads(next(f)) for _ in range(n)]
    dst.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return dst


@pytest.fixture(scope="module")
def gsm_target(real_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 GSM8K test questions (question/answer format)."""
    return head_of(real_dir / "gsm8k_test.jsonl.gz", 200, tmp_path_factory.mktemp("targets") / "gsm8k_test_200.jsonl")


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative."""
    pos, neg = scores[positive], scores[~positive]
    return float((pos[:, None] > neg[None, :]).mean())


@pytest.mark.parametrize("aggregate", ["mean", "max"])
def test_gsm8k_target_ranks_gsm8k_train_first(mixed_pool: pl.DataFrame, gsm_target: Path, emb_cache: Path,
                                              aggregate: str) -> None:
    out = select.rds_plus(mixed_pool, budget=150, target=gsm_target, aggregate=aggregate, cache_dir=emb_cache)
    got = picked(out)
    assert got.height == 150
    assert (got["origin"] == "gsm8k_train").mean() >= 0.95
    is_gsm = (out["origin"] == "gsm8k_train").to_numpy()
    assert auc(out["rds_score"].to_numpy(), is_gsm) >= 0.97
    assert got["rds_score"].to_list() == sorted(got["rds_score"].to_list(), reverse=True)
    assert got["select_reason"][0].startswith(f"rds_plus:{aggregate}=")


def test_several_targets_take_turns(mixed_pool: pl.DataFrame, gsm_target: Path, real_dir: Path, emb_cache: Path) -> None:
    humaneval = head_of(real_dir / "humaneval.jsonl.gz", 50, gsm_target.parent / "humaneval_50.jsonl")
    out = select.rds_plus(mixed_pool, budget=60, target=[gsm_target, humaneval], cache_dir=emb_cache)
    got = picked(out)
    counts = got["origin"].value_counts().to_dict(as_series=False)
    by = dict(zip(counts["origin"], counts["count"], strict=True))
    # round-robin: each target contributes its best rows in turn (HumanEval pulls code rows)
    assert by.get("gsm8k_train", 0) >= 25 and by.get("code_alpaca_2k", 0) >= 25


def test_round_robin_order() -> None:
    s = np.array([[0.9, 0.8, 0.1, 0.0], [0.95, 0.1, 0.2, 0.7]])
    # target 0 takes row 0, target 1's best (row 0) is gone so it takes row 3, then rows 1 and 2
    assert round_robin(s).tolist() == [0, 3, 1, 2]
    assert round_robin(s, limit=2).tolist() == [0, 3]
    assert round_robin(s[:1]).tolist() == [0, 1, 2, 3]


def test_bad_target(mixed_pool: pl.DataFrame, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no readable rows"):
        select.rds_plus(mixed_pool.head(5), budget=2, target=empty)
