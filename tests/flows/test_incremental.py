"""Incremental nightly curation: only new files, deduplicated against earlier nights, re-selected."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from flows.curate import run_flow
from pipeline.config import load_config
from pipeline.engine import run

BUDGET = 300


def _gsm8k(real: Path) -> list[dict]:
    with gzip.open(real / "gsm8k_train.jsonl.gz", "rt") as f:
        return [json.loads(line) for _, line in zip(range(1000), f, strict=False)]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _night(engine: str, cfg: Path, run_id: str) -> dict:
    """One night through the Prefect flow (what the nightly deployment runs) or the local engine."""
    if engine == "prefect":
        return run_flow(str(cfg), run_id=run_id, quiet=True)
    res = run(load_config(cfg), run_id=run_id, finish=True)
    return {"run_dir": str(res.run_dir), "manifest": res.manifest}


@pytest.mark.parametrize("engine", ["prefect", "local"])
def test_two_nights_with_cross_night_duplicates(engine, tmp_path, real, write_config, prefect_api) -> None:
    """The same nights on either engine (one driver): new files only, deduplicated against earlier
    nights, re-selected over the union; each night writes its report and its export."""
    rows = _gsm8k(real)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = write_config(tmp_path / "nightly.yaml", {
        "run": {"name": "nightly", "out": str(tmp_path / "runs"), "shard_rows": 250},
        "stages": [{"stage": "length", "min_response_tokens": 5}, {"stage": "exact_dedup", "key": "conversation"},
                   {"stage": "long_is_more", "budget": BUDGET}],
        "flow": {"work_dir": str(tmp_path / "work"), "incremental": {"input_dir": str(inbox), "pattern": "*.jsonl"}},
        "export": [{"format": "messages", "out": "export/messages"}],
    })

    # night 1: rows 0-599
    _write_jsonl(inbox / "2024-01-01.jsonl", rows[:600])
    n1 = _night(engine, cfg, "night1")
    m1 = n1["manifest"]
    assert m1["incremental"]["night"] == 1 and m1["incremental"]["new_files"] == ["2024-01-01.jsonl"]
    assert m1["counts"]["read"] == 600 and m1["counts"]["balanced"]
    sel1 = pl.read_parquet(Path(n1["run_dir"]) / "selected")
    assert sel1.height == BUDGET and m1["incremental"]["added"] == BUDGET

    # night 2: a new file with rows 400-999, i.e. 200 rows that night 1 already kept
    _write_jsonl(inbox / "2024-01-02.jsonl", rows[400:1000])
    (inbox / ".2024-01-03.jsonl.partial").write_text("{not yet")  # an upload in progress is not an input
    n2 = _night(engine, cfg, "night2")
    m2, run2 = n2["manifest"], Path(n2["run_dir"])
    inc = m2["incremental"]
    assert inc["new_files"] == ["2024-01-02.jsonl"] and inc["already_processed"] == ["2024-01-01.jsonl"]
    assert m2["counts"]["read"] == 600, "night 1's file is not read again"
    shards = pl.read_parquet(run2 / "shards")
    assert set(shards["source"]) == {"2024-01-02.jsonl"}
    dups = shards.filter(pl.col("drop_reason") == "exact:dup")
    assert dups["source_row"].sort().to_list() == list(range(200)), "exactly the rows night 1 already had"
    assert (dups["dup_of_source"] == "2024-01-01.jsonl").all()
    assert (dups["dup_of_row"] == dups["source_row"] + 400).all()
    assert m2["counts"]["dropped_by_rule"]["exact:dup"] == 200 and m2["counts"]["balanced"]
    assert m2["stages"][1]["summary"]["duplicates_of_earlier_runs"] == 200

    # re-selection over the union of both nights' kept rows, with the diff against night 1
    sel2 = pl.read_parquet(run2 / "selected")
    assert sel2.height == BUDGET and sel2["id"].n_unique() == BUDGET
    assert set(sel2["source"]) == {"2024-01-01.jsonl", "2024-01-02.jsonl"}
    assert inc["pool_rows"] == 1200 and inc["pool_kept"] == 1000
    pool_kept = pl.concat([pl.read_parquet(run2.parent / "nightly.incremental" / "pool" / n) for n in ("night1", "night2")], how="diagonal_relaxed")
    longest = pool_kept.filter("keep").sort(["len_response_tokens"], descending=True)["len_response_tokens"][BUDGET - 1]
    assert sel2["len_response_tokens"].min() == longest, "the budget is applied over the union"
    added = pl.read_parquet(run2 / "diff" / "added.parquet")
    removed = pl.read_parquet(run2 / "diff" / "removed.parquet")
    assert set(sel2["id"]) == (set(sel1["id"]) - set(removed["id"])) | set(added["id"])
    assert inc["added"] == added.height == removed.height > 0
    assert (run2 / "state" / "exact_dedup" / "meta.json").exists()

    # night 3: nothing new; the selection stands and the diff is empty
    n3 = _night(engine, cfg, "night3")
    m3 = n3["manifest"]
    assert m3["counts"]["read"] == 0 and m3["incremental"]["new_files"] == []
    assert m3["incremental"]["added"] == m3["incremental"]["removed"] == 0

    # every night wrote its report and its export of that night's selection
    for n, sel in ((n1, sel1), (n2, sel2)):
        d = Path(n["run_dir"])
        assert (d / "report.html").stat().st_size > 10_000
        exported = (d / "export" / "messages").rglob("*.jsonl")
        assert sum(len(p.read_text().splitlines()) for p in exported) == sel.height
        assert not json.loads((d / "manifest.json").read_text())["finish"]["errors"]
    sel3 = pl.read_parquet(Path(n3["run_dir"]) / "selected")
    assert set(sel3["id"]) == set(sel2["id"])
    ledger = json.loads((tmp_path / "runs" / "nightly.incremental" / "current.json").read_text())
    assert ledger["night"] == 3 and sorted(f["path"] for f in ledger["files"].values()) == \
        ["2024-01-01.jsonl", "2024-01-02.jsonl"]
