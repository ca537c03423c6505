"""A slice of a source to try a config on: ``limit`` and seeded ``sample``, accounted for exactly."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl

from pipeline.config import load_config
from pipeline.engine import run

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"


def test_limit_and_sample_read_a_slice_and_count_only_it(tmp_path: Path) -> None:
    with gzip.open(REAL / "gsm8k_train.jsonl.gz", "rt") as f:
        lines = [next(f) for _ in range(3000)]
    lines[5] = "{not json\n"  # a malformed record inside the slice is a reject of the slice
    src = tmp_path / "gsm.jsonl"
    src.write_text("".join(lines))

    def go(run_id: str, **source) -> dict:
        cfg = load_config({"run": {"name": "s", "out": str(tmp_path / "runs"), "shard_rows": 400, "seed": 7},
                           "sources": [{"path": str(src), **source}], "stages": [{"stage": "length"}]})
        return run(cfg, run_id=run_id).manifest

    m = go("limit", limit=1000)
    c = m["counts"]
    assert c["read"] == 1000 and c["rejected"] == 1 and c["balanced"]
    rows = pl.read_parquet(tmp_path / "runs" / "limit" / "shards")
    assert rows["source_row"].max() == 999
    s1 = go("sample1", sample=0.25)
    go("sample2", sample=0.25)
    assert 600 < s1["counts"]["read"] < 900 and s1["counts"]["balanced"]
    a = pl.read_parquet(tmp_path / "runs" / "sample1" / "shards")["source_row"].sort()
    b = pl.read_parquet(tmp_path / "runs" / "sample2" / "shards")["source_row"].sort()
    assert a.to_list() == b.to_list(), "the same seed picks the same records"
    both = go("both", limit=1000, sample=0.5)["counts"]["read"]
    assert 400 < both < 600
    assert json.loads((tmp_path / "runs" / "both" / "manifest.json").read_text())["status"] == "complete"
