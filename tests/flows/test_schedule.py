"""A real ``prefect server`` fires the deployment's schedule; the scheduled run writes shards.

Ephemeral Prefect never fires schedules, so this runs what ``make serve`` runs
(``python -m flows.deploy up``): a real ``prefect server start`` on a free loopback port with SQLite
in a temp dir, then the deployment served with a schedule a few seconds out. Everything started
here is stopped here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


def _wait(what: str, fn, timeout: float, procs: list[subprocess.Popen], logs: list[Path]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"{p.args} exited ({p.returncode}) while waiting for {what}:\n"
                            + "\n".join(lg.read_text()[-3000:] for lg in logs))
        got = fn()
        if got:
            return got
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}:\n" + "\n".join(lg.read_text()[-3000:] for lg in logs))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_scheduled_deployment_runs_on_a_real_server(tmp_path, real, write_config) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               # the scheduler looks at new deployments every second (default 5), the runner polls every second
               PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS="1",
               PREFECT_RUNNER_POLL_FREQUENCY="1", PYTHONPATH=str(REPO))
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "nightly.yaml", {
        "run": {"name": "scheduled", "out": str(out), "shard_rows": 1000},
        "sources": [{"path": str(real / "code_alpaca_2k.json.gz")}],
        "stages": [{"stage": "length"}, {"stage": "long_is_more", "budget": 100}],
        "flow": {"schedule": {"cron": "0 2 * * *", "deployment": "nightly-test"}},
    })
    log = tmp_path / "up.log"
    t_start = datetime.now(timezone.utc)
    # what `make serve` runs: a prefect server on the port (SQLite under PREFECT_HOME), then the
    # deployment served; here with an hourly interval whose first run is 3 s after registration
    up = subprocess.Popen([sys.executable, "-m", "flows.deploy", "up", str(cfg), "--port", str(port),
                           "--interval-s", "3600", "--first-run-in", "3"],
                          env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    server_pid = None
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait("the server", healthy, 120, [up], [log])
        server_pid = int((home / "server.pid").read_text())

        def completed() -> list:
            r = httpx.post(f"{api}/flow_runs/filter", json={
                "deployments": {"name": {"any_": ["nightly-test"]}},
                "flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}}}, timeout=5)
            return r.json() if r.status_code == 200 else []

        runs = _wait("the scheduled run", completed, 150, [up], [log])
        run = runs[0]
        assert run["state_type"] == "COMPLETED", log.read_text()[-3000:]
        assert run["auto_scheduled"], "created by the scheduler, not by hand"
        assert datetime.fromisoformat(run["expected_start_time"]) > t_start
        assert run["parameters"]["config_path"] == str(cfg.resolve())

        manifests = list(out.glob("scheduled-*/manifest.json"))
        assert len(manifests) == 1
        m = json.loads(manifests[0].read_text())
        assert m["status"] == "complete" and m["counts"]["read"] == 2017 and m["counts"]["selected"] == 100
        assert list((manifests[0].parent / "shards").glob("part-*.parquet"))

        arts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": ["curate-scheduled"]}}},
                          timeout=5).json()
        assert arts and arts[0]["type"] == "markdown" and "| long_is_more | global |" in arts[0]["data"]
        def counts_logged() -> bool:  # run logs reach the API in batches, possibly after the state change
            logs = httpx.post(f"{api}/logs/filter", json={
                "logs": {"level": {"ge_": 20}}, "sort": "TIMESTAMP_DESC", "limit": 200}, timeout=5).json()
            return any("read 2017 = kept" in lg["message"] for lg in logs)

        _wait("per-stage counts in the API logs", counts_logged, 60, [up], [log])

        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C: `up` stops serving, then stops the server it started
        up.wait(timeout=60)
        assert not healthy() and not _alive(server_pid) and not (home / "server.pid").exists()
    finally:
        _stop(up, signal.SIGINT)
        if server_pid is not None and _alive(server_pid):
            os.killpg(server_pid, signal.SIGKILL)
