"""Step execution: a segment's per-shard steps on one shard, and a global stage over every shard.

Both look in the work store first and compute only what is missing; both are pure functions of
(plan, inputs) that any executor may run anywhere the store is reachable.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.engine.chains import (
    CHAIN_FRAMES,
    ChainColumnReader,
    ShardChain,
    gather_chains,
    read_chain_cached,
    split_global,
)
from pipeline.engine.keys import hkey
from pipeline.engine.plan import Plan, Step, release_stage, safe_report, stage_instance
from pipeline.engine.store import WorkStore, cached_meta, guarded, write_cache_file, write_delta
from pipeline.schema import with_decision
from pipeline.stages.base import Stage


@dataclass(frozen=True)
class StepStat:
    stage: int
    kind: str
    cached: bool
    seconds: float  # stage compute (score/decide/score_global, plus setup when this step did it)
    io_seconds: float = 0.0
    dropped: int = 0  # rows this step turned from kept to dropped


@dataclass(frozen=True)
class GlobalRef:
    stage: int
    key: str
    dir: str
    n_shards: int


@dataclass(frozen=True)
class SegmentResult:
    chain: ShardChain
    stats: tuple[StepStat, ...]

    @property
    def cached(self) -> bool:
        return all(s.cached for s in self.stats)


class StepError(RuntimeError):
    """A stage failed on a shard; ``__cause__`` is the original error."""

    def __init__(self, message: str, stage: int) -> None:
        super().__init__(message)
        self.stage = stage


def _delta(stage: Stage, before: list[str], out: pl.DataFrame, extra: Iterable[str] = ()) -> pl.DataFrame:
    declared = set(stage.output_schema()) | set(extra) | {"keep", "drop_reason"}
    cols = [c for c in out.columns if c not in before or c in declared]
    return out.select(cols)


def _step_key(plan: Plan, chain_key: str, step: Step, gref: GlobalRef | None) -> str:
    spec = plan.spec(step.stage)
    return hkey(step.kind, spec.key, chain_key, gref.key if step.kind == "post" and gref else "")


def _step_keys(plan: Plan, seg_index: int, chain: ShardChain, gref: GlobalRef | None) -> tuple[list[str], list[Path]]:
    store = plan.store
    keys, paths = [], []
    k = chain.key
    for step in plan.segments[seg_index].steps:
        k = _step_key(plan, k, step, gref)
        keys.append(k)
        paths.append(store.step_path(plan.spec(step.stage).name, step.kind, k))
    return keys, paths


def step_paths(plan: Plan, seg_index: int, chain: ShardChain, gref: GlobalRef | None) -> list[Path]:
    """Where each of the segment's steps on ``chain`` is (or will be) in the work store."""
    return _step_keys(plan, seg_index, chain, gref)[1]


def global_slice(chain: ShardChain, gref: GlobalRef) -> pl.DataFrame:
    """The columns global step ``gref`` handed back to ``chain``'s shard."""
    slice_path = str(Path(gref.dir) / _slice_name(_shard_pos(chain, gref)))
    return guarded(slice_path, lambda: pl.read_parquet(slice_path))


def apply_step(stage: Stage, kind: str, df: pl.DataFrame, add: pl.DataFrame | None = None) -> pl.DataFrame:
    """One per-shard step on ``df``: ``row`` scores and decides, ``pre`` scores (for the global step),
    ``post`` decides with ``add``, the columns the global step handed back."""
    if kind == "row":
        return stage.decide(stage.score(df))
    if kind == "pre":
        return stage.score(df)
    if add is None:
        raise RuntimeError("post step without its global result")
    return stage.decide(df.with_columns(add))


