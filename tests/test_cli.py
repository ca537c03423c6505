"""`curate` end to end on the bundled real sample: run, inspect, formats, and exact accounting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from pipeline.io.shards import list_shards

REPO = Path(__file__).resolve().parents[1]
CURATE = [sys.executable, "-m", "pipeline.cli"]


def _curate(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*CURATE, *args], cwd=REPO, capture_output=True, text=True, check=check, timeout=600)


CHEAP = {"length", "heuristics", "exact_dedup", "minhash_dedup", "decontaminate"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo config's sources and cheap stages (no embedding model), then Long-is-More."""
    out = tmp_path_factory.mktemp("runs")
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw["stages"] = [s for s in raw["stages"] if s["stage"] in CHEAP] + [{"stage": "long_is_more", "budget": 1000}]
    cfg = REPO / "configs" / "_test_cli.yaml"  # beside demo.yaml so its relative paths resolve the same way
    cfg.write_text(yaml.safe_dump(raw))
    try:
        p = _curate("run", str(cfg), "--engine", "local", "--out", str(out), "--run-id", "t1", "--quiet")
    finally:
        cfg.unlink()
    run_dir = Path(p.stdout.strip().splitlines()[-1])
    assert run_dir == out / "t1"
    return run_dir


def test_run_writes_the_layout(demo_run: Path) -> None:
    m = json.loads((demo_run / "manifest.json").read_text())
    assert m["status"] == "complete"
    for d in ("shards", "selected", "rejects"):
        assert list_shards(demo_run / d), d
    assert not (demo_run / "work").exists()
    assert not list(demo_run.rglob(".*.tmp"))
    c = m["counts"]
    assert c["read"] == c["kept"] + c["dropped"] + c["rejected"]
    assert c["balanced"] is True
    # the sample's bad rows are all rejected, with reasons, and nothing else is
    rejects = pl.concat([pl.read_parquet(p) for p in list_shards(demo_run / "rejects")], how="diagonal_relaxed")
    assert rejects.height == c["rejected"] == 9
    assert set(rejects["source"]) == {"bad_rows.jsonl"}
    shards = pl.concat([pl.read_parquet(p) for p in list_shards(demo_run / "shards")], how="diagonal_relaxed")
    assert shards.height == c["kept"] + c["dropped"]
    assert (shards.filter(~pl.col("keep"))["drop_reason"].is_not_null()).all()
    assert shards.filter(pl.col("keep"))["drop_reason"].is_null().all()
    assert sum(c["dropped_by_reason"].values()) == c["dropped"]
    # every declared column is present in every shard, with the declared type
    declared = m["layout"]["shard_columns"]
    assert set(declared) <= set(shards.columns)
    # read counts per source match the input files
    per_source = {s["name"]: s["read"] for s in m["sources"]}
    assert per_source["t0_templated.parquet"] == 2000
    assert per_source["gsm8k_train_planted.jsonl.gz"] == 1020
    sel = pl.concat([pl.read_parquet(p) for p in list_shards(demo_run / "selected")], how="diagonal_relaxed")
    assert sel.height == c["selected"] == 1000
    assert sel["keep"].all() and sel["selected"].all()
    # Long-is-More picked the longest kept responses
    kept = shards.filter(pl.col("keep"))
    threshold = kept["len_response_tokens"].sort(descending=True)[999]
    assert sel["len_response_tokens"].min() >= threshold
    assert m["versions"]["polars"] == pl.__version__
    # the planted GSM8K test items are caught and the cross-source duplicates point at their keepers
    assert c["dropped_by_rule"].get("decontam:gsm8k_test", 0) >= 20
    dups = shards.filter(pl.col("drop_reason") == "exact:dup")
    assert dups.height >= 40 and dups["dup_of"].is_not_null().all()
    assert len(m["config_hash"]) == 16


def test_inspect(demo_run: Path) -> None:
    out = _curate("inspect", str(demo_run)).stdout
    assert "drop reasons:" in out and "len_response_tokens" in out
    m = json.loads((demo_run / "manifest.json").read_text())
    assert f"{m['counts']['read']:,}" in out


