"""The project's SemDeDup through Python, as a notebook user calls it: read, ``semantic_dedup(table,
eps=..., neighbours=...)`` (the embedding of the text with ``model``, default the project's default
static model, + the dedup), write the removed rows.
Run with the project's interpreter and the repo on PYTHONPATH."""

from __future__ import annotations

import json
import sys

import polars as pl
import pyarrow.parquet as pq

from pipeline.stages import semantic_dedup

src, dst, cfg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
t = pq.read_table(src, columns=["text"])
df = pl.DataFrame(t).with_row_index("source_row").select(
    pl.col("source_row").cast(pl.String).alias("id"), pl.lit("docs").alias("source"),
    pl.col("source_row").cast(pl.Int64),
    pl.concat_list(pl.struct(role=pl.lit("user"), content=pl.col("text")),
                   pl.struct(role=pl.lit("assistant"), content=pl.lit("ok"))).alias("messages"),
)
out = semantic_dedup(df, eps=cfg.get("eps", 0.05), neighbours=cfg.get("neighbours", "global"), keeper="first",
                     model=cfg.get("model", "auto"))
out.filter(~pl.col("keep")).select(pl.col("source_row").alias("row")).write_parquet(dst)
print(json.dumps({"rows": out.height, "removed": int((~out["keep"]).sum())}))
