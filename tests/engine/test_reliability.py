"""Nothing lost, nothing stale: exclusive run directories and nightly homes (real processes racing),
manifests that are complete only when their files are, and cache keys that cover file contents."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from pipeline.config import load_config
from pipeline.engine import LockHeld, RunIntegrityError, run, verify_run
from pipeline.engine.lock import DirLock

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "data" / "real"
CURATE = [sys.executable, "-m", "pipeline.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _gsm8k(name: str, n: int) -> list[dict]:
    with gzip.open(REAL / name, "rt") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


def _config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _wait_for_manifest(run_dir: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (run_dir / "manifest.json").exists():
        assert proc.poll() is None, f"the first run ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "the first run never started"
        time.sleep(0.05)


def test_two_runs_with_the_same_run_id_never_lose_shards(tmp_path: Path, start_curate) -> None:
    """Two ``curate run`` processes on one run id: the second is refused at once, naming the holder,
    and deletes nothing; the first completes with every shard it counted on disk."""
    src = _jsonl(tmp_path / "gsm.jsonl", _gsm8k("gsm8k_train.jsonl.gz", 4000))
    cfg = _config(tmp_path / "c.yaml", {
        "run": {"name": "race", "out": str(tmp_path / "runs"), "shard_rows": 400, "report": False},
        "sources": [{"path": str(src)}],
        "stages": [{"stage": "length"}, {"stage": "heuristics"}, {"stage": "exact_dedup"},
                   {"stage": "minhash_dedup", "threshold": 0.7}, {"stage": "long_is_more", "budget": 500}],
    })
    run_dir = tmp_path / "runs" / "same"
    first = start_curate("run", str(cfg), "--engine", "local", "--run-id", "same", "--quiet")
    _wait_for_manifest(run_dir, first)
    second = start_curate("run", str(cfg), "--engine", "local", "--run-id", "same", "--quiet")
    out2, err2 = second.communicate(timeout=120)
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert second.returncode == 2
    lines = [ln for ln in err2.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err2
    assert f"pid {first.pid}" in lines[0] or "already holds a complete run" in lines[0]
    m = verify_run(run_dir)  # every listed file on disk with its recorded rows and checksum
    assert m["status"] == "complete" and m["counts"]["balanced"]
    shards = pl.read_parquet(run_dir / "shards")
    assert shards.height == m["counts"]["kept"] + m["counts"]["dropped"] == 4000
    assert len(m["files"]) == len(list((run_dir / "shards").glob("part-*"))) * 2 + len(
        list((run_dir / "rejects").glob("part-*")))


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    """flock is released by the kernel when its holder dies (kill -9): the next run just proceeds."""
    code = ("import sys, time; from pipeline.engine.lock import DirLock; "
            f"DirLock({str(tmp_path / 'r')!r}, 'run r').acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LockHeld, match=f"pid {holder.pid}"):
        DirLock(tmp_path / "r", "run r").acquire()
    holder.kill()
    holder.wait()
    with DirLock(tmp_path / "r", "run r") as lock:
        assert lock.holder()["pid"] == os.getpid()


def test_a_second_night_cannot_sweep_the_live_nights_pool(tmp_path: Path, start_curate) -> None:
    """A second nightly invocation (here with a mistyped input dir) while a night runs is refused at
    the home's lock before it reads or sweeps anything; the live night commits a ledger whose pool
    is whole, and the next night runs on it."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rows = _gsm8k("gsm8k_train.jsonl.gz", 6000)
    _jsonl(inbox / "a.jsonl", rows[:4000])
    cfg = _config(tmp_path / "n.yaml", {
        "run": {"name": "nightly", "out": str(tmp_path / "runs"), "shard_rows": 300, "report": False},
        "stages": [{"stage": "length"}, {"stage": "heuristics"}, {"stage": "exact_dedup"},
                   {"stage": "minhash_dedup", "threshold": 0.7}, {"stage": "long_is_more", "budget": 300}],
        "flow": {"incremental": {"input_dir": str(inbox), "pattern": "*.jsonl"}},
    })
    first = start_curate("run", str(cfg), "--engine", "local", "--run-id", "n1", "--quiet")
    _wait_for_manifest(tmp_path / "runs" / "n1", first)
    second = start_curate("run", str(cfg), "--engine", "local", "--run-id", "n1b", "--input-dir",
                    str(tmp_path / "inbx-typo"), "--quiet")
    _, err2 = second.communicate(timeout=120)
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert second.returncode == 2 and err2.strip().startswith("error:") and "nightly home" in err2, err2
    home = tmp_path / "runs" / "nightly.incremental"
    ledger = json.loads((home / "current.json").read_text())
    assert ledger["pool"] and all(Path(e["path"]).is_file() for e in ledger["pool"])
    _jsonl(inbox / "b.jsonl", rows[4000:])
    n2 = run(load_config(cfg), run_id="n2")
    assert n2.manifest["incremental"]["new_files"] == ["b.jsonl"]
    assert n2.manifest["incremental"]["pool_rows"] == 6000 and n2.manifest["counts"]["balanced"]


def test_a_replaced_benchmark_file_is_not_served_from_the_cache(tmp_path: Path) -> None:
    """Decontamination keyed by the benchmark's content, not its path: GSM8K test items planted in
    the pool are dropped against the GSM8K file, and kept once the same path holds HumanEval."""
    test_items = _gsm8k("gsm8k_test.jsonl.gz", 40)
    pool = _gsm8k("gsm8k_train.jsonl.gz", 400) + test_items[:20]
    src = _jsonl(tmp_path / "pool.jsonl", pool)
    bench = tmp_path / "bench.jsonl"
    _jsonl(bench, test_items)
    raw = {"run": {"name": "d", "out": str(tmp_path / "runs"), "report": False},
           "flow": {"work_dir": str(tmp_path / "work")}, "sources": [{"path": str(src)}],
           "stages": [{"stage": "decontaminate", "benchmarks": [str(bench)]}]}
    a = run(load_config(raw), run_id="gsm")
    assert a.manifest["counts"]["dropped"] >= 20
    with gzip.open(REAL / "humaneval.jsonl.gz", "rt") as f:
        bench.write_text(f.read())  # same path, other content
    b = run(load_config(raw), run_id="humaneval")
    assert b.manifest["counts"]["dropped"] == 0
    assert b.manifest["stages"][0]["cache_hits"] == 0


