"""Peer: Hugging Face ``datasets`` 5.2 as its users load a chat file - ``load_dataset("parquet")``,
a batched ``map`` to ``messages`` (user/assistant turns; no validation, ids or rejects) on every core,
``to_parquet``. Writes the row count."""

from __future__ import annotations

import json
import os
import sys
import tempfile

import datasets

src, dst = sys.argv[1], sys.argv[2]
datasets.disable_progress_bars()
ds = datasets.load_dataset("parquet", data_files=src, split="train", cache_dir=tempfile.mkdtemp())
cols = ds.column_names
if "conversations" in cols:
    role = {"human": "user", "gpt": "assistant", "system": "system"}

    def fn(b: dict) -> dict:
        return {"messages": [[{"role": role.get(t["role"], t["role"]), "content": t["content"]} for t in c]
                             for c in b["conversations"]]}
else:
    def fn(b: dict) -> dict:
        return {"messages": [[{"role": "user", "content": p}, {"role": "assistant", "content": c}]
                             for p, c in zip(b["prompt"], b["completion"], strict=True)]}
ds = ds.map(fn, batched=True, remove_columns=cols, num_proc=os.cpu_count())
ds.to_parquet(dst + ".parquet")
print(json.dumps({"rows": len(ds)}))
