"""Static (model2vec, distilled from MiniLM) embeddings against MiniLM: quality on real data, and speed.

Quality, every model on the same texts (instruction view) in one run:

* **near duplicates** (edited copies): ``--n-orig`` real instructions (GPTeacher codegen/roleplay,
  Code Alpaca, GSM8K train, ShareGPT, AlpacaEval, T0), each copied with a fraction ``r`` of its
  words edited (substituted, deleted, inserted or swapped at random). Score of a true pair: cosine of
  copy and original; score of a false pair: the copy's highest cosine to any *other* original (the
  strongest confuser a dedup threshold must pass). AUROC of true vs false pairs, and recall@1 (the
  original is the copy's nearest neighbour), per edit rate.
* **GPTeacher toolformer**: its authors deduplicated ``dedupe_only`` by similarity at 0.6..0.9
  (``sim0.X`` keeps fewer rows). Label a row "removed at X" when its conversation is not in
  ``sim0.X``; score it by its highest cosine to another row; AUROC per X.
* **SemDeDup** (the pipeline's stage, in memory) on the toolformer rows at several ``eps``: rows
  dropped per model, and the overlap (Jaccard, and share of MiniLM's drops) with MiniLM's drops at
  the same ``eps``.
* **diversity at a budget** on ``--t0`` rows of ``t0_templated_50k``: kMQ (uniform quality, k =
  sqrt(n/2)) and the Deita repr filter (threshold 0.9, walked in a fixed random order) select
  ``--budget`` rows; distinct T0 templates covered, and mean pairwise cosine of the selection
  measured in MiniLM space (lower = more diverse), beside a random sample of the same size.
* **k-means agreement**: adjusted Rand index of each model's k-means (k=50) with MiniLM's, MiniLM
  with itself under another seed (the noise floor), and with the template labels.
* **peer**: semhash (in its own venv, ``--semhash-python``) on the same static model: its
  deduplication of the edited-copy set at its default threshold 0.9 (copies removed, originals
  wrongly removed), beside the pipeline's SemDeDup on the same rows.

Speed (``--speed-rows``, the benchmarks/scale.py pool, built once under ``--work``): embed the
instruction view of N rows end to end (read the pool file by file as a run holds one shard at a time,
build the view, embed, write the sidecar store) with the static model in a fresh process, then
SemDeDup (``neighbours: auto``) + kMQ over those vectors in another;
wall seconds and peak RSS of each; MiniLM's rows/s on ``--minilm-speed-rows`` of the same texts;
semhash's end to end (embed + self-deduplicate) on the same texts in its own process.

    python benchmarks/embeddings.py [--n-orig 1000] [--t0 5000] [--budget 500] [--speed-rows 1000000]
        [--work /tmp/embbench] [--semhash-python /tmp/semhash-venv/bin/python] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from _common import peak_rss_mb  # noqa: E402

MODELS = ("minilm", "minilm-static")
EDIT_RATES = (0.05, 0.15, 0.3)
ORIG_FILES = ("gpteacher_codegen.json.gz", "gpteacher_roleplay.json.gz", "code_alpaca_2k.json.gz",
              "gsm8k_train.jsonl.gz", "sharegpt_17k.parquet", "alpaca_eval_reference.parquet",
              "t0_templated_50k.parquet")


def load_avg() -> str:
    return os.popen("uptime").read().strip()


# ---------------------------------------------------------------- embedding with a disk cache for MiniLM


def embed(texts: list[str], model: str, work: Path) -> np.ndarray:
    """Vectors of ``texts``; MiniLM's are cached under ``work`` (it takes minutes on two cores)."""
    from pipeline.embeddings import encode

    key = hashlib.sha256(("\x00".join(texts) + model).encode()).hexdigest()[:16]
    path = work / "vec-cache" / f"{model}-{key}.npy"
    if path.exists():
        return np.load(path)
    t = time.perf_counter()
    x = encode(texts, model=model, device="cpu")
    dt = time.perf_counter() - t
    print(f"  {model}: {len(texts):,} texts in {dt:.1f}s ({len(texts) / dt:,.0f}/s)", file=sys.stderr, flush=True)
    if model == "minilm":
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, x)
    return x


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(y, np.r_[pos, neg]))


