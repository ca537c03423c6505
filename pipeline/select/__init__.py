"""Selectors under a budget, as plain functions: ``select.kmq(table, budget=1000, score="deita_score")``.

Each returns the table with ``selected``, ``select_reason`` and ``select_rank`` filled.
"""

from __future__ import annotations

import importlib
from typing import Any

_FUNCS = {
    "random": "pipeline.select.baseline:random",
    "top_k": "pipeline.select.baseline:top_k",
    "long_is_more": "pipeline.select.long_is_more:long_is_more",
    "kmq": "pipeline.select.kmq:kmq",
    "repr_filter": "pipeline.select.repr_filter:repr_filter",
    "rds_plus": "pipeline.select.rds:rds_plus",
    "ds2": "pipeline.select.ds2:ds2",
}


def __getattr__(name: str) -> Any:
    if name in _FUNCS:
        mod, _, attr = _FUNCS[name].partition(":")
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'pipeline.select' has no attribute {name!r}")


__all__ = list(_FUNCS)
