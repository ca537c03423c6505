"""Score cache: per-turn scores keyed by (row id, model id, prompt-template hash).

Each kind of scoring pass (``lik``: log-likelihood and entropy of an assistant turn given its
context; ``lik_uncond``: the same turn with no instruction; ``rating-<hash>``: a rating prompt)
has its own directory ``<root>/<kind>/<model_id>/<template_hash>/part-*.parquet`` holding rows of
``id, turn`` plus the kind's values. Row ids are content hashes of the messages, so identical
conversations share entries across sources and runs; a different model or template (or truncation
setting, which is part of the template hash) lands in another directory and is scored again.

Writes are atomic new part files (safe with several processes); lookups scan only the ids asked
for. Many small parts are compacted into one when there are more than :data:`COMPACT_AT`.
Failed units (an ``error`` in the response) are never cached, so a rerun retries them.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.io.shards import write_parquet_atomic

COMPACT_AT = 64


def template_hash(spec: dict[str, Any]) -> str:
    """Short stable hash of everything besides the model that shapes a score."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ScoreCache:
    """Per-turn scores of one kind, one model and one template; a no-op when ``root`` is None."""

    def __init__(self, root: Path | str | None, kind: str, model_id: str, template: str) -> None:
        self.dir = Path(root) / kind / model_id / template if root is not None else None
        self.kind = kind
        self.hits = 0
        self.writes = 0

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    def _parts(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.parquet")) if self.dir is not None and self.dir.exists() else []

    def lookup(self, ids: pl.Series | list[str]) -> pl.DataFrame | None:
        """Cached rows (``id``, ``turn``, values) for ``ids``; None when nothing is cached."""
        ids = ids if isinstance(ids, pl.Series) else pl.Series("id", ids, dtype=pl.String)
        for attempt in range(3):
            parts = self._parts()
            if not parts:
                return None
            try:
                found = (
                    pl.scan_parquet(parts)
                    .filter(pl.col("id").is_in(ids.implode()))
                    .unique(["id", "turn"], keep="last", maintain_order=True)
                    .collect()
                )
                break
            except FileNotFoundError:  # another process compacted the parts under us: list them again
                if attempt == 2:
                    raise
        self.hits += found.height
        return found if found.height else None

    def put(self, rows: pl.DataFrame) -> None:
        """Append ``rows`` (must hold ``id`` and ``turn``)."""
        if self.dir is None or rows.height == 0:
            return
        write_parquet_atomic(rows, self.dir / f"part-{uuid.uuid4().hex}.parquet")
        self.writes += rows.height
        parts = self._parts()
        if len(parts) > COMPACT_AT:
            merged = pl.concat([pl.read_parquet(p) for p in parts], how="diagonal_relaxed")
            merged = merged.unique(["id", "turn"], keep="last", maintain_order=True)
            write_parquet_atomic(merged, self.dir / f"part-{uuid.uuid4().hex}.parquet")
            for p in parts:
                p.unlink(missing_ok=True)
