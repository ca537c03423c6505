"""The project through Python, as a notebook user calls it: read the file, ``minhash_dedup(table)``,
write the kept rows. Run with the project's interpreter and the repo on PYTHONPATH."""

from __future__ import annotations

import json
import sys

import polars as pl
import pyarrow.parquet as pq


def as_chat(src: str) -> pl.DataFrame:
    """The corpus's documents as canonical chat rows (the document is the assistant turn)."""
    t = pq.read_table(src, columns=["row", "text"])
    return pl.DataFrame(t).select(
        pl.col("row").cast(pl.String).alias("id"), pl.lit("docs").alias("source"), pl.col("row").alias("source_row"),
        pl.concat_list(pl.struct(role=pl.lit("user"), content=pl.lit("doc")),
                       pl.struct(role=pl.lit("assistant"), content=pl.col("text"))).alias("messages"),
    )


if __name__ == "__main__":
    from pipeline.stages import minhash_dedup

    src, dst, cfg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    out = minhash_dedup(as_chat(src), key="response", ngram=5, num_perm=128, threshold=cfg.get("threshold", 0.7),
                        bands=cfg.get("bands", 10), rows=cfg.get("rows", 12), linkage=cfg.get("linkage", "keeper"))
    out.filter(pl.col("keep")).select("id", "messages").write_parquet(dst + ".kept.parquet")
    out.filter(~pl.col("keep")).select(pl.col("source_row").alias("row")).write_parquet(dst)
    print(json.dumps({"rows": out.height, "removed": int((~out["keep"]).sum())}))
