"""Peer: model2vec 0.10 (semhash's embedder) - ``StaticModel.from_pretrained`` of the project's static
model directory and ``encode`` (its own tokenisation, mean pooling, batching) of the texts, normalised.

    python embed_model2vec.py instr_N.parquet OUT.npy STATIC_DIR"""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow.parquet as pq
from model2vec import StaticModel

src, dst, path = sys.argv[1], sys.argv[2], sys.argv[3]
texts = pq.read_table(src, columns=["text"])["text"].to_pylist()
x = StaticModel.from_pretrained(path).encode(texts)
x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
np.save(dst, x.astype(np.float32))
print(json.dumps({"rows": len(texts)}))
