"""The report's tables and examples beyond accounting: stage parameters as rows, scores per source,
selected vs not selected with rank/cluster/score, and rows rejected at ingest (on a real run)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from pipeline import inspect as R


def shards(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "shards" / "*.parquet").drop("messages", "tools", strict=False)


def test_params_table_is_every_param_flattened(full_run: Path) -> None:
    run = R.load_run(full_run)
    pt = R.params_table(run)
    for i, s in enumerate(run.manifest["stages"], start=1):
        mine = pt.filter(pl.col("step") == i)
        assert set(mine["stage"]) <= {s["name"]}
        for k, v in s["params"].items():
            if v is None:
                assert k not in mine["parameter"].to_list()
            elif isinstance(v, bool | int | float | str):
                got = mine.filter(pl.col("parameter") == k)["value"].to_list()
                assert got == [str(v).lower() if isinstance(v, bool) else (f"{v:g}" if isinstance(v, float) else str(v))], k
    if "decontaminate" in run.stage_names:
        # a list of benchmark objects becomes one row per field, not JSON
        b = pt.filter(pl.col("stage") == "decontaminate", pl.col("parameter").str.starts_with("benchmarks"))
        assert dict(b.select("parameter", "value").iter_rows())["benchmarks[0].path"].endswith("gsm8k_test.jsonl.gz")
        assert "benchmarks[0].name" not in b["parameter"].to_list()  # unset: left out
    assert not pt["value"].str.starts_with("{").any()
    full = R.params_table(run, include_defaults=True)
    assert full.height >= pt.height and "–" in full["value"].to_list()
    st = R.settings_table(run)
    assert dict(zip(st["setting"], st["value"], strict=True))["shard_rows"] == "200"


def test_score_by_source_matches_direct_computation(full_run: Path) -> None:
    run = R.load_run(full_run)
    t = R.score_by_source(run, ["len_response_tokens"])
    df = shards(full_run)
    assert set(t["source"]) == set(df["source"])
    for r in t.iter_rows(named=True):
        sub = df.filter(pl.col("source") == r["source"])
        sel = sub.filter(pl.col("keep") & pl.col("selected").fill_null(False))
        assert r["rows"] == sub.height
        assert r["mean"] == pytest.approx(sub["len_response_tokens"].mean())
        assert r["p50"] == pytest.approx(sub["len_response_tokens"].cast(pl.Float64).quantile(0.5))
        assert r["selected"] == sel.height
        if sel.height:
            assert r["mean_selected"] == pytest.approx(sel["len_response_tokens"].mean())
    cols = R.score_columns(run, include_lengths=True)
    const = {c for c in cols if df[c].drop_nulls().n_unique() <= 1}
    assert const, "a constant column (e.g. no tool turns) to leave out"
    assert set(R.score_by_source(run, drop_constant=True)["column"]) == set(cols) - const - {
        c for c in cols if df[c].null_count() == df.height}
    ch = R.plot_scores_by_source(run)
    assert ch.png is not None and ch.png.startswith(b"\x89PNG")
    assert R.plot_scores_by_source(R.load_run(full_run), columns=[]).missing


def test_scores_by_source_with_one_source(bare_run: Path) -> None:
    ch = R.plot_scores_by_source(bare_run)
    assert ch.png is None and "one source only (gsm8k_train)" in ch.missing
    t = R.score_by_source(bare_run)
    assert set(t["source"]) == {"gsm8k_train"} and "len_response_tokens" in t["column"].to_list()


def test_selection_examples_are_true_to_the_shards(full_run: Path) -> None:
    run = R.load_run(full_run)
    ex = R.selection_examples(run, pairs=3, per_kind=3)
    df = shards(full_run)
    assert {"selected", "not selected"} <= set(ex["outcome"])
    scores = R.selector_score_columns(run)
    by_key = {f"{s}:{r}": d for s, r, d in zip(df["source"], df["source_row"], df.to_dicts(), strict=True)}
    for r in ex.iter_rows(named=True):
        d = by_key[r["row"]]
        assert d["keep"], "only kept rows are selection examples"
        assert bool(d["selected"]) == (r["outcome"] == "selected")
        assert r["rank"] == d["select_rank"]
        if "cluster" in d:
            assert r["cluster"] == d["cluster"]
        for c in scores:
            assert f"{c}=" in (r["score"] or "")
        assert r["instruction"] and r["why"]
        assert ("selected by" in r["why"]) == (r["outcome"] == "selected")
    # each pair: the last selected row of a cluster beside a left-out row of the same cluster
    pairs = ex.filter(pl.col("pair").is_not_null())
    assert pairs.height > 0
    for _, g in pairs.group_by("pair"):
        assert sorted(g["outcome"]) == ["not selected", "selected"]
        assert g["cluster"].n_unique() == 1
        cl, rank = g["cluster"][0], g.filter(pl.col("outcome") == "selected")["rank"][0]
        same = df.filter(pl.col("keep") & pl.col("selected").fill_null(False)
                         & (pl.col("cluster").eq_missing(cl) if cl is not None and "cluster" in df.columns else pl.lit(True)))
        if "cluster" in df.columns:
            assert rank == same["select_rank"].max()
    html = R.selection_html(ex)
    assert html.count('class="pair"') == pairs["pair"].n_unique()
    assert "rank" in html


def test_selection_examples_without_selector(bare_run: Path) -> None:
    ex = R.selection_examples(bare_run)
    assert ex.is_empty() and "No selector" in R.selection_html(ex)


def test_reject_examples_show_the_input(full_run: Path) -> None:
    run = R.load_run(full_run)
    rej = pl.read_parquet(full_run / "rejects" / "*.parquet")
    ex = R.reject_examples(run)
    assert ex.height == rej.height > 0  # a few rejects: every one is shown
    assert set(ex["source"]) == {"hand_edited"}
    j = ex.join(rej, on=["source", "source_row"], suffix="_r")
    assert (j["reason"] == j["reason_r"]).all() and (j["raw"] == j["raw_r"]).all()
    assert any("Summarise the plot of Hamlet" in r for r in ex["raw"])
    assert ex["rows_with_reason"].sum() == rej.height
    html = R.reject_examples_html(ex)
    assert html.count('class="card rej"') == ex.height and "&quot;instruction&quot;" in html
    assert R.reject_examples(run, per_reason=1, max_reasons=1).height == 1
    assert json.loads((full_run / "manifest.json").read_text())["counts"]["rejected"] == rej.height
