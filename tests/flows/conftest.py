"""Prefect for the flow tests: one session-wide test harness (a real API server on SQLite in a temp dir).

PREFECT_HOME and the harness database live in temp dirs, so tests never touch ~/.prefect.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

_HOME = tempfile.mkdtemp(prefix="prefect-home-")
# before prefect is imported: its settings read the environment once
os.environ["PREFECT_HOME"] = _HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def prefect_api() -> Any:
    """The URL of the session's Prefect test server; flows run in this process report to it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings(updates={PREFECT_HOME: _HOME}), prefect_test_harness(server_startup_timeout=90):
        yield PREFECT_API_URL.value()
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def real() -> Path:
    if not REAL.is_dir():
        pytest.fail(f"real data not found at {REAL}: tests need ../shared/data/real beside the repo")
    return REAL


def _write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _read_run(run_dir: str | Path, sub: str = "shards") -> dict[str, pl.DataFrame]:
    """Every Parquet part of a run subdirectory, by file name."""
    return {p.name: pl.read_parquet(p) for p in sorted(Path(run_dir, sub).glob("part-*.parquet"))}


def _assert_same_run(a: str | Path, b: str | Path) -> None:
    """Byte-identical shard files in shards/ and selected/ (the issue's determinism bar); on a
    difference, the frames are compared first so the failure says what differs."""
    for sub in ("shards", "selected"):
        ra, rb = _read_run(a, sub), _read_run(b, sub)
        assert list(ra) == list(rb), f"{sub}: different parts {list(ra)} vs {list(rb)}"
        for name in ra:
            assert ra[name].columns == rb[name].columns, f"{sub}/{name}: columns differ"
            assert ra[name].equals(rb[name]), f"{sub}/{name}: contents differ"
            assert Path(a, sub, name).read_bytes() == Path(b, sub, name).read_bytes(), f"{sub}/{name}: bytes differ"


@pytest.fixture(scope="session")
def write_config() -> Any:
    """``write_config(path, dict) -> path``: a YAML config file."""
    return _write_config


@pytest.fixture(scope="session")
def read_run() -> Any:
    """``read_run(run_dir, sub="shards") -> {name: frame}``."""
    return _read_run


@pytest.fixture(scope="session")
def assert_same_run() -> Any:
    """``assert_same_run(a, b)``: equal shards/ and selected/ of two run directories."""
    return _assert_same_run


def _task_runs(flow_run_id: str, name_like: str = "", expect: int | None = None, timeout: float = 20.0) -> list:
    """Task runs of a flow run (names containing ``name_like``); waits for ``expect`` of them in a
    final state, since the server records task states from events, a moment after they happen."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs, offset = [], 0
            while True:
                page = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                    task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name_like)) if name_like else None,
                    limit=200, offset=offset)
                runs += page
                offset += len(page)
                if len(page) < 200:
                    break
            final = [t for t in runs if t.state is not None and t.state.is_final()]
            if expect is None or len(final) >= expect or time.monotonic() > deadline:
                return runs
            time.sleep(0.25)


@pytest.fixture(scope="session")
def task_runs() -> Any:
    """``task_runs(flow_run_id, name_like="", expect=None)``: task runs recorded by the server."""
    return _task_runs
