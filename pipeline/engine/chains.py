"""Shard chains: a shard is its ingest file plus one delta file per step, read back as one frame.

:func:`read_chain` reassembles a shard (later files override earlier columns of the same name);
:class:`ChainFrames` keeps the frames this process just wrote so the next segment does not read
them back; :func:`gather_chains` concatenates a few columns of every shard for a global step, and
:class:`ChainColumnReader` serves a global step's lazy inputs one shard at a time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.engine.store import guarded
from pipeline.schema import with_decision


@dataclass(frozen=True)
class ShardChain:
    """One shard: its final name, the files that make it (base, then deltas) and the key of the last."""

    name: str
    key: str
    files: tuple[str, ...]
    rows: int

    def extend(self, key: str, path: Path) -> ShardChain:
        return replace(self, key=key, files=(*self.files, str(path)))


def _schema_names(path: str) -> list[str]:
    return guarded(path, lambda: list(pl.read_parquet_schema(path)))


def read_chain(files: Iterable[str | Path], columns: Iterable[str] | None = None) -> pl.DataFrame:
    """Reassemble a shard from its chain: later files override earlier columns of the same name.

    With ``columns``, only those (that exist) are read, each from the last file that has it.
    """
    files = [str(f) for f in files]
    if columns is None:  # everything: no need to read the footers first
        series: dict[str, pl.Series] = {}
        height = None
        for f in files:
            df = guarded(f, lambda f=f: pl.read_parquet(f))
            if height is not None and df.height != height:
                raise RuntimeError(f"shard chain is inconsistent: {f} has {df.height} rows, expected {height}")
            height = df.height
            series.update({s.name: s for s in df.iter_columns()})
        return pl.DataFrame(list(series.values()))
    owner: dict[str, int] = {}
    for i, f in enumerate(files):
        for c in _schema_names(f):
            owner[c] = i
    wanted = set(columns)
    order = [c for c in owner if c in wanted]
    by_file: dict[int, list[str]] = {}
    for c in order:
        by_file.setdefault(owner[c], []).append(c)
    series = {}
    height = None
    for i, cols in sorted(by_file.items()):
        df = guarded(files[i], lambda i=i, cols=cols: pl.read_parquet(files[i], columns=cols))
        if height is not None and df.height != height:
            raise RuntimeError(f"shard chain is inconsistent: {files[i]} has {df.height} rows, expected {height}")
        height = df.height
        series.update({s.name: s for s in df.iter_columns()})
    return pl.DataFrame([series[c] for c in order])


class ChainFrames:
    """Shard chains this process just wrote, held as :func:`read_chain` would return them, so the
    next segment (or finalize) does not read back from disk what it has just written.

    Entries are keyed by the chain's file tuple (content-addressed, immutable), taken out when
    used (each chain state is read once), and bounded by ``max_bytes`` (least recently written
    dropped first); a miss simply reads the files. ``SFT_CURATE_CHAIN_CACHE_MB`` sets the bound
    (default 256; 0 turns it off).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._frames: dict[tuple[str, ...], tuple[pl.DataFrame, int]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, files: tuple[str, ...], df: pl.DataFrame) -> None:
        size = int(df.estimated_size())
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._frames.pop(files, None)
            if old is not None:
                self._bytes -= old[1]
            while self._frames and self._bytes + size > self.max_bytes:
                oldest = next(iter(self._frames))  # dicts keep insertion order
                self._bytes -= self._frames.pop(oldest)[1]
            self._frames[files] = (df, size)
            self._bytes += size

    def take(self, files: tuple[str, ...]) -> pl.DataFrame | None:
        with self._lock:
            hit = self._frames.pop(tuple(files), None)
            if hit is None:
                return None
            self._bytes -= hit[1]
            return hit[0]

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
            self._bytes = 0


CHAIN_FRAMES = ChainFrames(int(os.environ.get("SFT_CURATE_CHAIN_CACHE_MB", "256")) << 20)


def read_chain_cached(files: tuple[str, ...]) -> pl.DataFrame:
    """:func:`read_chain` of a whole chain, from :data:`CHAIN_FRAMES` when this process wrote it."""
    hit = CHAIN_FRAMES.take(tuple(files))
    return hit if hit is not None else read_chain(files)


def gather_global(paths: list[Path], columns: list[str]) -> pl.DataFrame:
    """The named columns of every shard, concatenated, with ``_shard`` and ``_pos`` to slice back."""
    return gather_chains([(str(p),) for p in paths], columns)


def gather_chains(chains: list[tuple[str, ...]], columns: list[str]) -> pl.DataFrame:
    """Like :func:`gather_global` over shard chains: each column read from the file that last wrote it."""
    frames = []
    cols = list(dict.fromkeys(columns))
    for i, files in enumerate(chains):
        df = with_decision(read_chain(files, cols)) if "keep" in cols else read_chain(files, cols)
        df = df.select([c for c in cols if c in df.columns])
        frames.append(df.with_columns(pl.lit(i, dtype=pl.Int32).alias("_shard"),
                                      pl.int_range(pl.len(), dtype=pl.Int64).alias("_pos")))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


class ChainColumnReader:
    """Rows of one column of the gathered pool, read from the shard chains a shard at a time.

    Serves :meth:`Stage.global_column` for a stage's :attr:`Stage.global_lazy_inputs`: only the
    shards that hold requested rows are read, and only that column, so memory is one shard's column
    plus the rows asked for, not the whole pool's."""

    def __init__(self, chains: list[tuple[str, ...]], shard: np.ndarray, pos: np.ndarray) -> None:
        self.chains = chains
        self.shard = np.asarray(shard, dtype=np.int64)
        self.pos = np.asarray(pos, dtype=np.int64)

    def __call__(self, name: str, rows: np.ndarray) -> pl.Series:
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return read_chain(self.chains[0], [name])[name].clear() if self.chains else pl.Series(name, [])
        sh, ps = self.shard[rows], self.pos[rows]
        order = np.lexsort((ps, sh))
        cuts = np.flatnonzero(np.diff(sh[order])) + 1

        def read(seg: np.ndarray) -> pl.Series:
            return read_chain(self.chains[int(sh[seg[0]])], [name])[name].gather(ps[seg])

        # two shards at a time: memory stays at two shards' column, and the reads overlap
        with ThreadPoolExecutor(max_workers=2) as ex:
            parts = list(ex.map(read, np.split(order, cuts)))
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        return pl.concat(parts).gather(inv)


def split_global(result: pl.DataFrame, new_columns: list[str], n_shards: int) -> list[pl.DataFrame]:
    """Per-shard slices (in shard row order) of the columns a global stage added."""
    parts = {k[0]: v for k, v in result.sort(["_shard", "_pos"]).partition_by("_shard", as_dict=True).items()}
    empty = result.select(new_columns).clear()
    return [parts[i].select(new_columns) if i in parts else empty for i in range(n_shards)]

