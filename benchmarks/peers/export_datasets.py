"""Peer: Hugging Face ``datasets`` 5.2 as its users write a selected subset for training -
``Dataset.from_parquet`` over a run's ``selected/`` shards (``messages`` and ``tools``), ``to_json``
(JSON Lines). Writes the row count."""

from __future__ import annotations

import glob
import json
import sys
import tempfile

import datasets

run, dst = sys.argv[1], sys.argv[2]
datasets.disable_progress_bars()
files = sorted(glob.glob(f"{run}/selected/part-*.parquet"))
ds = datasets.Dataset.from_parquet(files, columns=["messages", "tools"], cache_dir=tempfile.mkdtemp())
ds.to_json(dst + ".jsonl")
print(json.dumps({"rows": len(ds)}))
