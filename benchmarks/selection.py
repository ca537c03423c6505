"""Benchmark: embedding throughput, k-means, and the diversity selectors at 100k rows (the project's own figures).

1. **Real pool.** A miniature of ``t0_templated_50k.parquet`` that keeps its redundancy: every row of
   ``--passages`` randomly chosen source passages (the file renders each passage through several
   templates and questions). Embedded with MiniLM (instruction view) in a fresh process
   (:func:`pipeline.embeddings.embed_frame` into a sidecar store, batched by length), then again over
   the filled store (a rerun: nothing to embed).
2. **100k pool.** Embedding 100k texts with MiniLM takes ~7 min on 2 cores, so the 100k rows are the
   real vectors tiled with Gaussian noise (``--noise``, sigma 0.03 per dimension, renormalised: a copy
   has cosine ~0.86 to its real row and ~0.74 to another copy, so a 0.9 repr filter can fill a 10k
   budget), each copy keeping its real row's template, task and passage; written to a sidecar store
   under fresh ids. Diversity figures on tiled rows say little; section 4 has the real ones.
3. **Timings at 100k** (each case in a fresh process; peak RSS is that process's ``ru_maxrss``):
   faiss k-means (20 iterations, one init); the Deita repr walk (threshold 0.9, budget 10k); and
   every selector end to end through its public function, with the
   diversity of what it picks: distinct k-means clusters (k=1000 over the pool), templates, source
   tasks and real rows covered, and the mean pairwise cosine of the selection (exact, from the sum
   vector).
4. **Diversity at real scale**: the same selectors on the real pool (no tiling), budget
   ``--real-budget``.

Comparisons with peers (a bare ``SentenceTransformer.encode`` loop, semhash) are the peer harness's
(``benchmarks/peers/run.py embed|semdedup``: each peer in its own virtualenv at its best settings);
the in-process peer columns this script used to print (scikit-learn ``KMeans``, Deita's batched
filter re-typed with torch, the kMQ paper's sampling) were withdrawn from ``benchmarks/RESULTS.md``
(issue 19) and are gone.

Scores used where a selector needs one: the repr filter walks a seeded random order (so its gain over
random is the filter's own); kMQ uses no quality column (the paper's k-means baseline); DS2 rates by
response-length quintile; RDS+ targets 300 GSM8K test questions.

    .venv/bin/python benchmarks/selection.py                      # 100k rows, budget 10k
    .venv/bin/python benchmarks/selection.py --rows 20000 --budget 2000 --passages 300
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import platform
import queue
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REAL = REPO.parent / "shared" / "data" / "real"

T0_TASKS = (
    "adversarial_qa", "ag_news", "amazon_polarity", "app_reviews", "cnn_dailymail", "common_gen", "commonsense_qa",
    "cosmos_qa", "dbpedia_14", "dream", "duorc", "gigaword", "glue_mrpc", "glue_qqp", "imdb", "kilt_tasks_hotpotqa",
    "multi_news", "paws", "qasc", "quarel", "quartz", "quoref", "ropes", "rotten_tomatoes", "samsum", "sciq",
    "social_i_qa", "trec", "wiki_bio", "wiki_hop", "wiki_qa", "wiqa", "xsum", "yelp_review_full",
)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- data


def _real_pool(work: str, passages: int, q: Any) -> None:
    q.put({"path": str(real_pool(Path(work), passages))})


def real_pool(work: Path, passages: int) -> Path:
    import polars as pl

    from pipeline.io.readers import read_table
    from pipeline.stages.length_filter import Length

    rows, _ = read_table(str(REAL / "t0_templated_50k.parquet"))
    user = pl.col("messages").list.first().struct.field("content")
    longest = user.str.split("\n").list.eval(pl.element().sort_by(pl.element().str.len_chars(), descending=True).first())
    rows = rows.with_columns(
        pl.col("template").alias("template"),
        pl.col("template").str.extract("^(" + "|".join(T0_TASKS) + ")").alias("task"),
        longest.list.first().str.slice(0, 120).alias("passage"),
    )
    keys = rows.select("passage").unique().sort("passage").sample(passages, seed=0)
    pool = Length(min_response_tokens=None).score(rows.join(keys, on="passage", how="semi", maintain_order="left"))
    path = work / "real_pool.parquet"
    pool.write_parquet(path)
    with gzip.open(REAL / "gsm8k_test.jsonl.gz", "rt") as f:
        (work / "gsm8k_test_300.jsonl").write_text("".join(next(f) for _ in range(300)))
    return path


def _embed_ours(work: str, q: Any) -> None:
    import polars as pl

    from pipeline.embeddings import EmbeddingStore, embed_frame, load_model

    pool = pl.read_parquet(Path(work) / "real_pool.parquet")
    load_model("minilm", "cpu").encode(["warm up"] * 4)
    store = EmbeddingStore(Path(work) / "real_store", "minilm", "instruction")
    t0 = time.perf_counter()
    embed_frame(pool, store=store, device="cpu")
    dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    embed_frame(pool, store=EmbeddingStore(Path(work) / "real_store", "minilm", "instruction"), device="cpu")
    rerun = time.perf_counter() - t1
    import torch

    from pipeline.embeddings import view_expr

    model = load_model("minilm", "cpu")
    texts = pool.select(view_expr("instruction").alias("t"))["t"].to_list()
    tokens = sum(len(t) for t in model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"])
    q.put({"seconds": dt, "rerun_seconds": rerun, "rows": pool.height, "tokens": tokens, "rss_mb": _rss_mb(),
           "torch_threads": torch.get_num_threads()})


def _tile(work: str, rows: int, noise: float, q: Any) -> None:
    """The 100k pool: real vectors tiled with noise, a frame with labels, a store under new ids."""
    import numpy as np
    import polars as pl

    from pipeline.embeddings import EmbeddingStore, _normalise, kmeans

    w = Path(work)
    pool = pl.read_parquet(w / "real_pool.parquet")
    real, found = EmbeddingStore(w / "real_store", "minilm", "instruction").get(pool["id"].to_list())
    assert found.all()
    rng = np.random.default_rng(0)
    src = np.arange(rows) % pool.height
    x = _normalise(real[src] + rng.normal(0, noise, (rows, real.shape[1])).astype(np.float32))
    # each copy carries its real row's messages: the vector selectors declare them as input (they
    # embed the rows a sidecar store lacks), though here every id is in the store
    big = pool[src.tolist()].select("messages", "template", "task", "passage", "len_response_tokens").with_columns(
        pl.Series("real_row", src),
        pl.format("{}-{}", pl.Series(pool["id"].to_numpy()[src]), pl.Series(np.arange(rows) // pool.height)).alias("id"),
        pl.lit("bench").alias("source"), pl.Series("source_row", np.arange(rows)),
        pl.Series("walk", rng.permutation(rows).astype(np.float64)),
    )
    big = big.with_columns(
        pl.col("len_response_tokens").rank("ordinal").truediv(rows).mul(5).ceil().cast(pl.Int64).alias("rating"),
        pl.Series("bench_cluster", kmeans(x, min(1000, rows // 50), seed=1)[0]),
    )
    store = EmbeddingStore(w / "big_store", "minilm", "instruction")
    for s in range(0, rows, 50_000):
        store.put(big["id"][s:s + 50_000].to_list(), x[s:s + 50_000])
    big.write_parquet(w / "big_pool.parquet")
    np.save(w / "big_x.npy", x)
    q.put({"rows": rows})


# ---------------------------------------------------------------- timed cases


def _kmeans_ours(work: str, k: int, q: Any) -> None:
    import numpy as np

    from pipeline.embeddings import kmeans

    x = np.load(Path(work) / "big_x.npy")
    t0 = time.perf_counter()
    a, d, _c = kmeans(x, k, seed=0, niter=20)
    dt = time.perf_counter() - t0
    q.put({"seconds": dt, "rows": len(x), "inertia": float((d ** 2).sum()), "rss_mb": _rss_mb()})


def _walk_vectors(work: str) -> Any:
    import numpy as np
    import polars as pl

    big = pl.read_parquet(Path(work) / "big_pool.parquet", columns=["walk"])
    return np.load(Path(work) / "big_x.npy")[np.argsort(-big["walk"].to_numpy(), kind="stable")]


def _repr_ours(work: str, budget: int, q: Any) -> None:
    from pipeline.select.repr_filter import repr_walk

    x = _walk_vectors(work)
    t0 = time.perf_counter()
    acc, _nn = repr_walk(x, 0.9, limit=budget)
    dt = time.perf_counter() - t0
    q.put({"seconds": dt, "rows": len(x), "selected": len(acc), "rss_mb": _rss_mb()})


def _diversity(work: str, chosen: Any, which: str) -> dict[str, Any]:
    import numpy as np
    import polars as pl

    from pipeline.embeddings import EmbeddingStore

    w = Path(work)
    frame = pl.read_parquet(w / f"{which}_pool.parquet")
    sel = frame[np.asarray(chosen).tolist()]
    if which == "big":
        x = np.load(w / "big_x.npy")[np.asarray(chosen)]
    else:
        x = EmbeddingStore(w / "real_store", "minilm", "instruction").get(sel["id"].to_list())[0]
    n = len(x)
    s = x.sum(axis=0)
    cos = float((s @ s - n) / (n * (n - 1))) if n > 1 else float("nan")
    out = {"tasks": sel["task"].n_unique(), "templates": sel["template"].n_unique(),
           "passages": sel["passage"].n_unique(), "mean_cos": round(cos, 4)}
    if "bench_cluster" in sel.columns:
        out["clusters"] = sel["bench_cluster"].n_unique()
        out["real_rows"] = sel["real_row"].n_unique()
    return out


def _selector(work: str, which: str, name: str, budget: int, q: Any) -> None:
    import numpy as np
    import polars as pl

    from pipeline import select
    from pipeline.stages.base import RunContext

    w = Path(work)
    frame = pl.read_parquet(w / f"{which}_pool.parquet")
    if "walk" not in frame.columns:
        frame = frame.with_columns(pl.Series("walk", np.random.default_rng(0).permutation(frame.height).astype(float)),
                                   pl.col("len_response_tokens").rank("ordinal").truediv(frame.height).mul(5).ceil()
                                   .cast(pl.Int64).alias("rating"))
    ctx = RunContext(cache_dir=w / ("big_store" if which == "big" else "real_store"), seed=0)
    mini = {"model": "minilm", "ctx": ctx}  # the vectors stored above (MiniLM), not the CPU default model
    calls = {
        "random": lambda: select.random(frame, budget=budget, seed=0),
        "long_is_more": lambda: select.long_is_more(frame, budget=budget),
        "kmq": lambda: select.kmq(frame, budget=budget, **mini),
        "kmq_k=budget": lambda: select.kmq(frame, budget=budget, k=budget, **mini),
        "repr_filter": lambda: select.repr_filter(frame, budget=budget, score="walk", threshold=0.9, **mini),
        "ds2": lambda: select.ds2(frame, budget=budget, rating="rating", **mini),
        # rds_plus timing includes loading MiniLM and embedding the 300 target questions
        "rds_plus": lambda: select.rds_plus(frame, budget=budget, target=str(w / "gsm8k_test_300.jsonl"), **mini),
    }
    t0 = time.perf_counter()
    out = calls[name]()
    dt = time.perf_counter() - t0
    chosen = np.flatnonzero(out["selected"].fill_null(False).to_numpy())
    q.put({"seconds": dt, "rows": frame.height, "selected": len(chosen), "rss_mb": _rss_mb(),
           **_diversity(work, chosen, which)})


def measure(target: Any, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    while True:  # a case that dies fails the benchmark instead of leaving it waiting for ever
        try:
            res = q.get(timeout=1.0)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"{target.__name__}{args} exited with code {p.exitcode} and no result") from None
    p.join()
    return res


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--budget", type=int, default=10_000)
    ap.add_argument("--passages", type=int, default=600, help="source passages in the real pool (~2 rows each)")
    ap.add_argument("--real-budget", type=int, default=100)
    ap.add_argument("--noise", type=float, default=0.03,
                    help="per-dimension sigma of the tiling noise (0.03: a copy has cosine ~0.86 to its real row)")
    ap.add_argument("--work", type=str, default=None)
    ap.add_argument("--reuse", action="store_true", help="reuse --work's pool, embeddings and tiling (skips section 1)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-selection-"))
    work.mkdir(parents=True, exist_ok=True)
    # the parent stays small: a child's ru_maxrss starts from its parent's RSS at fork (kept across exec)
    print(f"# selection benchmark  {platform.node()}  {platform.processor() or platform.machine()}  "
          f"{os.cpu_count()} cpus  python {platform.python_version()}  parent RSS {_rss_mb():.0f} MB")
    print(f"# work dir {work}")
    reuse = args.reuse and (work / "big_x.npy").exists()
    if not reuse:
        measure(_real_pool, str(work), args.passages)
        embedding_table(work)
        measure(_tile, str(work), args.rows, args.noise)
    selection_tables(work, args)


def embedding_table(work: Path) -> None:
    ours = measure(_embed_ours, str(work))
    n, tok = ours["rows"], ours["tokens"]
    print(f"\n## Embedding: MiniLM, instruction view, {n:,} real T0 rows ({tok:,} tokens after truncation at 256), "
          f"CPU, {ours['torch_threads']} torch threads")
    print(f"{'impl':<44}{'seconds':>9}{'texts/s':>10}{'tokens/s':>10}{'peak RSS MB':>13}")
    print(f"{'embed_frame -> sidecar store':<44}{ours['seconds']:>9.1f}{n / ours['seconds']:>10.1f}"
          f"{tok / ours['seconds']:>10.0f}{ours['rss_mb']:>13.0f}")
    print(f"{'rerun (all ids cached)':<44}{ours['rerun_seconds']:>9.2f}{n / ours['rerun_seconds']:>10.0f}{'':>10}{'':>13}")


def selection_tables(work: Path, args: argparse.Namespace) -> None:
    k = max(1, round((args.rows / 2) ** 0.5))
    print(f"\n## {args.rows:,} rows (real vectors tiled + noise sigma {args.noise}), budget {args.budget:,}")
    print(f"{'case':<52}{'seconds':>9}{'rows/s':>11}{'peak RSS MB':>13}  notes")
    km = measure(_kmeans_ours, str(work), k)
    print(f"{f'k-means k={k}, 20 iter (faiss)':<52}{km['seconds']:>9.2f}{km['rows'] / km['seconds']:>11,.0f}"
          f"{km['rss_mb']:>13.0f}  inertia {km['inertia']:.1f}")
    rp = measure(_repr_ours, str(work), args.budget)
    print(f"{'repr filter thr 0.9 (faiss, exact walk)':<52}{rp['seconds']:>9.2f}{rp['rows'] / rp['seconds']:>11,.0f}"
          f"{rp['rss_mb']:>13.0f}  selected {rp['selected']:,}")

    header = (f"{'selector':<40}{'seconds':>9}{'rows/s':>11}{'RSS MB':>8}{'clusters':>9}{'templates':>10}{'tasks':>6}"
              f"{'real rows':>10}{'passages':>9}{'mean cos':>9}")
    print("\n### Selectors end to end (public functions, vectors read from the sidecar store)")
    print(header)
    # kmq with k = budget is left out at this size: 10k-means over 100k rows alone takes minutes
    rows = [(name, measure(_selector, str(work), "big", name, args.budget))
            for name in ("random", "long_is_more", "kmq", "repr_filter", "ds2", "rds_plus")]
    for name, r in rows:
        print(f"{name:<40}{r['seconds']:>9.2f}{r['rows'] / r['seconds']:>11,.0f}{r['rss_mb']:>8.0f}{r['clusters']:>9}"
              f"{r['templates']:>10}{r['tasks']:>6}{r['real_rows']:>10}{r['passages']:>9}{r['mean_cos']:>9.4f}")

    real_n = measure(_selector, str(work), "real", "random", args.real_budget)["rows"]
    print(f"\n## Diversity at real scale: {real_n:,} real rows, budget {args.real_budget} (no tiling)")
    print(f"{'selector':<40}{'seconds':>9}{'templates':>10}{'tasks':>6}{'passages':>9}{'mean cos':>9}")
    for name in ("random", "long_is_more", "kmq", "kmq_k=budget", "repr_filter", "ds2", "rds_plus"):
        r = measure(_selector, str(work), "real", name, args.real_budget)
        print(f"{name:<40}{r['seconds']:>9.2f}{r['templates']:>10}{r['tasks']:>6}{r['passages']:>9}{r['mean_cos']:>9.4f}")
    print(json.dumps({"rows": args.rows, "budget": args.budget, "work": str(work)}))


if __name__ == "__main__":
    main()