def test_inspect_and_export_refuse_a_run_whose_files_changed(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "gsm.jsonl", _gsm8k("gsm8k_train.jsonl.gz", 900))
    res = run(load_config({"run": {"name": "v", "out": str(tmp_path / "runs"), "shard_rows": 300},
                           "sources": [{"path": str(src)}], "stages": [{"stage": "length"}]}), run_id="v")
    assert verify_run(res.run_dir)["status"] == "complete"
    victim = sorted((res.run_dir / "selected").glob("part-*"))[1]
    victim.unlink()
    with pytest.raises(RunIntegrityError, match=f"selected/{victim.name} is missing"):
        verify_run(res.run_dir)
    for args in (["inspect", str(res.run_dir)], ["export", str(res.run_dir), "--out", str(tmp_path / "x.jsonl")]):
        p = subprocess.run([*CURATE, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and p.stderr.startswith("error:") and victim.name in p.stderr, p.stderr
        assert "Traceback" not in p.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_local_run_stops_at_once_and_says_so(tmp_path: Path, sig: int, wait_for_estimate, start_curate) -> None:
    """Ctrl-C or SIGTERM during a long embedding stage: the process ends within seconds with one
    error line, the manifest says ``interrupted``, and the run's lock is free for the rerun."""
    rows = _gsm8k("gsm8k_train.jsonl.gz", 3000)
    src = _jsonl(tmp_path / "gsm.jsonl", rows)
    cfg = _config(tmp_path / "c.yaml", {
        "run": {"name": "i", "out": str(tmp_path / "runs"), "shard_rows": 500, "device": "cpu", "report": False},
        "sources": [{"path": str(src)}],
        "stages": [{"stage": "length"}, {"stage": "semantic_dedup", "model": "minilm", "eps": 0.05}],
    })
    proc = start_curate("run", str(cfg), "--engine", "local", "--out", str(tmp_path / "runs"), "--quiet")
    run_dir = wait_for_estimate(tmp_path / "runs", proc)  # the probe ran: the embedding stage is next
    time.sleep(2)  # inside it
    t0 = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 20
    assert proc.returncode == 130, err
    # the run id was generated: the hint names it, so the rerun resumes this run
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        f"error: interrupted; resume with: curate run {cfg} --run-id {run_dir.name} "
        f"--out {tmp_path / 'runs'} --engine local"]
    assert "Traceback" not in err
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "interrupted"
    assert [e["name"] for e in m["estimates"]] == ["semantic_dedup"]  # recorded before the stage started
    with DirLock(run_dir, "run"):
        pass


@pytest.mark.parametrize("delay", [0.0, 0.4, 0.8])
def test_three_quick_ctrl_c_stop_at_once_without_a_crash(tmp_path: Path, start_curate, delay: float) -> None:
    """Ctrl-C pressed three times 50 ms apart while the run ingests real files (decoding, mapping
    and writing on their own threads): the process ends with exit 130 and one error line. The later
    presses once re-entered the signal handler half-way through an import ("partially initialized
    module 'psutil'", even "Fatal Python error"), and the run's lock must be free afterwards."""
    cfg = _config(tmp_path / "c.yaml", {
        "run": {"name": "i", "out": str(tmp_path / "runs"), "shard_rows": 5000, "report": False},
        "sources": [{"path": str(REAL / "t0_templated_50k.parquet")}, {"path": str(REAL / "sharegpt_17k.parquet")},
                    {"path": str(REAL / "gsm8k_train.jsonl.gz")}],
        "stages": [{"stage": "length"}, {"stage": "minhash_dedup", "key": "response"}],
    })
    proc = start_curate("run", str(cfg), "--engine", "local", "--run-id", "r", "--out", str(tmp_path / "runs"), "--quiet")
    _wait_for_manifest(tmp_path / "runs" / "r", proc)  # the run has started: ingest is next
    time.sleep(delay)
    t0 = time.monotonic()
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 20
    assert proc.returncode == 130, err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")][0].startswith("error: interrupted"), err
    for crash in ("Traceback", "Fatal Python error", "partially initialized", "Exception ignored"):
        assert crash not in err, err
    with DirLock(tmp_path / "runs" / "r", "run"):
        pass


def test_a_checkpoint_replaced_by_another_of_the_same_size_changes_the_keys(tmp_path: Path) -> None:
    """Model ids and stage keys hash the weights' content: a checkpoint replaced at the same path by
    another of the same size (what once kept stale perplexities) gets a new id and a new key."""
    from pipeline.engine.keys import stage_input_key
    from pipeline.models import resolve_model
    from pipeline.stages import get_stage

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "llama"}')
    (ckpt / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    st = get_stage("perplexity")({"model": str(ckpt)})
    id1, key1 = resolve_model(str(ckpt)).model_id, stage_input_key(st)
    time.sleep(0.01)
    (ckpt / "model.safetensors").write_bytes(bytes(reversed(range(256))) * 64)  # same size, other weights
    id2, key2 = resolve_model(str(ckpt)).model_id, stage_input_key(st)
    assert id1 != id2 and key1 != key2
    assert resolve_model(str(ckpt)).model_id == id2  # stable while untouched
