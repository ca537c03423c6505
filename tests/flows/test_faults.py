"""Fault injection on the Prefect flow: a kill at a random point, a full output disk, an unreadable
work-store file or input shard, a model that fails to load.

Each time: a clear error, no partial shard that looks complete (every ``part-*.parquet`` reads, the
manifest never says ``complete``), and after the fault is cleared, a resumed run whose shards are
byte-identical to an uninterrupted one: no row lost or duplicated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from flows.curate import run_flow
from pipeline.engine.store import StoreCorruption

REPO = Path(__file__).resolve().parents[2]
ROWS = 7473  # gsm8k train
STAGES = [
    {"stage": "length", "min_response_tokens": 30},
    {"stage": "heuristics"},
    {"stage": "exact_dedup", "key": "instruction"},
    {"stage": "minhash_dedup"},  # a global stage: kills can land in its gather / components / slices
    {"stage": "long_is_more", "budget": 500},
]


def _config(root: Path, real: Path, write_config, name: str = "faults", sources: list[dict] | None = None,
            stages: list[dict] | None = None) -> Path:
    return write_config(root / f"{name}.yaml", {
        "run": {"name": name, "out": str(root / "runs"), "shard_rows": 500, "report": False},
        "sources": sources or [{"path": str(real / "gsm8k_train.jsonl.gz")}],
        "stages": stages or STAGES,
        "flow": {"task_runner": "threads", "max_workers": 1, "work_dir": str(root / "work"), "retries": 0},
    })


def _progress_files(root: Path) -> int:
    """Committed outputs so far: work-store files and final shards. Temp files and directories start
    with '.' and are skipped; os.walk also skips a directory renamed away while it is listed (a
    global step committing its temp directory)."""
    n = 0
    for _, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        n += sum(1 for f in files if not f.startswith(".") and (f.endswith(".parquet") or f == "_meta.json"))
    return n


def _flow_subprocess(cfg: Path, run_id: str, prefect_api: str) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "flows.curate", str(cfg), "--run-id", run_id, "--quiet"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def _assert_nothing_looks_complete(run_dir: Path) -> None:
    import json

    mf = run_dir / "manifest.json"
    if mf.exists():
        assert json.loads(mf.read_text())["status"] != "complete"
    for p in run_dir.rglob("part-*.parquet"):
        pq.read_table(p)  # a visible shard is always a whole one


def _assert_complete(res: dict[str, Any], rows: int = ROWS) -> pl.DataFrame:
    m = res["manifest"]
    assert m["status"] == "complete" and m["counts"]["balanced"], m["counts"]
    shards = pl.read_parquet(Path(res["run_dir"]) / "shards")
    assert shards.height == m["counts"]["read"] == rows
    assert shards.select(pl.struct("source", "source_row").n_unique()).item() == rows, "a row is duplicated"
    return shards


@pytest.fixture(scope="module")
def reference(tmp_path_factory, real, write_config, prefect_api) -> dict[str, Any]:
    """An uninterrupted flow run in a subprocess, the way the killed ones run; and how many files it commits."""
    root = tmp_path_factory.mktemp("faults-ref")
    cfg = _config(root, real, write_config)
    proc = _flow_subprocess(cfg, "reference", prefect_api)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]
    return {"run_dir": root / "runs" / "reference", "events": _progress_files(root)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_at_a_random_point_then_resume(seed, tmp_path, real, write_config, prefect_api, reference,
                                            assert_same_run) -> None:
    """SIGKILL after a random number of committed files (0 = while Prefect starts), then rerun."""
    cfg = _config(tmp_path, real, write_config)
    at = int(np.random.default_rng(seed).integers(0, reference["events"]))
    proc = _flow_subprocess(cfg, "killed", prefect_api)
    try:
        deadline = time.monotonic() + 300
        while _progress_files(tmp_path) < at:
            assert proc.poll() is None, f"the flow ended before {at} files: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "the flow never got that far"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    run_dir = tmp_path / "runs" / "killed"
    _assert_nothing_looks_complete(run_dir)

    res = run_flow(str(cfg), run_id="killed", quiet=True)
    _assert_complete(res)
    assert_same_run(res["run_dir"], reference["run_dir"])
    hits = res["manifest"]["cache"]["step_hits"]
    assert at < 5 or hits > 0, f"killed after {at} files, yet the resumed run reused nothing"


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {r.stderr.decode().strip()}")


def test_full_disk_fails_cleanly_then_resumes(tmp_path, real, write_config, prefect_api, reference,
                                              assert_same_run) -> None:
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "3m")  # the run writes ~12 MB (work store + shards)
    try:
        cfg = _config(disk, real, write_config)
        with pytest.raises(Exception) as e:
            run_flow(str(cfg), run_id="full", quiet=True)
        assert "No space left on device" in str(e.value), str(e.value)
        _assert_nothing_looks_complete(disk / "runs" / "full")
        before = _progress_files(disk)
        assert before > 0, "the run failed before writing anything: not the fault under test"

        subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
        res = run_flow(str(cfg), run_id="full", quiet=True)
        _assert_complete(res)
        assert_same_run(res["run_dir"], reference["run_dir"])
        assert res["manifest"]["cache"]["step_hits"] + res["manifest"]["cache"]["ingest_hits"] > 0
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _garble(path: Path, keep_footer: bool) -> None:
    """Overwrite bytes of a Parquet file: the middle half (footer intact: the data pages fail to
    decode), or everything after the first half (the footer is gone)."""
    data = bytearray(path.read_bytes())
    n = len(data)
    if keep_footer:
        data[n // 4: n // 2] = np.random.default_rng(0).integers(0, 256, n // 2 - n // 4, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(bytes(data[: n // 2]))


def test_unreadable_work_store_files_are_recomputed(tmp_path, real, write_config, prefect_api, reference,
                                                    assert_same_run) -> None:
    cfg = _config(tmp_path, real, write_config)
    _assert_complete(run_flow(str(cfg), run_id="first", quiet=True))
    work = tmp_path / "work"

    # a step file cut short (no footer): seen as missing, recomputed, nothing fails
    cut = sorted((work / "length" / "row").glob("*.parquet"))[3]
    _garble(cut, keep_footer=False)
    res = run_flow(str(cfg), run_id="second", quiet=True)
    _assert_complete(res)
    assert_same_run(res["run_dir"], reference["run_dir"])
    by = {s["name"]: s for s in res["manifest"]["stages"]}
    assert by["length"]["cache_hits"] == by["length"]["steps"] - 1
    pq.read_table(cut)  # rewritten whole

    # an ingest shard whose pages do not decode (footer intact): the run that meets it fails naming
    # the file and drops the ingest entry; the next run ingests again and matches the reference
    shard = sorted((work / "_ingest").glob("*/part-*.parquet"))[2]
    _garble(shard, keep_footer=True)
    with pytest.raises(Exception) as e:
        run_flow(str(cfg), run_id="third", quiet=True)
    assert shard.name in str(e.value) and "unreadable" in str(e.value), str(e.value)
    assert any(isinstance(x, StoreCorruption) for x in _chain(e.value))
    assert not shard.parent.exists(), "the corrupt ingest entry was not discarded"
    _assert_nothing_looks_complete(tmp_path / "runs" / "third")
    res = run_flow(str(cfg), run_id="third", quiet=True)
    _assert_complete(res)
    assert_same_run(res["run_dir"], reference["run_dir"])
    assert res["manifest"]["cache"]["ingest_hits"] == 0


def _chain(e: BaseException | None) -> list[BaseException]:
    out = []
    while e is not None and len(out) < 20:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _gsm_parquet_sources(tmp_path: Path, real: Path) -> list[Path]:
    src = pl.read_ndjson(real / "gsm8k_train.jsonl.gz").head(3000)
    paths = []
    for i in range(3):
        p = tmp_path / "in" / f"gsm-{i}.parquet"
        p.parent.mkdir(exist_ok=True)
        src.slice(i * 1000, 1000).write_parquet(p, row_group_size=100)
        paths.append(p)
    return paths


def test_input_shard_that_cannot_be_opened_fails_naming_it(tmp_path, real, write_config, prefect_api) -> None:
    paths = _gsm_parquet_sources(tmp_path, real)
    good = paths[1].read_bytes()
    _garble(paths[1], keep_footer=False)
    cfg = _config(tmp_path, real, write_config, sources=[{"path": str(p)} for p in paths])
    with pytest.raises(Exception) as e:
        run_flow(str(cfg), run_id="bad-input", quiet=True)
    assert "gsm-1.parquet" in str(e.value) and "cannot open as Parquet" in str(e.value), str(e.value)
    _assert_nothing_looks_complete(tmp_path / "runs" / "bad-input")

    paths[1].write_bytes(good)  # the user replaces the shard and reruns
    res = run_flow(str(cfg), run_id="bad-input", quiet=True)
    _assert_complete(res, rows=3000)
    assert res["manifest"]["cache"]["ingest_hits"] == 2, "the readable sources were ingested again"


def test_input_shard_with_corrupt_pages_loses_only_those_rows_to_rejects(tmp_path, real, write_config,
                                                                          prefect_api) -> None:
    """Footer intact, data pages garbled: the row groups that do not decode go to rejects row by row
    (source, source_row, reason); every other row of the file is read; the run completes."""
    paths = _gsm_parquet_sources(tmp_path, real)
    _garble(paths[1], keep_footer=True)
    cfg = _config(tmp_path, real, write_config, sources=[{"path": str(p)} for p in paths])
    res = run_flow(str(cfg), run_id="pages", quiet=True)
    c = res["manifest"]["counts"]
    assert c["read"] == 3000 and c["balanced"]
    rejects = pl.read_parquet(Path(res["run_dir"]) / "rejects")
    assert rejects.height == c["rejected"] > 0
    assert rejects["reason"].str.starts_with("unreadable Parquet row group").all()
    assert rejects["source"].unique().to_list() == ["gsm-1.parquet"]
    lost = set(rejects["source_row"].to_list())
    shards = pl.read_parquet(Path(res["run_dir"]) / "shards")
    read_rows = set(shards.filter(pl.col("source") == "gsm-1.parquet")["source_row"].to_list())
    assert not lost & read_rows and lost | read_rows == set(range(1000))
    assert 100 <= len(lost) < 1000 and len(lost) % 100 == 0, "whole row groups, not the rest of the file"


def test_model_that_fails_to_load(tmp_path, real, write_config, prefect_api) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "modules.json").write_text("[]")
    (broken / "config.json").write_text('{"model_type": ')
    stages = [*STAGES[:3], {"stage": "embed", "model": str(broken)}, {"stage": "long_is_more", "budget": 100}]
    src = [{"path": str(real / "self_instruct_seed_tasks.jsonl.gz")}]  # 175 rows: the embedding is not the point
    cfg = _config(tmp_path, real, write_config, sources=src, stages=stages)
    with pytest.raises(Exception) as e:
        run_flow(str(cfg), run_id="model", quiet=True)
    msg = str(e.value)
    assert "cannot load model" in msg and str(broken) in msg and "embed" in msg, msg
    run_dir = tmp_path / "runs" / "model"
    _assert_nothing_looks_complete(run_dir)
    import json

    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "failed" and "cannot load model" in m["error"]

    # the user points the stage at a real model; the stages before it are not recomputed
    cfg = _config(tmp_path, real, write_config, sources=src,
                  stages=[*STAGES[:3], {"stage": "embed", "model": "minilm"}, {"stage": "long_is_more", "budget": 100}])
    res = run_flow(str(cfg), run_id="model", quiet=True)
    _assert_complete(res, rows=res["manifest"]["counts"]["read"])
    by = {s["name"]: s for s in res["manifest"]["stages"]}
    assert by["length"]["cache_hits"] == by["length"]["steps"] > 0
    assert by["embed"]["cache_hits"] == 0
