"""Downstream benchmark: does the curated subset train a better model than random at the same budget?

A controlled pool from the real data in ../shared/data/real, with known defects mixed in:

* real instruction data: Code Alpaca, GPTeacher codegen and roleplay, GSM8K train solutions;
* GSM8K model solutions (GPT-3 6B/175B, graded): correct and incorrect answers to GSM8K test
  questions that are *not* evaluation items (decontamination against GSM8K test should drop them);
* swapped responses: Code Alpaca instructions paired with another row's response;
* a flood of near-duplicates: one Code Alpaca row in many lightly edited copies;
* planted contamination: the first ``--planted`` GSM8K test evaluation items (question + reference
  solution) verbatim in the pool.

It is curated by a realistic config (length rules, heuristics, exact and MinHash dedup,
decontamination against GSM8K test and HumanEval, kMQ diversity selection over MiniLM embeddings at
the budget) and evaluated with :func:`pipeline.evaluate.evaluate`: the kMQ selection, seeded random
subsets of the kept rows (``--baselines`` adds ``longest`` and per-seed ``uncurated`` draws), and a
controlled contamination pair:
``uncurated_s0`` (a seeded draw of the uncurated pool without the planted rows, as a file arm) against ``contaminated`` (the same rows
with ``--contaminate`` of them replaced by planted test items), whose GSM8K-test NLL difference
(all evaluation items, and the planted ones alone) is what the contamination buys.

Run: ``PYTHONPATH=. python benchmarks/downstream.py [--budget 16 --steps 4 ...]``; it prints the
evaluation table, the contamination figures and the wall time, and writes ``evaluation.json`` into
its run directory (``--out``, default a temp dir).
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def _load_json_gz(name: str) -> list[dict]:
    with gzip.open(REAL / name, "rt") as f:
        return json.load(f) if name.endswith(".json.gz") else [json.loads(x) for x in f]


def build_pool(d: Path, n_eval: int, planted: int, seed: int = 0) -> dict[str, Path]:
    """Write the pool's source files into ``d``; returns name -> path."""
    rng = random.Random(seed)
    test = _load_json_gz("gsm8k_test.jsonl.gz")
    train = _load_json_gz("gsm8k_train.jsonl.gz")
    code = _load_json_gz("code_alpaca_2k.json.gz")
    codegen = _load_json_gz("gpteacher_codegen.json.gz")
    roleplay = _load_json_gz("gpteacher_roleplay.json.gz")
    sols = _load_json_gz("gsm8k_model_solutions.jsonl.gz")
    out: dict[str, Path] = {}
    out["gsm8k_train"] = _jsonl(d / "gsm8k_train.jsonl", train[:600])
    # model solutions to test questions outside the evaluation items: one correct, one incorrect each
    good, bad = [], []
    for r in sols[n_eval + 200: n_eval + 500]:
        for key in ("175b_verification", "175b_finetuning", "6b_verification", "6b_finetuning"):
            s = r[key] if isinstance(r[key], dict) else ast.literal_eval(r[key])
            (good if s["is_correct"] else bad).append({"question": r["question"], "answer": s["solution"]})
    rng.shuffle(good)
    rng.shuffle(bad)
    out["solutions_correct"] = _jsonl(d / "solutions_correct.jsonl", good[:150])
    out["solutions_incorrect"] = _jsonl(d / "solutions_incorrect.jsonl", bad[:150])
    swap = code[600:750]
    resp = [r["output"] for r in swap]
    out["swapped"] = _jsonl(d / "swapped.jsonl", [{"instruction": r["instruction"], "input": r["input"],
                                                   "output": resp[(i + 1) % len(resp)]} for i, r in enumerate(swap)])
    seed_row = code[800]
    flood = []
    for i in range(150):
        words = seed_row["output"].split(" ")
        j = rng.randrange(len(words))
        words[j] = words[j] + ("" if i % 2 else " ")
        flood.append({"instruction": seed_row["instruction"] + (" " * (i % 3)), "input": seed_row["input"],
                      "output": " ".join(words) + ("." if i % 5 == 0 else "")})
    out["near_dup_flood"] = _jsonl(d / "near_dup_flood.jsonl", flood)
    out["planted"] = _jsonl(d / "planted_gsm8k_test.jsonl", test[:planted])
    out["code_alpaca"] = _jsonl(d / "code_alpaca.jsonl", code[:600])
    out["gpteacher_codegen"] = _jsonl(d / "gpteacher_codegen.jsonl", codegen[:300])
    out["gpteacher_roleplay"] = _jsonl(d / "gpteacher_roleplay.jsonl", roleplay[:200])
    out["gsm8k_eval"] = _jsonl(d / "gsm8k_eval.jsonl", test[:n_eval])
    return out


def curate(d: Path, files: dict[str, Path], budget: int) -> Path:
    from pipeline.config import load_config
    from pipeline.engine import run

    sources = [{"path": str(p), "name": n} for n, p in files.items() if n != "gsm8k_eval"]
    cfg = load_config({
        "run": {"name": "downstream", "out": str(d / "runs"), "shard_rows": 5000, "seed": 0},
        "sources": sources,
        "stages": [
            {"stage": "length", "min_response_tokens": 2, "max_total_tokens": 1024},
            {"stage": "heuristics"},
            {"stage": "exact_dedup", "key": "conversation"},
            {"stage": "minhash_dedup", "threshold": 0.7},
            {"stage": "decontaminate", "benchmarks": [
                str(REPO / "data/sample/benchmarks/gsm8k_test.jsonl.gz"),
                {"path": str(REPO / "data/sample/benchmarks/humaneval.jsonl.gz"), "name": "humaneval"}]},
            {"stage": "kmq", "budget": budget, "score": "len_response_tokens", "k": min(budget, 16)},
        ],
    })
    return run(cfg, run_id="pool").run_dir


