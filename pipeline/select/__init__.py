"""Selectors under a budget, as plain functions: ``select.kmq(table, budget=1000, score="deita_score")``.

Each returns the table with ``selected``, ``select_reason`` and ``select_rank`` filled. The
functions are imported eagerly (their modules import only NumPy/Polars; faiss and torch load when
a selector runs), so ``select.kmq`` is always the function, never the submodule of the same name.
``select_random``/``select_top_k`` are the config names of ``random``/``top_k``; every selector is
also importable from :mod:`pipeline.stages` under its config name.
"""

from __future__ import annotations

from pipeline.select.baseline import random, select_random, select_top_k, top_k
from pipeline.select.ds2 import ds2
from pipeline.select.kmq import kmq
from pipeline.select.long_is_more import long_is_more
from pipeline.select.rds import rds_plus
from pipeline.select.repr_filter import repr_filter

__all__ = ["random", "top_k", "select_random", "select_top_k", "long_is_more", "kmq", "repr_filter", "rds_plus", "ds2"]
