"""Shards are cut by rows and by bytes, so memory per shard follows text volume."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pipeline.engine.ingest import ingest_source
from pipeline.io.readers import SourceSpec

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"


def test_long_conversations_are_cut_by_bytes_short_rows_by_count(tmp_path: Path) -> None:
    share = ingest_source(SourceSpec(path=str(REAL / "sharegpt_17k.parquet")), tmp_path / "s", tmp_path / "sr",
                          shard_rows=50_000, batch_rows=2_000, shard_mb=16)
    tables = [pq.read_table(p) for p in share["shards"]]
    assert sum(t.num_rows for t in tables) == share["read"] - share["rejected"]
    assert len(tables) >= 5, "17k ShareGPT rows (~100 MB of Arrow data) in shards of ~16 MB"
    for t in tables[:-1]:  # the last one holds the remainder
        assert 12 * 2**20 <= t.nbytes <= 20 * 2**20, t.nbytes
    alpaca = ingest_source(SourceSpec(path=str(REAL / "code_alpaca_2k.json.gz")), tmp_path / "a", tmp_path / "ar",
                           shard_rows=500, batch_rows=300, shard_mb=16)
    sizes = [pq.read_metadata(p).num_rows for p in alpaca["shards"]]
    assert sum(sizes) == alpaca["read"] - alpaca["rejected"] and sizes[:-1] == [500] * (len(sizes) - 1)
