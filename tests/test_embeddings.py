"""Embedding plumbing: encode with the real MiniLM and with the static model distilled from it (offline,
once per session into the test model cache), the sidecar store, embed_frame caching, k-means, k-NN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.embeddings import (
    EmbeddingStore,
    describe_model,
    embed_frame,
    embedding_dim,
    encode,
    kmeans,
    kmeans_k,
    knn,
    model_id,
    pick_model,
    store_for,
    vectors_for,
    view_expr,
)
from pipeline.io.readers import read_table
from pipeline.stages.base import RunContext


@pytest.fixture(scope="module")
def gsm(real_dir: Path) -> pl.DataFrame:
    rows, _ = read_table(str(real_dir / "gsm8k_test.jsonl.gz"))
    return rows.head(60)


@pytest.fixture(scope="module")
def gsm_vectors(gsm: pl.DataFrame) -> np.ndarray:
    return embed_frame(gsm, model="minilm")


def _offline_env() -> dict[str, str]:
    """This process's environment with every network route closed (proxies to a dead port)."""
    dead = "http://127.0.0.1:9"
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HTTP_PROXY": dead,
            "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead, "NO_PROXY": "", "no_proxy": "",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


@pytest.fixture(scope="module")
def static_dir() -> Path:
    """The default path: ``curate distill`` (offline) into the session's model cache, returning its directory."""
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "distill"], capture_output=True, text=True,
                         env=_offline_env(), timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    return Path(out.stdout.strip().splitlines()[-1])


def test_import_does_not_load_heavy_libraries() -> None:
    code = "import sys, pipeline.embeddings, pipeline.stages.embedding, pipeline.stages.clustering\n" \
           "import pipeline.select.kmq, pipeline.select.repr_filter, pipeline.select.rds, pipeline.select.ds2\n" \
           "print(sorted(m for m in ('torch', 'faiss', 'sentence_transformers', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_encode_is_unit_norm_and_in_input_order(gsm: pl.DataFrame) -> None:
    texts = gsm.select(view_expr("instruction"))["messages"].to_list()[:12]
    texts = [texts[0][:20], *texts[1:], ""]  # mixed lengths, one empty text
    x = encode(texts, model="minilm")
    assert x.dtype == np.float32 and x.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([encode([t], model="minilm")[0] for t in texts])
    # batching by length pads differently; vectors agree to float tolerance and order is restored
    assert np.allclose(x, one_by_one, atol=1e-4)
    assert encode([], model="minilm").shape == (0, 384)


def test_store_round_trip_and_layout(tmp_path: Path, gsm_vectors: np.ndarray, gsm: pl.DataFrame) -> None:
    ids = gsm["id"].to_list()
    s32 = EmbeddingStore(tmp_path, "minilm", "instruction", "float32")
    s32.put(ids[:40], gsm_vectors[:40])
    got, found = s32.get([*ids[30:50], "no-such-id"])
    assert found.tolist() == [True] * 10 + [False] * 11
    assert np.array_equal(got[:10], gsm_vectors[30:40])
    assert not got[10:].any()
    parts = list((tmp_path / "embeddings" / model_id("minilm") / "instruction").glob("part-*.parquet"))
    assert len(parts) == 1
    import pyarrow.parquet as pq

    schema = pq.read_schema(parts[0])
    assert schema.field("vector").type.list_size == 384 and str(schema.field("vector").type.value_type) == "float"

    # a new part for the same id wins over the old one
    s32.put([ids[0]], -gsm_vectors[:1])
    assert np.array_equal(EmbeddingStore(tmp_path, "minilm", "instruction").get([ids[0]])[0][0], -gsm_vectors[0])

    s16 = EmbeddingStore(tmp_path, "minilm", "response", "float16")
    s16.put(ids, gsm_vectors)
    got16, found16 = s16.get(ids)
    assert found16.all() and np.abs(got16 - gsm_vectors).max() < 2e-3
    with pytest.raises(ValueError, match="width"):
        s16.put(["x"], np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="unknown embedding view"):
        EmbeddingStore(tmp_path, "minilm", "answers")
    # a cleared cache is noticed by stores already open in this process
    import shutil

    shutil.rmtree(s32.dir)
    assert len(s32) == 0 and not s32.contains(ids[:1]).any()


