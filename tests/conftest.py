"""Session-wide test settings: offline models, the real data directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# the static embedding model (minilm-static, the CPU default) is distilled from the shipped MiniLM
# once per test session into this temporary model cache (~2 min); subprocesses inherit it
if "SFT_CURATE_MODEL_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["SFT_CURATE_MODEL_CACHE"] = _cache = tempfile.mkdtemp(prefix="sft-curate-test-models-")
    atexit.register(shutil.rmtree, _cache, True)

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL.is_dir():
        pytest.fail(f"real data not found at {REAL}: tests need ../shared/data/real beside the repo")
    return REAL


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


def _wait_for_estimate(out: Path, proc: subprocess.Popen, timeout: float = 180) -> Path:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "no estimate was recorded"
        for mf in out.glob("*/manifest.json"):
            try:
                if json.loads(mf.read_text()).get("estimates"):
                    return mf.parent
            except ValueError:  # being replaced
                pass
        time.sleep(0.1)


@pytest.fixture
def wait_for_estimate() -> Callable[[Path, subprocess.Popen], Path]:
    """``wait(out, proc)``: the run directory under ``out`` once its running manifest records an
    estimate, i.e. a model stage is about to start (fails if ``proc`` ends first)."""
    return _wait_for_estimate


@pytest.fixture
def start_curate() -> Callable[..., subprocess.Popen]:
    """``start(*args, env=None)``: ``curate ARGS`` as a real process, as from a terminal (SIGINT at its
    default even when this test process was started in the background by a shell, whose children
    inherit SIGINT ignored)."""

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    return start
