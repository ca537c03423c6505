"""pipeline.inspect.run: where a run's sidecars are (manifest layout first), and the declared stage
contract (manifest ``stages[i]["contract"]``) preferred over guesses, on copies of a real run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline import inspect as R
from pipeline.inspect.whatif import _declared_global_writes, _global_writes


def copy_run(src: Path, dst: Path, edit: Any) -> Path:
    """A copy of run ``src`` (shards, selected, rejects) whose manifest ``edit`` changes in place."""
    dst.mkdir(parents=True)
    for d in ("shards", "selected", "rejects"):
        if (src / d).is_dir():
            shutil.copytree(src / d, dst / d)
    m = json.loads((src / "manifest.json").read_text())
    edit(m)
    (dst / "manifest.json").write_text(json.dumps(m, indent=2))
    return dst


def embeddings_root(run_dir: Path) -> Path:
    roots = R.load_run(run_dir).sidecar_roots()
    found = [r for r in roots if (r / "embeddings").is_dir()]
    if not found:
        pytest.skip("no embed stage in this checkout")
    return found[0]


def without_cache_dir(m: dict[str, Any]) -> None:
    """A manifest that records no sidecar location at all (as before the engine recorded its layout)."""
    m["config"]["run"].pop("cache_dir", None)
    m.get("layout", {}).pop("sidecars", None)
    m.get("cache", {}).pop("work_dir", None)


def test_sidecars_from_the_manifest_layout(full_run: Path, tmp_path: Path) -> None:
    root = embeddings_root(full_run)
    bare = R.load_run(copy_run(full_run, tmp_path / "none", without_cache_dir))
    assert bare.embedding_dirs() == []  # nothing recorded, nothing at <run>/sidecars
    assert R.plot_embedding_map(bare).missing

    def absolute(m: dict[str, Any]) -> None:
        without_cache_dir(m)
        m["layout"]["sidecars"] = str(root)

    run = R.load_run(copy_run(full_run, tmp_path / "abs", absolute))
    assert run.sidecar_roots()[0] == root and run.embedding_dirs()
    assert R.plot_embedding_map(run).png is not None

    # relative to the run directory
    rel = tmp_path / "rel"

    def relative(m: dict[str, Any]) -> None:
        without_cache_dir(m)
        m["layout"]["sidecars"] = "store/sidecars"

    copy_run(full_run, rel, relative)
    (rel / "store").mkdir()
    (rel / "store" / "sidecars").symlink_to(root, target_is_directory=True)
    run = R.load_run(rel)
    assert run.sidecar_roots()[0] == rel / "store" / "sidecars" and run.embedding_dirs()


def test_sidecars_of_a_prefect_run_without_layout(full_run: Path, tmp_path: Path) -> None:
    """Runs written before the layout recorded sidecars: the Prefect engine's ``<work store>/sidecars``."""
    root = embeddings_root(full_run)
    work = tmp_path / "work"
    work.mkdir()
    (work / "sidecars").symlink_to(root, target_is_directory=True)

    def prefect(m: dict[str, Any]) -> None:
        without_cache_dir(m)
        m["cache"] = {"work_dir": str(work)}

    run = R.load_run(copy_run(full_run, tmp_path / "prefect", prefect))
    assert run.embedding_dirs() and R.plot_embedding_map(run).png is not None


def test_decontamination_count_matches_the_manifest(full_run: Path) -> None:
    """The manifest counts drops by reason prefix (``decontam``); every stage's row is checked against it."""
    acc = R.accounting(full_run)
    by_stage = acc.filter(pl.col("step").str.starts_with("dropped by "))
    assert by_stage["matches_manifest"].null_count() == 0
    assert by_stage["matches_manifest"].all()
    if "decontaminate" in R.load_run(full_run).stage_names:
        row = acc.filter(pl.col("step") == "dropped by decontaminate").row(0, named=True)
        assert row["rows"] > 0 and row["matches_manifest"] is True


