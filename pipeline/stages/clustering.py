"""k-means clusters of the kept rows' embeddings: ``cluster`` and ``centroid_dist`` per row.

A global stage. The per-shard step makes sure every kept row has a vector in the run's embedding
sidecar (embedding it if an ``embed`` stage did not already); the global step reads the vectors by
``id``, runs faiss k-means (on GPU when a GPU build of faiss and a GPU exist) and writes back each
kept row's cluster id and Euclidean distance to its centroid (null for dropped rows). ``k`` comes
from the config or from the rule of thumb ``sqrt(n / 2)``. Rows are clustered in ``id`` order, so
the result does not depend on shard order, and the seed is the run's unless set here.

:meth:`Cluster.summary` (written to the manifest) gives the cluster sizes and, for each column named
in ``summary_columns`` (e.g. ``deita_score``), its mean per cluster.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from pipeline.stages.base import Col, Resources, Stage, StageParams
from pipeline.stages.functions import stage_function


class ClusterParams(StageParams):
    k: int | None = Field(None, ge=1, description="clusters; default sqrt(kept rows / 2)")
    model: str = Field("auto", description="embedding model: auto (MiniLM on a GPU, minilm-static on CPU), an alias, pkg:NAME/path, or a local sentence-transformers/model2vec directory")
    view: Literal["instruction", "response", "conversation", "both", "first_instruction", "last_response"] = Field("instruction", description="text embedded: instruction, response, conversation, both, first_instruction or last_response")
    niter: int = Field(20, ge=1, description="k-means iterations")
    spherical: bool = Field(False, description="re-normalise centroids each iteration (cosine k-means)")
    seed: int | None = Field(None, description="default: the run's seed")
    summary_columns: list[str] = Field(default_factory=list, description="score columns to average per cluster")
    batch_size: int = Field(64, ge=1, description="rows per embedding batch")
    device: Literal["auto", "cpu", "cuda"] | None = Field(None, description="default: the run's device")


class Cluster(Stage):
    """faiss k-means over the kept rows (see the module docstring)."""

    name = "cluster"
    Params = ClusterParams
    scope = "global"
    columns = {"cluster": Col(pl.Int64, "internal", "global"), "centroid_dist": Col(pl.Float32, "score", "global")}
    requires_columns = ("messages", "id")  # the text embedded; vectors are stored by id
    input_params = ("summary_columns",)
    resources = Resources(cpus=2.0, memory_gb=2.0, loads_model=True)

    def global_inputs(self) -> tuple[str, ...]:
        return ("id", *self.params.summary_columns)

    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        from pipeline.embeddings import ensure_embedded

        p: ClusterParams = self.params  # type: ignore[assignment]
        ensure_embedded(df, self.ctx, p.model, p.view, np.flatnonzero(df["keep"].to_numpy()), p.device, p.batch_size)
        return df

    def score_global(self, df: pl.DataFrame) -> pl.DataFrame:
        from pipeline.embeddings import kmeans, kmeans_k, vectors_for
        from pipeline.select.base import canonical_order

        p: ClusterParams = self.params  # type: ignore[assignment]
        idx = canonical_order(df, np.flatnonzero(df["keep"].to_numpy()))
        assign = np.full(df.height, -1, dtype=np.int64)
        dist = np.full(df.height, np.nan, dtype=np.float32)
        self._summary: dict[str, Any] = {"rows": int(len(idx))}
        if len(idx):
            x = vectors_for(df, self.ctx, p.model, p.view, idx, p.device, p.batch_size)
            k = kmeans_k(len(idx), p.k)
            seed = self.ctx.seed if p.seed is None else p.seed
            gpu = "cpu" if (p.device or self.ctx.device) == "cpu" else "auto"
            a, d, _c = kmeans(x, k, seed=seed, niter=p.niter, gpu=gpu, spherical=p.spherical)
            assign[idx], dist[idx] = a, d
            sizes = np.bincount(a, minlength=k)
            means = {}
            for col in p.summary_columns:
                if col not in df.columns:
                    raise ValueError(f"cluster: summary column {col!r} not in table; columns: {', '.join(df.columns)}")
                v = df[col].cast(pl.Float64).fill_null(np.nan).to_numpy()[idx]
                ok = ~np.isnan(v)
                tot = np.bincount(a[ok], weights=v[ok], minlength=k)
                cnt = np.bincount(a[ok], minlength=k)
                means[col] = [round(float(s / c), 6) if c else None for s, c in zip(tot, cnt, strict=True)]
            self._summary.update(k=int(k), sizes=sizes.tolist(), mean_centroid_dist=float(d.mean()), means=means)
        a_s = pl.Series("cluster", assign)
        return df.with_columns(
            pl.when(a_s >= 0).then(a_s).otherwise(None).cast(pl.Int64).alias("cluster"),
            pl.Series("centroid_dist", dist).fill_nan(None).cast(pl.Float32),
        )

    def summary(self) -> dict[str, Any]:
        return dict(getattr(self, "_summary", {}))

    def models(self) -> dict[str, Any]:
        from pipeline.embeddings import describe_model

        return {"embedding": describe_model(self.params.model, self.params.device or self.ctx.device)}


cluster = stage_function(Cluster, ("k",))
