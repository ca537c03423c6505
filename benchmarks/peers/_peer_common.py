"""Helpers every MinHash peer script shares (standard library + pyarrow only: each peer runs in its
own virtualenv, see setup_venvs.sh).

Shingles for the peers are what their own examples use, with the project's normalisation spelled
out in plain Python so the sets match closely: NFKC, lower case, words = runs of word characters
(``\\w+``), shingles = 5 consecutive words joined by a space (a text of fewer words is one shingle).
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq

WORD = re.compile(r"\w+")


def shingles(text: str, n: int = 5) -> list[str]:
    w = WORD.findall(unicodedata.normalize("NFKC", text).lower())
    if len(w) < n:
        return [" ".join(w)] if w else []
    return [" ".join(w[i:i + n]) for i in range(len(w) - n + 1)]


def read_texts(path: str) -> list[str]:
    return pq.read_table(path, columns=["text"])["text"].to_pylist()


def write_removed(path: str, removed: list[int]) -> None:
    pq.write_table(pa.table({"row": pa.array(sorted(removed), type=pa.int64())}), path)


def greedy_keep_first(n: int, candidates, similar) -> list[int]:  # noqa: ANN001
    """Rows in file order; row ``i`` is removed when a kept earlier row ``j`` in its candidates is
    ``similar(i, j)`` (the query-then-insert loop of datasketch's and rensa's dedup examples)."""
    removed: list[int] = []
    gone = bytearray(n)
    for i in range(n):
        for j in candidates(i):
            if j < i and not gone[j] and similar(i, j):
                gone[i] = 1
                removed.append(i)
                break
    return removed


def split_for_tasks(src: str, prefix: str) -> tuple[str, int, int, int]:
    """Cut ``src`` (``row``, ``text``) into one Parquet file per datatrove task under a new temp dir
    (datatrove parallelises over files): ``(work dir, rows, tasks, workers)``; the files are in
    ``WORK/in``. Two tasks per core, every core a worker."""
    import os
    import tempfile

    workers = os.cpu_count() or 1
    tasks = workers * 2
    work = tempfile.mkdtemp(prefix=prefix)
    t = pq.read_table(src, columns=["row", "text"])
    step = -(-t.num_rows // tasks)
    os.makedirs(f"{work}/in")
    for k in range(tasks):
        pq.write_table(t.slice(k * step, step), f"{work}/in/part{k:03d}.parquet")
    return work, t.num_rows, tasks, workers


def datajuicer(src: str, dst: str, op: dict) -> None:
    """Run one data-juicer operator over ``src`` as its users do (``dj-process --config``, ``np`` =
    every core, no cache, no tracer), then write the rows it did not export to ``dst``."""
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    work = Path(tempfile.mkdtemp(prefix="dj-"))
    conf = {"project_name": "peers", "dataset_path": src, "export_path": str(work / "kept.jsonl"),
            "np": os.cpu_count(), "text_keys": "text", "open_tracer": False, "use_cache": False, "process": [op]}
    (work / "cfg.yaml").write_text(json.dumps(conf))  # YAML is a superset of JSON
    subprocess.run([str(Path(sys.executable).with_name("dj-process")), "--config", str(work / "cfg.yaml")],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(work / "kept.jsonl") as f:
        kept = {json.loads(line)["row"] for line in f}
    n = pq.read_metadata(src).num_rows
    write_removed(dst, [i for i in range(n) if i not in kept])
    report(rows=n, removed=n - len(kept))


def report(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def args() -> tuple[str, str, dict]:
    """``script IN.parquet OUT.parquet '{"bands": 10, "rows": 12, "threshold": 0.7, ...}'``"""
    return sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}


