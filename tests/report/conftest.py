"""Real runs on real data for the report, notebook and browser tests (built once per session).

``full_run`` uses every curation stage this checkout has, in the METHODS.md order (length,
heuristics, exact and MinHash dedup, decontamination against GSM8K test, embeddings, SemDeDup,
k-means clusters, kMQ selection; Long-is-More where kMQ is absent), over a small real sample: Code Alpaca,
GSM8K train, ShareGPT, plus a few GSM8K *test* rows (so decontamination has something to find),
repeated Code Alpaca rows (so exact dedup does) and a hand-edited JSONL file with malformed lines
(so ingest rejects some). ``rerun`` is the same config with a stricter
``length.min_response_tokens``: the real rerun the what-if replay must match. ``bare_run`` has
only the length stage and no selector: the report must say what is missing.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.config import load_config
from pipeline.engine import run
from pipeline.stages import available_stages
from pipeline.text import WORD_TOKEN_PATTERN

#: the what-if the tests (and the inspect notebook run) replay, and the rerun that checks it
WHAT_IF_STAGE = "length"
BASE_MIN_RESPONSE_TOKENS = 3
WHAT_IF_PARAMS = {"min_response_tokens": 40}
#: rows the stricter threshold lets through were never embedded by ``full_run``: embed them
WHAT_IF_OPTIONS = {"compute_missing": True}


def _write_sources(real: Path, out: Path) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(real / "code_alpaca_2k.json.gz", "rt") as f:
        alpaca = json.load(f)
    (out / "code_alpaca.json").write_text(json.dumps(alpaca[:260]))
    # the same instructions again, re-cased: exact duplicates after normalisation
    again = [{**r, "instruction": r["instruction"].upper()} for r in alpaca[:20]]
    (out / "code_alpaca_again.json").write_text(json.dumps(again))
    # Same instruction, a response with more word tokens but fewer characters: exact dedup keeps the
    # original (longest response), the stricter length threshold of ``rerun`` drops it, so there the
    # variant survives. A what-if that reused the stored dup_of would get these rows wrong.
    letters = " ".join("abcdefghijklmnopqrstuvwxyz"[i % 26] for i in range(45))
    variant = [{**r, "output": letters} for r in alpaca[:260]
               if 5 <= len(re.findall(WORD_TOKEN_PATTERN, r["output"])) < 40 and len(r["output"]) > len(letters) + 5][:6]
    (out / "code_alpaca_variant.json").write_text(json.dumps(variant))
    pl.read_ndjson(real / "gsm8k_train.jsonl.gz").head(100).write_ndjson(out / "gsm8k_train.jsonl")
    pl.read_ndjson(real / "gsm8k_test.jsonl.gz").head(10).write_ndjson(out / "gsm8k_test_leaked.jsonl")
    pl.read_parquet(real / "sharegpt_17k.parquet").head(40).write_parquet(out / "sharegpt.parquet")
    # real rows next to malformed ones, as a user's hand-edited export has them: the report shows
    # the rejected rows, each with its reason and the input as it came
    good = alpaca[300:302]
    lines = [json.dumps(r) for r in good] + [
        json.dumps({"instruction": "Translate 'good morning' into German."}),  # no response
        '{"instruction": "Summarise the plot of Hamlet", "output": ',  # truncated line
        json.dumps({"instruction": 42, "output": ["not", "a", "string"]}),  # wrong types
    ]
    (out / "hand_edited.jsonl").write_text("\n".join(lines) + "\n")
    return [{"path": str(out / n), "name": n.split(".")[0]} for n in
            ("code_alpaca.json", "code_alpaca_again.json", "code_alpaca_variant.json", "gsm8k_train.jsonl", "gsm8k_test_leaked.jsonl",
             "sharegpt.parquet", "hand_edited.jsonl")]


def full_stages(real: Path, min_response_tokens: int) -> list[dict[str, Any]]:
    have = set(available_stages())
    stages: list[dict[str, Any]] = [
        {"stage": "length", "min_response_tokens": min_response_tokens},
        {"stage": "heuristics"},
    ]
    if "exact_dedup" in have:
        stages.append({"stage": "exact_dedup", "key": "instruction"})
    if "minhash_dedup" in have:
        stages.append({"stage": "minhash_dedup", "threshold": 0.7})
    if "decontaminate" in have:
        stages.append({"stage": "decontaminate", "benchmarks": [str(real / "gsm8k_test.jsonl.gz")], "n": 13})
    if "embed" in have:
        stages.append({"stage": "embed", "view": "instruction"})
    if "semantic_dedup" in have and "embed" in have:
        stages.append({"stage": "semantic_dedup", "eps": 0.05, "n_clusters": 4, "gpu": "cpu"})
    if "cluster" in have and "embed" in have:
        stages.append({"stage": "cluster", "k": 8})
    if "kmq" in have and "embed" in have:
        stages.append({"stage": "kmq", "budget": 120, "k": 8})
    else:
        stages.append({"stage": "long_is_more", "budget": 120})
    return stages


@pytest.fixture(scope="session")
def report_dirs(tmp_path_factory: pytest.TempPathFactory, real_dir: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("report")
    sources = _write_sources(real_dir, root / "data")
    return {"root": root, "sources": sources, "cache": root / "cache", "real": real_dir}


def _config(d: dict[str, Any], name: str, min_tokens: int, cache: Path) -> Any:
    return load_config({
        "run": {"name": name, "shard_rows": 200, "seed": 0, "device": "cpu", "cache_dir": str(cache)},
        "sources": d["sources"],
        "stages": full_stages(d["real"], min_tokens),
    })


@pytest.fixture(scope="session")
def full_run(report_dirs: dict[str, Any]) -> Path:
    res = run(_config(report_dirs, "full", BASE_MIN_RESPONSE_TOKENS, report_dirs["cache"]), out=report_dirs["root"] / "runs",
              run_id="full")
    assert res.counts["balanced"]
    return res.run_dir


@pytest.fixture(scope="session")
def rerun(report_dirs: dict[str, Any], full_run: Path) -> Path:
    """The full config rerun with the what-if's threshold.

    Its embedding cache starts as a copy of ``full_run``'s (so only rows the stricter threshold lets
    through that ``full_run`` never embedded are embedded) and stays separate: what it embeds does
    not leak into ``full_run``'s cache, where the what-if must compute it itself.
    """
    cache = report_dirs["root"] / "cache-rerun"
    if report_dirs["cache"].exists():
        shutil.copytree(report_dirs["cache"], cache, dirs_exist_ok=True)
    res = run(_config(report_dirs, "rerun", WHAT_IF_PARAMS["min_response_tokens"], cache),
              out=report_dirs["root"] / "runs", run_id="rerun")
    return res.run_dir


@pytest.fixture(scope="session")
def bare_run(report_dirs: dict[str, Any]) -> Path:
    cfg = load_config({
        "run": {"name": "bare"},
        "sources": [s for s in report_dirs["sources"] if s["name"] == "gsm8k_train"],
        "stages": [{"stage": "length", "min_response_tokens": 60}],
    })
    return run(cfg, out=report_dirs["root"] / "runs", run_id="bare").run_dir


@pytest.fixture(scope="session")
def what_if_case() -> tuple[str, dict[str, Any]]:
    """The what-if that ``rerun`` performs for real: (stage, params + what_if options)."""
    return WHAT_IF_STAGE, {**WHAT_IF_PARAMS, **WHAT_IF_OPTIONS}
