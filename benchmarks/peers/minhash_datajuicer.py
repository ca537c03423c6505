"""Peer: data-juicer 1.6 as its users run it - ``dj-process --config`` with one
``document_minhash_deduplicator`` (word 5-gram shingles after lower-casing, punctuation removed by
``ignore_pattern``, ``num_bands`` x ``num_rows_per_band`` LSH, ``np`` = every core). data-juicer keeps
one row per union-find cluster of LSH collisions (no similarity check); the kept rows it exports are
read back to name the removed ones (inside the timed wall)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _peer_common import args, datajuicer  # noqa: E402

src, dst, cfg = args()
bands, rows = cfg.get("bands", 10), cfg.get("rows", 12)
datajuicer(src, dst, {"document_minhash_deduplicator": {
    "tokenization": "space", "window_size": 5, "lowercase": True, "ignore_pattern": r"\p{P}",
    "num_permutations": bands * rows, "jaccard_threshold": cfg.get("threshold", 0.7),
    "num_bands": bands, "num_rows_per_band": rows}})
