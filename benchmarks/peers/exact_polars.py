"""Peer: exact dedup as a Polars user writes it - lower-case, fold punctuation, symbols and white
space into single spaces, keep the first row of each normalised text (``is_first_distinct``, all
cores)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import polars as pl  # noqa: E402
from _peer_common import args, report  # noqa: E402

src, dst, _ = args()
df = pl.read_parquet(src, columns=["row", "text"])
key = pl.col("text").str.normalize("NFKC").str.to_lowercase().str.replace_all(r"[\p{P}\p{S}\s]+", " ").str.strip_chars()
removed = df.filter(~key.is_first_distinct()).select("row")
removed.write_parquet(dst)
df.filter(key.is_first_distinct()).write_parquet(dst + ".kept.parquet")
report(rows=df.height, removed=removed.height)
