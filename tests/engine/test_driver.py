"""The in-process engine and the content-addressed building blocks the flows use (no Prefect here)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from pipeline.config import load_config
from pipeline.engine import LocalExecutor, run
from pipeline.engine import chains as chains_mod
from pipeline.engine.chains import ShardChain, gather_chains, read_chain
from pipeline.engine.driver import run_plan
from pipeline.engine.ingest import ingest_cached
from pipeline.engine.manifest import StageTally
from pipeline.engine.plan import build_plan, release_stage
from pipeline.engine.store import WorkStore, step_meta
from pipeline.io.readers import SourceSpec
from pipeline.stages.base import RunContext

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
ALPACA = REAL / "code_alpaca_2k.json.gz"
FASTCHAT = REAL / "fastchat_dummy_conversation.json.gz"


def _load(path: Path) -> list:
    with gzip.open(path) as f:
        return json.loads(f.read())


def _rows(path: Path) -> int:
    return len(_load(path))


def _stages(max_rep: float = 0.5) -> list[tuple[str, dict]]:
    return [("length", {"min_response_tokens": 20}), ("heuristics", {"max_rep_ngram_ratio": max_rep}),
            ("exact_dedup", {"key": "instruction"}), ("long_is_more", {"budget": 100})]


def _execute(stages: list[tuple[str, dict]], store: WorkStore, ctx: RunContext, shard_rows: int = 300):
    """The plan run by the driver's own step sequence on one thread; (chains, step stats)."""
    plan = build_plan(stages, ctx, store.root)
    ref = ingest_cached(SourceSpec(path=str(ALPACA)), store, shard_rows, 1000, "part-000-")
    tally = _Recorder()
    try:
        chains, _ = run_plan(LocalExecutor(1), plan, list(ref.chains), tally)
    finally:
        release_stage(plan)
    return chains, tally.stats


class _Recorder(StageTally):
    """A tally that also keeps every step's stat."""

    def __init__(self) -> None:
        super().__init__()
        self.stats: list = []

    def add(self, stats) -> None:
        stats = list(stats)
        self.stats += stats
        super().add(stats)


def _computed(stats) -> set[tuple[int, str]]:
    return {(s.stage, s.kind) for s in stats if not s.cached}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config({
        "run": {"name": "t", "out": str(out), "shard_rows": 700},
        "sources": [{"path": str(ALPACA)}, {"path": str(FASTCHAT)}],
        "stages": [{"stage": n, **p} for n, p in _stages()],
    })
    return run(cfg, run_id="r1")


def test_local_run_accounts_for_every_row(local_run) -> None:
    m, run_dir = local_run.manifest, local_run.run_dir
    c = m["counts"]
    assert c["read"] == _rows(ALPACA) + _rows(FASTCHAT)
    assert c["balanced"] and c["read"] == c["kept"] + c["dropped"] + c["rejected"]
    assert c["dropped_by_stage"]["exact"] > 0 and c["dropped_by_stage"]["length"] > 0
    shards = pl.read_parquet(run_dir / "shards")
    assert shards.height == c["read"] - c["rejected"]
    assert shards.select("source", "source_row").is_duplicated().sum() == 0
    for src, n in shards.group_by("source").len().iter_rows():
        assert sorted(shards.filter(pl.col("source") == src)["source_row"]) == list(range(n))
    sel = pl.read_parquet(run_dir / "selected")
    assert sel.height == c["selected"] == 100
    assert sel["keep"].all() and sel["selected"].all()
    assert not (run_dir / "work").exists(), "the local engine removes its work store when the run completes"
    assert [s["name"] for s in m["stages"]] == [n for n, _ in _stages()]
    assert all(s["cache_hits"] == 0 and s["steps"] > 0 for s in m["stages"])
    assert [s["dropped"] for s in m["stages"]] == [c["dropped_by_stage"].get(k, 0)
                                                   for k in ("length", "heuristics", "exact", "long_is_more")]
    assert m["stages"][2]["summary"]["duplicates"] == c["dropped_by_stage"]["exact"]


def test_rerun_reuses_every_step_and_a_changed_threshold_recomputes_only_downstream(tmp_path: Path) -> None:
    store = WorkStore(tmp_path / "work")
    ctx = RunContext(run_dir=tmp_path / "run")
    first, s1 = _execute(_stages(), store, ctx)
    assert all(not s.cached for s in s1)
    again, s2 = _execute(_stages(), store, ctx)
    assert again == first and all(s.cached for s in s2), "an unchanged plan must recompute nothing"

    changed, s3 = _execute(_stages(max_rep=0.2), store, ctx)
    assert _computed(s3) == {(1, "row"), (2, "pre"), (2, "global"), (2, "post"), (3, "pre"), (3, "global"),
                             (3, "post")}, "heuristics and everything after it, and nothing before"
    assert all(s.cached for s in s3 if s.stage == 0)
    dropped_before = sum((~read_chain(c.files)["keep"]).sum() for c in first)
    dropped_after = sum((~read_chain(c.files)["keep"]).sum() for c in changed)
    assert dropped_after > dropped_before


