"""Shared real samples for the selector tests, embedded once per session into one sidecar store.

* ``t0_pool``: a miniature of ``t0_templated_50k.parquet`` that keeps the file's redundancy: every row
  of 150 randomly chosen source passages (the file renders one passage through several templates
  and questions, so most of its rows have near-duplicates). Columns ``template`` (the input's own field),
  ``task`` (the template's source dataset) and ``passage`` are added for the checks.
* ``mixed_pool``: GSM8K train, Code Alpaca and GPTeacher roleplay rows, ``origin`` naming the file.

Both are embedded with the real MiniLM through the real ``embed`` stage into ``emb_cache``; selectors
get ``cache_dir=emb_cache`` and read the vectors back instead of embedding again.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline.io.readers import read_table
from pipeline.stages import embed
from pipeline.stages.length_filter import Length

#: T0 templates are named ``<source dataset>_<template>``; these are the source datasets of the file.
T0_TASKS = (
    "adversarial_qa", "ag_news", "amazon_polarity", "app_reviews", "cnn_dailymail", "common_gen", "commonsense_qa",
    "cosmos_qa", "dbpedia_14", "dream", "duorc", "gigaword", "glue_mrpc", "glue_qqp", "imdb", "kilt_tasks_hotpotqa",
    "multi_news", "paws", "qasc", "quarel", "quartz", "quoref", "ropes", "rotten_tomatoes", "samsum", "sciq",
    "social_i_qa", "trec", "wiki_bio", "wiki_hop", "wiki_qa", "wiqa", "xsum", "yelp_review_full",
)


def t0_labels(df: pl.DataFrame) -> pl.DataFrame:
    """Add ``template``, ``task`` and ``passage`` (longest line of the prompt, the rendered source text)."""
    user = pl.col("messages").list.first().struct.field("content")
    longest = user.str.split("\n").list.eval(pl.element().sort_by(pl.element().str.len_chars(), descending=True).first())
    return df.with_columns(
        pl.col("template").alias("template"),
        pl.col("template").str.extract("^(" + "|".join(T0_TASKS) + ")").alias("task"),
        longest.list.first().str.slice(0, 120).alias("passage"),
    )


@pytest.fixture(scope="session")
def emb_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="session")
def t0_pool(real_dir: Path, emb_cache: Path) -> pl.DataFrame:
    rows, rejects = read_table(str(real_dir / "t0_templated_50k.parquet"))
    assert rejects.height == 0
    rows = t0_labels(rows)
    passages = rows.select("passage").unique().sort("passage").sample(150, seed=0)
    pool = rows.join(passages, on="passage", how="semi", maintain_order="left")
    pool = Length(min_response_tokens=None).score(pool)
    return embed(pool, cache_dir=emb_cache).drop("keep", "drop_reason")


@pytest.fixture(scope="session")
def mixed_pool(real_dir: Path, emb_cache: Path) -> pl.DataFrame:
    parts = []
    for name, n in (("gsm8k_train.jsonl.gz", 150), ("code_alpaca_2k.json.gz", 150), ("gpteacher_roleplay.json.gz", 150)):
        rows, _ = read_table(str(real_dir / name))
        parts.append(rows.sample(n, seed=1).with_columns(pl.lit(name.split(".")[0]).alias("origin")))
    pool = pl.concat(parts)
    return embed(pool, cache_dir=emb_cache).drop("keep", "drop_reason")
