"""A flow killed with SIGKILL mid-run resumes: nothing finished is redone, no row is lost or duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

from flows.curate import run_flow
from pipeline.config import load_config
from pipeline.engine import run

REPO = Path(__file__).resolve().parents[2]
N_SHARDS = 75  # gsm8k train: 7,473 rows in shards of 100


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in d.glob("*.parquet")} if d.is_dir() else {}


def test_sigkill_mid_run_then_resume(tmp_path, real, write_config, prefect_api, assert_same_run, task_runs) -> None:
    work = tmp_path / "work"
    cfg = write_config(tmp_path / "resume.yaml", {
        "run": {"name": "resume", "out": str(tmp_path / "runs"), "shard_rows": 100},
        "sources": [{"path": str(real / "gsm8k_train.jsonl.gz")}],
        "stages": [{"stage": "length", "min_response_tokens": 30}, {"stage": "heuristics"},
                   {"stage": "exact_dedup", "key": "instruction"}, {"stage": "long_is_more", "budget": 500}],
        # one worker: the first segment takes seconds, a wide window to kill it in
        "flow": {"task_runner": "threads", "max_workers": 1, "work_dir": str(work)},
    })
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "flows.curate", str(cfg), "--run-id", "killed", "--quiet"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    pre = work / "exact_dedup" / "pre"  # the last step of the first segment: one file per finished shard
    try:
        deadline = time.monotonic() + 120
        while len(_snapshot(pre)) < 8:
            assert proc.poll() is None, "the flow ended before it could be killed"
            assert time.monotonic() < deadline, "the flow never got going"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the process and anything it started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.2)
    done = {**_snapshot(pre), **_snapshot(work / "length" / "row"), **_snapshot(work / "heuristics" / "row")}
    n_done = len(_snapshot(pre))
    assert 8 <= n_done < N_SHARDS, f"killed mid-run: {n_done} of {N_SHARDS} shards had finished"
    assert not (work / "exact_dedup" / "global").exists() or not any((work / "exact_dedup" / "global").iterdir())

    res = run_flow(str(cfg), run_id="killed", quiet=True)  # the same invocation again
    m = res["manifest"]
    assert m["status"] == "complete" and m["counts"]["balanced"]
    # finished work was not recomputed: same files (inode, mtime), counted as cache hits, Cached states
    after = {p: v for p, v in {**_snapshot(pre), **_snapshot(work / "length" / "row"),
                               **_snapshot(work / "heuristics" / "row")}.items() if p in done}
    assert after == done
    by = {s["name"]: s for s in m["stages"]}
    assert by["exact_dedup"]["cache_hits"] >= n_done and by["length"]["cache_hits"] >= n_done
    assert by["length"]["cache_hits"] < N_SHARDS, "the shards not finished before the kill were computed"
    first_segment = task_runs(m["prefect"]["flow_run_id"], "length+heuristics+exact_dedup.pre[", N_SHARDS)
    assert len(first_segment) == N_SHARDS
    assert sum(t.state.name == "Cached" for t in first_segment) >= n_done

    # no row lost or duplicated, and the same ids and scores as an uninterrupted run
    shards = pl.read_parquet(Path(res["run_dir"]) / "shards")
    assert shards.height == m["counts"]["read"] == 7473
    assert shards["source_row"].sort().to_list() == list(range(7473))
    ref = run(load_config(cfg), out=tmp_path / "reference", run_id="uninterrupted")
    assert_same_run(res["run_dir"], ref.run_dir)