def test_formats() -> None:
    out = _curate("formats").stdout
    for f in ("sharegpt", "alpaca", "messages", "prompt_completion", "question_answer"):
        assert f in out
    from pipeline.config import SourceConfig

    # every hf_* key a source takes is documented, and the containers a path's extension selects
    hf_keys = [k for k in SourceConfig.model_fields if k.startswith("hf_")]
    assert hf_keys and all(f"  {k} " in out for k in hf_keys)
    for c in ("csv", "tsv", "hf_disk", "hf_load", "function_call", "reasoning", "user.<name>"):
        assert c in out


def test_bad_config_fails_before_work(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run: {{out: {tmp_path / 'o'}}}\nsources:\n  - path: {REPO}/data/sample/code_alpaca.json\n"
                   "stages:\n  - stage: length\n    max_turn: 3\n")
    p = _curate("run", str(cfg), "--engine", "local", check=False)
    assert p.returncode == 2
    assert "stages[0] (length).max_turn: unknown field" in p.stderr
    assert not (tmp_path / "o").exists()


def test_inspect_on_a_non_run(tmp_path: Path) -> None:
    p = _curate("inspect", str(tmp_path), check=False)
    assert p.returncode == 2 and "not a run directory" in p.stderr


def test_stages_lists_every_stage_and_its_params() -> None:
    from pipeline.stages import available_stages, get_stage

    out = _curate("stages").stdout
    for name in available_stages():
        assert f"  {name} " in out, name
    one = _curate("stages", "kmq").stdout
    for field, info in get_stage("kmq").Params.model_fields.items():
        assert f"    {field}: " in one, field
        assert info.description and info.description[:40] in one, field
    assert "score_order: 'desc' | 'asc' (default 'desc')" in one and "budget: int (required)" in one
    p = _curate("stages", "kmqq", check=False)
    assert p.returncode == 2 and p.stderr.startswith("error: unknown stage 'kmqq' (did you mean kmq?)")


def test_inspect_shows_only_real_scores(demo_run: Path) -> None:
    out = _curate("inspect", str(demo_run)).stdout
    scores = out.split("p95")[1]  # the score table
    assert "len_response_tokens" in scores and "heur_non_alnum_ratio" in scores
    for name in ("exact_hash", "source_row", "dup_of_row", "select_rank"):
        assert name not in scores, name


def test_export_prints_a_summary_and_json_on_request(demo_run: Path, tmp_path: Path) -> None:
    out = _curate("export", str(demo_run), "--out", str(tmp_path / "a.jsonl")).stdout
    assert len(out.splitlines()) <= 8
    assert out.startswith("exported 1,000 rows (messages) from selected/")
    assert f"data: {tmp_path / 'a.jsonl'}" in out
    full = json.loads(_curate("export", str(demo_run), "--out", str(tmp_path / "b.jsonl"), "--json").stdout)
    assert full["exported"] == 1000
    assert "len_response_tokens" in full["score_stats"]
    assert not {"exact_hash", "dup_of_row", "source_row", "select_rank"} & set(full["score_stats"])


def test_prefect_telemetry_is_off_for_the_tools_runs() -> None:
    """Prefect's server heartbeat (which logs 'ERROR ... Failed to send telemetry' offline) is disabled
    by the tool's environment defaults, set before Prefect is imported; a user's own setting wins."""
    import os

    code = ("import flows.curate\n"
            "from prefect.server.services import telemetry\n"
            "from prefect.server.services.perpetual_services import _PERPETUAL_SERVICES\n"
            "[svc] = [s for s in _PERPETUAL_SERVICES if s.function is telemetry.send_telemetry_heartbeat]\n"
            "print(svc.enabled_getter())\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_ANALYTICS_ENABLED"}
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.stdout.strip() == "False", p.stderr[-2000:]
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "true"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.stdout.strip() == "True", p.stderr[-2000:]