def test_embed_frame_embeds_each_missing_id_once(tmp_path: Path, gsm: pl.DataFrame, gsm_vectors: np.ndarray) -> None:
    store = EmbeddingStore(tmp_path, "minilm", "instruction")
    store.put(gsm["id"].to_list()[:20], gsm_vectors[:20])
    doubled = pl.concat([gsm.head(40), gsm.head(40).reverse()])  # every id twice
    x = embed_frame(doubled, store=store)
    assert len(store) == 40  # only the 20 missing ids were added, once each
    assert len(list(store.dir.glob("part-*.parquet"))) == 2
    assert np.allclose(x[:40], gsm_vectors[:40], atol=1e-5)
    assert np.array_equal(x[40:], x[:40][::-1])
    embed_frame(doubled, store=store)  # everything cached: no new part
    assert len(list(store.dir.glob("part-*.parquet"))) == 2
    with pytest.raises(ValueError, match="view"):
        embed_frame(gsm, view="response", store=store)


def test_views(gsm: pl.DataFrame) -> None:
    both = gsm.head(3).select(view_expr("both").alias("t"))["t"].to_list()
    ins = gsm.head(3).select(view_expr("instruction").alias("t"))["t"].to_list()
    res = gsm.head(3).select(view_expr("response").alias("t"))["t"].to_list()
    assert both == [f"{a}\n\n{b}" for a, b in zip(ins, res, strict=True)]
    xi, xr = embed_frame(gsm.head(3), view="instruction"), embed_frame(gsm.head(3), view="response")
    assert np.all(np.sum(xi * xr, axis=1) < 0.99)


def test_store_for_and_vectors_for(tmp_path: Path, gsm: pl.DataFrame, gsm_vectors: np.ndarray) -> None:
    assert store_for(RunContext(), "minilm", "instruction") is None
    ctx = RunContext(run_dir=tmp_path)
    store = store_for(ctx, "minilm", "instruction")
    assert store is not None and store.dir.is_relative_to(tmp_path / "sidecars" / "embeddings")
    bare = gsm.select("id", "source", "source_row")
    with pytest.raises(RuntimeError, match="no 'instruction' embedding"):
        vectors_for(bare, ctx, model="minilm", rows=np.arange(5))
    store.put(gsm["id"].to_list(), gsm_vectors)
    assert np.array_equal(vectors_for(bare, ctx, model="minilm", rows=np.array([3, 1])), gsm_vectors[[3, 1]])


def test_kmeans_and_knn(gsm_vectors: np.ndarray) -> None:
    x = gsm_vectors
    a1, d1, c1 = kmeans(x, 5, seed=3)
    a2, d2, c2 = kmeans(x, 5, seed=3)
    assert np.array_equal(a1, a2) and np.array_equal(c1, c2)
    assert a1.dtype == np.int64 and d1.dtype == np.float32 and c1.shape == (5, 384)
    nearest = np.argmin(((x[:, None, :] - c1[None]) ** 2).sum(-1), axis=1)
    assert np.array_equal(nearest, a1)
    assert np.allclose(d1, np.linalg.norm(x - c1[a1], axis=1), atol=1e-4)
    assert kmeans(x[:3], 10)[2].shape[0] == 3  # k capped at n
    a, d, c = kmeans(x, 1)
    assert (a == 0).all() and np.allclose(c[0], x.mean(0))
    assert kmeans_k(20_000) == 100 and kmeans_k(10, 50) == 10

    sims, pos = knn(x, 4)
    brute = x @ x.T
    np.fill_diagonal(brute, -np.inf)
    assert not (pos == np.arange(len(x))[:, None]).any()
    assert np.allclose(sims, -np.sort(-brute, axis=1)[:, :4], atol=1e-5)


def test_knn_ivf_path(gsm_vectors: np.ndarray) -> None:
    """Above ``exact_max`` rows k-NN goes through a faiss IVF index: still never the row itself, close to exact."""
    x = gsm_vectors
    sims, pos = knn(x, 5, exact_max=10, nprobe=64)
    brute = x @ x.T
    np.fill_diagonal(brute, -np.inf)
    exact = np.argsort(-brute, axis=1)[:, :5]
    assert not (pos == np.arange(len(x))[:, None]).any()
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(pos.tolist(), exact.tolist(), strict=True)])
    assert recall >= 0.9


# ---------------------------------------------------------------- the static model (minilm-static)


