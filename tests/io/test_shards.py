"""Shards are cut by rows and by bytes, so memory per shard follows text volume."""

from __future__ import annotations

from pathlib import Path

import polars as pl
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


def test_final_shards_of_sources_with_different_user_columns_read_as_one(tmp_path) -> None:
    """conform_frame to the sources' union_schema: every final shard has every user column."""
    from pipeline.io.readers import read_table
    from pipeline.io.shards import conform_frame, union_schema, write_parquet_atomic

    a = tmp_path / "a.jsonl"
    a.write_text('{"prompt": "p", "completion": "c", "lang": "en", "n": 1}\n')
    b = tmp_path / "b.jsonl"
    b.write_text('{"prompt": "q", "completion": "d", "n": 2.5, "tags": ["x"]}\n')
    ra, _ = read_table(str(a))
    rb, _ = read_table(str(b))
    ingest = [write_parquet_atomic(ra, tmp_path / "i" / "a.parquet"), write_parquet_atomic(rb, tmp_path / "i" / "b.parquet")]
    schema, as_text = union_schema(ingest)
    assert schema.names == ["id", "source", "source_row", "messages", "tools", "lang", "n", "tags"]
    for name, df in (("part-0.parquet", ra), ("part-1.parquet", rb)):
        final = conform_frame(df.with_columns(pl.lit(True).alias("keep")), schema, as_text)
        write_parquet_atomic(final, tmp_path / "shards" / name)
    out = pl.read_parquet(tmp_path / "shards" / "*.parquet")
    assert out.columns[-1] == "keep" and out["n"].to_list() == [1.0, 2.5] and out["lang"].to_list() == ["en", None]
    assert out["tags"].to_list() == [None, ["x"]]