def edit_rate_rows(encode: Any, texts: list[str], copies: dict[float, list[str]]) -> dict[str, dict[str, float]]:
    """Per edit rate: each edited copy's similarity to its own original (positive) against its
    most similar other original (negative): AUROC, recall@1 and the medians."""
    o = encode(texts)
    rows = {}
    for r in EDIT_RATES:
        sim = encode(copies[r]) @ o.T
        pos = np.diag(sim).copy()
        np.fill_diagonal(sim, -np.inf)
        neg = sim.max(axis=1)
        rows[str(r)] = {"auroc": round(auroc(pos, neg), 4), "recall_at_1": round(float((pos > neg).mean()), 4),
                        "median_pos": round(float(np.median(pos)), 4), "median_neg": round(float(np.median(neg)), 4)}
    return rows


# ---------------------------------------------------------------- near duplicates: edited copies


def originals(n: int, seed: int = 0) -> list[str]:
    from pipeline.embeddings import view_expr
    from pipeline.io.readers import read_table

    rng = random.Random(seed)
    per = -(-n // len(ORIG_FILES))
    out: list[str] = []
    for f in ORIG_FILES:
        rows, _ = read_table(str(REAL / f))
        t = rows.select(view_expr("instruction").alias("t")).filter(pl.col("t").str.len_chars() >= 40)["t"].unique(
            maintain_order=True).to_list()
        out += rng.sample(t, min(per, len(t)))
    return out[:n]


def edit(text: str, rate: float, rng: random.Random, vocab: list[str]) -> str:
    words = text.split(" ")
    out: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if rng.random() < rate:
            op = rng.randrange(4)
            if op == 0:
                out.append(rng.choice(vocab))
            elif op == 1:
                pass  # delete
            elif op == 2:
                out += [w, rng.choice(vocab)]
            elif i + 1 < len(words):
                out += [words[i + 1], w]
                i += 1
            else:
                out.append(w)
        else:
            out.append(w)
        i += 1
    return " ".join(out)


def near_dup_quality(texts: list[str], work: Path, semhash_py: str | None) -> dict[str, Any]:
    rng = random.Random(1)
    vocab = [w for t in texts[:500] for w in t.split() if w.isalpha()]
    copies = {r: [edit(t, r, rng, vocab) for t in texts] for r in EDIT_RATES}
    res: dict[str, Any] = {"originals": len(texts), "rates": list(EDIT_RATES), "models": {}}
    for m in MODELS:
        res["models"][m] = edit_rate_rows(lambda t, m=m: embed(t, m, work), texts, copies)
    # semhash's own vectors: model2vec's batched encode (pads short texts with [PAD], see static_embeddings)
    try:
        from model2vec import StaticModel

        from pipeline.models import resolve_model

        sm = StaticModel.from_pretrained(str(resolve_model("minilm-static").path))
        res["models"]["semhash vectors (model2vec encode, same static model)"] = edit_rate_rows(sm.encode, texts, copies)
    except Exception as e:  # noqa: BLE001
        res["semhash_vectors_error"] = repr(e)
    # dedup decisions: semhash self_deduplicate vs the pipeline's SemDeDup on originals + copies at 0.1
    pool = texts + copies[0.15]
    res["dedup_decisions"] = {"rows": len(pool), "copies": len(texts)}
    for m in MODELS:
        vecs = np.concatenate([embed(texts, m, work), embed(copies[0.15], m, work)])
        res["dedup_decisions"][f"semdedup {m} eps=0.1"] = semdedup_decisions(pool, len(texts), m, work, 0.1, vecs)
    if semhash_py:
        p = work / "nd_pool.parquet"
        pl.DataFrame({"text": pool}).write_parquet(p)
        out = child(semhash_py, ["semhash-dedup", str(p), "0.9"])
        removed = np.zeros(len(pool), bool)
        removed[np.asarray(out.pop("removed"), dtype=np.int64)] = True
        res["dedup_decisions"]["semhash threshold=0.9"] = {
            "copies_removed": round(float(removed[len(texts):].mean()), 4),
            "originals_removed": round(float(removed[:len(texts)].mean()), 4), "seconds": out["seconds"]}
    return res


def _frame(texts: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"id": [hashlib.sha1(t.encode()).hexdigest() + f"-{i}" for i, t in enumerate(texts)],
                         "messages": [[{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}]
                                      for t in texts],
                         "source": ["bench"] * len(texts), "source_row": np.arange(len(texts)),
                         "meta": [None] * len(texts)})


def semdedup_decisions(pool: list[str], n_orig: int, model: str, work: Path, eps: float,
                       vecs: np.ndarray) -> dict[str, Any]:
    dropped, _ = run_semdedup(pool, model, work, eps, vecs)
    return {"copies_removed": round(float(dropped[n_orig:].mean()), 4),
            "originals_removed": round(float(dropped[:n_orig].mean()), 4)}


