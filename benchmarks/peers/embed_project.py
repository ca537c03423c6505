"""The project's embedding stage on the same texts, through Python: ``embed_frame`` of the
instruction view (batch 64) with MODEL (``minilm``, or ``auto``: the default static model distilled
from it), vectors written out. Project interpreter, repo on PYTHONPATH.

    python embed_project.py instr_N.parquet OUT.npy [MODEL]"""

from __future__ import annotations

import json
import sys

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from pipeline.embeddings import embed_frame

src, dst = sys.argv[1], sys.argv[2]
model = sys.argv[3] if len(sys.argv) > 3 else "minilm"
t = pq.read_table(src, columns=["text"])
df = pl.DataFrame(t).select(pl.concat_list(pl.struct(role=pl.lit("user"), content=pl.col("text"))).alias("messages"))
x = embed_frame(df, view="instruction", model=model, batch_size=64)
np.save(dst, np.asarray(x, dtype=np.float32))
print(json.dumps({"rows": df.height}))
