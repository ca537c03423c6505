"""Session-wide test settings: offline models, the real data directory."""

from __future__ import annotations

import os
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