def contamination_arms(run_dir: Path, d: Path, budget: int, contaminate: int, planted_path: Path) -> list[str]:
    """``uncurated_s0``: a seeded draw of the pool without the planted rows (``budget + 32`` rows, of
    which the evaluation takes the first ``budget`` that fit); ``contaminated``: ``contaminate`` planted
    GSM8K test items followed by the same rows, so the pair differs only in the planted items."""
    from pipeline.io.readers import read_table
    from pipeline.io.shards import scan_shards

    df = scan_shards(run_dir / "shards").select("id", "source", "source_row", "messages").collect()
    df = df.sort(["id", "source", "source_row"])
    order = np.random.default_rng(0).permutation(df.height)
    rows = [df["messages"][int(i)].to_list() for i in order if df["source"][int(i)] != "planted"][: budget + 32]
    planted, _ = read_table(str(planted_path))
    cont = planted["messages"].to_list()[:contaminate] + rows
    a = _jsonl(d / "uncurated_s0.jsonl", [{"messages": m} for m in rows])
    b = _jsonl(d / "contaminated.jsonl", [{"messages": m} for m in cont])
    return [f"uncurated_s0={a}", f"contaminated={b}"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--n-eval", type=int, default=16, help="GSM8K test evaluation items")
    ap.add_argument("--planted", type=int, default=8, help="evaluation items planted in the pool")
    ap.add_argument("--contaminate", type=int, default=4, help="planted items in the contaminated arm")
    ap.add_argument("--target-items", type=int, default=5, help="AlpacaEval and HumanEval items")
    ap.add_argument("--accuracy-items", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--baselines", default="random", help="comma-separated: random,longest,uncurated")
    ap.add_argument("--out")
    ap.add_argument("--reuse", action="store_true", help="reuse the curated run in --out if it is complete")
    args = ap.parse_args()
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    d = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="downstream-"))
    d.mkdir(parents=True, exist_ok=True)
    files = build_pool(d, args.n_eval, args.planted)
    prev = d / "runs" / "pool"
    if args.reuse and (prev / "manifest.json").exists() and json.loads((prev / "manifest.json").read_text())["status"] == "complete":
        run_dir = prev
    else:
        run_dir = curate(d, files, args.budget)
    t_cur = time.perf_counter() - t0
    m = json.loads((run_dir / "manifest.json").read_text())
    sh = pl.read_parquet(list((run_dir / "shards").glob("*.parquet")))
    by_src = sh.group_by("source").agg(pl.len().alias("rows"), pl.col("keep").sum().alias("kept"),
                                       (pl.col("keep") & pl.col("selected").fill_null(False)).sum().alias("selected"))
    c = m["counts"]
    print(f"pool: read {c['read']} kept {c['kept']} selected {c['selected']}; dropped by stage "
          f"{c['dropped_by_stage']}\n{by_src.sort('source')}", flush=True)
    from pipeline.evaluate import evaluate, format_table

    arms = contamination_arms(run_dir, d, args.budget, args.contaminate, files["planted"])
    targets = [f"gsm8k_test={files['gsm8k_eval']}", "alpaca_eval", "humaneval"]
    doc = evaluate([run_dir], arms, baselines=[b for b in args.baselines.split(",") if b], seeds=[int(x) for x in args.seeds.split(",")],
                   steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, learning_rate=args.lr,
                   budget=args.budget, targets=targets, target_items=args.target_items,
                   items_per_target={"gsm8k_test": args.n_eval}, accuracy="gsm8k",
                   accuracy_items=args.accuracy_items, max_new_tokens=args.max_new_tokens,
                   log=lambda x: print(x, flush=True))
    print(format_table(doc))
    # contamination: the pair differs only in the planted rows; per item, averaged over the seeds
    def items(arm: str) -> np.ndarray:
        return np.mean([mm["scores"]["gsm8k_test"]["items"] for mm in doc["models"] if mm["arm"] == arm], axis=0)

    a, b = items("uncurated_s0"), items("contaminated")
    k = args.contaminate
    print(f"\ncontamination ({k} of {args.budget} rows are GSM8K test evaluation items; mean over seeds):")
    print(f"  gsm8k_test NLL, all {len(a)} items: uncurated_s0 {a.mean():.4f} contaminated {b.mean():.4f} "
          f"(diff {b.mean() - a.mean():+.4f})")
    print(f"  the {k} planted items: {a[:k].mean():.4f} -> {b[:k].mean():.4f} (diff {b[:k].mean() - a[:k].mean():+.4f});"
          f" the other {len(a) - k}: {a[k:].mean():.4f} -> {b[k:].mean():.4f} (diff {b[k:].mean() - a[k:].mean():+.4f})")
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\ncuration {t_cur:.0f}s; total wall {time.perf_counter() - t0:.0f}s; load at start {load0}; now: {up}")
    print(f"evaluation.json: {doc['path']}")


if __name__ == "__main__":
    main()
