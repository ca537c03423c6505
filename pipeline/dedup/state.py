"""Incremental dedup state: Parquet tables plus a JSON header (:class:`StateMeta`), checked on load
against the params and hash functions that wrote them (:class:`StateMismatch`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.io.shards import write_parquet_atomic

# ---------------------------------------------------------------- incremental state

STATE_FORMAT = 1


class StateMismatch(ValueError):
    """Saved dedup state that cannot be used with this stage's params or hash functions."""


@dataclass
class StateMeta:
    """The JSON header of a dedup state directory."""

    kind: str
    params: dict[str, Any]
    hash_probe: str
    rows: int = 0
    next_kid: int = 0
    format: int = STATE_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)


def save_state_files(path: Path, meta: StateMeta, tables: dict[str, pl.DataFrame]) -> None:
    """Write ``<name>.parquet`` for each table and ``meta.json`` last (its presence marks a whole state)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "meta.json").unlink(missing_ok=True)
    for name, t in tables.items():
        write_parquet_atomic(t, path / f"{name}.parquet")
    tmp = path / ".meta.json.tmp"
    tmp.write_text(json.dumps(meta.__dict__, indent=2, sort_keys=True))
    tmp.replace(path / "meta.json")


def load_state_files(
    path: Path, kind: str, params: dict[str, Any], names: Sequence[str], probe: str
) -> tuple[StateMeta, dict[str, pl.DataFrame]] | None:
    """Read a state directory written by :func:`save_state_files`; None when there is none.

    Raises :class:`StateMismatch` when it was written by another kind of stage, with other params
    (those in ``params``) or under other hash functions.
    """
    mpath = path / "meta.json"
    if not mpath.exists():
        return None
    raw = json.loads(mpath.read_text())
    meta = StateMeta(**raw)
    if meta.format != STATE_FORMAT or meta.kind != kind:
        raise StateMismatch(f"{path}: state of kind {meta.kind!r} format {meta.format}, expected {kind!r} format {STATE_FORMAT}")
    diff = {k: (meta.params.get(k), v) for k, v in params.items() if meta.params.get(k) != v}
    if diff:
        pretty = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise StateMismatch(f"{path}: state was written with other params ({pretty}); start a fresh state")
    if meta.hash_probe != probe:
        raise StateMismatch(
            f"{path}: state was written under other hash functions (probe {meta.hash_probe}, now {probe}: "
            "a polars or sft-curate upgrade); rebuild it by rerunning the kept rows with save_state"
        )
    tables = {n: pl.read_parquet(path / f"{n}.parquet") for n in names if (path / f"{n}.parquet").exists()}
    return meta, tables

