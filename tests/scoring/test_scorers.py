"""The six LM scorers as stages, with the real SmolLM2-135M on short real rows (GSM8K, FastChat)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from pipeline.scoring.deita import expected_score
from pipeline.scoring.error_uncertainty import qtuning_triage, quadrants
from pipeline.scoring.judge import yes_probability
from pipeline.scoring.stages import IFD, Deita, ErrorUncertainty, Grape, Judge, Perplexity
from pipeline.stages.base import RunContext


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    # one cache for the module: perplexity, IFD, GRAPE and error_uncertainty share the likelihood pass
    return RunContext(cache_dir=tmp_path_factory.mktemp("scores"))


def run(stage, table, ctx):
    out = stage(table, ctx)
    assert out.height == table.height
    return out


def n_turns(df: pl.DataFrame) -> list[int]:
    return df.select(pl.col("messages").list.eval(pl.element().struct.field("role") == "assistant").list.sum())\
        .to_series().to_list()


# ---------------------------------------------------------------- pure parts


def test_expected_score_is_the_rating_expectation():
    lp = np.log(np.array([[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1]], dtype=float) + 1e-300)
    np.testing.assert_allclose(expected_score(lp), [1.0, 6.0, 3.5])


def test_yes_probability_normalises_and_counts_a_token_once():
    lp = np.log(np.array([[0.3, 0.3, 0.1], [0.2, 0.1, 0.2]]))
    ids = np.array([[7, 7, 9], [7, 8, 9]])  # row 0: two spellings of token 7
    np.testing.assert_allclose(yes_probability(lp, ids, n_yes=2), [0.3 / 0.4, 0.3 / 0.5])


def test_quadrants_and_qtuning_triage():
    nll = np.array([3.0, 3.0, 1.0, 1.0])
    ent = np.array([2.0, 0.5, 0.5, 2.0])
    assert quadrants(nll, ent).tolist() == ["Q1", "Q2", "Q3", "Q4"]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=2000), rng.normal(size=2000)
    keep = qtuning_triage(x, y, 0.2)
    assert abs(keep.mean() - 0.2) < 0.02
    q = quadrants(x, y)
    assert set(q[keep]) <= {"Q2", "Q4"}


# ---------------------------------------------------------------- stages on real rows


def test_perplexity_per_turn_and_skips_dropped_rows(smol, pool, ctx, max_tokens):
    table = pool.with_columns(
        pl.when(pl.int_range(pl.len()) == 1).then(False).otherwise(True).alias("keep"),
        pl.when(pl.int_range(pl.len()) == 1).then(pl.lit("length:test")).otherwise(None).alias("drop_reason"),
    )
    st = Perplexity(max_tokens=max_tokens)
    out = run(st, table, ctx)
    kept = out.filter(pl.col("keep"))
    assert kept["ppl"].is_not_null().all() and (kept["ppl"] > 1).all() and kept["ppl"].is_finite().all()
    assert kept["ppl_turns"].list.len().to_list() == n_turns(kept)
    multi = kept.filter(pl.col("ppl_turns").list.len() > 1)
    assert multi.height == 2
    np.testing.assert_allclose(multi["ppl"], multi["ppl_turns"].list.mean())
    assert kept["ppl_model"].unique().to_list() == [smol.model_id]
    assert kept["ppl_template"].n_unique() == 1 and kept["ppl_truncated"].is_not_null().all()
    dropped = out.filter(~pl.col("keep"))
    assert dropped["ppl"].is_null().all() and dropped["drop_reason"].to_list() == ["length:test"]
    assert st.summary()["rows_scored"] == pool.height - 1


def test_ifd_is_the_ratio_of_conditional_to_unconditional_perplexity(pool, ctx, max_tokens):
    out = run(IFD(max_tokens=max_tokens), pool, ctx)
    assert out["ifd"].is_finite().all() and (out["ifd"] > 0).all() and (out["ifd"] < 10).all()
    single = out.filter(pl.col("ifd_turns").list.len() == 1)
    np.testing.assert_allclose(single["ifd"], single["ifd_ppl_cond"] / single["ifd_ppl_uncond"], rtol=1e-9)
    # the instruction helps a GSM8K answer: conditional perplexity is below the unconditional one
    gsm = out.head(4)
    assert (gsm["ifd_ppl_cond"] < gsm["ifd_ppl_uncond"]).all()
    # Cherry's rule as a threshold; here at the median so that it must bite
    cut = float(out["ifd"].median())
    dec = run(IFD(max_tokens=max_tokens, drop_above=cut), pool, ctx)
    dropped = dec.filter(~pl.col("keep"))
    assert dropped.height == int((out["ifd"] > cut).sum()) > 0
    assert dropped["drop_reason"].unique().to_list() == [f"ifd:>{cut}"]


def test_deita_scores_are_expected_ratings(pool, ctx, max_tokens):
    out = run(Deita(max_tokens=max_tokens), pool, ctx)
    for c in ("deita_complexity", "deita_quality"):
        assert out[c].is_finite().all() and out[c].is_between(1, 6).all()
    assert out["deita_score"].is_between(1, 36).all()
    single = out.filter(pl.col("deita_quality_turns").list.len() == 1)
    np.testing.assert_allclose(single["deita_score"], single["deita_complexity"] * single["deita_quality"])
    assert out["deita_complexity_turns"].list.len().to_list() == n_turns(pool)
    # a rule on another column of the stage (scores come from the cache: nothing is re-scored)
    cut = float(out["deita_quality"].median())
    st = Deita(max_tokens=max_tokens, decide_on="deita_quality", drop_below=cut)
    dec = run(st, pool, ctx)
    assert st.summary()["units_computed"] == 0
    dropped = dec.filter(~pl.col("keep"))
    assert dropped.height == int((out["deita_quality"] < cut).sum()) > 0
    assert dropped["drop_reason"].unique().to_list() == [f"deita:quality<{cut}"]
    with pytest.raises(ValueError, match="decide_on"):
        Deita(decide_on="deita_model")


def test_deita_complexity_is_one_request_per_distinct_instruction(gsm_rows, tmp_path, max_tokens):
    """Complexity sees only the instruction: responses to one instruction share one exact value."""
    m = gsm_rows["messages"].to_list()[:2]
    q0, q1 = m[0][0]["content"], m[1][0]["content"]
    pairs = [(q0, m[0][1]["content"]), (q0, m[1][1]["content"]), (q0, "I do not know."), (q1, m[1][1]["content"])]
    rows = pl.DataFrame({
        "id": [f"d{i}" for i in range(4)], "source": ["deita"] * 4, "source_row": list(range(4)),
        "messages": [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs],
        "meta": [None] * 4,
    }, schema_overrides={"meta": pl.String})
    st = Deita(max_tokens=max_tokens)
    out = run(st, rows, RunContext(cache_dir=tmp_path))
    cx = out["deita_complexity"].to_list()
    assert cx[0] == cx[1] == cx[2] != cx[3]
    assert st.summary()["units_computed"] == 2 + 4  # complexity prompts + quality prompts


def test_judge_yes_prob_and_a_quantile_cutoff(pool, ctx, max_tokens):
    st = Judge(max_tokens=max_tokens, drop_below_quantile=0.5)
    assert st.scope == "global"
    out = run(st, pool, ctx)
    assert out["judge_yes_prob"].is_finite().all() and out["judge_yes_prob"].is_between(0, 1).all()
    cut = st.summary()["quantile_cutoffs"]["q<0.5"]
    low = out.filter(pl.col("judge_yes_prob") < cut)
    assert low.height > 0 and (~low["keep"]).all()
    assert low["drop_reason"].unique().to_list() == ["judge:yes_prob_q<0.5"]
    assert out.filter(pl.col("judge_yes_prob") >= cut)["keep"].all()


def test_error_uncertainty_quadrants_and_triage(pool, ctx, max_tokens):
    st = ErrorUncertainty(max_tokens=max_tokens, drop_quadrants=["Q1", "Q3"])
    out = run(st, pool, ctx)
    assert st.summary()["units_computed"] == 0  # the likelihood pass came from the perplexity test's cache
    assert (out["eu_nll"] > 0).all() and (out["eu_entropy"] > 0).all()
    m_nll, m_ent = float(out["eu_nll"].median()), float(out["eu_entropy"].median())
    expect = quadrants(out["eu_nll"].to_numpy(), out["eu_entropy"].to_numpy())
    assert out["eu_quadrant"].to_list() == expect.tolist()
    assert m_nll > 0 and m_ent > 0
    bad = out.filter(pl.col("eu_quadrant").is_in(["Q1", "Q3"]))
    assert (~bad["keep"]).all() and set(bad["drop_reason"]) <= {"error_uncertainty:quadrant=Q1",
                                                                "error_uncertainty:quadrant=Q3"}
    assert out.filter(pl.col("eu_quadrant").is_in(["Q2", "Q4"]))["keep"].all()
    # the published perplexity of a sample is exp(NLL): same numbers as the perplexity stage
    ppl = run(Perplexity(max_tokens=max_tokens), pool, ctx)
    single = out["eu_nll_turns"].list.len() == 1
    np.testing.assert_allclose(out.filter(single)["eu_nll"].exp(), ppl.filter(single)["ppl"], rtol=1e-9)


def test_turn_aggregation_is_configurable(pool, ctx, max_tokens):
    last = run(Perplexity(max_tokens=max_tokens, turn_agg="last"), pool, ctx)
    np.testing.assert_allclose(last["ppl"], last["ppl_turns"].list.last())


def test_grape_picks_the_models_own_greedy_answer(smol, renderer, gsm_rows, ctx, max_tokens):
    import torch

    msgs = gsm_rows["messages"].to_list()
    question = msgs[0][0]["content"]
    _, context, _ = renderer.turn_pairs(msgs[0])[0]
    ids = smol.tokenizer(context, add_special_tokens=False, return_tensors="pt").input_ids
    eot = smol.tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.inference_mode():
        gen = smol.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False,
                                  eos_token_id=eot, pad_token_id=eot)
    greedy = smol.tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    candidates = [msgs[0][1]["content"], greedy, msgs[1][1]["content"]]  # real answer, greedy, a wrong pair
    rows = pl.DataFrame({
        "id": [f"c{i}" for i in range(4)],
        "source": ["grape"] * 4,
        "source_row": list(range(4)),
        "messages": [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                     for q, a in [(question, c) for c in candidates] + [(msgs[2][0]["content"], msgs[2][1]["content"])]],
        "meta": [None] * 4,
    }, schema_overrides={"meta": pl.String})
    out = run(Grape(max_tokens=max_tokens, include_eos=False), rows, ctx)
    assert out["grape_loglik"].is_finite().all()
    assert out["grape_group_size"].to_list() == [3, 3, 3, 1]
    assert out["grape_best"].to_list() == [False, True, False, True]
    assert out["keep"].to_list() == [False, True, False, True]
    assert out.filter(~pl.col("keep"))["drop_reason"].unique().to_list() == ["grape:not_best"]
    assert out["grape_loglik"][1] == max(out["grape_loglik"].head(3))
    assert math.isclose(out["grape_loglik"][1], out["grape_loglik_turns"][1][0])
