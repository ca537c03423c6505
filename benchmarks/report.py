"""Report benchmark: load, accounting, report writing, what-if and compare on a 55k-row real run (T0).

    .venv/bin/python benchmarks/report.py
"""
import resource
import tempfile
import time
from pathlib import Path

import polars as pl

from pipeline import inspect as R
from pipeline.config import load_config
from pipeline.engine import run

out = Path(tempfile.mkdtemp(prefix="bench-report-"))
src = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "t0_templated_50k.parquet")
def cfg(min_tok):
    return load_config({"run": {"name": "b", "shard_rows": 10000}, "sources": [{"path": src}],
        "stages": [{"stage": "length", "min_response_tokens": min_tok}, {"stage": "heuristics"},
                   {"stage": "exact_dedup", "key": "instruction"}, {"stage": "minhash_dedup"},
                   {"stage": "select_random", "budget": 5000}]})
t = time.time()
a = run(cfg(1), out=out, run_id="a")
ta = time.time() - t
b = run(cfg(30), out=out, run_id="b")
n = a.counts["read"]
rows = []
def timed(name, fn):
    t = time.perf_counter()
    r = fn()
    dt = time.perf_counter() - t
    rows.append((name, dt, n / dt))
    return r
timed("load_run + accounting", lambda: R.accounting(R.load_run(a.run_dir)))
timed("drop_reasons + sources", lambda: (R.drop_reasons(a.run_dir), R.sources_table(a.run_dir)))
timed("drop_examples", lambda: R.drop_examples(a.run_dir))
timed("write_report (html + pngs)", lambda: R.write_report(a.run_dir))
w = timed("what_if length (replays minhash)", lambda: R.what_if(a.run_dir, "length", min_response_tokens=30))
timed("what_if select budget", lambda: R.what_if(a.run_dir, "select_random", budget=1000))
timed("compare_runs", lambda: R.compare_runs(a.run_dir, b.run_dir))
real = pl.read_parquet(b.run_dir / "shards/*.parquet").select("source", "source_row", "keep", "selected")
j = w.rows.join(real, on=["source", "source_row"])
print(f"run of {n:,} rows took {ta:.1f}s; what-if vs rerun: keep diffs {(j['keep_new'] != j['keep_right']).sum()}, "
      f"selected diffs {(j['selected_new'].fill_null(False) != j['selected_right'].fill_null(False)).sum()}, exact={w.exact}")
print(f"{'step':<36}{'seconds':>9}{'rows/s':>12}")
for name, dt, rps in rows:
    print(f"{name:<36}{dt:>9.2f}{rps:>12,.0f}")
print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
