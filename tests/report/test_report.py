"""pipeline.inspect on real runs: accounting, tables, charts, examples, what-if vs a real rerun, comparisons."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from pipeline import inspect as R
from pipeline.cli import main as cli_main

PNG = b"\x89PNG\r\n\x1a\n"


def shards(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "shards" / "*.parquet").drop("messages", "tools", strict=False)


# ---------------------------------------------------------------- loading and accounting


def test_load_run_is_lazy_and_complete(full_run: Path) -> None:
    run = R.load_run(full_run)
    assert isinstance(run.shards, pl.LazyFrame) and isinstance(run.selected, pl.LazyFrame)
    assert run.manifest["run_id"] == "full"
    assert run.has("keep", "drop_reason", "selected", "len_response_tokens")
    assert run.stage_names[0] == "length"
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        R.load_run(full_run / "shards")


def test_accounting_balances_and_matches_manifest(full_run: Path) -> None:
    run = R.load_run(full_run)
    acc = R.accounting(run)
    rows = dict(zip(acc["step"], acc["rows"], strict=True))
    c = run.manifest["counts"]
    df = shards(full_run)
    assert rows["read"] == c["read"] == df.height + c["rejected"]
    assert rows["kept"] == int(df["keep"].sum())
    removed = acc.filter(pl.col("kind") == "removed", ~pl.col("step").is_in(["not selected"]))["rows"].sum()
    assert rows["read"] == rows["kept"] + removed  # read = kept + dropped + rejected
    assert rows["selected"] == int((df["keep"] & df["selected"].fill_null(False)).sum()) == c["selected"]
    assert acc["matches_manifest"].drop_nulls().all()
    # every non-selector stage has its step, in run order
    steps = acc["step"].to_list()
    assert steps.index("dropped by length") < steps.index("dropped by heuristics") < steps.index("kept")
    # remaining only shrinks
    assert (acc["remaining"].diff().drop_nulls() <= 0).all()


def test_drop_reasons_cover_every_dropped_row(full_run: Path) -> None:
    run = R.load_run(full_run)
    dr = R.drop_reasons(run)
    df = shards(full_run)
    assert dr["rows"].sum() == df.height - int(df["keep"].sum())
    full = R.drop_reasons(run, level="reason")
    assert full["rows"].sum() == dr["rows"].sum()
    assert set(dr["stage"]) <= set(run.stage_names)
    assert "length" in set(dr["stage"])


def test_sources_and_stages_tables(full_run: Path) -> None:
    run = R.load_run(full_run)
    src = R.sources_table(run)
    df = shards(full_run)
    assert src["read"].sum() == run.manifest["counts"]["read"]
    assert (src["dropped"] + src["kept"] + src["rejected"] == src["read"]).all()
    assert src["selected"].sum() == run.manifest["counts"]["selected"]
    per = df.group_by("source").agg(pl.col("keep").sum().alias("k"))
    assert dict(per.iter_rows()) == dict(src.select("source", "kept").iter_rows())
    st = R.stages_table(run)
    assert st["stage"].to_list() == run.stage_names


def test_score_summary_matches_direct_computation(full_run: Path) -> None:
    run = R.load_run(full_run)
    summ = R.score_summary(run, ["len_response_tokens", "heur_non_alnum_ratio"])
    df = shards(full_run)
    sel = df.filter(pl.col("keep") & pl.col("selected"))
    got = summ.filter(pl.col("column") == "len_response_tokens", pl.col("group") == "selected").row(0, named=True)
    assert got["rows"] == sel.height
    assert got["mean"] == pytest.approx(sel["len_response_tokens"].mean())
    dropped = df.filter(~pl.col("keep"))
    got = summ.filter(pl.col("column") == "heur_non_alnum_ratio", pl.col("group") == "dropped").row(0, named=True)
    assert got["p50"] == pytest.approx(dropped["heur_non_alnum_ratio"].quantile(0.5))
    wide = R.score_summary(run, wide=True)
    assert "mean selected" in wide.columns and "len_response_tokens" in wide["column"].to_list()
    assert "len_tool_tokens" not in wide["column"].to_list()  # constant (no tool turns): left out
    assert "source_row" not in R.score_columns(run, include_lengths=True)


# ---------------------------------------------------------------- charts


def test_charts_are_real_pngs_or_say_what_is_missing(full_run: Path, bare_run: Path) -> None:
    full = {c.name: c for c in R.report_charts(full_run)}
    for name in ("funnel", "scores", "lengths"):
        png = full[name].png
        assert png is not None and png.startswith(PNG) and len(png) > 5000, name
    if R.load_run(full_run).has("cluster"):
        assert full["clusters"].png is not None and full["embedding_map"].png is not None
    bare = {c.name: c for c in R.report_charts(bare_run)}
    assert bare["clusters"].png is None and "cluster" in bare["clusters"].missing
    assert bare["embedding_map"].png is None and "embed" in bare["embedding_map"].missing
    assert bare["scores"].png is None and bare["scores"].missing
    assert bare["lengths"].png is not None  # the length stage ran
    assert "missing" in bare["clusters"].html() and "<img" in bare["lengths"].html()


@pytest.mark.parametrize("fixture", ["full_run", "bare_run"])
def test_lengths_without_length_stage_fall_back_to_messages(request: pytest.FixtureRequest, fixture: str) -> None:
    run = R.load_run(request.getfixturevalue(fixture))
    assert R.plot_lengths(run).png is not None


def test_lengths_fallback_counts_words_of_a_sample_but_shows_true_group_sizes(
        report_dirs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run without the length stage: the chart tokenises at most LENGTH_SAMPLE rows per group,
    says so, and its legend carries every group's row count from the shards."""
    from pipeline.config import load_config
    from pipeline.engine import run as run_pipeline
    from pipeline.inspect import charts

    cfg = load_config({"run": {"name": "nolen"},
                       "sources": [s for s in report_dirs["sources"] if s["name"] == "gsm8k_train"],
                       "stages": [{"stage": "exact_dedup", "key": "instruction"}]})
    run = R.load_run(run_pipeline(cfg, out=report_dirs["root"] / "runs", run_id="nolen").run_dir)
    groups = shards(run.path)["keep"].value_counts()
    kept = int(groups.filter(pl.col("keep"))["count"].sum())
    monkeypatch.setattr(charts, "LENGTH_SAMPLE", 25)
    ch = R.plot_lengths(run)
    assert ch.png is not None and "sample of at most 25 rows per group" in ch.caption
    labels = [t.get_text() for t in ch.fig.legends[0].get_texts()]
    assert any(f"({kept:,})" in lab for lab in labels), labels
    monkeypatch.setattr(charts, "LENGTH_SAMPLE", 10**9)
    assert "sample" not in R.plot_lengths(run).caption