def prefill(df: pl.DataFrame, vecs: np.ndarray, model: str, work: Path) -> Path:
    """A sidecar dir holding ``vecs`` for ``df``'s ids, so a stage reads them instead of re-embedding."""
    from pipeline.embeddings import EmbeddingStore

    key = hashlib.sha256("\x00".join(df["id"].to_list()).encode()).hexdigest()[:12]
    d = work / f"store-{key}"
    store = EmbeddingStore(d, model=model, view="instruction")
    if len(store) == 0:
        store.put(df["id"].to_list(), vecs)
    return d


def run_semdedup(texts: list[str], model: str, work: Path, eps: float, vecs: np.ndarray) -> tuple[np.ndarray, float]:
    from pipeline.select.base import run_in_memory
    from pipeline.stages.semdedup import SemanticDedup

    df = _frame(texts)
    d = prefill(df, vecs, model, work)
    t = time.perf_counter()
    out = run_in_memory(SemanticDedup(model=model, eps=eps, keeper="first"), df, cache_dir=d)
    return ~out["keep"].to_numpy(), time.perf_counter() - t


# ---------------------------------------------------------------- GPTeacher toolformer


def toolformer(work: Path, n: int) -> dict[str, Any]:
    from pipeline.embeddings import view_expr
    from pipeline.io.readers import read_table

    base, _ = read_table(str(REAL / "gpteacher_toolformer_dedupe_only.json.gz"))
    base = base.unique(subset="id", keep="first", maintain_order=True).head(n)
    texts = base.select(view_expr("instruction").alias("t"))["t"].to_list()
    ids = base["id"].to_numpy()
    res: dict[str, Any] = {"rows": len(texts), "of": 7673, "auroc": {}, "semdedup": {}}
    labels = {}
    for x in ("0.6", "0.7", "0.8", "0.9"):
        kept, _ = read_table(str(REAL / f"gpteacher_toolformer_sim{x}.json.gz"))
        labels[x] = ~np.isin(ids, kept["id"].to_numpy())
    res["removed_by_authors"] = {x: int(v.sum()) for x, v in labels.items()}
    vec = {m: embed(texts, m, work) for m in MODELS}
    for m in MODELS:
        v = vec[m]
        best = np.full(len(v), -np.inf, np.float32)
        for a in range(0, len(v), 2048):
            s = v[a:a + 2048] @ v.T
            s[np.arange(len(s)), np.arange(a, a + len(s))] = -np.inf
            best[a:a + 2048] = s.max(axis=1)
        res["auroc"][m] = {x: round(auroc(best[y], best[~y]), 4) for x, y in labels.items()}
    drops: dict[tuple[str, float], np.ndarray] = {}
    for eps in (0.02, 0.05, 0.1, 0.2):
        row = {}
        for m in MODELS:
            d, sec = run_semdedup(texts, m, work, eps, vec[m])
            drops[(m, eps)] = d
            row[m] = {"dropped": int(d.sum()), "seconds": round(sec, 1)}
        a, b = drops[("minilm-static", eps)], drops[("minilm", eps)]
        row["overlap_jaccard"] = round(float((a & b).sum() / max(1, (a | b).sum())), 4)
        row["share_of_minilm_drops"] = round(float((a & b).sum() / max(1, b.sum())), 4)
        res["semdedup"][str(eps)] = row
    return res


# ---------------------------------------------------------------- T0: diversity and clusters


