"""Decontamination: drop training rows that overlap benchmark items (n-grams, optionally embeddings).

Surface matching as in GPT-3 (Brown et al. 2020) and the surface half of Riddell et al.,
"Quantifying Contamination in Evaluating Code Generation Capabilities of Language Models" (2024):
a row is contaminated by a benchmark item when they share a word ``n``-gram (default 13) after
normalisation (NFKC, case fold, punctuation and whitespace folded). The semantic half is optional
(``embedding: true``): cosine similarity of sentence embeddings (MiniLM by default: its threshold is calibrated for MiniLM, and paraphrases of benchmark items are where a static model is weakest) at or above
``embed_threshold`` also flags a row, which catches rewordings that break every n-gram.

Short benchmark items are handled so they neither escape nor flag everything: an item with fewer
than ``n`` but at least ``min_item_words`` words is matched as a whole (the row must contain all its
words in order); an item shorter than ``min_item_words`` words (e.g. "Continue.") is matched only
when a row's whole instruction equals it.

Benchmarks are any files :func:`pipeline.io.readers.read_table` reads (JSON/JSONL(.gz)/Parquet,
any supported record format: GSM8K question/answer, HumanEval prompt/canonical_solution,
Self-Instruct user-oriented instructions, ...). Paths in a config are resolved against the config
file's directory; from Python, absolute or relative to the current directory. The benchmark text is
``benchmark_view`` (default the instruction: question, prompt), the row text is ``view`` (default
every turn of the conversation). An item's id is its ``id``/``task_id`` field when the file has one,
else its 0-based record index (``gsm8k_test:1042`` is line 1042 of the GSM8K test file).

Columns: ``decontam_match`` (``benchmark:item`` of the best match, null when clean),
``decontam_ngrams`` (distinct shared n-grams with that item), ``decontam_coverage`` (the share of
the item's n-grams found in the row), ``decontam_sim`` (best embedding cosine, with ``embedding``).
A flagged row is dropped with ``decontam:<benchmark>:<item>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from pipeline.dedup import HASH_SEED, normalize_text, shingle_hashes, shingles_from_words, word_hashes
from pipeline.stages.base import Col, LocalPath, Resources, Stage, StageParams, drop_where
from pipeline.stages.functions import stage_function
from pipeline.text import text_expr

RowView = Literal["instruction", "response", "conversation", "first_instruction", "last_response", "both"]


class Benchmark(StageParams):
    path: LocalPath
    name: str | None = Field(None, description="label in drop reasons (default: file name without extensions)")
    format: str = Field("auto", description="record format of the file (see pipeline.io.formats)")
    view: RowView | None = Field(None, description="benchmark text (default: the stage's benchmark_view)")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        base = Path(self.path).name
        for suf in (".gz", ".jsonl", ".json", ".ndjson", ".parquet"):
            base = base.removesuffix(suf)
        return base


class DecontamParams(StageParams):
    benchmarks: list[Benchmark] = Field(..., min_length=1, description="benchmark files (or {path, name, format, view})")
    n: int = Field(13, ge=1, le=64, description="words per n-gram")
    view: RowView = Field("both", description="row text checked: both = instruction and response")
    benchmark_view: RowView = Field("instruction", description="benchmark text: instruction = question/prompt")
    min_item_words: int = Field(8, ge=1, description="shorter items only match an identical instruction")
    embedding: bool = Field(False, description="also flag rows by embedding cosine similarity")
    embed_threshold: float = Field(0.9, gt=0.0, le=1.0, description="with embedding: flag rows whose cosine similarity to a benchmark item is at least this")
    model: str = Field("minilm", description="embedding model for the semantic check")
    embed_view: RowView = Field("instruction", description="row text embedded for the semantic check")
    batch_size: int = Field(64, ge=1, description="rows per embedding batch")

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _paths(cls, v: Any) -> Any:
        if isinstance(v, (str, Path)):
            v = [v]
        return [{"path": str(b)} if isinstance(b, (str, Path)) else b for b in v]


def view_text(view: str) -> pl.Expr:
    if view == "both":
        return pl.concat_str([text_expr("instruction"), text_expr("response")], separator="\n\n")
    return text_expr(view)


def _item_ids(rows: pl.DataFrame) -> pl.Series:
    """Each benchmark row's id: its ``id`` / ``task_id`` field when present, else the record index.

    The fields are user columns of the benchmark read (``id`` is the tool's own name, so the input's
    ``id`` is ``user.id``)."""
    return rows.select(item_id_expr(rows.columns).alias("i"))["i"]


def item_id_expr(columns: list[str]) -> pl.Expr:
    """A benchmark row's id from the columns a read of it has (see :func:`_item_ids`)."""
    cands = [pl.col(c).cast(pl.String) for c in ("user.id", "task_id") if c in columns]
    return pl.coalesce([*cands, pl.col("source_row").cast(pl.String)])


