"""LM-scoring stages as functions of ``pipeline.stages`` (config name = function name), on a pandas
frame, with the real SmolLM2-135M: the same scores as the stage class, the same kind of table back."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import polars as pl

from pipeline.scoring.stages import Perplexity
from pipeline.stages.base import RunContext


def test_perplexity_function_on_pandas(smol, pool, max_tokens, tmp_path):
    pool = pool.head(4)  # cheap: four short real rows
    from pipeline.stages import perplexity

    assert "max_tokens" in inspect.signature(perplexity).parameters
    out = perplexity(pool.to_pandas(), max_tokens=max_tokens, cache_dir=str(tmp_path / "a"))
    assert isinstance(out, pd.DataFrame) and len(out) == pool.height
    want = Perplexity(max_tokens=max_tokens)(pool, RunContext(cache_dir=tmp_path / "b"))
    np.testing.assert_allclose(out["ppl"].to_numpy(dtype=float), want["ppl"].to_numpy(), rtol=1e-6)
    assert pl.from_pandas(out[["id"]])["id"].to_list() == want["id"].to_list()
