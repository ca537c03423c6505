"""Ingest + length benchmark: real files, and a 1M-row file synthesised by repeating them.

Each case runs in a fresh subprocess so peak RSS (ru_maxrss) belongs to that case alone.
Columns: rows, seconds, rows/s, peak RSS. The project's own figures only: the comparison with Hugging
Face ``datasets`` (load + ``map`` + ``to_parquet``, in its own virtualenv, timed end to end as a user
runs it) is ``benchmarks/peers/run.py io``; an in-process peer in the project's venv is not at its best.

    .venv/bin/python benchmarks/ingest.py [--real ../shared/data/real] [--big-rows 1000000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _case_ours(paths: list[str], shard_rows: int, with_length: bool, workers: int = 1) -> dict:
    """Ingest every file, then the length stage on every shard (read, score + decide, write back: what
    one runner pass does), ``workers`` at a time on threads as the flow's threads task runner runs
    them (one task per source, then one per shard; Polars releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    import polars as pl

    from pipeline.engine.ingest import ingest_source
    from pipeline.io.readers import SourceSpec
    from pipeline.stages.length_filter import Length

    out = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    stage = Length()

    def ingest_one(i: int) -> dict:
        return ingest_source(SourceSpec(path=paths[i]), out / f"shards-{i}", out / f"rejects-{i}", shard_rows, 10_000)

    def length_one(p: str) -> None:
        stage(pl.read_parquet(p)).write_parquet(p)

    t_len = 0.0
    with ThreadPoolExecutor(max_workers=workers) as ex:
        t0 = time.perf_counter()
        infos = list(ex.map(ingest_one, range(len(paths))))
        t_ingest = time.perf_counter() - t0
        if with_length:
            t1 = time.perf_counter()
            list(ex.map(length_one, [p for info in infos for p in info["shards"]]))
            t_len = time.perf_counter() - t1
    return {"rows": sum(i["read"] for i in infos), "rejected": sum(i["rejected"] for i in infos),
            "ingest_s": t_ingest, "length_s": t_len}


def _child(args: argparse.Namespace) -> None:
    res = _case_ours(args.path.split(","), args.shard_rows, args.length, args.workers)
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import peak_rss_mb  # VmHWM: ru_maxrss carries the driver's peak over fork+exec

    res["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(res))


def _run(path: Path | list[Path], *, length: bool = True, shard_rows: int = 50_000, workers: int = 1) -> dict:
    paths = ",".join(str(p) for p in path) if isinstance(path, list) else str(path)
    cmd = [sys.executable, __file__, "--child", "--path", paths, "--shard-rows", str(shard_rows),
           "--workers", str(workers)]
    if length:
        cmd.append("--length")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def synthesize(real: Path, rows: int, dest: Path) -> Path:
    """A Parquet file of ``rows`` T0 prompt/completion rows, repeating the real file (row groups of 10k)."""
    import pyarrow.parquet as pq

    src = pq.read_table(real / "t0_templated_50k.parquet")
    with pq.ParquetWriter(dest, src.schema, compression="zstd") as w:
        left = rows
        while left > 0:
            take = src.slice(0, min(left, src.num_rows))
            w.write_table(take, row_group_size=10_000)
            left -= take.num_rows
    return dest


def synthesize_files(big: Path, dest: Path, per_file: int = 50_000) -> list[Path]:
    """The file ``big`` cut into files of ``per_file`` rows (a pool usually arrives as many files)."""
    import pyarrow.parquet as pq

    dest.mkdir(parents=True, exist_ok=True)
    src = pq.read_table(big)
    out = []
    for i, start in enumerate(range(0, src.num_rows, per_file)):
        out.append(dest / f"part-{i:03d}.parquet")
        pq.write_table(src.slice(start, per_file), out[-1], compression="zstd", row_group_size=10_000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", default=str(REPO.parent / "shared" / "data" / "real"))
    ap.add_argument("--big-rows", type=int, default=1_000_000)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--path")
    ap.add_argument("--length", action="store_true")
    ap.add_argument("--shard-rows", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=2, help="also run the big input as 50k-row files on this many threads")
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    real = Path(args.real)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-src-"))
    cases = [("t0_templated_50k.parquet", real / "t0_templated_50k.parquet"),
             ("sharegpt_17k.parquet", real / "sharegpt_17k.parquet")]
    for n in sorted({args.big_rows // 10, args.big_rows}):
        cases.append((f"t0 repeated, {n:,} rows", synthesize(real, n, tmp / f"t0_{n}.parquet")))
    print(f"{'input':<28} {'tool':<22} {'rows':>10} {'ingest s':>9} {'length s':>9} {'rows/s':>10} {'peak RSS MB':>12}")
    if args.workers > 1:
        files = synthesize_files(tmp / f"t0_{args.big_rows}.parquet", tmp / "files")
        cases.append((f"same, {len(files)} files", files))
    for label, path in cases:
        if isinstance(path, list):
            runs = [(f"sft-curate, {args.workers} threads", _run(path, workers=args.workers))]
        else:
            runs = [("sft-curate ingest+length", _run(path))]
        for tool, r in runs:
            total = r["ingest_s"] + r["length_s"]
            print(f"{label:<28} {tool:<22} {r['rows']:>10,} {r['ingest_s']:>9.2f} {r['length_s']:>9.2f} "
                  f"{r['rows'] / total:>10,.0f} {r['peak_rss_mb']:>12,.0f}", flush=True)


if __name__ == "__main__":
    main()