def contracts_from_probe(run_dir: Path) -> list[dict[str, Any]]:
    """Contracts as the stages would declare them, built from the fallback's own probe (so the test
    checks that the declared path gives what the probe gives)."""
    from pipeline.stages import get_stage
    from pipeline.stages.base import RunContext

    run = R.load_run(run_dir)
    df = run.frame(with_group=False)
    out = []
    for s in run.manifest["stages"]:
        st = get_stage(s["name"])(s.get("params") or {})
        glob = (_global_writes(st, df, RunContext(run_dir=run.path, seed=0, device="cpu")) or set()) \
            if st.scope == "global" else set()
        writes = {c: {"type": t, "role": "internal" if c.endswith("_hash") else "score",
                      "phase": "global" if c in glob else "row"} for c, t in s["columns"].items()}
        out.append({"requires": [], "writes": writes, "reason_prefix": None, "is_selector": "selected" in s["columns"]})
    return out


def test_what_if_reads_global_writes_from_the_contract(full_run: Path, tmp_path: Path) -> None:
    contracts = contracts_from_probe(full_run)

    def declare(m: dict[str, Any]) -> None:
        for s, c in zip(m["stages"], contracts, strict=True):
            s["contract"] = c

    declared = R.load_run(copy_run(full_run, tmp_path / "declared", declare))
    for i, c in enumerate(contracts):
        assert _declared_global_writes(declared.contract(i)) == {k for k, w in c["writes"].items() if w["phase"] == "global"}
    assert _declared_global_writes(None) is None
    base = R.load_run(full_run).stage_names[0]
    params = {"min_response_tokens": R.load_run(full_run).manifest["stages"][0]["params"]["min_response_tokens"] + 5}
    a = R.what_if(full_run, base, **params)
    b = R.what_if(declared, base, **params)
    assert a.counts.equals(b.counts)
    assert (a.rows["keep_new"] == b.rows["keep_new"]).all()
    assert (a.rows["selected_new"].fill_null(False) == b.rows["selected_new"].fill_null(False)).all()


def test_contract_roles_and_reason_prefix(full_run: Path, tmp_path: Path) -> None:
    run = R.load_run(full_run)
    names = run.stage_names
    length = names.index("length")

    def declare(m: dict[str, Any]) -> None:
        s = m["stages"][length]
        s["contract"] = {"requires": ["messages"], "reason_prefix": "size",
                         "writes": {c: {"type": t, "phase": "row",
                                        "role": "internal" if c == "len_response_chars" else "score"}
                                    for c, t in s["columns"].items()},
                         "is_selector": False}
        # the stage now writes ``size:...`` reasons: rewrite the manifest's counts as such a run would
        d = m["counts"]["dropped_by_stage"]
        d["size"] = d.pop("length")

    copy = copy_run(full_run, tmp_path / "roles", declare)
    for p in sorted((copy / "shards").glob("*.parquet")):
        df = pl.read_parquet(p)
        df.with_columns(pl.col("drop_reason").str.replace(r"^length:", "size:")).write_parquet(p)
    c = R.load_run(copy)
    assert c.reason_prefixes[length] == "size"
    assert R.stage_of_reason("size:response_tokens<3", names, c.reason_prefixes) == length
    assert R.stage_of_reason("size:response_tokens<3", names) is None
    assert "len_response_chars" not in R.score_columns(c, include_lengths=True)
    assert "len_response_tokens" in R.score_columns(c, include_lengths=True)
    acc = dict(zip(R.accounting(c)["step"], R.accounting(c)["rows"], strict=True))
    acc0 = dict(zip(R.accounting(run)["step"], R.accounting(run)["rows"], strict=True))
    assert acc == acc0
    assert R.accounting(c)["matches_manifest"].drop_nulls().all()
    dr = R.drop_reasons(c)
    assert set(dr.filter(pl.col("reason").str.starts_with("size:"))["stage"]) == {"length"}