def run_segment(plan: Plan, seg_index: int, chain: ShardChain, gref: GlobalRef | None = None) -> SegmentResult:
    """Run one segment's per-shard steps on one shard, reusing every step already in the store."""
    seg = plan.segments[seg_index]
    keys, paths = _step_keys(plan, seg_index, chain, gref)
    metas: list[dict[str, Any]] = []
    for p in paths:
        m = cached_meta(p)
        if m is None:
            break
        metas.append(m)
    first = len(metas)
    stats = [StepStat(s.stage, s.kind, True, 0.0, 0.0, metas[i].get("dropped", 0))
             for i, s in enumerate(seg.steps[:first])]
    out_chain = chain
    for i in range(first):
        out_chain = out_chain.extend(keys[i], paths[i])
    if first == len(paths):
        return SegmentResult(out_chain, tuple(stats))
    t0 = time.perf_counter()
    chain_df = read_chain_cached(out_chain.files)  # what the chain's files hold, step by step below
    df = with_decision(chain_df)
    io = time.perf_counter() - t0
    for i in range(first, len(paths)):
        step = seg.steps[i]
        spec = plan.spec(step.stage)
        try:
            stage, setup_s = stage_instance(plan, step.stage)
            before = df.columns
            extra: list[str] = []
            if step.kind == "post":
                if gref is None or gref.stage != step.stage:
                    raise RuntimeError("post step without its global result")
                t0 = time.perf_counter()
                add = global_slice(chain, gref)
                io += time.perf_counter() - t0
                if add.height != df.height:
                    raise RuntimeError(f"global result has {add.height} rows for a shard of {df.height}")
                extra = add.columns
            t0 = time.perf_counter()
            out = apply_step(stage, step.kind, df, add if step.kind == "post" else None)
            dt = time.perf_counter() - t0
            if out.height != df.height:
                raise RuntimeError(f"{spec.name}: {step.kind} returned {out.height} rows for {df.height}; "
                                   "stages must not add or remove rows")
        except Exception as e:
            raise StepError(f"stage {spec.label} ({step.kind}) failed on shard {chain.name}: "
                            f"{type(e).__name__}: {e}", step.stage) from e
        t0 = time.perf_counter()
        dropped = int((df["keep"] & ~out["keep"]).sum())
        delta = _delta(stage, before, out, extra)
        write_delta(delta, paths[i],
                     {"stage": spec.name, "kind": step.kind, "seconds": round(dt + setup_s, 6), "rows": out.height,
                      "dropped": dropped, "pid": os.getpid()})
        chain_df = chain_df.with_columns(delta)  # read_chain's rule: later files override, new columns append
        io += time.perf_counter() - t0
        stats.append(StepStat(step.stage, step.kind, False, dt + setup_s, io, dropped))
        io = 0.0
        df = out
        out_chain = out_chain.extend(keys[i], paths[i])
    CHAIN_FRAMES.put(out_chain.files, chain_df)
    return SegmentResult(out_chain, tuple(stats))


# ---------------------------------------------------------------- global steps

_POSITIONS: dict[str, dict[str, int]] = {}


def _slice_name(i: int) -> str:
    return f"part-{i:05d}.parquet"


def _shard_pos(chain: ShardChain, gref: GlobalRef) -> int:
    pos = _POSITIONS.get(gref.key)
    if pos is None:
        pos = json.loads((Path(gref.dir) / "_meta.json").read_text())["positions"]
        _POSITIONS[gref.key] = pos
    return pos[chain.key]


def global_new_columns(stage: Stage, before: list[str], after: pl.DataFrame) -> list[str]:
    """Columns a global step hands back to the shards: new ones, and the stage's declared columns
    unless they are scratch inputs (``_*``) it gathered (writing those back would copy them whole)."""
    return [c for c in after.columns if c not in ("_shard", "_pos")
            and (c not in before or (c in stage.columns and not c.startswith("_")))]


@dataclass(frozen=True)
class GlobalResult:
    ref: GlobalRef
    stat: StepStat
    summary: dict[str, Any] | None = None
    models: dict[str, Any] | None = None


def _saves_state(plan: Plan, index: int) -> bool:
    """Whether a global step also persists the stage's state (only when the run keeps state)."""
    return plan.spec(index).stateful and plan.ctx.state_out is not None