def test_interrupted_entries_are_ignored_and_redone(tmp_path: Path) -> None:
    store = WorkStore(tmp_path / "work")
    ctx = RunContext(run_dir=tmp_path / "run")
    chains, _ = _execute(_stages(), store, ctx)
    expect = [read_chain(c.files) for c in chains]
    # what a kill -9 leaves: a half-written temp file, a step file missing, a global dir not committed
    victim = Path(chains[1].files[2])  # heuristics delta of shard 1
    victim.unlink()
    (victim.parent / f".{victim.name}.tmp").write_bytes(b"PAR1 truncated")
    gdir = next((store.root / "exact_dedup" / "global").iterdir())
    (gdir / "_meta.json").unlink()
    again, stats = _execute(_stages(), store, ctx)
    assert {(s.stage, s.kind) for s in stats if not s.cached} >= {(1, "row"), (2, "global")}
    assert sum(not s.cached and s.kind == "row" for s in stats) == 1, "only the shard that lost its step"
    assert [read_chain(c.files).equals(e) for c, e in zip(again, expect, strict=True)] == [True] * len(expect)
    assert step_meta(victim)["rows"] == chains[1].rows


def test_read_chain_later_files_override_and_gather_reads_only_named_columns(tmp_path: Path) -> None:
    base = pl.DataFrame({"source": ["a"] * 3, "source_row": [0, 1, 2], "x": [1, 2, 3]})
    d1 = pl.DataFrame({"keep": [True, False, True], "drop_reason": [None, "s:r", None], "y": [0.1, 0.2, 0.3]})
    d2 = pl.DataFrame({"keep": [True, False, False], "drop_reason": [None, "s:r", "t:r"], "x": [7, 8, 9]})
    files = []
    for i, df in enumerate((base, d1, d2)):
        files.append(str(tmp_path / f"{i}.parquet"))
        df.write_parquet(files[-1])
    full = read_chain(files)
    assert full.columns == ["source", "source_row", "x", "keep", "drop_reason", "y"]
    assert full["x"].to_list() == [7, 8, 9] and full["keep"].to_list() == [True, False, False]
    g = gather_chains([tuple(files), tuple(files)], ["source", "source_row", "keep", "y"])
    assert g.columns == ["source", "source_row", "keep", "y", "_shard", "_pos"]
    assert g["_shard"].to_list() == [0, 0, 0, 1, 1, 1] and g["_pos"].to_list() == [0, 1, 2] * 2
    pl.DataFrame({"keep": [True]}).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(RuntimeError, match="inconsistent"):
        read_chain([*files, str(tmp_path / "bad.parquet")])
    assert ShardChain("n", "k", tuple(files), 3).extend("k2", tmp_path / "z").files[-1] == str(tmp_path / "z")


def test_saved_state_deduplicates_a_later_run(tmp_path: Path) -> None:
    """The local engine persists a global stage's state; a later run with state_in drops repeats."""
    rows = _load(ALPACA)
    (tmp_path / "a.json").write_text(json.dumps(rows[:600]))
    (tmp_path / "b.json").write_text(json.dumps(rows[500:900]))
    stages = [{"stage": "exact_dedup"}]
    r1 = run(load_config({"run": {"save_state": True, "out": str(tmp_path / "runs")},
                          "sources": [{"path": str(tmp_path / "a.json")}], "stages": stages}), run_id="one")
    assert (r1.run_dir / "state" / "exact_dedup").is_dir()
    r2 = run(load_config({"run": {"state_in": str(r1.run_dir / "state"), "out": str(tmp_path / "runs")},
                          "sources": [{"path": str(tmp_path / "b.json")}], "stages": stages}), run_id="two")
    shards = pl.read_parquet(r2.run_dir / "shards")
    repeats = shards.filter(pl.col("source_row") < 100)
    assert (repeats["drop_reason"] == "exact:dup").all()
    assert (repeats["dup_of_source"] == "a.json").all()
    assert r2.manifest["stages"][0]["summary"]["duplicates_of_earlier_runs"] >= 100


