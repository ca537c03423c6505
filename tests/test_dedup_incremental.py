"""Incremental dedup through the real runner: batch 1 saves its state, batch 2 reads it, and the
result equals deduplicating both batches at once (exact + MinHash); SemDeDup state drops rewordings
of earlier rows."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from pipeline.config import load_config
from pipeline.dedup import StateMismatch
from pipeline.engine import run

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
COLS = ["keep", "drop_reason", "dup_of", "dup_kind", "dup_of_source", "dup_of_row", "minhash_component"]


def _shards(run_dir: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted((run_dir / "shards").glob("part-*.parquet"))], how="diagonal_relaxed")


def _run(tmp: Path, name: str, sources: list[Path], stages: list[dict], **settings: object) -> Path:
    cfg = load_config({"run": {"name": name, "out": str(tmp / "runs"), "shard_rows": 700, **settings},
                       "sources": [{"path": str(s)} for s in sources], "stages": stages}, base_dir=tmp)
    res = run(cfg, run_id=name)
    assert res.counts["balanced"]
    return res.run_dir


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[Path]]:
    """Real rows with natural exact and near duplicates (ShareGPT; T0 passages under several
    templates), split in two batches; each batch has a ShareGPT file and a T0 file."""
    tmp = tmp_path_factory.mktemp("incr")
    sg = pl.read_parquet(REAL / "sharegpt_17k.parquet").slice(0, 3000)
    t0 = pl.read_parquet(REAL / "t0_templated_50k.parquet")
    t0 = t0.filter(pl.col("template").str.starts_with("quoref") | pl.col("template").str.starts_with("ag_news"))
    t0 = t0.sample(2000, seed=5)
    a, b = [], []
    for name, df in (("sharegpt", sg), ("t0", t0)):
        half = df.height // 2
        for part, rows, out in (("a", df.head(half), a), ("b", df.tail(df.height - half), b)):
            p = tmp / f"{name}_{part}.parquet"
            rows.write_parquet(p)
            out.append(p)
    return tmp, a, b


STAGES = [
    {"stage": "exact_dedup", "key": "instruction", "keeper": "first"},
    {"stage": "minhash_dedup", "keeper": "first"},
]


def test_second_batch_against_saved_state_equals_one_run(batches: tuple[Path, list[Path], list[Path]]) -> None:
    tmp, a, b = batches
    r1 = _run(tmp, "batch1", a, STAGES, save_state=True)
    r2 = _run(tmp, "batch2", b, STAGES, state_in=str(r1 / "state"), save_state=True)
    both = _run(tmp, "both", a + b, STAGES)

    inc = pl.concat([_shards(r1), _shards(r2)], how="diagonal_relaxed").sort(["source", "source_row"])
    one = _shards(both).sort(["source", "source_row"])
    assert inc.height == one.height > 4900  # the rest are rejects (empty ShareGPT conversations)
    diff = inc.select("source", "source_row", *COLS).with_row_index().join(
        one.select(*COLS).with_row_index(), on="index", suffix="_one"
    ).filter(pl.any_horizontal(pl.col(c).ne_missing(pl.col(f"{c}_one")) for c in COLS))
    # every second-batch row gets exactly the result of the single run
    assert diff.filter(pl.col("source").str.ends_with("_b.parquet")).height == 0
    # first-batch rows too, except where a second-batch row bridges two first-batch near-duplicate
    # groups: the single run merges them, while an earlier run's keepers stay kept (documented)
    b1 = _shards(r1)
    for r in diff.iter_rows(named=True):
        assert r["keep"] and r["dup_kind_one"] == "minhash"
        comp_one = one.filter(pl.col("minhash_component") == r["minhash_component_one"])
        assert comp_one["source"].str.ends_with("_b.parquet").any()
        keeper_b1 = b1.filter((pl.col("source") == r["dup_of_source_one"]) & (pl.col("source_row") == r["dup_of_row_one"]))
        assert keeper_b1["minhash_component"][0] != r["minhash_component"]  # apart after batch 1
    assert diff.height <= 0.002 * one.height
    # the second batch found duplicates of first-batch rows, of both kinds
    cross = _shards(r2).filter(pl.col("dup_of_source").str.ends_with("_a.parquet"))
    assert set(cross["dup_kind"].unique()) == {"exact", "minhash"}
    assert cross.height >= 20
    # state is Parquet + a JSON header, and the chained state knows both batches
    for stage in ("exact_dedup", "minhash_dedup"):
        files = sorted(p.name for p in (r2 / "state" / stage).iterdir())
        assert "meta.json" in files and all(f.endswith((".parquet", ".json")) for f in files)
        meta = json.loads((r2 / "state" / stage / "meta.json").read_text())
        want = (one.height - (one["dup_kind"] == "exact").sum() if stage == "exact_dedup"
                else inc.filter(pl.col("keep") & pl.col("minhash_component").is_not_null()).height)
        assert meta["rows"] == want


def test_state_with_other_params_is_refused(batches: tuple[Path, list[Path], list[Path]]) -> None:
    tmp, a, b = batches
    r1 = tmp / "runs" / "batch1"
    if not (r1 / "state").exists():
        r1 = _run(tmp, "batch1-again", a, STAGES, save_state=True)
    other = [STAGES[0], {"stage": "minhash_dedup", "keeper": "first", "threshold": 0.8}]
    with pytest.raises(Exception, match="threshold") as e:
        _run(tmp, "mismatch", b, other, state_in=str(r1 / "state"))
    assert isinstance(e.value, StateMismatch) or isinstance(e.value.__cause__, StateMismatch)


@pytest.mark.slow
def test_semantic_state_drops_rewordings_of_earlier_rows(tmp_path: Path) -> None:
    ref = pl.read_parquet(REAL / "alpaca_eval_reference.parquet")
    first = ref.slice(0, 150).select("instruction", "output")
    new = ref.slice(150, 30).select("instruction", "output")
    reworded = first.head(30).with_columns(("Hey, quick question: " + pl.col("instruction") + " Thanks!").alias("instruction"))
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    first.write_parquet(a)
    pl.concat([reworded, new]).write_parquet(b)
    st = [{"stage": "semantic_dedup", "eps": 0.1, "keeper": "first", "n_clusters": 4, "model": "minilm"}]  # rewordings: MiniLM
    r1 = _run(tmp_path, "sem1", [a], st, save_state=True)
    r2 = _run(tmp_path, "sem2", [b], st, state_in=str(r1 / "state"))
    out = _shards(r2).sort("source_row")
    rew = out.head(30)
    assert (rew["dup_kind"] == "semantic").sum() >= 27
    hits = rew.filter(pl.col("dup_kind") == "semantic")
    assert (hits["dup_of_source"] == "a.parquet").all()
    assert (hits["dup_of_row"] == hits["source_row"]).mean() >= 0.9  # the row it rewords
    first_ids = _shards(r1).select(pl.col("id").alias("dup_of"), pl.col("source_row").alias("dup_of_row"))
    assert hits.join(first_ids, on=["dup_of", "dup_of_row"]).height == hits.height
    assert out.tail(30)["keep"].sum() >= 29  # unrelated new instructions stay
