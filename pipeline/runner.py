"""Run a config end to end in one process: ingest, stages shard by shard, shards + manifest.

The building blocks (:func:`ingest`, :func:`apply_row_stages`, :func:`gather_global`,
:func:`finalize`) are plain functions over paths so that ``flows/`` can map them onto Prefect tasks;
:func:`run` is the sequential loop a user gets from ``curate run``.

Consecutive row stages are fused into one pass per shard; a global stage ends a pass, scores over
the concatenated ``global_frame_columns()`` of all shards, and its columns are attached (and its
decide step applied) in the next pass. Intermediate shards live in ``<run>/work/`` and are removed
once the final ``shards/`` are written.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline.config import Config
from pipeline.io.readers import SourceSpec, read_source
from pipeline.io.shards import ShardWriter, list_shards, write_parquet_atomic
from pipeline.schema import CANONICAL, DECISION, REJECTS, SELECTION, with_decision
from pipeline.stages.base import RunContext, Stage

ShardOp = Callable[[pl.DataFrame, int], pl.DataFrame]


# ---------------------------------------------------------------- small utilities


def write_json_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str))
    os.replace(tmp, path)


def _progress(it: Iterable[Any], desc: str, total: int | None, enabled: bool) -> Iterable[Any]:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, unit="shard", leave=False)


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("sft-curate", "polars", "pyarrow", "pydantic", "rensa", "faiss-cpu", "torch", "transformers",
                "sentence-transformers", "prefect"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def new_run_id(name: str) -> str:
    return f"{name}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


# ---------------------------------------------------------------- ingest


@dataclass
class IngestResult:
    shards: list[Path]
    rejects: list[Path]
    sources: list[dict[str, Any]]

    @property
    def read(self) -> int:
        return sum(s["read"] for s in self.sources)

    @property
    def rejected(self) -> int:
        return sum(s["rejected"] for s in self.sources)


def ingest_source(spec: SourceSpec, out_dir: Path, rejects_dir: Path, shard_rows: int, batch_rows: int,
                  prefix: str = "part-") -> dict[str, Any]:
    """Read one source into canonical shards under ``out_dir`` and rejects under ``rejects_dir``.

    Shards are named ``{prefix}NNNNN.parquet``; a source that yields no rows still gets one empty shard.
    """
    writer = ShardWriter(out_dir, shard_rows, CANONICAL, prefix)
    rj = ShardWriter(rejects_dir, shard_rows, None, prefix)
    read = rejected = 0
    fmt = None
    t0 = time.perf_counter()
    for batch in read_source(spec, batch_rows):
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


def ingest(cfg: Config, work_dir: Path, rejects_dir: Path, progress: bool = False) -> IngestResult:
    sources = []
    for i, sc in enumerate(cfg.sources):
        spec = SourceSpec(path=str(cfg.resolve(sc.path)), name=sc.name, container=sc.container, format=sc.format,
                          hf_builder=sc.hf_builder, hf_split=sc.hf_split)
        sources.append(ingest_source(spec, work_dir, rejects_dir, cfg.run.shard_rows, cfg.run.read_batch_rows,
                                     prefix=f"part-{i:03d}-"))
    shards = [Path(p) for s in sources for p in s["shards"]]
    rejects = [Path(p) for s in sources for p in s["rejects"]]
    return IngestResult(shards, rejects, sources)


# ---------------------------------------------------------------- passes over shards


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=dict)

    def wrap(self, key: str, fn: Callable[[pl.DataFrame], pl.DataFrame]) -> Callable[[pl.DataFrame], pl.DataFrame]:
        def timed(df: pl.DataFrame) -> pl.DataFrame:
            t0 = time.perf_counter()
            out = fn(df)
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0
            return out

        return timed


def apply_ops(df: pl.DataFrame, shard_idx: int, ops: list[ShardOp]) -> pl.DataFrame:
    for op in ops:
        df = op(df, shard_idx)
    return df


def apply_row_stages(in_paths: list[Path], out_dir: Path, ops: list[ShardOp], progress: bool = False, desc: str = "stages") -> list[Path]:
    """One pass: read each shard, apply ``ops`` in order, write it to ``out_dir`` (same index)."""
    out = []
    for i, p in enumerate(_progress(in_paths, desc, len(in_paths), progress)):
        df = with_decision(pl.read_parquet(p))
        df = apply_ops(df, i, ops)
        out.append(write_parquet_atomic(df, out_dir / p.name))
    return out


def gather_global(paths: list[Path], columns: list[str]) -> pl.DataFrame:
    """The named columns of every shard, concatenated, with ``_shard`` and ``_pos`` to slice back."""
    frames = []
    for i, p in enumerate(paths):
        df = pl.read_parquet(p, columns=[c for c in dict.fromkeys(columns) if c in pl.read_parquet_schema(p)])
        frames.append(df.with_columns(pl.lit(i, dtype=pl.Int32).alias("_shard"), pl.int_range(pl.len(), dtype=pl.Int64).alias("_pos")))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def split_global(result: pl.DataFrame, new_columns: list[str], n_shards: int) -> list[pl.DataFrame]:
    """Per-shard slices (in shard row order) of the columns a global stage added."""
    parts = {k[0]: v for k, v in result.sort(["_shard", "_pos"]).partition_by("_shard", as_dict=True).items()}
    empty = result.select(new_columns).clear()
    return [parts[i].select(new_columns) if i in parts else empty for i in range(n_shards)]


def score_op(stage: Stage, timer: StageTimer, key: str) -> ShardOp:
    f = timer.wrap(key, stage.score)
    return lambda df, _i: f(df)


def row_stage_op(stage: Stage, timer: StageTimer, key: str) -> ShardOp:
    f = timer.wrap(key, lambda df: stage.decide(stage.score(df)))
    return lambda df, _i: f(df)


def attach_op(stage: Stage, slices: list[pl.DataFrame], timer: StageTimer, key: str) -> ShardOp:
    def op(df: pl.DataFrame, i: int) -> pl.DataFrame:
        add = slices[i]
        if add.height != df.height:
            raise RuntimeError(f"{stage.name}: global result has {add.height} rows for shard {i} of {df.height}")
        return timer.wrap(key, stage.decide)(df.with_columns(add))

    return op


def global_new_columns(stage: Stage, before: list[str], after: pl.DataFrame) -> list[str]:
    return [c for c in after.columns if c not in ("_shard", "_pos") and (c not in before or c in stage.columns)]


# ---------------------------------------------------------------- finalize + manifest


def finalize_shards(paths: list[Path], run_dir: Path, any_selector: bool) -> dict[str, Any]:
    """Write ``shards/`` (every row, scratch columns dropped) and ``selected/``; count outcomes."""
    shards_dir, sel_dir = run_dir / "shards", run_dir / "selected"
    reasons: dict[str, int] = {}
    kept = selected = total = 0
    for p in paths:
        df = with_decision(pl.read_parquet(p))
        df = df.select([c for c in df.columns if not c.startswith("_")])
        if "selected" not in df.columns:
            df = df.with_columns(pl.when(pl.col("keep")).then(pl.lit(True)).otherwise(None).alias("selected"),
                                 pl.lit(None, pl.String).alias("select_reason"), pl.lit(None, pl.Int64).alias("select_rank"))
        write_parquet_atomic(df, shards_dir / p.name)
        sel = df.filter(pl.col("keep") & pl.col("selected").fill_null(False))
        write_parquet_atomic(sel, sel_dir / p.name)
        total += df.height
        kept += int(df["keep"].sum())
        selected += sel.height
        for r, n in df.filter(~pl.col("keep"))["drop_reason"].value_counts().iter_rows():
            reasons[r] = reasons.get(r, 0) + n
    return {"rows": total, "kept": kept, "selected": selected, "dropped_by_reason": reasons}


def _group_reasons(reasons: dict[str, int], depth: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for r, n in reasons.items():
        key = ":".join(r.split(":")[:depth])
        out[key] = out.get(key, 0) + n
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------- the sequential runner


@dataclass
class RunResult:
    run_dir: Path
    manifest: dict[str, Any]

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest["counts"]


def run(cfg: Config, out: str | Path | None = None, run_id: str | None = None, progress: bool = False,
        log: Callable[[str], None] | None = None) -> RunResult:
    """Run ``cfg`` in this process and return the run directory and its manifest."""
    log = log or (lambda _m: None)
    t_start = time.perf_counter()
    out_root = Path(out) if out else cfg.resolve(cfg.run.out)
    run_id = run_id or new_run_id(cfg.run.name)
    run_dir = (out_root / run_id).resolve()
    if not run_dir.is_relative_to(out_root.resolve()):
        raise ValueError(f"run id {run_id!r} escapes the output directory {out_root}")
    if (run_dir / "manifest.json").exists() and json.loads((run_dir / "manifest.json").read_text()).get("status") == "complete":
        raise FileExistsError(f"{run_dir} already holds a complete run; choose another run id")
    work = run_dir / "work"
    if work.exists():
        shutil.rmtree(work)
    for d in ("shards", "selected", "rejects"):
        if (run_dir / d).exists():
            shutil.rmtree(run_dir / d)
    run_dir.mkdir(parents=True, exist_ok=True)
    stages = cfg.build_stages()
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "status": "running",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.model_dump(mode="json"),
        "config_hash": cfg.config_hash(),
        "versions": versions(),
    }
    write_json_atomic(manifest, run_dir / "manifest.json")
    ctx = RunContext(run_dir=run_dir, seed=cfg.run.seed, device=cfg.run.device,
                     state_in=cfg.resolve(cfg.run.state_in) if cfg.run.state_in else None,
                     state_out=run_dir / "state" if cfg.run.save_state else None,
                     cache_dir=cfg.resolve(cfg.run.cache_dir) if cfg.run.cache_dir else None)

    log(f"run {run_id}: ingesting {len(cfg.sources)} source(s)")
    t0 = time.perf_counter()
    ing = ingest(cfg, work / "ingest", run_dir / "rejects", progress)
    t_ingest = time.perf_counter() - t0
    log(f"  read {ing.read:,} rows, rejected {ing.rejected:,}, {len(ing.shards)} shard(s) in {t_ingest:.1f}s")

    timer = StageTimer()
    keys = [f"{i:02d}-{s.name}" for i, s in enumerate(stages)]
    paths = ing.shards
    ops: list[ShardOp] = []
    pass_no = 0
    for key, stage in zip(keys, stages, strict=True):
        t0 = time.perf_counter()
        stage.setup(ctx)
        timer.seconds[key] = timer.seconds.get(key, 0.0) + time.perf_counter() - t0
        if stage.scope == "row":
            ops.append(row_stage_op(stage, timer, key))
            continue
        ops.append(score_op(stage, timer, key))
        pass_no += 1
        paths = apply_row_stages(paths, work / f"pass-{pass_no:02d}", ops, progress, desc=f"pass {pass_no}")
        ops = []
        t0 = time.perf_counter()
        g = gather_global(paths, stage.global_frame_columns())
        before = g.columns
        g2 = stage.score_global(g)
        slices = split_global(g2, global_new_columns(stage, before, g2), len(paths))
        timer.seconds[key] = timer.seconds.get(key, 0.0) + time.perf_counter() - t0
        ops.append(attach_op(stage, slices, timer, key))
        log(f"  {stage.name}: global step done")
    pass_no += 1
    paths = apply_row_stages(paths, work / f"pass-{pass_no:02d}", ops, progress, desc=f"pass {pass_no}")
    if ctx.state_out is not None:
        for s in stages:
            s.save_state(ctx.state_out / s.name)
    for s in stages:
        s.teardown()

    outcome = finalize_shards(paths, run_dir, any(s.is_selector for s in stages))
    shutil.rmtree(work, ignore_errors=True)
    reasons = outcome["dropped_by_reason"]
    dropped = sum(reasons.values())
    counts = {
        "read": ing.read,
        "rejected": ing.rejected,
        "ingested": outcome["rows"],
        "kept": outcome["kept"],
        "dropped": dropped,
        "selected": outcome["selected"],
        "dropped_by_stage": _group_reasons(reasons, 1),
        "dropped_by_rule": _group_reasons(reasons, 2),
        "dropped_by_reason": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:200]),
    }
    counts["balanced"] = counts["read"] == counts["kept"] + counts["dropped"] + counts["rejected"]
    manifest.update(
        status="complete",
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        counts=counts,
        sources=[{k: v for k, v in s.items() if k not in ("shards", "rejects")} for s in ing.sources],
        stages=[
            {
                "name": s.name,
                "scope": s.scope,
                "fingerprint": s.fingerprint(),
                "params": s.params.model_dump(mode="json"),
                "columns": {c: str(t) for c, t in s.output_schema().items()},
                "dropped": counts["dropped_by_stage"].get(s.name, 0),
                "seconds": round(timer.seconds.get(k, 0.0), 3),
                **({"models": s.models()} if hasattr(s, "models") else {}),
                **({"summary": s.summary()} if hasattr(s, "summary") else {}),
            }
            for k, s in zip(keys, stages, strict=True)
        ],
        timings={"ingest_s": round(t_ingest, 3), "total_s": round(time.perf_counter() - t_start, 3)},
        layout={"shards": "shards/", "selected": "selected/", "rejects": "rejects/",
                "shard_columns": shard_columns(stages)},
    )
    if not counts["balanced"]:
        manifest["status"] = "unbalanced"
    write_json_atomic(manifest, run_dir / "manifest.json")
    log(f"  kept {counts['kept']:,}, dropped {dropped:,}, rejected {counts['rejected']:,}, selected {counts['selected']:,}")
    return RunResult(run_dir, manifest)


def shard_columns(stages: list[Stage]) -> dict[str, str]:
    """The declared schema of a final shard: canonical + every stage's columns + decision + selection."""
    cols: dict[str, str] = {f.name: str(f.type) for f in CANONICAL}
    for s in stages:
        cols.update({c: str(t) for c, t in s.output_schema().items() if not c.startswith("_")})
    cols.update({f.name: str(f.type) for f in DECISION})
    cols.update({f.name: str(f.type) for f in SELECTION})
    return cols


def rejects_frame(run_dir: str | Path) -> pl.DataFrame:
    paths = list_shards(Path(run_dir) / "rejects")
    if not paths:
        return pl.from_arrow(REJECTS.empty_table())  # type: ignore[return-value]
    return pl.concat([pl.read_parquet(p) for p in paths])


__all__ = ["run", "RunResult", "ingest", "ingest_source", "apply_row_stages", "gather_global", "split_global",
           "finalize_shards", "rejects_frame", "pa"]
