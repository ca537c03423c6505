"""Finalize: shard chains written as the run's ``shards/`` and ``selected/`` (with a record of each
file for verification), rejects copied, stateful stages' state collected."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline.engine.chains import ShardChain, read_chain, read_chain_cached
from pipeline.engine.ingest import IngestRef
from pipeline.engine.plan import Plan, local_instances
from pipeline.engine.steps import GlobalResult
from pipeline.io.atomic import copy_atomic
from pipeline.io.fingerprint import file_fingerprint
from pipeline.io.shards import conform_frame, union_schema, write_parquet_atomic
from pipeline.schema import with_decision


def finalize_frame(df: pl.DataFrame) -> pl.DataFrame:
    """A final shard: scratch columns dropped, selection columns present (selected = keep without a selector)."""
    df = with_decision(df)
    df = df.select([c for c in df.columns if not c.startswith("_")])
    if "selected" not in df.columns:
        df = df.with_columns(pl.when(pl.col("keep")).then(pl.lit(True)).otherwise(None).alias("selected"),
                             pl.lit(None, pl.String).alias("select_reason"), pl.lit(None, pl.Int64).alias("select_rank"))
    return df


def file_record(path: Path, rows: int) -> dict[str, Any]:
    """What the manifest records of an output file, so a reader can verify it: rows, bytes, xxh3-128."""
    return {"rows": rows, "bytes": path.stat().st_size, "xxh3": file_fingerprint(path)}


def finalize_chain(chain: ShardChain, run_dir: Path, write_shard: bool = True, schema: pa.Schema | None = None,
                   as_text: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Write one final shard to ``shards/`` and its selected rows to ``selected/``; its counts and
    the record of each file written (``files``: run-relative path -> rows, bytes, checksum).

    ``schema``/``as_text`` (:func:`run_schema`) give every final shard the run's one schema of canonical
    and user columns, so shards of sources with other user columns read as one table."""
    df = finalize_frame(read_chain_cached(chain.files))
    if schema is not None:
        df = conform_frame(df, schema, set(as_text))
    files: dict[str, Any] = {}
    if write_shard:
        p = write_parquet_atomic(df, run_dir / "shards" / chain.name)
        files[f"shards/{chain.name}"] = file_record(p, df.height)
    sel = df.filter(pl.col("keep") & pl.col("selected").fill_null(False))
    p = write_parquet_atomic(sel, run_dir / "selected" / chain.name)
    files[f"selected/{chain.name}"] = file_record(p, sel.height)
    reasons = {r: n for r, n in df.filter(~pl.col("keep"))["drop_reason"].value_counts().iter_rows()}
    return {"rows": df.height, "kept": int(df["keep"].sum()), "selected": sel.height, "dropped_by_reason": reasons,
            "files": files}


def run_schema(chains: Iterable[ShardChain]) -> tuple[pa.Schema, frozenset[str]]:
    """The union schema of the canonical and user columns of every shard's ingest file (footers only)."""
    schema, as_text = union_schema(sorted({c.files[0] for c in chains}))
    return schema, frozenset(as_text)


def materialize_chain(chain: ShardChain, path: Path, drop: Iterable[str] = ()) -> dict[str, Any]:
    """Write a shard chain as one self-contained Parquet file (all columns but ``drop``)."""
    df = with_decision(read_chain(chain.files))
    df = df.drop([c for c in drop if c in df.columns])
    write_parquet_atomic(df, path)
    return {"name": chain.name, "key": chain.key, "path": str(path), "rows": df.height, "kept": int(df["keep"].sum())}


def merge_outcomes(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum the counts of finalized shards (and collect their file records)."""
    out: dict[str, Any] = {"rows": 0, "kept": 0, "selected": 0, "dropped_by_reason": {}, "files": {}}
    for p in parts:
        for k in ("rows", "kept", "selected"):
            out[k] += p[k]
        for r, n in p["dropped_by_reason"].items():
            out["dropped_by_reason"][r] = out["dropped_by_reason"].get(r, 0) + n
        out["files"].update(p.get("files", {}))
    return out


def copy_rejects(refs: Iterable[IngestRef], prefixes: Iterable[str], run_dir: Path) -> None:
    for ref, prefix in zip(refs, prefixes, strict=True):
        for n, p in enumerate(ref.rejects):
            copy_atomic(p, run_dir / "rejects" / f"{prefix}{n:05d}.parquet")


def write_rejects_and_state(plan: Plan, globals_: Iterable[GlobalResult], refs: Iterable[IngestRef],
                            prefixes: Iterable[str], run_dir: Path) -> None:
    """After finalize: the sources' rejects into ``rejects/``, and each stateful stage's state when the
    run keeps state (``run.save_state``)."""
    copy_rejects(refs, prefixes, run_dir)
    if plan.ctx.state_out is not None:
        collect_state(plan, globals_, plan.ctx.state_out)


def collect_state(plan: Plan, globals_: Iterable[GlobalResult], state_out: Path) -> list[str]:
    """Copy each stateful stage's persisted state into ``state_out/<stage>``.

    Global stages saved theirs inside their (cached) global step; row stages that keep state are
    asked here, in this process (only meaningful when they ran in it: the local and threads engines).
    """
    saved = []
    by_stage = {g.ref.stage: g for g in globals_}
    instances = local_instances(plan)
    for spec in plan.stages:
        if not spec.stateful:
            continue
        dst = state_out / spec.name
        if dst.exists():
            shutil.rmtree(dst)
        g = by_stage.get(spec.index)
        if g is not None:
            src = Path(g.ref.dir) / "state"
            if src.exists():
                shutil.copytree(src, dst)
            else:
                dst.mkdir(parents=True, exist_ok=True)
            saved.append(spec.name)
        elif spec.index in instances:
            instances[spec.index].save_state(dst)
            saved.append(spec.name)
    return saved

