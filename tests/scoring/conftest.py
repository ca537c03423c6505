"""Fixtures for the LM-scoring tests: one real SmolLM2-135M per session, and a few short real rows."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# passive OpenMP waiting: with spinning threads a 2-core machine shared with other processes runs
# the model 5-10x slower (only effective if torch is not imported yet)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
#: every test scores with this request cap, so stages share the session model and stay fast
MAX_TOKENS = 160


@pytest.fixture(scope="session")
def max_tokens() -> int:
    return MAX_TOKENS


@pytest.fixture(scope="session")
def smol():
    """The real SmolLM2-135M-Instruct (GGUF, dequantised to float32 on CPU), shared with the stages.

    Registered as the shared backend for the stages' default spec, so every stage in these tests
    scores with this one loaded model instead of loading its own.
    """
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from pipeline.scoring import backend as backends
    from pipeline.scoring.perplexity import Perplexity

    spec = Perplexity().backend_spec()
    b = backends.open_backend(spec)
    backends.register(spec, b)
    yield b
    backends.release(b)


@pytest.fixture(scope="session")
def renderer(smol):
    from pipeline.scoring.render import ChatRenderer

    info = smol.info()
    return ChatRenderer(info["chat_template"], info["bos_token"], info["eos_token"])


def _short(df: pl.DataFrame, n: int, max_chars: int = 400) -> pl.DataFrame:
    text_len = pl.col("messages").list.eval(pl.element().struct.field("content").str.len_chars()).list.sum()
    return df.filter(text_len <= max_chars).head(n)


@pytest.fixture(scope="session")
def gsm_rows() -> pl.DataFrame:
    """Four short GSM8K train rows (question/answer)."""
    from pipeline.io.readers import read_table

    rows, _ = read_table(str(REAL / "gsm8k_train.jsonl.gz"))
    return _short(rows, 4)


@pytest.fixture(scope="session")
def chat_rows() -> pl.DataFrame:
    """Two short real multi-turn FastChat conversations (ShareGPT format)."""
    from pipeline.io.readers import read_table

    rows, _ = read_table(str(REAL / "fastchat_dummy_conversation.json.gz"))
    multi = rows.filter(pl.col("messages").list.len() >= 4)
    return _short(multi, 2, 300)


@pytest.fixture(scope="session")
def pool(gsm_rows, chat_rows) -> pl.DataFrame:
    return pl.concat([gsm_rows, chat_rows], how="diagonal_relaxed")  # the sources differ in their own fields
