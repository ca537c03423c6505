"""Benchmark: orchestration overhead of the Prefect flow at 10 and 100 shards.

The same config (length, heuristics, exact dedup, MinHash dedup, Long-is-More over the 55,185 real T0 rows of
``t0_templated_50k.parquet``) runs with the rows cut into 10 and into 100 shards, each engine in a
fresh process with a fresh work store (nothing cached), then once more with the store warm:

* ``local``: :func:`pipeline.engine.run`, the in-process engine (threads, no orchestrator);
* ``dask-direct`` (the peer): the same driver with its steps submitted straight to a local
  ``dask.distributed`` cluster, without Prefect;
* ``prefect-threads-1`` / ``prefect-threads-2``: the flow on the thread-pool task runner;
* ``prefect-dask``: the flow on a local Dask cluster (2 worker processes);
* ``prefect-threads-1 (cached)``: the same flow again, every step found in the work store.

Columns: wall seconds of the run (flow call to return; the Prefect API server is already up),
summed stage compute (score/decide/score_global, from the manifest), the pipeline's own I/O (step
reads/writes, ingest, finalize), what is left (orchestration), ``(wall - compute) / compute`` (the
issue's overhead ratio), Prefect tasks and the extra milliseconds per task over the in-process
engine, rows/s and peak RSS of the process (``ru_maxrss``, plus its children: Dask workers).
Parallel engines can have compute > wall; their overhead is then bounded by the others.

    .venv/bin/python benchmarks/flow_overhead.py                    # 10 and 100 shards, every engine
    .venv/bin/python benchmarks/flow_overhead.py --shards 10 --engines local,prefect-threads-1
"""

from __future__ import annotations

import argparse
import json
import math
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
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REAL = REPO.parent / "shared" / "data" / "real"
DATA = REAL / "t0_templated_50k.parquet"
ROWS = 55_185
ENGINES = ["local", "dask-direct", "prefect-threads-1", "prefect-threads-2", "prefect-dask", "prefect-dask-per-shard",
           "prefect-threads-1 (cached)"]


def config(tmp: Path, shards: int, engine: str, data: Path = DATA, rows: int = ROWS) -> Path:
    import yaml

    runner, workers = "threads", 1
    if engine.startswith("prefect-threads-2"):
        workers = 2
    elif engine.startswith("prefect-dask"):
        runner, workers = "dask", 2
    work = "work-prefect-threads-1" if engine.endswith("(cached)") else f"work-{engine}"
    cfg = {
        "run": {"name": "bench", "out": str(tmp / "runs"), "shard_rows": math.ceil(rows / shards)},
        "sources": [{"path": str(data)}],
        "stages": [{"stage": "length", "min_response_tokens": 1}, {"stage": "heuristics"},
                   {"stage": "exact_dedup", "key": "conversation"}, {"stage": "minhash_dedup", "threshold": 0.8},
                   {"stage": "long_is_more", "budget": 5000}],
        "flow": {"task_runner": runner, "max_workers": workers, "work_dir": str(tmp / work),
                 **({"shards_per_task": 1} if engine.endswith("per-shard") else {})},
    }
    path = tmp / f"{engine.replace(' ', '_')}-{shards}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class DaskDirectExecutor:
    """The peer: the driver's steps on raw dask.distributed futures (no Prefect) - an executor, so
    the run is still sequenced by the one driver and only *where* steps run differs."""

    name = "dask-direct"

    def __init__(self, client: Any) -> None:
        self.client = client

    def map(self, kind: str, fn: Any, items: Any, labels: Any, resources: Any = None) -> list[Any]:
        return self.client.gather([self.client.submit(fn, x, pure=False) for x in items])

    def log(self, message: str) -> None:
        return None

    def info(self) -> dict[str, Any]:
        return {}

    def publish(self, manifest: dict[str, Any]) -> None:
        return None


def dask_direct(cfg_path: Path, run_id: str) -> dict[str, Any]:
    """The peer: the pipeline's driver on a local dask.distributed cluster of two worker processes."""
    from distributed import Client, LocalCluster

    from pipeline.config import load_config
    from pipeline.engine import execute

    cfg = load_config(cfg_path)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, Client(cl) as c:
        return execute(cfg, DaskDirectExecutor(c), run_id=run_id).manifest


