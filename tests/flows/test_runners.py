"""The same config on the Dask and the Ray task runner (local clusters) gives identical outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flows.curate import run_flow
from pipeline.config import load_config
from pipeline.engine import run
from pipeline.engine.store import step_meta


def _config(tmp: Path, real: Path, write_config, runner: str) -> Path:
    return write_config(tmp / f"{runner}.yaml", {
        "run": {"name": f"scale-{runner}", "out": str(tmp / "runs"), "shard_rows": 400},
        "sources": [{"path": str(real / "code_alpaca_2k.json.gz")}],
        "stages": [{"stage": "length", "min_response_tokens": 10}, {"stage": "heuristics"},
                   {"stage": "exact_dedup", "key": "instruction"}, {"stage": "long_is_more", "budget": 200}],
        # a work dir per runner: each run computes everything itself instead of reading another's results
        "flow": {"task_runner": runner, "max_workers": 2, "work_dir": str(tmp / f"work-{runner}")},
    })


@pytest.fixture(scope="module")
def reference(tmp_path_factory, real, write_config):
    tmp = tmp_path_factory.mktemp("reference")
    return run(load_config(_config(tmp, real, write_config, "threads")), run_id="local").run_dir


@pytest.mark.parametrize("runner", ["dask", "ray"])
def test_cluster_runner_gives_identical_outputs(runner, tmp_path, real, write_config, prefect_api, reference,
                                                assert_same_run) -> None:
    res = run_flow(str(_config(tmp_path, real, write_config, runner)), run_id=runner, quiet=True)
    m = res["manifest"]
    assert m["engine"] == f"prefect:{runner}" and m["counts"]["balanced"]
    assert m["cache"]["step_hits"] == 0, "computed here, not found in a cache"
    assert_same_run(res["run_dir"], reference)
    # the per-shard steps ran in the cluster's worker processes, not in this one
    pids = {step_meta(p)["pid"] for p in (tmp_path / f"work-{runner}" / "heuristics" / "row").glob("*.parquet")}
    assert pids and os.getpid() not in pids


def test_existing_dask_cluster_by_address(tmp_path, real, write_config, prefect_api, reference,
                                          assert_same_run) -> None:
    """``flow.address`` points the flow at a cluster it did not start (and must not stop)."""
    import distributed
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        cfg = _config(tmp_path, real, write_config, "dask")
        cfg.write_text(cfg.read_text().replace("max_workers: 2", f"address: {cluster.scheduler_address}"))
        assert load_config(cfg).flow.address == cluster.scheduler_address
        res = run_flow(str(cfg), run_id="external", quiet=True)
        worker_pids = set(client.run(os.getpid).values())
        assert client.status == "running" and len(worker_pids) == 1, "the external cluster is still up"
    assert_same_run(res["run_dir"], reference)
    pids = {step_meta(p)["pid"] for p in (tmp_path / "work-dask" / "heuristics" / "row").glob("*.parquet")}
    assert pids == worker_pids