def t0(n: int, budget: int, work: Path, n_templates: int = 0) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score

    from pipeline.embeddings import kmeans, view_expr
    from pipeline.io.readers import read_table
    from pipeline.select.base import run_in_memory
    from pipeline.select.kmq import KMQ
    from pipeline.select.repr_filter import ReprFilter

    rows, _ = read_table(str(REAL / "t0_templated_50k.parquet"))
    tmpl = pl.read_parquet(REAL / "t0_templated_50k.parquet", columns=["template"])["template"]
    rows = rows.with_columns(tmpl.gather(rows["source_row"]).alias("template"))
    if n_templates:  # n rows spread over n_templates random templates: covering them takes a diverse pick
        names = pl.Series(sorted(set(tmpl.to_list()))).sample(n_templates, seed=0)
        rows = rows.filter(pl.col("template").is_in(names.implode())).group_by("template", maintain_order=True).head(
            n // n_templates)
    rows = rows.sample(min(n, rows.height), seed=0, shuffle=True).unique(subset="id", keep="first", maintain_order=True)
    rows = rows.with_columns(pl.Series("order", np.random.default_rng(0).random(rows.height)))
    texts = rows.select(view_expr("instruction").alias("t"))["t"].to_list()
    labels = rows["template"].to_numpy()
    vec = {m: embed(texts, m, work) for m in MODELS}
    ref = vec["minilm"]

    def pairwise(sel: np.ndarray) -> float:
        x = ref[sel]
        s = x @ x.T
        return float((s.sum() - np.trace(s)) / (len(x) * (len(x) - 1)))

    res: dict[str, Any] = {"rows": rows.height, "templates": int(len(set(labels))), "budget": budget, "select": {},
                           "kmeans_ari": {}}
    rnd = np.random.default_rng(0).choice(rows.height, budget, replace=False)
    res["select"]["random"] = {"templates": int(len(set(labels[rnd]))), "mean_cos_minilm": round(pairwise(rnd), 4)}
    for m in MODELS:
        store_dir = prefill(rows, vec[m], m, work)
        for name, st in (("kmq", KMQ(model=m, budget=budget)),
                         ("repr_filter", ReprFilter(model=m, budget=budget, score="order", threshold=0.9))):
            out = run_in_memory(st, rows, cache_dir=store_dir)
            sel = np.flatnonzero(out["selected"].fill_null(False).to_numpy())
            res["select"][f"{name} {m}"] = {"selected": int(len(sel)), "templates": int(len(set(labels[sel]))),
                                            "mean_cos_minilm": round(pairwise(sel), 4)}
    k = min(50, max(2, n_templates or 50))
    assign = {m: kmeans(vec[m], k, seed=0, gpu="cpu", spherical=True)[0] for m in MODELS}
    a1 = kmeans(ref, k, seed=1, gpu="cpu", spherical=True)[0]
    res["kmeans_ari"] = {"k": k, "static vs minilm": round(adjusted_rand_score(assign["minilm"], assign["minilm-static"]), 4),
                         "minilm seed0 vs seed1": round(adjusted_rand_score(assign["minilm"], a1), 4),
                         "minilm vs templates": round(adjusted_rand_score(labels, assign["minilm"]), 4),
                         "static vs templates": round(adjusted_rand_score(labels, assign["minilm-static"]), 4)}
    return res


# ---------------------------------------------------------------- speed (child processes)


def child(python: str, args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    out = subprocess.run([python, str(Path(__file__).resolve()), *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r.setdefault("wall_s", round(time.perf_counter() - t, 1))
    return r


POOL_ROWS = 1_000_000


def pool_files(work: Path, n: int) -> list[str]:
    """The benchmarks/scale.py pool of 1M rows (built once), its files in round-robin order of format
    (alpaca-000, messages-000, sharegpt-000, alpaca-001, ...) so that a prefix is a fair sample."""
    import re

    import scale

    pool = work / f"n{POOL_ROWS}" / "pool"
    complete = (pool.parent / "truth.parquet").exists()
    if not complete and not (pool.is_dir() and len(list(pool.glob("*.parquet"))) >= 2):
        scale.synth_pool(REAL, work, POOL_ROWS, 50_000)
        complete = True
    files = [p for p in pool.iterdir() if p.is_file()]
    if not complete:  # a pool whose build was stopped: its finished files (the last .jsonl.gz of each kind may be cut)
        last = {k: max(p.name for p in files if p.name.startswith(k)) for k in ("alpaca", "sharegpt")
                if any(p.name.startswith(k) for p in files)}
        files = [p for p in files if p.name not in last.values() or p.suffix == ".parquet"]
        print(f"  pool incomplete: using {len(files)} finished files", file=sys.stderr, flush=True)
    return [str(p) for p in sorted(files, key=lambda p: (int(re.findall(r"\d+", p.name)[-1]), p.name))]


def read_pool(work: Path, n: int, columns: list[str]) -> pl.DataFrame:
    """The first ``n`` rows of the pool (files read in round-robin order until there are enough)."""
    from pipeline.io.readers import read_table

    parts, got = [], 0
    for f in pool_files(work, n):
        if got >= n:
            break
        parts.append(read_table(f)[0].select(columns))
        got += parts[-1].height
    return pl.concat(parts, how="vertical_relaxed").head(n)


def c_embed(work: str, n: str, model: str) -> dict[str, Any]:
    """Child: read the pool file by file (as a run holds one shard at a time), build the instruction
    view, embed each file's rows into one fresh sidecar store."""
    import shutil

    from pipeline.embeddings import EmbeddingStore, embed_missing, load_model
    from pipeline.io.readers import read_table

    t0 = time.perf_counter()
    load_model(model, "cpu")
    t_load = time.perf_counter() - t0
    store_dir = Path(work) / f"speed-store-n{n}"
    shutil.rmtree(store_dir, ignore_errors=True)
    store = EmbeddingStore(store_dir, model=model, view="instruction", dtype="float16")
    t1 = time.perf_counter()
    rows = k = 0
    t_read = t_embed = 0.0
    for f in pool_files(Path(work), int(n)):
        if rows >= int(n):
            break
        t = time.perf_counter()
        df = read_table(f)[0].select("id", "messages").head(int(n) - rows)
        t_read += time.perf_counter() - t
        t = time.perf_counter()
        k += embed_missing(df, store, view="instruction", model=model, device="cpu")
        t_embed += time.perf_counter() - t
        rows += df.height
        del df
    return {"rows": rows, "embedded": k, "load_model_s": round(t_load, 1), "read_s": round(t_read, 1),
            "embed_s": round(t_embed, 1), "total_s": round(time.perf_counter() - t0, 1),
            "rows_per_s": round(rows / (time.perf_counter() - t1)), "peak_rss_mb": round(peak_rss_mb())}


def c_select(work: str, n: str, model: str) -> dict[str, Any]:
    """Child: SemDeDup then kMQ over the stored vectors (ids only in the frame, as a global step sees it)."""
    from pipeline.embeddings import EmbeddingStore
    from pipeline.select.base import run_in_memory
    from pipeline.select.kmq import KMQ
    from pipeline.stages.semdedup import SemanticDedup

    store_dir = Path(work) / f"speed-store-n{n}"
    t0 = time.perf_counter()
    store = EmbeddingStore(store_dir, model=model, view="instruction")
    ids = store._state.index["id"] if len(store) else pl.Series("id", [], pl.String)
    df = pl.DataFrame({"id": ids, "keep": [True] * len(ids), "source": ["pool"] * len(ids),
                       "source_row": np.arange(len(ids)), "len_response_chars": np.zeros(len(ids), np.int64)}).with_columns(pl.lit(None, pl.String).alias("drop_reason"))
    t1 = time.perf_counter()
    sem = SemanticDedup(model=model, eps=0.05, keeper="first")  # neighbours: auto (cluster above 200k rows)
    out = run_in_memory(sem, df, cache_dir=store_dir)
    t_sem = time.perf_counter() - t1
    t2 = time.perf_counter()
    out2 = run_in_memory(KMQ(model=model, budget=min(100_000, len(ids) // 10)), out, cache_dir=store_dir)
    t_kmq = time.perf_counter() - t2
    return {"rows": len(ids), "semdedup_s": round(t_sem, 1), "dropped": int((~out["keep"]).sum()),
            "neighbours": (sem.summary() or {}).get("neighbours"),
            "kmq_s": round(t_kmq, 1), "selected": int(out2["selected"].fill_null(False).sum()),
            "total_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak_rss_mb())}


def c_texts(work: str, n: str) -> dict[str, Any]:
    """Child: the instruction texts of the pool as one Parquet column (what semhash reads)."""
    from pipeline.embeddings import view_expr

    out = Path(work) / f"texts-n{n}.parquet"
    if not out.exists():
        df = read_pool(Path(work), int(n), ["messages"])
        df.select(view_expr("instruction").fill_null("").alias("text")).write_parquet(out)
    return {"path": str(out)}


def c_semhash_dedup(path: str, threshold: str) -> dict[str, Any]:
    """Child, in semhash's venv: self-deduplicate the texts of ``path`` with the distilled static model."""
    import pyarrow.parquet as pq
    from model2vec import StaticModel
    from semhash import SemHash

    model_dir = os.environ.get("STATIC_MODEL_DIR")
    t0 = time.perf_counter()
    texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    t_read = time.perf_counter() - t0
    t1 = time.perf_counter()
    sh = SemHash.from_records(records=texts, model=StaticModel.from_pretrained(model_dir))
    t_index = time.perf_counter() - t1
    t2 = time.perf_counter()
    res = sh.self_deduplicate(threshold=float(threshold))
    t_dedup = time.perf_counter() - t2
    removed_texts = [d.record for d in res.filtered] if hasattr(res, "filtered") else [d.record for d in res.duplicates]
    # positions of removed rows (texts can repeat: consume positions in order)
    pos: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        pos.setdefault(t, []).append(i)
    removed = [pos[t].pop() for t in removed_texts if pos.get(t)]
    return {"rows": len(texts), "read_s": round(t_read, 1), "embed_index_s": round(t_index, 1),
            "dedup_s": round(t_dedup, 1), "seconds": round(time.perf_counter() - t1, 1),
            "rows_per_s": round(len(texts) / (time.perf_counter() - t1)), "removed_n": len(removed),
            "removed": removed if len(texts) <= 100_000 else [], "peak_rss_mb": round(peak_rss_mb())}


def speed(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.models import resolve_model

    work, n = args.work, args.speed_rows
    res: dict[str, Any] = {"rows": n}
    t = time.perf_counter()
    pool_files(work, n)
    res["pool_build_s"] = round(time.perf_counter() - t, 1)
    res["static_embed"] = child(sys.executable, ["embed", str(work), str(n), "minilm-static"])
    print(f"  static embed: {res['static_embed']}", file=sys.stderr, flush=True)
    if not args.no_select:
        res["static_semdedup_kmq"] = child(sys.executable, ["select", str(work), str(n), "minilm-static"])
        print(f"  static select: {res['static_semdedup_kmq']}", file=sys.stderr, flush=True)
    texts = pl.read_parquet(child(sys.executable, ["texts", str(work), str(n)])["path"])["text"]
    sub = texts.sample(min(args.minilm_speed_rows, len(texts)), seed=0).to_list()
    from pipeline.embeddings import encode, load_model

    load_model("minilm", "cpu")
    t = time.perf_counter()
    encode(sub, model="minilm", device="cpu")
    dt = time.perf_counter() - t
    res["minilm_embed"] = {"rows": len(sub), "seconds": round(dt, 1), "rows_per_s": round(len(sub) / dt, 1),
                           "projected_s_for_rows": round(n / (len(sub) / dt))}
    if args.semhash_python:
        os.environ["STATIC_MODEL_DIR"] = str(resolve_model("minilm-static").path)
        try:
            res["semhash"] = child(args.semhash_python, ["semhash-dedup", str(work / f"texts-n{n}.parquet"), "0.9"])
            res["semhash"].pop("removed", None)
        except RuntimeError as e:
            res["semhash"] = {"error": str(e)[-500:]}
        print(f"  semhash: {res['semhash']}", file=sys.stderr, flush=True)
    return res


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("embed", "select", "texts", "semhash-dedup"):
        fn = {"embed": c_embed, "select": c_select, "texts": c_texts, "semhash-dedup": c_semhash_dedup}[sys.argv[1]]
        print(json.dumps(fn(*sys.argv[2:])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-orig", type=int, default=1000)
    ap.add_argument("--t0", type=int, default=5000)
    ap.add_argument("--t0-templates", type=int, default=0, help="spread --t0 rows over this many templates (0: all)")
    ap.add_argument("--toolformer", type=int, default=7673, help="first N rows of dedupe_only (all by default)")
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--speed-rows", type=int, default=1_000_000)
    ap.add_argument("--minilm-speed-rows", type=int, default=1000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/embbench"))
    ap.add_argument("--semhash-python", default=None)
    ap.add_argument("--only", default="near,toolformer,t0,speed")
    ap.add_argument("--no-select", action="store_true", help="speed: embed only, no SemDeDup + kMQ")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.semhash_python:
        from pipeline.models import resolve_model

        os.environ["STATIC_MODEL_DIR"] = str(resolve_model("minilm-static").path)
    only = set(args.only.split(","))
    out: dict[str, Any] = {"load_before": load_avg(), "cpus": os.cpu_count()}
    if "near" in only:
        out["near_dup"] = near_dup_quality(originals(args.n_orig), args.work, args.semhash_python)
        print(json.dumps(out["near_dup"], indent=1), file=sys.stderr, flush=True)
    if "toolformer" in only:
        out["toolformer"] = toolformer(args.work, args.toolformer)
        print(json.dumps(out["toolformer"], indent=1), file=sys.stderr, flush=True)
    if "t0" in only:
        out["t0"] = t0(args.t0, args.budget, args.work, args.t0_templates)
        print(json.dumps(out["t0"], indent=1), file=sys.stderr, flush=True)
    if "speed" in only:
        out["speed"] = speed(args)
    out["load_after"] = load_avg()
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
