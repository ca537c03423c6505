"""Ingest: a source streamed into canonical shards (and rejects) in the work store, keyed by content."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import Config
from pipeline.engine.chains import ShardChain
from pipeline.engine.keys import STORE_VERSION, hkey, package_version
from pipeline.engine.store import WorkStore
from pipeline.io.ahead import read_ahead
from pipeline.io.fingerprint import file_fingerprint
from pipeline.io.readers import Batch, SourceSpec, read_source
from pipeline.io.shards import ShardWriter
from pipeline.schema import CANONICAL


def ingest_source(spec: SourceSpec, out_dir: Path, rejects_dir: Path, shard_rows: int, batch_rows: int,
                  prefix: str = "part-", shard_mb: float | None = None) -> dict[str, Any]:
    """Read one source into canonical shards under ``out_dir`` and rejects under ``rejects_dir``.

    Shards are named ``{prefix}NNNNN.parquet`` and hold at most ``shard_rows`` rows and about
    ``shard_mb`` MB; a source that yields no rows still gets one empty shard.
    """
    writer = ShardWriter(out_dir, shard_rows, CANONICAL, prefix, max_bytes=int(shard_mb * 2**20) if shard_mb else None)
    rj = ShardWriter(rejects_dir, shard_rows, None, prefix)
    read = rejected = 0
    fmt = None
    t0 = time.perf_counter()
    for batch in read_ahead(read_source(spec, batch_rows)):
        if spec.limit is not None or spec.sample is not None:
            batch, done = _slice(batch, spec)
            if done:
                writer.write(batch.rows)
                rj.write(batch.rejects)
                read += batch.n_read
                rejected += batch.rejects.num_rows
                fmt = batch.format or fmt
                break
        writer.write(batch.rows)
        rj.write(batch.rejects)
        read += batch.n_read
        rejected += batch.rejects.num_rows
        fmt = batch.format or fmt
    writer.close()
    rj.close()
    reasons: dict[str, int] = {}
    if rejected:
        for p in rj.paths:
            for r, n in pl.read_parquet(p, columns=["reason"])["reason"].value_counts().iter_rows():
                reasons[r] = reasons.get(r, 0) + n
    return {
        "name": spec.source_name,
        "path": spec.path,
        "format": fmt,
        "read": read,
        "rows": read - rejected,
        "rejected": rejected,
        "reject_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:50]),
        "seconds": round(time.perf_counter() - t0, 3),
        "shards": [str(p) for p in writer.paths],
        "rejects": [str(p) for p in rj.paths],
    }


def _slice(batch: Batch, spec: SourceSpec) -> tuple[Batch, bool]:
    """The records of ``batch`` inside the source's ``limit``/``sample`` (rows and rejects alike, so
    read = kept + dropped + rejected holds for the slice), and whether reading can stop."""
    def keep(t: pa.Table) -> pa.Table:
        if not t.num_rows:
            return t
        row = pl.from_arrow(t.select(["source_row"]))["source_row"]  # type: ignore[index]
        mask = pl.Series([True] * t.num_rows)
        if spec.limit is not None:
            mask = mask & (row < spec.limit)
        if spec.sample is not None:
            mask = mask & ((row.hash(seed=spec.seed) % 1_000_003) < int(round(spec.sample * 1_000_003)))
        return t.filter(mask.to_arrow())

    rows, rejects = keep(batch.rows), keep(batch.rejects)
    done = False
    if spec.limit is not None:
        seen = [pl.from_arrow(t.select(["source_row"]))["source_row"].max() for t in (batch.rows, batch.rejects)  # type: ignore[index]
                if t.num_rows]
        done = bool(seen) and max(seen) >= spec.limit - 1  # type: ignore[operator]
    return Batch(rows, rejects, batch.format), done


def source_specs(cfg: Config) -> list[SourceSpec]:
    """The reader settings of every source of ``cfg`` (paths resolved, the run's size/depth limits)."""
    specs = []
    for sc in cfg.sources:
        spec = SourceSpec.from_config(sc, str(cfg.resolve(sc.path)))
        for k, v in cfg.reader_limits(sc).items():
            setattr(spec, k, v)
        spec.seed = cfg.run.seed
        specs.append(spec)
    return specs


def source_key(spec: SourceSpec, shard_rows: int, shard_mb: float | None = None, batch_rows: int | None = None,
               fp_cache: Path | None = None) -> str:
    """Key of a source's ingest: its content hash and every reader setting that shapes the shards
    (``batch_rows`` too: it bounds where a shard may end)."""
    content = file_fingerprint(spec.path, fp_cache) if spec.container != "hf_load" and Path(spec.path).exists() else "-"
    return hkey("ingest", STORE_VERSION, package_version(), content, *spec.key_parts(), shard_rows, shard_mb,
                batch_rows)


@dataclass(frozen=True)
class IngestRef:
    """A source's ingest as stored: its stats, shard chains (named ``{prefix}NNNNN``) and rejects."""

    source: dict[str, Any]
    chains: tuple[ShardChain, ...]
    rejects: tuple[str, ...]
    cached: bool
    seconds: float


def ingest_cached(spec: SourceSpec, store: WorkStore, shard_rows: int, batch_rows: int, prefix: str,
                  shard_mb: float | None = None) -> IngestRef:
    """Ingest one source into the work store, or find it there (same content and reader settings)."""
    key = source_key(spec, shard_rows, shard_mb, batch_rows, store.fingerprint_cache())
    entry = store.ingest_dir(key)
    cached = WorkStore.done(entry)
    t0 = time.perf_counter()
    if not cached:
        tmp = WorkStore.tmp_for(entry)
        info = ingest_source(spec, tmp, tmp / "rejects", shard_rows, batch_rows, shard_mb=shard_mb)
        info["shards"] = [Path(p).name for p in info["shards"]]
        info["rejects"] = [Path(p).name for p in info["rejects"]]
        info["shard_rows"] = [pq.read_metadata(tmp / n).num_rows for n in info["shards"]]
        WorkStore.commit(tmp, entry, info)
    info = json.loads((entry / "_meta.json").read_text())
    chains = tuple(
        ShardChain(f"{prefix}{n:05d}.parquet", hkey(key, prefix, n), (str(entry / name),), rows)
        for n, (name, rows) in enumerate(zip(info["shards"], info["shard_rows"], strict=True))
    )
    rejects = tuple(str(entry / "rejects" / n) for n in info["rejects"])
    source = {k: v for k, v in info.items() if k not in ("shards", "rejects", "shard_rows")}
    source["path"] = spec.path
    return IngestRef(source, chains, rejects, cached, time.perf_counter() - t0)