def measure(engine: str, cfg_path: str, api_url: str | None, q: mp.Queue) -> None:
    if api_url:
        os.environ["PREFECT_API_URL"] = api_url
    from pipeline.config import load_config
    from pipeline.engine import run

    if engine == "dask-direct":
        import distributed  # noqa: F401 - imported before the clock starts, like the others
    elif engine != "local":
        from flows.curate import run_flow
    import pipeline.stages.exact  # noqa: F401
    import pipeline.stages.heuristic_filter  # noqa: F401

    run_id = f"{engine.replace(' ', '_')}-{time.time_ns()}"
    t0 = time.perf_counter()
    if engine == "local":
        m = run(load_config(cfg_path), run_id=run_id).manifest
    elif engine == "dask-direct":
        m = dask_direct(Path(cfg_path), run_id)
    else:
        m = run_flow(cfg_path, run_id=run_id, quiet=True)["manifest"]
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    compute = sum(s["seconds"] for s in m["stages"])
    io = sum(s.get("io_seconds", 0.0) for s in m["stages"])
    tasks = 0
    if engine.startswith("prefect"):
        from flows.curate import shards_per_task

        cfg = load_config(cfg_path)
        n = math.ceil(m["counts"]["read"] / cfg.run.shard_rows)
        n_global = sum(st["scope"] == "global" for st in m["stages"])
        per = math.ceil(n / shards_per_task(cfg.flow, n))
        tasks = len(cfg.sources) + (n_global + 1) * per + n_global + per  # ingest, shard, global, finalize
    q.put({"engine": engine, "wall_s": wall, "compute_s": compute, "io_s": io, "rows": m["counts"]["read"],
           "ingest_final_s": m["timings"].get("ingest_s", 0.0) + m["timings"].get("finalize_s", 0.0), "tasks": tasks,
           "kept": m["counts"]["kept"], "selected": m["counts"]["selected"], "rss_mb": rss / 1024,
           "hits": sum(s.get("cache_hits", 0) for s in m["stages"]), "steps": sum(s.get("steps", 0) for s in m["stages"])})


def start_server() -> tuple[Any, str]:
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=120)
    return server, server.api_url


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", default="10,100")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell; the fastest is reported (shared machines)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--scale", type=int, default=1,
                    help="repeat the T0 rows this many times (verbatim: exact dedup drops the copies)")
    args = ap.parse_args()
    engines = args.engines.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="flow-bench-"))
    os.environ["PREFECT_HOME"] = str(tmp / "prefect-home")
    server, api = (None, None)
    if any(e.startswith("prefect") for e in engines):
        t0 = time.perf_counter()
        server, api = start_server()
        print(f"prefect API server up in {time.perf_counter() - t0:.1f}s at {api}")
    data, rows = DATA, ROWS
    if args.scale > 1:
        import pyarrow as pa
        import pyarrow.parquet as pq

        t = pq.read_table(DATA)
        data, rows = tmp / f"t0_x{args.scale}.parquet", t.num_rows * args.scale
        pq.write_table(pa.concat_tables([t] * args.scale), data, compression="zstd", row_group_size=10_000)
    ctx = mp.get_context("spawn")
    results = []
    try:
        for shards in [int(s) for s in args.shards.split(",")]:
            for engine in engines:
                best = None
                for _ in range(args.repeat):
                    if not engine.endswith("(cached)"):  # every repeat computes everything again
                        shutil.rmtree(tmp / f"work-{engine}", ignore_errors=True)
                    q = ctx.Queue()
                    p = ctx.Process(target=measure, args=(engine, str(config(tmp, shards, engine, data, rows)), api, q))
                    p.start()
                    res = q.get()
                    p.join()
                    best = res if best is None or res["wall_s"] < best["wall_s"] else best
                res = best
                res["shards"] = shards
                results.append(res)
                print(f"  {shards:>4} shards {engine:<28} {res['wall_s']:7.2f}s", flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nflow overhead: {rows:,} real rows (T0 templated{f' x{args.scale}' if args.scale > 1 else ''}), length+heuristics+exact_dedup+minhash_dedup+long_is_more; "
          f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    head = (f"{'shards':>6} {'engine':<28} {'wall s':>7} {'compute s':>9} {'step io s':>9} {'ingest+fin s':>12} "
            f"{'orch s':>7} {'(wall-compute)/compute':>22} {'tasks':>6} {'ms/task':>8} {'rows/s':>8} {'RSS MB':>7} "
            f"{'cached':>9}")
    print(head)
    print("-" * len(head))
    local = {r["shards"]: r["wall_s"] for r in results if r["engine"] == "local"}
    for r in results:
        ovh = r["wall_s"] - r["compute_s"]
        orch = ovh - r["io_s"] - r["ingest_final_s"]
        frac = f"{ovh / r['compute_s']:.2f}" if r["compute_s"] > 0 else "-"
        per_task = (f"{1000 * (r['wall_s'] - local[r['shards']]) / r['tasks']:.0f}"
                    if r["tasks"] and r["shards"] in local and not r["engine"].endswith("(cached)") else "-")
        print(f"{r['shards']:>6} {r['engine']:<28} {r['wall_s']:>7.2f} {r['compute_s']:>9.2f} {r['io_s']:>9.2f} "
              f"{r['ingest_final_s']:>12.2f} {orch:>7.2f} {frac:>22} {r['tasks'] or '-':>6} {per_task:>8} "
              f"{r['rows'] / r['wall_s']:>8,.0f} {r['rss_mb']:>7,.0f} {r['hits']:>4}/{r['steps']:<4}")
    print("\norch s = wall - compute - step io - ingest - finalize (for parallel engines compute and io are summed "
          "over workers);\nms/task = (wall - local wall at the same shard count) / Prefect tasks.")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
