"""The Prefect flow runs a config as a DAG, matches the in-process engine, and caches by content."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from flows.curate import is_transient, manifest_markdown, run_flow
from pipeline.config import ConfigError, load_config
from pipeline.engine import run
from pipeline.engine.steps import StepError

STAGES = [
    {"stage": "length", "min_response_tokens": 20},
    {"stage": "heuristics"},
    {"stage": "exact_dedup", "key": "instruction"},
    {"stage": "long_is_more", "budget": 150},
]


def _config(tmp: Path, real: Path, write_config, stages=STAGES) -> Path:
    return write_config(tmp / "curate.yaml", {
        "run": {"name": "flowtest", "out": str(tmp / "runs"), "shard_rows": 700},
        "sources": [{"path": str(real / "code_alpaca_2k.json.gz")},
                    {"path": str(real / "fastchat_dummy_conversation.json.gz")}],
        "stages": stages,
        "flow": {"task_runner": "threads", "max_workers": 2, "work_dir": str(tmp / "work")},
    })


@pytest.fixture(scope="module")
def first(tmp_path_factory, real, write_config, prefect_api):
    tmp = tmp_path_factory.mktemp("flow")
    cfg = _config(tmp, real, write_config)
    return tmp, cfg, run_flow(str(cfg), run_id="first", quiet=True)


def test_flow_output_equals_the_local_engine(first, assert_same_run) -> None:
    tmp, cfg, res = first
    m = res["manifest"]
    assert m["status"] == "complete" and m["counts"]["balanced"] and m["engine"] == "prefect:threads"
    local = run(load_config(cfg), out=tmp / "local", run_id="local")
    assert_same_run(res["run_dir"], local.run_dir)
    lm = local.manifest
    for k in ("counts", "layout", "config_hash", "config"):
        assert m[k] == lm[k], k
    assert [{k: v for k, v in s.items() if k != "seconds"} for s in m["sources"]] == \
        [{k: v for k, v in s.items() if k != "seconds"} for s in lm["sources"]]
    assert [(s["name"], s["fingerprint"], s["params"], s["columns"], s["dropped"]) for s in m["stages"]] == \
        [(s["name"], s["fingerprint"], s["params"], s["columns"], s["dropped"]) for s in lm["stages"]]
    assert m["cache"]["step_hits"] == 0 and m["cache"]["steps"] > 0
    assert (tmp / "work" / "exact_dedup" / "global").is_dir(), "steps are stored in the configured work dir"


def test_rerun_of_an_unchanged_config_is_all_cache_hits(first, assert_same_run, task_runs) -> None:
    from prefect.client.orchestration import get_client

    tmp, cfg, res = first
    again = run_flow(str(cfg), run_id="again", quiet=True)
    m = again["manifest"]
    assert m["cache"]["step_hits"] == m["cache"]["steps"] and m["cache"]["ingest_hits"] == 2
    assert all(s["seconds"] == 0 for s in m["stages"])
    assert_same_run(res["run_dir"], again["run_dir"])
    n_shards = len(list(Path(again["run_dir"], "shards").glob("part-*.parquet")))
    n_work = 2 + 3 * n_shards + 2  # ingest per source, a shard task per segment (3) and shard, 2 global tasks
    runs = task_runs(m["prefect"]["flow_run_id"], expect=n_work + n_shards)  # + a finalize task per shard
    work = [t for t in runs if not t.name.startswith("finalize[")]
    assert len(work) == n_work and all(t.state.name == "Cached" for t in work), \
        sorted({(t.name, t.state.name) for t in work})
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts()
    md = [a for a in arts if a.key == "curate-flowtest" and a.flow_run_id is not None
          and str(a.flow_run_id) == m["prefect"]["flow_run_id"]]
    assert md and "| read | rejected | kept |" in md[0].data and f"{m['counts']['read']:,}" in md[0].data


def test_changed_threshold_recomputes_that_stage_and_what_depends_on_it(first, tmp_path, real, write_config) -> None:
    tmp, _cfg, res = first
    stages = [dict(s) for s in STAGES]
    stages[1]["max_non_alnum_ratio"] = 0.3
    cfg2 = _config(tmp, real, write_config, stages)
    m = run_flow(str(cfg2), run_id="changed", quiet=True)["manifest"]
    by = {s["name"]: s for s in m["stages"]}
    assert by["length"]["cache_hits"] == by["length"]["steps"] > 0
    assert by["heuristics"]["cache_hits"] == 0
    assert by["exact_dedup"]["cache_hits"] == 0 and by["long_is_more"]["cache_hits"] == 0
    assert m["counts"]["dropped_by_rule"].get("heuristics:non_alnum_ratio>0.3", 0) > \
        res["manifest"]["counts"]["dropped_by_rule"].get("heuristics:non_alnum_ratio>0.6", 0)


def test_cli_runs_the_flow(first, tmp_path, capsys) -> None:
    from pipeline.cli import main

    _tmp, cfg, res = first
    assert main(["run", str(cfg), "--engine", "prefect", "--out", str(tmp_path), "--run-id", "cli", "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(tmp_path / "cli")
    assert (tmp_path / "cli" / "manifest.json").exists()


def test_manifest_markdown_lists_every_stage(first) -> None:
    md = manifest_markdown(first[2]["manifest"])
    for s in STAGES:
        assert f"| {s['stage']} |" in md


def test_transient_errors_are_retried_and_others_are_not() -> None:
    def wrapped(cause: BaseException) -> StepError:
        try:
            raise StepError("stage 04-perplexity (row) failed on shard part-000-00001", 4) from cause
        except StepError as e:
            return e

    assert is_transient(wrapped(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")))
    assert is_transient(wrapped(OSError(errno.EIO, "Input/output error")))
    assert is_transient(wrapped(TimeoutError("model load timed out")))
    assert is_transient(MemoryError())
    assert not is_transient(wrapped(ValueError("column 'len_response_tokens' not found")))
    assert not is_transient(wrapped(FileNotFoundError(errno.ENOENT, "no such file")))
    assert not is_transient(None)


def test_flow_settings_are_validated_with_the_field_named(tmp_path) -> None:
    base = {"sources": [{"path": str(tmp_path)}], "stages": []}
    with pytest.raises(ConfigError, match=r"flow\.task_runner"):
        load_config({**base, "flow": {"task_runner": "spark"}})
    with pytest.raises(ConfigError, match=r"flow\.schedule\.cron"):
        load_config({**base, "flow": {"schedule": {"cron": "0 2 *"}}})
    with pytest.raises(ConfigError, match=r"flow\.retries"):
        load_config({**base, "flow": {"retries": -1}})
    cfg = load_config({**base, "flow": {"task_runner": "dask", "address": "tcp://10.0.0.5:8786", "max_workers": 4}})
    assert cfg.flow.address == "tcp://10.0.0.5:8786"
