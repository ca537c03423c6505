"""Benchmark: export throughput and peak memory per format (the project's own figures).

1. A real run on a mix of the real data sets (Code Alpaca, GPTeacher codegen, GSM8K train, FastChat
   dummy conversations, 1,000 ShareGPT conversations) through the length and heuristics stages.
2. A synthetic run directory of ``--rows`` rows: the real run's scored ``selected/`` rows repeated
   (``source_row`` offset per repeat, so every row has its own address) in 50,000-row shards, with
   a manifest whose counts match.
3. Each format exported in a fresh process (``pipeline.export.export``).

The comparison with Hugging Face ``datasets`` (in its own virtualenv, timed end to end as a user runs
it) is ``benchmarks/peers/run.py io``; a peer run in the project's venv is not at its best.

Prints rows/s, MB/s of output and peak RSS (``ru_maxrss`` of that process) per format and size;
memory is flat when peak RSS does not grow with the row count.

    .venv/bin/python benchmarks/export.py                       # 100k and 1M rows, all formats
    .venv/bin/python benchmarks/export.py --rows 200000 --formats messages,hf
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REAL = REPO.parent / "shared" / "data" / "real"
SHARD_ROWS = 50_000


def base_run(work: Path) -> Path:
    import polars as pl

    from pipeline.config import load_config
    from pipeline.engine import run

    sg = work / "sharegpt_1k.parquet"
    pl.scan_parquet(REAL / "sharegpt_17k.parquet").head(1000).collect().write_parquet(sg)
    cfg = load_config({
        "run": {"name": "bench-base", "out": str(work / "runs")},
        "sources": [{"path": str(REAL / n)} for n in ("code_alpaca_2k.json.gz", "gpteacher_codegen.json.gz",
                                                      "gsm8k_train.jsonl.gz", "fastchat_dummy_conversation.json.gz")]
        + [{"path": str(sg)}],
        "stages": [{"stage": "length", "min_response_tokens": 1}, {"stage": "heuristics"}],
    })
    return run(cfg, run_id="base").run_dir


def synth_run(base: Path, rows: int, dest: Path) -> Path:
    """A run directory of ``rows`` selected rows: the base run's selected rows, repeated."""
    import numpy as np
    import polars as pl

    from pipeline.engine.finalize import file_record
    from pipeline.io.shards import list_shards, write_parquet_atomic

    b = pl.concat([pl.read_parquet(p) for p in list_shards(base / "selected")])
    stride = int(b["source_row"].max()) + 1
    if dest.exists():
        shutil.rmtree(dest)
    files = {}
    for k, start in enumerate(range(0, rows, SHARD_ROWS)):
        i = np.arange(start, min(start + SHARD_ROWS, rows))
        part = b[i % b.height].with_columns(pl.col("source_row") + pl.Series(i // b.height * stride))
        path = dest / "selected" / f"part-{k:05d}.parquet"
        write_parquet_atomic(part, path)
        files[f"selected/{path.name}"] = file_record(path, part.height)
    m = json.loads((base / "manifest.json").read_text())
    m["run_id"] = dest.name
    m["files"] = files  # the synthetic run holds these files only (export checks them against the manifest)
    m["counts"].update(read=rows, rejected=0, ingested=rows, kept=rows, dropped=0, selected=rows, balanced=True,
                       dropped_by_stage={}, dropped_by_rule={}, dropped_by_reason={})
    m["sources"] = [{"name": "synthetic (real rows repeated)", "path": str(base), "format": "canonical",
                     "read": rows, "rows": rows, "rejected": 0, "reject_reasons": {}}]
    for s in m["stages"]:
        s["dropped"] = 0
    (dest / "manifest.json").write_text(json.dumps(m, indent=2))
    return dest


def _size(p: Path) -> int:
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _ours(run_dir: str, fmt: str, out: str, q: Any) -> None:
    from pipeline.export import export

    t0 = time.perf_counter()
    info = export(Path(run_dir), fmt, Path(out))
    dt = time.perf_counter() - t0
    data = Path(info["data"])
    q.put({"seconds": dt, "rows": info["exported"], "skipped": info["skipped"], "bytes": _size(data),
           "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _idle(q: Any) -> None:
    import pipeline.export  # noqa: F401

    q.put({"seconds": float("nan"), "rows": 0, "skipped": 0, "bytes": 0,
           "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _prepare(work: str, rows: int, q: Any) -> None:
    base = Path(work) / "runs" / "base"
    if not (base / "manifest.json").exists():
        base = base_run(Path(work))
    synth_run(base, rows, Path(work) / f"synth-{rows}")
    q.put({"selected": json.loads((base / "manifest.json").read_text())["counts"]["selected"]})


def measure(target: Any, args: tuple) -> dict[str, Any]:
    """Run ``target`` in a fresh interpreter; this parent stays small, so the child's ru_maxrss is its own
    (a forked child starts from the parent's peak RSS)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="100000,1000000", help="comma-separated row counts")
    ap.add_argument("--formats", default="messages,sharegpt,alpaca,hf")
    ap.add_argument("--workdir", help="default: a temp dir, removed afterwards")
    args = ap.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}", flush=True)
        header = f"{'rows':>9} {'format':<22} {'exported':>9} {'skipped':>8} {'seconds':>8} {'rows/s':>10} {'MB/s':>7} {'out MB':>8} {'peak RSS MB':>12}"
        lines = [header, "-" * len(header)]
        print(header, flush=True)
        r = measure(_idle, ())
        line = f"{'-':>9} {'imports only':<22} {'':>9} {'':>8} {'':>8} {'':>10} {'':>7} {'':>8} {r['rss_mb']:>12,.0f}"
        print(line, flush=True)
        lines.append(line)
        for n in [int(x) for x in args.rows.split(",")]:
            t0 = time.perf_counter()
            base = measure(_prepare, (str(work), n))
            run_dir = work / f"synth-{n}"
            print(f"{n:>9,} rows synthesized from {base['selected']:,} real selected rows ({time.perf_counter() - t0:.1f}s)",
                  flush=True)
            jobs: list[tuple[str, Any, tuple]] = [
                (f"sft-curate {f}", _ours, (str(run_dir), f, str(work / f"out-{f}"))) for f in args.formats.split(",")
            ]
            for label, fn, fargs in jobs:
                r = measure(fn, fargs)
                line = (f"{n:>9,} {label:<22} {r['rows']:>9,} {r['skipped']:>8,} {r['seconds']:>8.2f} "
                        f"{r['rows'] / r['seconds']:>10,.0f} {r['bytes'] / 1e6 / r['seconds']:>7.1f} "
                        f"{r['bytes'] / 1e6:>8.1f} {r['rss_mb']:>12,.0f}")
                print(line, flush=True)
                lines.append(line)
                shutil.rmtree(fargs[-1], ignore_errors=True)
            shutil.rmtree(run_dir, ignore_errors=True)
        print("\n" + "\n".join(lines))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