def test_embedding_map_uses_stored_vectors(full_run: Path) -> None:
    run = R.load_run(full_run)
    if not run.embedding_dirs():
        pytest.skip("no embed stage in this checkout")
    m = R.embedding_map(run)
    assert m is not None and {"x", "y", "group", "source", "source_row"} <= set(m.columns)
    ids = shards(full_run).filter(pl.col("keep"))["id"]
    vecs, found, which = run.embeddings(ids.to_list())
    assert found.all(), "every kept row has a stored vector"
    assert vecs.shape[0] == ids.len() and which.endswith("/instruction")
    assert m.filter(pl.col("group") != "dropped").height == pl.DataFrame({"id": ids}).height
    assert m["x"].std() > 0 and m["y"].std() > 0
    if run.has("cluster"):
        ct = R.cluster_table(run)
        assert ct["rows"].sum() == shards(full_run)["cluster"].drop_nulls().len()


# ---------------------------------------------------------------- examples


def test_drop_examples_show_the_duplicated_row(full_run: Path) -> None:
    run = R.load_run(full_run)
    ex = R.drop_examples(run, per_reason=50, max_chars=10_000)
    assert set(ex["rule"]) == set(R.drop_reasons(run)["reason"])
    dups = ex.filter(pl.col("match_kind").str.starts_with("duplicate"))
    if not run.has("dup_of"):
        pytest.skip("no dedup stage in this checkout")
    assert dups.height > 0
    all_rows = shards(full_run)
    names = run.stage_names
    for r in dups.iter_rows(named=True):
        src, row = r["match_ref"].rsplit(":", 1)
        k = all_rows.filter(pl.col("source") == src, pl.col("source_row") == int(row))
        assert k.height == 1, f"keeper {r['match_ref']} of {r['row']} is a row of this run"
        # the keeper was still kept when the duplicate was dropped (a later stage may drop it)
        later = R.stage_of_reason(k["drop_reason"][0], names)
        assert k["keep"][0] or later > R.stage_of_reason(r["reason"], names)
        assert r["match_instruction"] and r["match_response"]
    # exact duplicates (re-cased copies) read the same as their keeper once normalised
    exact = dups.filter(pl.col("reason").str.starts_with("exact"))
    for r in exact.iter_rows(named=True):
        assert r["instruction"].lower() == r["match_instruction"].lower()


