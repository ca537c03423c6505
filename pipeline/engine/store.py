"""The content-addressed work store: where step outputs live between steps and across runs.

Layout: ``<root>/<stage>/<kind>/<key>.parquet`` (a per-shard step's delta),
``<root>/<stage>/global/<key>/`` (a global step's per-shard slices and state) and
``<root>/_ingest/<key>/`` (a source's canonical shards and rejects), the directories committed by
writing ``_meta.json`` last and renaming. Any entry may be deleted at any time; it is then
recomputed. A file whose footer does not read counts as missing; one whose pages do not decode
raises :class:`StoreCorruption` and is removed with its whole entry, so a rerun recomputes it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.atomic import atomic_path, temp_name, write_json_atomic
from pipeline.io.shards import write_table

META_KEY = b"sft_curate"
#: temps younger than this may belong to a live run sharing the store
TEMP_MAX_AGE_S = 6 * 3600



class WorkStore:
    """Content-addressed step outputs: ``<root>/<stage>/<kind>/<key>.parquet`` (per shard),
    ``<root>/<stage>/global/<key>/`` and ``<root>/_ingest/<key>/`` (directories committed by rename).
    Any entry may be deleted at any time; it is then recomputed."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def step_path(self, stage: str, kind: str, key: str) -> Path:
        return self.root / stage / kind / f"{key}.parquet"

    def global_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / "global" / key

    def ingest_dir(self, key: str) -> Path:
        return self.root / "_ingest" / key

    @staticmethod
    def done(entry: Path) -> bool:
        return (entry / "_meta.json").is_file()

    @staticmethod
    def tmp_for(entry: Path) -> Path:
        tmp = temp_name(entry)
        tmp.mkdir(parents=True)
        return tmp

    @staticmethod
    def commit(tmp: Path, entry: Path, meta: dict[str, Any]) -> None:
        """Write ``_meta.json`` last, then rename the temp dir into place (a racing twin may win)."""
        write_json_atomic(meta, tmp / "_meta.json")
        if entry.exists() and not WorkStore.done(entry):
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not WorkStore.done(entry):
                raise
            shutil.rmtree(tmp, ignore_errors=True)

    def sweep_temps(self, max_age_s: float = TEMP_MAX_AGE_S) -> int:
        """Remove temp files/dirs left by killed processes; returns how many.

        The store is shared by runs (and by the tasks of one run on other machines), so only temps
        older than ``max_age_s`` go: a young one may be another live run's write in progress."""
        n = 0
        if not self.root.is_dir():
            return 0
        now = time.time()
        for p in self.root.rglob(".*.tmp"):
            try:
                if now - p.stat().st_mtime < max_age_s:
                    continue
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                n += 1
            except FileNotFoundError:
                continue
        return n

    def fingerprint_cache(self) -> Path:
        """Where content hashes of input files persist across processes (see :mod:`pipeline.io.fingerprint`)."""
        return self.root / "_fingerprints"


class StoreCorruption(RuntimeError):
    """A work-store file could not be read; it has been removed so that a rerun recomputes it."""

    def __init__(self, path: str | Path, err: BaseException) -> None:
        self.path = str(path)
        super().__init__(f"work-store file {path} is unreadable ({type(err).__name__}: {err}); it was removed, "
                         "rerun (same run id) to recompute it")


def discard_entry(path: str | Path) -> None:
    """Remove a work-store entry: a step file, or the whole committed directory (ingest or global
    result, marked by ``_meta.json``) it belongs to, so the store never holds half an entry."""
    path = Path(path)
    if (path.parent / "_meta.json").is_file():
        shutil.rmtree(path.parent, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def guarded(path: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` (a read of ``path``), turning an unreadable or vanished file into :class:`StoreCorruption`."""
    try:
        return fn()
    except (OSError, pl.exceptions.PolarsError, pa.ArrowException) as e:
        discard_entry(path)
        raise StoreCorruption(path, e) from e


def write_cache_file(table: pa.Table | pl.DataFrame, path: Path) -> Path:
    """Write a work-store file atomically (temp name + rename), without fsync.

    A killed process (even ``kill -9``) loses nothing the page cache holds, which is what resume
    needs; fsync only guards against an OS crash, after which the store (a cache) can be deleted.
    It halves the cost of a small step (measured: ~1.6 ms per fsync, ~1 per step and shard).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(table, pl.DataFrame):
        table = table.to_arrow()
    with atomic_path(path) as tmp:
        write_table(table, tmp)
    return path


def write_delta(df: pl.DataFrame, path: Path, meta: dict[str, Any]) -> Path:
    table = df.to_arrow()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    return write_cache_file(table, path)


def step_meta(path: str | Path) -> dict[str, Any]:
    md = pq.read_schema(path).metadata or {}
    return json.loads(md.get(META_KEY, b"{}"))


def cached_meta(path: Path) -> dict[str, Any] | None:
    """A stored step's metadata, or None when it is missing or its footer is unreadable (then removed)."""
    if not path.is_file():
        return None
    try:
        return step_meta(path)
    except (OSError, pa.ArrowException, ValueError):
        discard_entry(path)
        return None