class Decontaminate(Stage):
    """Flag and drop rows that share a word n-gram (or, optionally, an embedding) with a benchmark item."""

    compiled_kernels = True

    name = "decontaminate"
    reason_prefix = "decontam"
    Params = DecontamParams
    requires_columns = ("messages",)
    columns = {
        "decontam_match": Col(pl.String, "internal"),
        "decontam_ngrams": Col(pl.Int64, "score"),
        "decontam_coverage": Col(pl.Float32, "score"),
        "decontam_sim": Col(pl.Float32, "score"),
    }
    resources = Resources(cpus=1.0, memory_gb=1.0)

    def requires(self) -> tuple[str, ...]:
        # the semantic check keys its embeddings by row id
        return (*super().requires(), "id") if self.params.embedding else super().requires()

    def setup(self, ctx: Any = None) -> None:
        super().setup(ctx)
        self._build_index()

    # ------------------------------------------------------------ the benchmark index
    def _build_index(self) -> None:
        from pipeline.io.readers import read_table

        p = self.params
        items, grams, shorts = [], [], []
        offset = 0
        self._summary: dict[str, Any] = {"benchmarks": {}}
        for b in p.benchmarks:
            rows, rejects = read_table(b.path, fmt=b.format, name=b.label)
            ids = _item_ids(rows)
            norm = normalize_text(rows.select(view_text(b.view or p.benchmark_view).alias("t"))["t"])
            nwords = norm.str.count_matches(r"\S+").to_numpy()
            item = np.arange(offset, offset + rows.height, dtype=np.int64)
            items.append(pl.DataFrame({"item": item, "label": (f"{b.label}:" + ids).alias("label"),
                                       "words": nwords.astype(np.int64)}))
            long_ = nwords >= p.min_item_words
            flat, off = shingle_hashes(norm, p.n)
            cnt = np.diff(off)
            width = np.minimum(nwords, p.n)
            g = pl.DataFrame({"h": flat, "item": np.repeat(item, cnt), "w": np.repeat(width, cnt)})
            grams.append(g.filter(pl.Series(np.repeat(long_, cnt))))
            shorts.append(pl.DataFrame({"t": norm, "item": item}).filter(pl.Series(~long_) & (pl.col("t") != "")))
            self._summary["benchmarks"][b.label] = {
                "items": rows.height, "rejected": rejects.height,
                "short_items": int((~long_).sum()), "whole_item_ngrams": int((long_ & (nwords < p.n)).sum()),
            }
            offset += rows.height
        self._items = pl.concat(items)
        index = pl.concat(grams).unique(["h", "item"])
        self._item_grams = index.group_by("item").agg(pl.len().alias("item_ngrams"))
        self._index = index
        self._widths = sorted(set(index["w"].unique().to_list()))
        # per width: the (hash, item) pairs and the distinct hashes a shard's shingles are tested against
        self._by_width: dict[int, tuple[pl.DataFrame, pl.Series]] = {}
        for w in self._widths:
            pairs = index.filter(pl.col("w") == w).select("h", "item")
            self._by_width[w] = (pairs, pairs["h"].unique().implode())
        self._short = pl.concat(shorts).select(pl.col("t").hash(seed=HASH_SEED).alias("h"), "item")
        self._bench_vecs: np.ndarray | None = None
        if p.embedding:
            from pipeline.embeddings import encode

            texts = []
            for b in p.benchmarks:
                rows, _ = read_table(b.path, fmt=b.format, name=b.label)
                texts += rows.select(view_text(b.view or p.benchmark_view).fill_null("").alias("t"))["t"].to_list()
            self._bench_vecs = encode(texts, model=p.model, device=self.ctx.device, batch_size=p.batch_size)

    def summary(self) -> dict[str, Any]:
        return dict(getattr(self, "_summary", {}))

    def models(self) -> dict[str, Any]:
        if not self.params.embedding:
            return {}
        from pipeline.embeddings import describe_model

        return {"embedding": describe_model(self.params.model, self.ctx.device)}

    # ------------------------------------------------------------ per shard
    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        if not hasattr(self, "_index"):
            self._build_index()
        norm = df.select(view_text(p.view).alias("t"))["t"]  # shingle_hashes normalises
        hits = []
        words = word_hashes(norm) if self._widths else None
        for w in self._widths:
            flat, off = shingles_from_words(*words, int(w))  # type: ignore[misc]
            idx, hashes = self._by_width[w]
            # only the shingles that occur in a benchmark item become rows of a frame (a shard has
            # millions of shingles, the benchmarks' index a few hundred thousand)
            pos = pl.Series(flat).is_in(hashes).arg_true().to_numpy().astype(np.int64)
            rows = np.searchsorted(off, pos, side="right") - 1
            sh = pl.DataFrame({"row": rows, "h": flat[pos]})
            hits.append(sh.join(idx, on="h", how="inner").unique(["row", "h", "item"]))
        pairs = (
            pl.concat(hits).group_by(["row", "item"]).agg(pl.len().alias("ngrams"))
            if hits else pl.DataFrame(schema={"row": pl.Int64, "item": pl.Int64, "ngrams": pl.UInt32})
        )
        # items too short for n-grams: the row's whole instruction must equal them
        instr = pl.DataFrame({"h": normalize_text(df.select(text_expr("instruction"))[:, 0]).hash(seed=HASH_SEED)})
        instr = instr.with_row_index("row")
        exact = instr.with_columns(pl.col("row").cast(pl.Int64)).join(self._short, on="h", how="inner")
        exact = exact.select("row", "item", pl.lit(1, dtype=pl.UInt32).alias("ngrams"))
        pairs = pl.concat([pairs.with_columns(pl.col("ngrams").cast(pl.UInt32)), exact])
        pairs = pairs.join(self._item_grams, on="item", how="left").with_columns(
            (pl.col("ngrams") / pl.col("item_ngrams").fill_null(1)).clip(0.0, 1.0).alias("coverage")
        )
        best = (
            pairs.sort(["row", "coverage", "ngrams", "item"], descending=[False, True, True, False])
            .unique("row", keep="first", maintain_order=True)
            .join(self._items.select("item", "label"), on="item", how="left")
        )
        full = pl.DataFrame({"row": np.arange(df.height, dtype=np.int64)}).join(
            best.select("row", "label", "ngrams", "coverage"), on="row", how="left"
        ).sort("row")
        out = df.with_columns(
            full["label"].alias("decontam_match"),
            full["ngrams"].cast(pl.Int64).alias("decontam_ngrams"),
            full["coverage"].cast(pl.Float32).alias("decontam_coverage"),
        )
        return self._embedding_check(out)

    def _embedding_check(self, df: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        if not p.embedding or self._bench_vecs is None:
            return df.with_columns(pl.lit(None, dtype=pl.Float32).alias("decontam_sim"))
        from pipeline.embeddings import embed_frame, store_for

        rows = np.flatnonzero(df["keep"].to_numpy()) if "keep" in df.columns else np.arange(df.height)
        sim = np.full(df.height, np.nan, dtype=np.float32)
        if len(rows):
            store = store_for(self.ctx, p.model, p.embed_view)
            x = embed_frame(df[rows.tolist()], view=p.embed_view, model=p.model, store=store,
                            device=self.ctx.device, batch_size=p.batch_size)
            s = x @ self._bench_vecs.T
            arg = np.argmax(s, axis=1)
            sim[rows] = s[np.arange(len(rows)), arg]
            item = np.full(df.height, -1, dtype=np.int64)
            item[rows] = arg
        else:
            item = np.full(df.height, -1, dtype=np.int64)
        labels = self._items.sort("item")["label"]
        hit = (sim >= p.embed_threshold) & (item >= 0)
        emb_label = pl.repeat(None, df.height, dtype=pl.String, eager=True)
        if hit.any():
            emb_label = emb_label.scatter(np.flatnonzero(hit), labels.gather(item[hit]))
        return df.with_columns(
            pl.Series("decontam_sim", sim).fill_nan(None).cast(pl.Float32),
            pl.col("decontam_match").fill_null(emb_label),
        )

    def decide(self, df: pl.DataFrame) -> pl.DataFrame:
        return drop_where(df, pl.col("decontam_match").is_not_null(),
                          pl.concat_str([pl.lit(f"{self.reason_prefix}:"), pl.col("decontam_match")]))


decontaminate = stage_function(Decontaminate)
