"""Which columns of a run are real scores (worth quantiles), and which are keys, ids and labels.

``curate inspect`` and ``curate export`` summarise scores; a quantile of ``exact_hash``,
``source_row``, a cluster id or a selection rank means nothing. When a stage declares the roles of
its columns (``manifest["stages"][i]["contract"]``), those roles decide; columns no contract covers
fall back to a name and type heuristic: numeric, and not named like a hash, id, row, rank, cluster,
group or component label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

#: roles (as a stage contract names them) whose columns are scores
SCORE_ROLES = frozenset({"score", "metric", "quality", "measure", "count", "length"})
#: name patterns of numeric columns that are keys or labels, not scores
NOT_SCORE_NAME = re.compile(
    r"(^|_)(hash|id|ids|row|rows|rank|cluster|group|component|seed|index|idx|label|shard)$|^dup_of|^source_row$"
)


def contract_roles(stages: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Column -> role from the ``contract`` entries of a manifest's stages (any of the shapes
    ``{"columns"|"writes"|"outputs"|"roles": {col: role | {"role": role}}}``); empty without contracts."""
    roles: dict[str, str] = {}
    for st in stages:
        contract = st.get("contract") if isinstance(st, Mapping) else None
        if not isinstance(contract, Mapping):
            continue
        for key in ("columns", "writes", "outputs", "roles"):
            cols = contract.get(key)
            if isinstance(cols, Mapping):
                for name, spec in cols.items():
                    role = spec.get("role") if isinstance(spec, Mapping) else spec
                    if isinstance(role, str):
                        roles[str(name)] = role
            elif isinstance(cols, list):
                for spec in cols:
                    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str) and isinstance(spec.get("role"), str):
                        roles[spec["name"]] = spec["role"]
    return roles


def is_score(name: str, dtype: pl.DataType, roles: Mapping[str, str] | None = None) -> bool:
    """Whether column ``name`` of type ``dtype`` is a score (see the module docstring)."""
    if not dtype.is_numeric() or name.startswith("_"):
        return False
    if roles and name in roles:
        return roles[name].lower() in SCORE_ROLES
    return NOT_SCORE_NAME.search(name) is None


def score_columns(schema: Mapping[str, pl.DataType], manifest: Mapping[str, Any] | None = None) -> list[str]:
    """The score columns of ``schema`` in schema order, using the manifest's stage contracts when present."""
    roles = contract_roles((manifest or {}).get("stages") or [])
    return [n for n, t in schema.items() if is_score(n, t, roles)]