def test_drop_examples_show_the_benchmark_item(full_run: Path, real_dir: Path) -> None:
    run = R.load_run(full_run)
    if not run.has("decontam_match"):
        pytest.skip("no decontamination stage in this checkout")
    ex = R.drop_examples(run, per_reason=50, max_chars=10_000).filter(pl.col("match_kind") == "benchmark item")
    assert ex.height > 0
    questions = set(pl.read_ndjson(real_dir / "gsm8k_test.jsonl.gz")["question"].to_list())
    for r in ex.iter_rows(named=True):
        assert r["match_instruction"] in questions
        if r["row"].startswith("gsm8k_test_leaked:"):  # verbatim copies of test items
            assert r["match_instruction"] == r["instruction"]
            assert r["match_ref"] == f"gsm8k_test:{r['row'].split(':')[1]}"
    assert ex.filter(pl.col("row").str.starts_with("gsm8k_test_leaked:")).height > 0


def test_examples_html_escapes_and_pairs(full_run: Path) -> None:
    ex = R.drop_examples(full_run, per_reason=2)
    h = R.examples_html(ex)
    assert h.count('class="pair"') == ex.height
    assert "<script" not in h.lower()


# ---------------------------------------------------------------- what if


def test_what_if_matches_a_real_rerun(full_run: Path, rerun: Path, what_if_case: tuple[str, dict]) -> None:
    stage, params = what_if_case
    wi = R.what_if(full_run, stage, **params)
    assert wi.exact, wi.notes
    real = shards(rerun).select("source", "source_row", "keep", "drop_reason", "selected")
    j = wi.rows.join(real, on=["source", "source_row"], how="full", suffix="_real", coalesce=True)
    assert j.height == wi.rows.height == real.height
    assert (j["keep_new"] == j["keep_real"]).all()
    assert (j["drop_reason_new"].fill_null("") == j["drop_reason_real"].fill_null("")).all()
    assert (j["selected_new"].fill_null(False) == j["selected_real"].fill_null(False)).all()
    # and the summary numbers are the rerun's
    counts = dict(zip(wi.counts["metric"], wi.counts["what_if"], strict=True))
    m = json.loads((rerun / "manifest.json").read_text())["counts"]
    assert counts["kept"] == m["kept"] and counts["dropped"] == m["dropped"] and counts["selected"] == m["selected"]
    for st, n in m["dropped_by_stage"].items():
        name = next(s for s in R.load_run(full_run).stage_names if s.startswith(st))
        assert counts[f"dropped by {name}"] == n
    now = dict(zip(wi.counts["metric"], wi.counts["now"], strict=True))
    assert now["kept"] == R.load_run(full_run).manifest["counts"]["kept"]
    assert wi.transitions["rows"].sum() == wi.rows.height
    assert wi.newly_dropped.height > 0


def test_what_if_on_a_column_drops_the_same_rows(full_run: Path, rerun: Path, what_if_case: tuple[str, dict]) -> None:
    _stage, params = what_if_case
    wi = R.what_if(full_run, "len_response_tokens", params["min_response_tokens"],
                   compute_missing=params.get("compute_missing", False))
    assert wi.exact, wi.notes
    real = shards(rerun)
    j = wi.rows.join(real.select("source", "source_row", "keep", "selected"), on=["source", "source_row"])
    assert (j["keep_new"] == j["keep_right"]).all()
    assert (j["selected_new"].fill_null(False) == j["selected_right"].fill_null(False)).all()
    assert wi.rows["drop_reason_new"].str.starts_with("what_if:len_response_tokens<").any()


def test_what_if_says_what_the_run_never_scored(full_run: Path, what_if_case: tuple[str, dict]) -> None:
    run = R.load_run(full_run)
    if "embed" not in run.stage_names:
        pytest.skip("no embed stage in this checkout")
    _stage, params = what_if_case
    wi = R.what_if(run, "length", min_response_tokens=params["min_response_tokens"])
    assert any(n.startswith("embed:") and "compute_missing=True" in n for n in wi.notes), wi.notes


def test_what_if_without_change_reproduces_the_run(full_run: Path) -> None:
    run = R.load_run(full_run)
    base = run.manifest["stages"][0]["params"]["min_response_tokens"]
    wi = R.what_if(run, "length", min_response_tokens=base)
    assert (wi.counts["change"] == 0).all()
    assert (wi.rows["keep"] == wi.rows["keep_new"]).all()
    assert (wi.rows["selected"].fill_null(False) == wi.rows["selected_new"].fill_null(False)).all()


def test_what_if_selection_budget(full_run: Path) -> None:
    run = R.load_run(full_run)
    sel = [s for s in run.manifest["stages"] if "selected" in s["columns"]][-1]
    wi = R.what_if(run, sel["name"], budget=30)
    assert wi.exact
    counts = dict(zip(wi.counts["metric"], wi.counts["what_if"], strict=True))
    assert counts["selected"] == 30 and counts["kept"] == run.manifest["counts"]["kept"]


