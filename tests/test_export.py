"""Export of real runs to every trainer format, read back by the project's readers and by `datasets`.

The run: a ShareGPT sample (multi-turn, with the system-prompt conversations of sharegpt_17k), Code
Alpaca and FastChat's dummy conversations, through length + heuristics filters and a top-k selector
(rows with a system prompt first), so that selected != kept and the selection mixes single- and
multi-turn rows.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import orjson
import polars as pl
import pytest
import yaml

from pipeline.config import load_config
from pipeline.engine import run
from pipeline.export import ExportError, ExportSpec, card_provenance, export, run_exports
from pipeline.io.readers import read_table
from pipeline.io.shards import list_shards
from pipeline.schema import message_id

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
FORMATS = ["messages", "sharegpt", "alpaca", "hf"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not REAL.is_dir():
        pytest.fail(f"real data not found at {REAL}")
    base = tmp_path_factory.mktemp("export_run")
    sg = pl.read_parquet(REAL / "sharegpt_17k.parquet").with_row_index("_i")
    has_system = sg["conversations"].list.eval(pl.element().struct.field("role") == "system").list.any()
    sg.filter((pl.col("_i") < 200) | has_system).drop("_i").write_parquet(base / "sharegpt_sample.parquet")
    cfg = load_config({
        "run": {"name": "exp", "out": str(base / "runs"), "shard_rows": 500},
        "sources": [
            {"path": str(base / "sharegpt_sample.parquet")},
            {"path": str(REAL / "code_alpaca_2k.json.gz")},
            {"path": str(REAL / "fastchat_dummy_conversation.json.gz")},
        ],
        "stages": [
            {"stage": "length", "min_response_tokens": 5},
            {"stage": "heuristics"},
            {"stage": "select_top_k", "column": "len_system_tokens", "budget": 400},
        ],
    })
    res = run(cfg, run_id="r1")
    c = res.counts
    assert c["balanced"] and c["selected"] == 400 < c["kept"] and c["dropped"] > 0
    return res.run_dir


def _frame(run_dir: Path, sub: str) -> pl.DataFrame:
    # sources differ in their user columns: shards are concatenated by name
    return pl.concat([pl.read_parquet(p) for p in list_shards(run_dir / sub)], how="diagonal_relaxed")


@pytest.fixture(scope="module")
def selected(run_dir: Path) -> pl.DataFrame:
    return _frame(run_dir, "selected")


@pytest.fixture(scope="module")
def exports(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    base = tmp_path_factory.mktemp("exports")
    return {fmt: export(run_dir, fmt, base / fmt) for fmt in FORMATS}


def _single_exchange(messages: list[dict]) -> bool:
    """Independent statement of what Alpaca can hold exactly: [system (non-empty)?] user assistant."""
    roles = [m["role"] for m in messages]
    if roles == ["user", "assistant"]:
        return True
    return roles == ["system", "user", "assistant"] and messages[0]["content"] != ""


def test_selection_is_a_real_mix(selected: pl.DataFrame) -> None:
    roles = selected["messages"].list.eval(pl.element().struct.field("role"))
    assert roles.list.contains("system").sum() > 10
    assert (selected["messages"].list.len() > 3).sum() > 50
    assert (selected["messages"].list.len() == 2).sum() > 50


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_gives_same_messages_and_id(fmt: str, exports: dict, selected: pl.DataFrame) -> None:
    info = exports[fmt]
    expect = selected
    if fmt == "alpaca":
        ok = [_single_exchange(m) for m in selected["messages"].to_list()]
        expect = selected.filter(pl.Series(ok))
    rows, rejects = read_table(info["data"])
    assert rejects.height == 0, rejects["reason"].to_list()[:3]
    assert rows.height == info["exported"] == expect.height
    assert rows["messages"].to_list() == expect["messages"].to_list()
    assert rows["id"].to_list() == expect["id"].to_list()
    # the exported trace fields come back as user columns (the tool's own names are taken) and name the run's row
    assert rows["user.id"].to_list() == expect["id"].to_list()
    assert rows.select("user.source", "user.source_row").rows() == expect.select("source", "source_row").rows()
    assert all(message_id(m) == i for m, i in zip(rows["messages"].to_list(), rows["id"].to_list(), strict=True))


def test_sharegpt_layout(exports: dict) -> None:
    recs = [orjson.loads(line) for line in Path(exports["sharegpt"]["data"]).read_bytes().splitlines()]
    froms = {t["from"] for r in recs for t in r["conversations"]}
    assert froms <= {"human", "gpt", "system", "observation"} and "system" in froms
    assert all(set(t) == {"from", "value"} for r in recs for t in r["conversations"])
    assert not any("system" in r for r in recs)  # the system prompt is a turn, not a top-level field


def test_alpaca_skips_multiturn_and_lists_every_skipped_row(exports: dict, selected: pl.DataFrame) -> None:
    info = exports["alpaca"]
    msgs = selected["messages"].to_list()
    bad = [i for i, m in enumerate(msgs) if not _single_exchange(m)]
    assert info["rows_in"] == selected.height == info["exported"] + info["skipped"]
    assert info["skipped"] == len(bad) > 0
    n_multi = sum(1 for i in bad if sum(m["role"] == "assistant" for m in msgs[i]) > 1
                  or sum(m["role"] == "user" for m in msgs[i]) > 1)
    assert info["skipped_multiturn"] == info["skipped_by_reason"]["multi_turn"] == n_multi > 0
    listed = pl.read_ndjson(info["skipped_list"])
    want = selected[bad]
    assert listed.select("source", "source_row").rows() == want.select("source", "source_row").rows()
    assert listed["id"].to_list() == want["id"].to_list()
    recs = [orjson.loads(line) for line in Path(info["data"]).read_bytes().splitlines()]
    assert all(r["input"] == "" for r in recs)
    assert sum(r["system"] is not None for r in recs) > 5


def test_messages_export_loads_with_datasets(exports: dict, selected: pl.DataFrame, tmp_path: Path) -> None:
    import datasets

    ds = datasets.load_dataset("json", data_files=exports["messages"]["data"], split="train", cache_dir=str(tmp_path))
    assert ds.num_rows == selected.height
    assert ds[0]["messages"] == [{"role": m["role"], "content": m["content"]} for m in selected["messages"][0].to_list()]
    assert ds["id"] == selected["id"].to_list()


def test_hf_export_loads_from_disk(exports: dict, selected: pl.DataFrame) -> None:
    import datasets

    ds = datasets.load_from_disk(exports["hf"]["data"])
    assert ds.num_rows == selected.height
    assert [[{k: v for k, v in m.items() if v is not None} for m in c] for c in ds["messages"]] == [
        [{k: v for k, v in m.items() if v is not None} for m in c] for c in selected["messages"].to_list()]
    # the sources' own fields (ShareGPT's and FastChat's `id`, renamed at ingest) come back as they were
    assert set(ds.column_names) == {"messages", "tools", "id", "source", "source_row", "user.id"}
    assert (Path(exports["hf"]["data"]) / "README.md").exists()


def test_hf_export_splits_into_several_arrow_files(run_dir: Path, selected: pl.DataFrame, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    import pipeline.export.core as ex  # the module whose writer reads the bound

    monkeypatch.setattr(ex, "HF_SHARD_BYTES", 100_000)
    info = export(run_dir, "hf", tmp_path / "hf", with_scores=True, batch_rows=64)
    assert len(info["data_files"]) > 3
    assert sorted(p.name for p in Path(info["data"]).glob("*.arrow")) == info["data_files"]
    ds = datasets.load_from_disk(info["data"])
    assert ds["id"] == selected["id"].to_list()
    assert ds["len_response_tokens"] == selected["len_response_tokens"].to_list()
    assert ds["select_rank"] == selected["select_rank"].to_list()
    assert set(ds.features["messages"].feature) == {"role", "content", "reasoning_content", "tool_calls",
                                                    "tool_call_id", "name"}
    rows, _ = read_table(info["data"])
    assert rows["messages"].to_list() == selected["messages"].to_list()


def _table_rows(card: str, header: str) -> list[list[str]]:
    """Rows of the first Markdown table whose header line starts with ``header``."""
    lines = card.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header))
    out = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        out.append([c.strip() for c in line.strip("|").split("|")])
    return out


def _n(s: str) -> int:
    return int(s.replace(",", ""))


@pytest.mark.parametrize("fmt", ["messages", "alpaca", "hf"])
def test_card_numbers_equal_the_manifest(fmt: str, exports: dict, run_dir: Path) -> None:
    m = json.loads((run_dir / "manifest.json").read_text())
    info = exports[fmt]
    card = Path(info["card"]).read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert "text-generation" in front["task_categories"]
    if fmt != "hf":
        assert front["configs"][0]["data_files"][0]["path"] == Path(info["data"]).name
    c = m["counts"]
    (acc,) = _table_rows(card, "| read | rejected")
    assert [_n(x) for x in acc] == [c["read"], c["rejected"], c["kept"], c["dropped"], c["selected"]]
    src = _table_rows(card, "| source | path")
    assert [(r[0], _n(r[3]), _n(r[4]), _n(r[5])) for r in src] == [
        (s["name"], s["read"], s["rejected"], s["rows"]) for s in m["sources"]]
    stg = _table_rows(card, "| # | stage")
    assert [(r[1], _n(r[3])) for r in stg] == [(s["name"], s["dropped"]) for s in m["stages"]]
    for s, r in zip(m["stages"], stg, strict=True):  # every drop rule of the stage, with its count
        for rule, n in c["dropped_by_rule"].items():
            if rule.startswith(s["name"] + ":"):
                assert f"`{rule}` ({n:,})" in r[4]
    assert "| select_top_k | 400 | rows |" in card
    assert "not** checked against any benchmark" in card
    assert m["config_hash"] in card
    p = card_provenance(card)
    assert p["config_hash"] == m["config_hash"] and p["run_id"] == m["run_id"]
    assert p["counts"] == {k: c[k] for k in ("read", "rejected", "kept", "dropped", "selected", "balanced")}
    assert p["dropped_by_rule"] == c["dropped_by_rule"]
    assert [s["params"] for s in p["stages"]] == [s["params"] for s in m["stages"]]
    assert p["export"]["exported"] == info["exported"]
    # score distributions are those of the exported rows
    rows = _table_rows(card, "| column | count")
    stats = {r[0]: r for r in rows}
    assert _n(stats["len_response_tokens"][1]) == info["exported"]


def test_card_score_quantiles_match_polars(exports: dict, selected: pl.DataFrame) -> None:
    st = exports["messages"]["score_stats"]["len_response_tokens"]
    x = selected["len_response_tokens"].cast(pl.Float64)
    assert st["p50"] == pytest.approx(x.quantile(0.5, "linear"))
    assert st["max"] == x.max() and st["count"] == selected.height


def test_where_filters_all_scored_rows_with_scores(run_dir: Path, tmp_path: Path) -> None:
    shards = _frame(run_dir, "shards")
    info = export(run_dir, "messages", tmp_path / "long.jsonl", where="len_response_tokens > 150 AND keep",
                  with_scores=True)
    want = shards.filter((pl.col("len_response_tokens") > 150) & pl.col("keep"))
    assert want["selected"].fill_null(False).sum() < want.height  # reaches beyond the selection
    got = pl.read_ndjson(info["data"])
    assert info["exported"] == got.height == want.height
    assert got["id"].to_list() == want["id"].to_list()
    assert got["len_response_tokens"].to_list() == want["len_response_tokens"].to_list()
    assert {"keep", "drop_reason", "selected", "select_rank", "heur_rep_ngram_ratio"} <= set(got.columns)
    assert (tmp_path / "README.md").exists()
    assert "where `len_response_tokens > 150 AND keep`" in (tmp_path / "README.md").read_text()


def test_where_can_export_dropped_rows_and_counts_them(run_dir: Path, tmp_path: Path) -> None:
    m = json.loads((run_dir / "manifest.json").read_text())
    info = export(run_dir, "sharegpt", tmp_path / "dropped", where="NOT keep", with_scores=True)
    assert info["exported"] == info["rows_in_dropped"] == m["counts"]["dropped"]
    got = pl.read_ndjson(info["data"])
    assert dict(got["drop_reason"].value_counts().iter_rows()) == m["counts"]["dropped_by_reason"]


def test_bad_where_names_the_problem(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown column.*ifd.*columns: id"):
        export(run_dir, "messages", tmp_path / "x", where="ifd < 0.9")
    with pytest.raises(ExportError, match="not a valid Polars SQL"):
        export(run_dir, "messages", tmp_path / "x", where="len_response_tokens <<>> 3")
    with pytest.raises(ExportError, match="allowed: messages, sharegpt, alpaca, hf"):
        export(run_dir, "csv", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_batching_does_not_change_the_output(run_dir: Path, exports: dict, tmp_path: Path) -> None:
    for fmt in ("messages", "alpaca"):
        info = export(run_dir, fmt, tmp_path / fmt, batch_rows=37)
        assert Path(info["data"]).read_bytes() == Path(exports[fmt]["data"]).read_bytes()
        assert info["sha256"] == exports[fmt]["sha256"]


def test_empty_result_is_still_loadable(run_dir: Path, tmp_path: Path) -> None:
    import datasets

    info = export(run_dir, "hf", tmp_path / "none", where="len_response_tokens < 0")
    assert info["exported"] == 0 and datasets.load_from_disk(info["data"]).num_rows == 0
    info = export(run_dir, "messages", tmp_path / "none.jsonl", where="len_response_tokens < 0")
    assert Path(info["data"]).read_bytes() == b""


def test_reexport_replaces_and_never_clobbers_a_foreign_readme(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    export(run_dir, "hf", out, where="len_turns = 1")
    info = export(run_dir, "hf", out)
    import datasets

    assert datasets.load_from_disk(str(out)).num_rows == info["exported"] == 400
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "README.md").write_text("# my project\n")
    with pytest.raises(ExportError, match="not written by sft-curate"):
        export(run_dir, "messages", foreign)
    assert (foreign / "README.md").read_text() == "# my project\n"
    assert not (foreign / "train.jsonl").exists()
    theirs = tmp_path / "their_dataset"
    datasets.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(theirs))
    with pytest.raises(ExportError, match="did not export"):
        export(run_dir, "hf", theirs)
    assert datasets.load_from_disk(str(theirs))["text"] == ["a"]
    assert not list(tmp_path.glob(".*")), "temp files left behind"


def test_run_exports_from_config_entries(run_dir: Path) -> None:
    infos = run_exports(run_dir, [{"format": "alpaca", "out": "export/alpaca"},
                                  ExportSpec(format="messages", out="export/scored.jsonl", with_scores=True)])
    assert Path(infos[0]["data"]) == run_dir / "export" / "alpaca" / "train.jsonl"
    assert Path(infos[1]["data"]).exists() and infos[1]["with_scores"]
    with pytest.raises(ValueError, match="extra"):
        ExportSpec.model_validate({"format": "messages", "out": "x", "budget": 3})
    with pytest.raises(ValueError, match="(?s)where.*not a valid Polars SQL"):
        ExportSpec.model_validate({"format": "messages", "out": "x", "where": "ifd <<>> 1"})


def test_cli_export(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pipeline.cli import main

    assert main(["export", str(run_dir), "--format", "sharegpt", "--out", str(tmp_path / "sg"), "--with-scores",
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["exported"] == 400 and "len_response_tokens" in info["columns"]
    assert re.fullmatch(r"[0-9a-f]{64}", info["sha256"])


def test_card_names_decontamination_and_attributes_prefixed_drops(tmp_path: Path) -> None:
    """Stages whose drop reasons use a short prefix (decontam:, exact:) still get their drops in the card."""
    bench = str(REAL / "gsm8k_test.jsonl.gz")
    cfg = load_config({
        "run": {"name": "dc", "out": str(tmp_path / "runs")},
        "sources": [{"path": bench, "name": "leaked"}, {"path": str(REAL / "code_alpaca_2k.json.gz")},
                    {"path": str(REAL / "code_alpaca_2k.json.gz"), "name": "again"}],
        "stages": [{"stage": "exact_dedup"}, {"stage": "decontaminate", "benchmarks": [bench]},
                   {"stage": "select_random", "budget": 100}],
    })
    res = run(cfg, run_id="r")
    rules = res.counts["dropped_by_rule"]
    info = export(res.run_dir, "messages", tmp_path / "out")
    card = Path(info["card"]).read_text()
    stg = {r[1]: r for r in _table_rows(card, "| # | stage")}
    by_prefix = {p: sum(n for r, n in rules.items() if r.split(":")[0] == p) for p in ("exact", "decontam")}
    assert by_prefix["exact"] > 0 and by_prefix["decontam"] > 0
    assert _n(stg["exact_dedup"][3]) == by_prefix["exact"]
    assert _n(stg["decontaminate"][3]) == by_prefix["decontam"]
    assert sum(_n(r[3]) for r in stg.values()) == res.counts["dropped"]
    dec = card[card.index("## Decontamination"):card.index("## Models")]
    rel_bench = os.path.relpath(bench, tmp_path / "out")  # paths in a card are relative to it
    assert rel_bench in dec and f"dropped {by_prefix['decontam']:,} rows" in dec
    for rule, n in rules.items():
        if rule.startswith("decontam:"):
            assert f"| `{rule}` | {n:,} |" in dec
    assert "Drops whose reason names no stage" not in card


def test_card_escapes_row_html_and_has_no_absolute_paths(tmp_path: Path) -> None:
    """Row text reaches the card through reject reasons; the Hub renders raw HTML, so it is escaped.
    Local folders (sources, run directory, stage paths) appear relative to the card."""
    evil = "<img src=x onerror=alert(1)>"
    rows = [{"conversations": [{"from": evil, "value": "hi"}, {"from": "gpt", "value": "yo"}]}]
    rows += [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]} for i in range(5)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run(load_config({"run": {"name": "h", "out": str(tmp_path / "runs")},
                           "sources": [{"path": str(tmp_path / "in" / "x.jsonl")}],
                           "stages": [{"stage": "decontaminate", "benchmarks": [str(REAL / "gsm8k_test.jsonl.gz")]}]}),
              run_id="r")
    info = export(res.run_dir, "messages", tmp_path / "out")
    card = Path(info["card"]).read_text()
    assert "unknown role" in card and evil not in card
    assert html.escape(evil, quote=False) in card
    for local in (str(tmp_path), str(REAL)):  # only as the tail of a relative path (../../work/...)
        assert re.search(r"(?<!\.\.)" + re.escape(local), card) is None, local
    assert "../runs/" in card and "../in/x.jsonl" in card