def test_in_memory_chain_frames_give_the_same_bytes_as_reading_the_files(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The next segment and finalize take the frame a segment just wrote from memory; with the
    cache off they read the files. The outputs must be byte-identical (types, column order)."""
    runner = chains_mod

    cfg = load_config({
        "run": {"name": "t", "out": str(tmp_path), "shard_rows": 400},
        "sources": [{"path": str(ALPACA)}, {"path": str(FASTCHAT)}],
        "stages": [{"stage": "length", "min_response_tokens": 5}, {"stage": "heuristics"},
                   {"stage": "exact_dedup", "key": "instruction"}, {"stage": "minhash_dedup"},
                   {"stage": "long_is_more", "budget": 300}],
    })
    hits = []
    take = runner.CHAIN_FRAMES.take
    monkeypatch.setattr(runner.CHAIN_FRAMES, "take", lambda files: hits.append(r := take(files)) or r)
    a = run(cfg, run_id="cached").run_dir
    assert sum(h is not None for h in hits) > 0, "the cache was never used"
    monkeypatch.setattr(runner.CHAIN_FRAMES, "max_bytes", 0)
    b = run(cfg, run_id="files").run_dir
    for sub in ("shards", "selected"):
        names = sorted(p.name for p in (a / sub).glob("*.parquet"))
        assert names == sorted(p.name for p in (b / sub).glob("*.parquet")) and names
        for n in names:
            assert (a / sub / n).read_bytes() == (b / sub / n).read_bytes(), f"{sub}/{n}"


def test_minhash_reads_only_candidate_messages_from_the_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner leaves the text out of MinHash's gathered pool (no shingle list is stored per shard)
    and reads only the messages of rows in shared buckets from the shard files, to hash them again;
    the decisions equal the stage run on the whole table."""
    runner = chains_mod
    from pipeline.engine import steps as steps_mod
    from pipeline.stages.minhash import SHINGLES, MinHashDedup

    base = _load(ALPACA)
    # near copies of 150 rows: one extra word at the end of a long enough output
    copies = [{**r, "output": r["output"] + " indeed"} for r in base if len(r["output"].split()) > 40][:150]
    src = tmp_path / "copies.json"
    src.write_text(json.dumps(copies))
    cfg = load_config({"run": {"name": "t", "out": str(tmp_path), "shard_rows": 400},
                       "sources": [{"path": str(ALPACA)}, {"path": str(src)}], "stages": [{"stage": "minhash_dedup"}]})
    asked, gathered = [], []
    call, gather = runner.ChainColumnReader.__call__, runner.gather_chains
    monkeypatch.setattr(runner.ChainColumnReader, "__call__",
                        lambda self, name, rows: asked.append((name, len(rows))) or call(self, name, rows))
    monkeypatch.setattr(steps_mod, "gather_chains", lambda chains, cols: gathered.append(cols) or gather(chains, cols))
    res = run(cfg, run_id="lazy")
    out = pl.read_parquet(res.run_dir / "shards" / "*.parquet").sort(["source", "source_row"])
    assert gathered and all(SHINGLES not in cols and "messages" not in cols for cols in gathered)
    assert not any(SHINGLES in pl.read_parquet_schema(p) for p in tmp_path.rglob("*.parquet"))
    n_asked = sum(n for name, n in asked if name == "messages")
    assert 0 < n_asked < out.height / 2  # candidates only, each read once, not the pool
    whole = MinHashDedup()(out.select("id", "source", "source_row", "messages", "tools"))
    cols = ["id", "keep", "drop_reason", "dup_of", "minhash_component", "minhash_jaccard"]
    assert out.filter(~pl.col("keep")).height >= 140
    assert out.select(cols).equals(whole.select(cols))


def test_chain_column_reader_returns_rows_in_the_order_asked(tmp_path: Path) -> None:
    """Rows of a column across shard chains (the last file of a chain that has the column wins),
    in any order and with repeats, equal a gather from the concatenated column."""
    import numpy as np

    from pipeline.engine.chains import ChainColumnReader

    rows = _load(ALPACA)[:900]
    chains, frames = [], []
    for i, start in enumerate(range(0, 900, 300)):
        part = pl.DataFrame({"v": [r["output"] for r in rows[start:start + 300]]})
        base, delta = tmp_path / f"base-{i}.parquet", tmp_path / f"delta-{i}.parquet"
        part.with_columns(pl.lit("stale").alias("v")).write_parquet(base)
        part.write_parquet(delta)
        chains.append((str(base), str(delta)))
        frames.append(part.with_columns(pl.lit(i).alias("_shard"), pl.int_range(pl.len()).alias("_pos")))
    g = pl.concat(frames)
    reader = ChainColumnReader(chains, g["_shard"].to_numpy(), g["_pos"].to_numpy())
    want = np.random.default_rng(0).integers(0, 900, 500)
    assert reader("v", want).to_list() == g["v"].gather(want).to_list()
    assert reader("v", np.array([], dtype=np.int64)).len() == 0
