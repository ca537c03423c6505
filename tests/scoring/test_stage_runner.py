"""LM stages inside a real run: config validation, global quantile cut-offs, manifest, rerun from cache."""

from __future__ import annotations

import json

import polars as pl

from pipeline.config import load_config
from pipeline.engine import run


def _config(tmp_path, pool, max_tokens: int) -> dict:
    src = tmp_path / "pool.jsonl"
    with src.open("w") as f:
        for msgs in pool["messages"].to_list():
            f.write(json.dumps({"messages": msgs}) + "\n")
    lm = {"max_tokens": max_tokens}
    return {
        "run": {"name": "score", "out": str(tmp_path / "runs"), "shard_rows": 4, "cache_dir": str(tmp_path / "cache")},
        "sources": [{"path": str(src)}],
        "stages": [
            {"stage": "perplexity", "drop_above_quantile": 0.8, **lm},
            {"stage": "error_uncertainty", **lm},
            {"stage": "grape", **lm},
        ],
    }


def test_lm_stages_in_a_run_and_a_rerun_from_cache(smol, pool, tmp_path, max_tokens):
    cfg = load_config(_config(tmp_path, pool, max_tokens))
    res = run(cfg, run_id="first")
    m = res.manifest
    assert m["status"] == "complete" and m["counts"]["balanced"]
    assert m["counts"]["read"] == pool.height
    shards = pl.concat([pl.read_parquet(p) for p in sorted((res.run_dir / "shards").glob("*.parquet"))], how="diagonal_relaxed")
    assert shards.height == pool.height
    for c in ("ppl", "ppl_turns", "ppl_model", "eu_quadrant", "grape_best", "grape_group_size"):
        assert c in shards.columns
    assert not any(c.startswith("_") for c in shards.columns)
    dropped = shards.filter(~pl.col("keep"))
    assert dropped["drop_reason"].to_list() == ["perplexity:q>0.8"]
    assert dropped["ppl"][0] == shards["ppl"].max()
    # a row dropped by perplexity is not scored by the later LM stages
    assert dropped["eu_nll"].is_null().all() and dropped["grape_loglik"].is_null().all()
    kept = shards.filter(pl.col("keep"))
    assert kept["eu_quadrant"].is_not_null().all() and kept["grape_best"].all()
    by_name = {s["name"]: s for s in m["stages"]}
    assert by_name["perplexity"]["dropped"] == 1
    assert by_name["perplexity"]["models"]["model_id"] == smol.model_id
    assert by_name["perplexity"]["scope"] == "global"

    # another work store (every step runs again; the same one would reuse the steps themselves),
    # the same score cache: the LM stages score nothing
    raw = _config(tmp_path, pool, max_tokens)
    again = run(load_config({**raw, "flow": {"work_dir": str(tmp_path / "work2")}}), run_id="second")
    shards2 = pl.concat([pl.read_parquet(p) for p in sorted((again.run_dir / "shards").glob("*.parquet"))], how="diagonal_relaxed")
    assert shards2.select("ppl", "eu_nll", "keep").equals(shards.select("ppl", "eu_nll", "keep"))
    summaries = {s["name"]: s.get("summary") or {} for s in again.manifest["stages"]}
    for name in ("perplexity", "error_uncertainty", "grape"):
        assert summaries[name]["units_cached"] > 0, name
        assert summaries[name]["units_computed"] == 0, name


def test_a_model_stage_is_estimated_before_it_starts(smol, pool, tmp_path, max_tokens):
    """Before the segment with an LM stage: a probe on the first shard, one log line, the estimate in
    the stage's manifest entry beside its real seconds; the probe's work is reused, not counted twice,
    and a rerun whose steps are all stored probes nothing."""
    raw = _config(tmp_path, pool, max_tokens)
    raw["stages"] = [{"stage": "length"}, {"stage": "perplexity", "max_tokens": max_tokens}]
    lines: list[str] = []
    res = run(load_config(raw), run_id="est", log=lines.append)
    est_lines = [i for i, ln in enumerate(lines) if ln.strip().startswith("estimate: perplexity")]
    seg_lines = [i for i, ln in enumerate(lines) if ln.strip().startswith("length+perplexity")]
    assert len(est_lines) == 1 and seg_lines and est_lines[0] < seg_lines[0], lines
    entry = {s["name"]: s for s in res.manifest["stages"]}["perplexity"]
    est = entry["estimate"]
    # every row of the pool reaches the stage; the first shard (4 rows) is probed: 1 + 3 timed
    assert est["rows"] == pool.height
    assert est["probe_rows"] == 3 and est["rows_per_s"] > 0 and est["seconds"] > 0
    assert "estimates" not in res.manifest  # the running manifest's list moved into the stage entries
    # the probe's scores were cached and found by the step; the counters count the step only
    assert entry["summary"]["rows_scored"] == pool.height
    assert entry["summary"]["units_cached"] >= 4

    again = run(load_config(raw), run_id="est2", log=lines.append)
    assert "estimate" not in {s["name"]: s for s in again.manifest["stages"]}["perplexity"]