def global_key(plan: Plan, index: int, chains: list[ShardChain]) -> str:
    spec = plan.spec(index)
    return hkey("global", spec.key, "state" if _saves_state(plan, index) else "", *[c.key for c in chains])


def run_global(plan: Plan, index: int, chains: list[ShardChain]) -> GlobalResult:
    """A global stage's ``score_global`` over all shards, stored as per-shard slices (plus its state)."""
    spec = plan.spec(index)
    key = global_key(plan, index, chains)
    entry = plan.store.global_dir(spec.name, key)
    ref = GlobalRef(index, key, str(entry), len(chains))
    if WorkStore.done(entry):
        meta = json.loads((entry / "_meta.json").read_text())
        return GlobalResult(ref, StepStat(index, "global", True, 0.0), meta.get("summary"), meta.get("models"))
    stage: Stage | None = None
    try:  # whatever happens, the stage does not keep the run's column reader
        try:
            stage, setup_s = stage_instance(plan, index)
            t0 = time.perf_counter()
            files = [c.files for c in chains]
            g = gather_chains(files, [c for c in stage.global_frame_columns() if c not in stage.global_lazy_inputs])
            io = time.perf_counter() - t0
            t0 = time.perf_counter()
            before = g.columns
            if stage.global_lazy_inputs and g.height:
                stage.column_reader = ChainColumnReader(files, g["_shard"].to_numpy(), g["_pos"].to_numpy())
            g2 = stage.score_global(g)
            dt = time.perf_counter() - t0
            if g2.height != g.height:
                raise RuntimeError(f"score_global returned {g2.height} rows for {g.height}")
            new = global_new_columns(stage, before, g2)
            slices = split_global(g2, new, len(chains)) if chains else []
        except Exception as e:
            raise StepError(f"stage {spec.label} (global) failed: {type(e).__name__}: {e}", index) from e
        t0 = time.perf_counter()
        tmp = WorkStore.tmp_for(entry)
        for i, s in enumerate(slices):
            write_cache_file(s, tmp / _slice_name(i))
        if _saves_state(plan, index):
            stage.save_state(tmp / "state")
        else:
            stage.release_global()
    finally:
        if stage is not None:
            stage.column_reader = None
    summary = safe_report(stage, "summary")
    models = safe_report(stage, "models")
    WorkStore.commit(tmp, entry, {
        "stage": spec.name, "kind": "global", "seconds": round(dt + setup_s, 6), "rows": g.height, "pid": os.getpid(),
        "columns": new, "positions": {c.key: i for i, c in enumerate(chains)}, "summary": summary, "models": models,
    })
    io += time.perf_counter() - t0
    return GlobalResult(ref, StepStat(index, "global", False, dt + setup_s, io), summary, models)





# ---------------------------------------------------------------- transient errors

_TRANSIENT_ERRNO = {errno.EAGAIN, errno.EBUSY, errno.EIO, errno.EMFILE, errno.ENFILE, errno.ETIMEDOUT,
                    errno.ECONNRESET, errno.ECONNREFUSED, errno.ENOMEM}
_TRANSIENT_TEXT = re.compile(r"out of memory|CUDA error|CUBLAS_STATUS_ALLOC_FAILED|cudaErrorMemoryAllocation|"
                             r"Connection (reset|refused|aborted)|timed out|Temporary failure", re.I)


def is_transient(exc: BaseException | None) -> bool:
    """Whether an error (or one it was raised from) is worth a retry: OOM, CUDA, timeouts, flaky I/O."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (MemoryError, TimeoutError, ConnectionError)):
            return True
        if "OutOfMemory" in type(exc).__name__:
            return True
        if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNO:
            return True
        if isinstance(exc, (RuntimeError, OSError)) and not isinstance(exc, StepError) and _TRANSIENT_TEXT.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def free_after_failure(plan: Plan, err: BaseException) -> None:
    """Before a retry of a transient failure: drop the failing stage's instance (and the CUDA cache)
    so the retry loads it afresh."""
    if not is_transient(err):
        return
    if isinstance(err, StepError):
        release_stage(plan, err.stage)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