def test_what_if_rejects_bad_requests(full_run: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValueError, match="neither a stage"):
        R.what_if(full_run, "no_such_thing", 1)
    with pytest.raises(ValidationError, match="min_response_tokenz"):
        R.what_if(full_run, "length", min_response_tokenz=3)
    with pytest.raises(TypeError, match="threshold"):
        R.what_if(full_run, "len_response_tokens")


# ---------------------------------------------------------------- comparing runs


def test_compare_runs(full_run: Path, rerun: Path, bare_run: Path) -> None:
    cmp = R.compare_runs(full_run, rerun)
    a, b = shards(full_run), shards(rerun)
    sa = set(a.filter(pl.col("keep") & pl.col("selected"))["id"])
    sb = set(b.filter(pl.col("keep") & pl.col("selected"))["id"])
    assert cmp.overlap["both"] == len(sa & sb)
    assert cmp.overlap["only_a"] == len(sa - sb) and cmp.overlap["only_b"] == len(sb - sa)
    assert cmp.overlap["jaccard"] == pytest.approx(len(sa & sb) / len(sa | sb), abs=1e-4)
    assert cmp.added.height == 0 and cmp.removed.height == 0  # same pool
    assert cmp.transitions["rows"].sum() == a["id"].n_unique()
    kept = cmp.counts.filter(pl.col("step") == "kept").row(0, named=True)
    assert kept["a"] == int(a["keep"].sum()) and kept["b"] == int(b["keep"].sum())
    # stored scores are the same for the same rows: no shift per id
    sh = cmp.score_shifts.filter(pl.col("column") == "len_response_tokens").row(0, named=True)
    assert sh["mean_change_same_id"] == 0 and sh["ids_changed"] == 0
    assert sh["selected_mean_a"] != sh["selected_mean_b"]
    # a run over other sources: rows added and removed
    c2 = R.compare_runs(full_run, bare_run)
    ids_bare = set(shards(bare_run)["id"])
    assert c2.added.height == len(ids_bare - set(a["id"]))
    assert c2.removed.height == len(set(a["id"]) - ids_bare)
    for chart in (R.plot_compare_counts(cmp), R.plot_selection_overlap(cmp), R.plot_score_shifts(cmp)):
        assert chart.png is not None and chart.png.startswith(PNG)


# ---------------------------------------------------------------- the report itself


def test_write_report_and_cli(full_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = json.loads((full_run / "manifest.json").read_text())
    assert cli_main(["report", str(full_run)]) == 0
    out = Path(capsys.readouterr().out.strip())
    assert out == full_run / "report.html" and out.is_file()
    m = json.loads((full_run / "manifest.json").read_text())
    assert m["report"] == "report.html"
    assert {k: v for k, v in m.items() if k not in ("report", "figures")} == \
        {k: v for k, v in before.items() if k not in ("report", "figures")}
    figs = [full_run / f for f in m["figures"]]
    assert figs and all(f.read_bytes().startswith(PNG) for f in figs)
    text = out.read_text()
    assert text.count('src="data:image/png;base64,') == len(figs)
    assert "http://" not in text and "https://" not in text  # self-contained
    for h in ("Row accounting", "Drop reasons", "Score distributions", "Length distributions",
              "Examples per drop reason"):
        assert f">{h}</h2>" in text


def test_report_degrades_without_stages(bare_run: Path) -> None:
    path = R.write_report(bare_run)
    text = path.read_text()
    assert "What this run does not have" in text
    assert "no `cluster` column" in text.replace("&#x60;", "`")
    acc = R.accounting(bare_run)
    assert "selected" not in acc["step"].to_list()  # no selector ran


def test_report_when_every_row_is_dropped(report_dirs: dict, tmp_path: Path) -> None:
    from pipeline.config import load_config
    from pipeline.engine import run

    cfg = load_config({"sources": [next(s for s in report_dirs["sources"] if s["name"] == "gsm8k_train")], "stages": [{"stage": "length", "min_response_tokens": 10**6}]})
    res = run(cfg, out=tmp_path, run_id="empty")
    assert res.counts["kept"] == 0
    text = R.write_report(res.run_dir).read_text()
    assert ">Row accounting</h2>" in text
    wi = R.what_if(res.run_dir, "length", min_response_tokens=1)
    assert dict(zip(wi.counts["metric"], wi.counts["what_if"], strict=True))["kept"] > 0


def test_report_of_a_run_without_shards(bare_run: Path, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "still-running"
    d.mkdir()
    shutil.copy(bare_run / "manifest.json", d / "manifest.json")
    text = R.write_report(d).read_text()
    assert "No shards" in text and "differ from the manifest" in text
    assert json.loads((d / "manifest.json").read_text())["report"] == "report.html"
    with pytest.raises(ValueError, match="no shards"):
        R.what_if(d, "length", min_response_tokens=1)
