"""Ingest + length on tool-calling / reasoning data: OpenAI ``messages`` JSONL with ``tools``.

The rows are the shapes of ``data/sample/tool_calls/openai_tools.jsonl`` (calls with null content,
parallel calls, tool messages, ``reasoning_content``, ``<think>`` blocks, a legacy ``function_call``,
user fields), repeated with a counter in every text so that no two rows are equal. Each case runs in
a fresh subprocess (peak RSS = that case). The project's own figures only: a peer run in the project's
venv is not at its best; ingest against Hugging Face ``datasets`` in its own virtualenv is
``benchmarks/peers/run.py io``.

    .venv/bin/python benchmarks/tool_calls.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import REPO, peak_rss_mb, spawn  # noqa: E402

SAMPLE = REPO / "data" / "sample" / "tool_calls" / "openai_tools.jsonl"


def synthesise(n: int, path: Path) -> None:
    base = [json.loads(x) for x in SAMPLE.read_text().splitlines()]
    with open(path, "w") as f:
        for i in range(n):
            r = base[i % len(base)]
            msgs = [{**m, "content": f"{m['content']} [{i}]"} if isinstance(m.get("content"), str) else m
                    for m in r["messages"]]
            f.write(json.dumps({**r, "messages": msgs, "row": i}) + "\n")


def case_ours(path: str) -> dict:
    import polars as pl

    from pipeline.engine.ingest import ingest_source
    from pipeline.io.readers import SourceSpec
    from pipeline.stages.length_filter import Length

    out = Path(tempfile.mkdtemp(prefix="bench-tools-"))
    t0 = time.perf_counter()
    info = ingest_source(SourceSpec(path=path), out / "shards", out / "rejects", 50_000, 10_000)
    t_ingest = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in info["shards"]:
        Length()(pl.read_parquet(p)).write_parquet(p)
    t_len = time.perf_counter() - t0
    return {"rows": info["rows"], "rejected": info["rejected"], "ingest_s": t_ingest, "length_s": t_len,
            "rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--case", choices=["ours"])
    ap.add_argument("--path")
    a = ap.parse_args()
    if a.case:
        print(json.dumps(case_ours(a.path)))
        return
    path = Path(tempfile.mkdtemp(prefix="bench-tools-data-")) / "tools.jsonl"
    synthesise(a.rows, path)
    print(f"{a.rows:,} rows, {path.stat().st_size / 2**20:.0f} MB of JSONL")
    print("| tool | rows | ingest s | length s | rows/s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    r = spawn(__file__, "--case", "ours", "--path", str(path))
    total = r["ingest_s"] + r["length_s"]
    print(f"| sft-curate ingest+length | {r['rows']:,} | {r['ingest_s']:.2f} | {r['length_s']:.2f} | "
          f"{r['rows'] / total:,.0f} | {r['rss_mb']:,.0f} |")


if __name__ == "__main__":
    main()
