"""The project through Python, as a notebook user calls it: read the file, ``exact_dedup(table)``
(key response, keeper first), write the kept rows. Run with the project's interpreter and the repo on
PYTHONPATH."""

from __future__ import annotations

import json
import sys

import polars as pl
from minhash_project_python import as_chat  # the same chat rows as the MinHash case

from pipeline.stages import exact_dedup

src, dst = sys.argv[1], sys.argv[2]
out = exact_dedup(as_chat(src), key="response", keeper="first")
out.filter(pl.col("keep")).select("id", "messages").write_parquet(dst + ".kept.parquet")
out.filter(~pl.col("keep")).select(pl.col("source_row").alias("row")).write_parquet(dst)
print(json.dumps({"rows": out.height, "removed": int((~out["keep"]).sum())}))
