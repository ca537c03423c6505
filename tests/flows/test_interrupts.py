"""Ctrl-C and SIGTERM on the default (Prefect) engine, as a user meets them: ``curate run`` in a real
process with no Prefect server configured (the CLI starts its own), interrupted inside a long
embedding stage. The process must end within seconds with one ``error:`` line that says how to
resume, the manifest must say ``interrupted``, the run's lock must be free, and nothing it started
(the temporary API server, worker threads' model work) may outlive it."""

from __future__ import annotations

import gzip
import json
import signal
import time
from pathlib import Path

import psutil
import pytest

from pipeline.engine.lock import DirLock


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_prefect_run_stops_within_seconds(tmp_path: Path, real: Path, write_config, sig: int,
                                                         start_curate, wait_for_estimate) -> None:
    with gzip.open(real / "gsm8k_train.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for _, line in zip(range(3000), f, strict=False)]
    src = tmp_path / "gsm.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "c.yaml", {
        "run": {"name": "p", "out": str(out), "shard_rows": 500, "device": "cpu", "report": False},
        "sources": [{"path": str(src)}],
        # MiniLM on two CPU cores: minutes of embedding, so the signal lands inside a running step
        "stages": [{"stage": "length"}, {"stage": "semantic_dedup", "model": "minilm", "eps": 0.05}],
    })
    home = tmp_path / "prefect-home"
    proc = start_curate("run", str(cfg), "--engine", "prefect", "--run-id", "p1", "--quiet",
                        env={"PREFECT_HOME": str(home)})
    run_dir = wait_for_estimate(out, proc)
    time.sleep(2)  # inside the embedding steps, on the task runner's threads
    started = psutil.Process(proc.pid).children(recursive=True)  # the temporary Prefect server
    assert started, "the CLI should have started a temporary Prefect API server"
    t0 = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=90)
    took = time.monotonic() - t0
    assert proc.returncode == 130, err
    assert took < 20, f"took {took:.1f}s to stop"
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        f"error: interrupted; resume with: curate run {cfg} --run-id p1 --engine prefect"]
    assert "Traceback" not in err
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "interrupted", m.get("error")
    assert m["estimates"][0]["name"] == "semantic_dedup"
    with DirLock(run_dir, "run p1"):
        pass
    _, alive = psutil.wait_procs([p for p in started if p.is_running()], timeout=10)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"