def test_distill_is_offline_cached_and_recorded(static_dir: Path) -> None:
    from pipeline.models import resolve_model
    from pipeline.static_embeddings import is_static_dir, model_cache_dir, static_model_dir

    assert static_dir == static_model_dir() and static_dir.is_relative_to(model_cache_dir())
    assert model_cache_dir() == Path(os.environ["SFT_CURATE_MODEL_CACHE"])
    assert is_static_dir(static_dir) and resolve_model("minilm-static").path == static_dir.resolve()
    meta = json.loads((static_dir / "sft_curate_distill.json").read_text())
    assert meta["source"] == "minilm" and meta["source_id"] == model_id("minilm")
    stamp = (static_dir / "model.safetensors").stat().st_mtime_ns
    t = time.perf_counter()
    again = subprocess.run([sys.executable, "-m", "pipeline.cli", "distill"], capture_output=True, text=True,
                           env=_offline_env(), timeout=300)
    assert again.returncode == 0 and Path(again.stdout.strip()) == static_dir
    assert (static_dir / "model.safetensors").stat().st_mtime_ns == stamp  # cached: not distilled again
    assert time.perf_counter() - t < 60
    # the directory is a model reference like any other (what a config records as ``model:``)
    assert embedding_dim(str(static_dir)) == embedding_dim("minilm-static") == 256


def test_static_encode_matches_a_per_row_reference(static_dir: Path, gsm: pl.DataFrame) -> None:
    """The vectorised encoder equals the plain definition: the mean of the (weighted) token vectors of
    the first 256 known tokens, L2-normalised; independent of batch composition; deterministic."""
    from pipeline.static_embeddings import MAX_TOKENS, load_static

    m = load_static(static_dir)
    texts = gsm.select(view_expr("both").alias("t"))["t"].to_list()[:40]
    texts = [texts[0] * 40, *texts[1:], "", "zzzqqq \u2603 \u00e9t\u00e9"]  # one past 256 tokens, one empty
    x = encode(texts, model="minilm-static")
    assert x.dtype == np.float32 and x.shape == (len(texts), 256)
    ref = np.zeros_like(x)
    for i, t in enumerate(texts):
        ids = [j for j in m.tokenizer.encode(t[: MAX_TOKENS * m.median_token_length], add_special_tokens=False).ids
               if j != m.unk][:MAX_TOKENS]
        if ids:
            v = (m.emb[m.mapping[ids]] * m.weights[ids][:, None]).mean(axis=0)
            ref[i] = v / np.linalg.norm(v)
    assert np.allclose(x, ref, atol=1e-5)
    assert not x[-2].any() and np.allclose(np.linalg.norm(np.delete(x, -2, axis=0), axis=1), 1.0, atol=1e-5)
    assert np.array_equal(encode(texts, model="minilm-static"), x)  # deterministic
    assert np.array_equal(encode(texts[5:6], model="minilm-static")[0], x[5])  # no padding: batch-independent


def test_auto_is_static_on_cpu_and_minilm_on_a_gpu(static_dir: Path) -> None:
    assert pick_model("auto", "cpu") == "minilm-static" and pick_model("auto", "cuda") == "minilm"
    assert pick_model("minilm", "cpu") == "minilm" and pick_model(str(static_dir), "cuda") == str(static_dir)
    d = describe_model("auto", "cpu")
    assert d["model"] == "minilm-static" and d["id"] == model_id("minilm-static") and "static" in d["backend"]
    assert "why" in d and "why" not in describe_model("minilm", "cpu")
    assert describe_model("minilm", "cpu")["backend"] == "sentence-transformers"


def test_sidecar_keeps_models_apart(tmp_path: Path, static_dir: Path, gsm: pl.DataFrame,
                                    gsm_vectors: np.ndarray) -> None:
    ctx = RunContext(run_dir=tmp_path, device="cpu")
    s_static, s_minilm = store_for(ctx, "auto", "instruction"), store_for(ctx, "minilm", "instruction")
    assert s_static is not None and s_minilm is not None
    assert s_static.model == "minilm-static" and s_static.dir != s_minilm.dir
    xs = embed_frame(gsm, store=s_static)  # model auto + a store: the store's model
    s_minilm.put(gsm["id"].to_list(), gsm_vectors)
    bare = gsm.select("id", "source", "source_row")
    assert vectors_for(bare, ctx, model="minilm").shape == (gsm.height, 384)
    vs = vectors_for(bare, ctx)  # auto on a CPU run: the static vectors, never MiniLM's
    assert vs.shape == (gsm.height, 256) and np.array_equal(vs, xs)
    assert len(s_static) == len(s_minilm) == gsm.height
    with pytest.raises(ValueError, match="store"):
        embed_frame(gsm, model="minilm", store=s_static)
