"""The project's ``heuristics`` stage through Python, as a notebook user calls it: read the real file
with the project's reader, ``heuristics(table)`` with its defaults, write the kept rows."""

from __future__ import annotations

import json
import sys

import polars as pl

from pipeline.io.readers import read_table
from pipeline.stages import heuristics

src, dst = sys.argv[1], sys.argv[2]
df, _ = read_table(src)
out = heuristics(df)
out.filter(pl.col("keep")).write_parquet(dst + ".kept.parquet")
print(json.dumps({"rows": out.height, "dropped": int((~out["keep"]).sum())}))
