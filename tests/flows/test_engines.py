"""One driver, two engines: the same config on the local engine and on Prefect gives byte-identical
shards, the same manifest (apart from timings and the engine) and the same report inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from flows.curate import run_flow
from pipeline.config import load_config
from pipeline.engine import run
from pipeline.inspect import load_run

VOLATILE = {"run_id", "engine", "created", "finished", "timings", "prefect", "cache", "workers", "finish"}
STAGE_VOLATILE = {"seconds", "io_seconds", "cache_hits", "estimate"}  # estimate: probe timings


def _comparable(m: dict[str, Any], out: Path) -> dict[str, Any]:
    m = {k: v for k, v in m.items() if k not in VOLATILE}
    m["stages"] = [{k: v for k, v in s.items() if k not in STAGE_VOLATILE} for s in m["stages"]]
    m["sources"] = [{k: v for k, v in s.items() if k != "seconds"} for s in m["sources"]]
    m["layout"] = {k: str(v).replace(str(out), "<out>") for k, v in m["layout"].items()}
    return m


def test_local_and_prefect_engines_agree(tmp_path: Path, real: Path, write_config, assert_same_run,
                                         prefect_api) -> None:
    src = tmp_path / "pool.json"
    rows = json.loads(__import__("gzip").open(real / "code_alpaca_2k.json.gz").read())[:400]
    src.write_text(json.dumps(rows + rows[:30]))  # 30 exact duplicates
    cfg = write_config(tmp_path / "c.yaml", {
        "run": {"name": "eng", "shard_rows": 150, "seed": 0, "device": "cpu", "report": False},
        "sources": [{"path": str(src)}],
        "stages": [{"stage": "length", "min_response_tokens": 2}, {"stage": "exact_dedup"},
                   {"stage": "semantic_dedup", "view": "instruction", "eps": 0.05},
                   {"stage": "cluster", "k": 6}, {"stage": "kmq", "budget": 100, "score": "len_response_tokens",
                                                   "k": 6}],
        "flow": {"task_runner": "threads", "max_workers": 2},
    })
    out_local, out_prefect = tmp_path / "a", tmp_path / "b"  # separate work stores: both compute everything
    local = run(load_config(cfg), out=out_local, run_id="r")
    flowed = run_flow(str(cfg), out=str(out_prefect), run_id="r", quiet=True)
    a, b = local.run_dir, Path(flowed["run_dir"])
    assert local.manifest["engine"].startswith("local") and flowed["manifest"]["engine"] == "prefect:threads"
    assert_same_run(a, b)
    assert _comparable(local.manifest, out_local) == _comparable(flowed["manifest"], out_prefect)
    # both probed the same model stages before they ran, and expect the same rows
    def estimated(m: dict[str, Any]) -> dict[str, int]:
        return {s["name"]: s["estimate"]["rows"] for s in m["stages"] if "estimate" in s}

    assert estimated(local.manifest) == estimated(flowed["manifest"])
    assert set(estimated(local.manifest)) >= {"semantic_dedup", "cluster"}
    # the report reads the same embeddings through the layout both manifests record
    ra, rb = load_run(a), load_run(b)
    ids = pl.read_parquet(a / "shards")["id"].to_list()
    va, vb = ra.embeddings(ids), rb.embeddings(ids)
    assert va is not None and vb is not None and va[1].sum() >= 350  # rows that reached the embedding stage
    assert np.array_equal(va[1], vb[1]) and np.array_equal(va[0], vb[0]) and va[2] == vb[2]
    assert (out_local / ".work" / "sidecars").is_dir() and local.manifest["layout"]["sidecars"].endswith(
        ".work/sidecars")


def test_temporary_api_server_one_per_process_healthy_and_stopped(tmp_path: Path) -> None:
    """Without PREFECT_API_URL, `curate run` starts Prefect's API server itself (uvicorn serving
    ``create_app``, in its own session): one per process, healthy when returned, gone once stopped;
    the next run of the process starts another."""
    import os

    import httpx
    import psutil

    from flows.curate import TemporaryServer

    server = TemporaryServer.get()
    try:
        assert TemporaryServer.get() is server
        assert httpx.get(f"{server.api_url}/health", timeout=5).status_code == 200
        assert server.proc is not None and os.getsid(server.proc.pid) != os.getsid(0)  # its own session
        pid = server.proc.pid
    finally:
        server.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert server.proc is None and TemporaryServer._instance is server
    again = TemporaryServer.get()
    try:
        assert again is not server and again.proc is not None and again.proc.poll() is None
    finally:
        again.stop()
