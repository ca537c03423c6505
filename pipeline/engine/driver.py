"""The run, sequenced once: every engine (local threads, Prefect, a Dask or Ray cluster through
Prefect) and every mode (batch, nightly incremental) goes through :func:`execute`.

    decide the layout -> take the locks -> clean earlier outputs -> manifest ``running``
    -> plan -> ingest -> per segment: shard steps, then the global step
    -> finalize (shards/, selected/) -> rejects and state -> manifest ``complete`` (verified)
    -> report and exports (``finish``)

An :class:`~pipeline.engine.executor.Executor` decides only *where* each step runs (as datatrove's
executors and NeMo Curator's ``BaseExecutor``): the local one on threads here, the Prefect one in
``flows/`` as tasks with retries and placement. Results are the same on every executor: steps are
content-addressed in the work store and their outputs do not depend on where they ran.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import progress
from pipeline.config import Config, load_config
from pipeline.engine.chains import ShardChain
from pipeline.engine.estimate import estimate_lines, model_steps, pending_chains, probe_segment
from pipeline.engine.executor import Executor, LocalExecutor
from pipeline.engine.finalize import (
    collect_state,
    copy_rejects,
    file_record,
    finalize_chain,
    merge_outcomes,
    run_schema,
)
from pipeline.engine.ingest import IngestRef, ingest_cached, source_specs
from pipeline.engine.keys import new_run_id
from pipeline.engine.lock import DirLock
from pipeline.engine.manifest import StageTally, complete_manifest, failure_recorded, start_manifest
from pipeline.engine.plan import Plan, build_plan, make_context, release_stage, stage_reports
from pipeline.engine.steps import (
    GlobalRef,
    GlobalResult,
    SegmentResult,
    free_after_failure,
    run_global,
    run_segment,
)
from pipeline.engine.store import WorkStore
from pipeline.io.atomic import write_json_atomic
from pipeline.io.readers import SourceSpec
from pipeline.io.shards import list_shards


class RunExists(FileExistsError):
    """The run directory already holds a complete run."""


# ---------------------------------------------------------------- layout


@dataclass(frozen=True)
class RunLayout:
    """Where everything of a run lives, decided once from the config (never from the engine) and
    recorded in the manifest, so the report, notebooks and export read it from there."""

    run_id: str
    run_dir: Path
    work: Path  # the content-addressed work store, shared by runs with the same one
    sidecars: Path  # embedding sidecars and LM score caches (keyed by row id and model)
    home: Path | None = None  # nightly incremental state (ledger, pool, selections)

    def manifest_entry(self) -> dict[str, Any]:
        def rel(p: Path) -> str:
            return str(p.relative_to(self.run_dir)) if p.is_relative_to(self.run_dir) else str(p)

        out = {"shards": "shards/", "selected": "selected/", "rejects": "rejects/", "state": "state/",
               "figures": "figures/", "report": "report.html", "work_store": rel(self.work),
               "sidecars": rel(self.sidecars)}
        if self.home is not None:
            out.update(diff="diff/", home=str(self.home))
        return out


def decide_layout(cfg: Config, out: str | Path | None = None, run_id: str | None = None,
                  input_dir: str | None = None) -> RunLayout:
    """The layout of a run of ``cfg`` under ``out`` (default ``run.out``) named ``run_id`` (default
    ``<run.name>-<UTC time>``): the work store is ``flow.work_dir`` or ``<out>/.work``, sidecars
    ``run.cache_dir`` or ``<work store>/sidecars``."""
    out_root = (Path(out) if out else cfg.resolve(cfg.run.out)).resolve()
    run_id = run_id or new_run_id(cfg.run.name)
    run_dir = (out_root / run_id).resolve()
    if not run_dir.is_relative_to(out_root) or run_dir == out_root:
        raise ValueError(f"run id {run_id!r} escapes the output directory {out_root}")
    work = cfg.resolve(cfg.flow.work_dir).resolve() if cfg.flow.work_dir else out_root / ".work"
    sidecars = cfg.resolve(cfg.run.cache_dir).resolve() if cfg.run.cache_dir else work / "sidecars"
    home = None
    if input_dir or cfg.flow.incremental is not None:
        from pipeline.engine.incremental import home_dir, incremental_settings

        home = home_dir(cfg, incremental_settings(cfg, input_dir), out_root)
    return RunLayout(run_id, run_dir, work, sidecars, home)


def _clean_outputs(run_dir: Path) -> None:
    """Refuse a complete run; remove the outputs of an earlier, unfinished attempt (lock held)."""
    import shutil

    mf = run_dir / "manifest.json"
    if mf.exists():
        with contextlib.suppress(ValueError, OSError):
            if json.loads(mf.read_text()).get("status") == "complete":
                raise RunExists(f"{run_dir} already holds a complete run; choose another run id")
    for d in ("shards", "selected", "rejects", "state", "diff"):
        if (run_dir / d).exists():
            shutil.rmtree(run_dir / d)
    for p in run_dir.glob(".*.tmp"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


# ---------------------------------------------------------------- result


@dataclass
class RunResult:
    run_dir: Path
    manifest: dict[str, Any]
    finish: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest["counts"]

    @property
    def errors(self) -> list[str]:
        """What failed after the run completed (report, exports); the data itself is complete."""
        return list(self.finish.get("errors", []))


# ---------------------------------------------------------------- step functions handed to executors
# Module-level so that executors on other processes or machines can pickle them.


def _ingest(item: tuple[SourceSpec, str], store_root: str, shard_rows: int, batch_rows: int,
            shard_mb: float | None) -> IngestRef:
    spec, prefix = item
    return ingest_cached(spec, WorkStore(store_root), shard_rows, batch_rows, prefix, shard_mb)


def _segment(chain: ShardChain, plan: Plan, seg_index: int, gref: GlobalRef | None) -> SegmentResult:
    try:
        return run_segment(plan, seg_index, chain, gref)
    except Exception as e:
        free_after_failure(plan, e)
        raise


def _global(index: int, plan: Plan, chains: list[ShardChain]) -> GlobalResult:
    try:
        return run_global(plan, index, chains)
    except Exception as e:
        free_after_failure(plan, e)
        raise


def _finalize(chain: ShardChain, run_dir: str, write_shard: bool, schema: Any, as_text: frozenset[str]) -> dict[str, Any]:
    return finalize_chain(chain, Path(run_dir), write_shard, schema, as_text)


def _resources(plan: Plan, indices: list[int]) -> Any:
    """What a segment's stages need together (their declared class-level ``resources``)."""
    from pipeline.stages import get_stage
    from pipeline.stages.base import Resources

    res = [get_stage(plan.spec(i).name).resources for i in indices]
    if not res:
        return None
    return Resources(cpus=max(r.cpus for r in res), gpus=max(r.gpus for r in res),
                     memory_gb=max(r.memory_gb for r in res), loads_model=any(r.loads_model for r in res))


# ---------------------------------------------------------------- the sequence


def warm_up() -> None:
    """Load numba's compiled loops (~0.7 s per process) on a daemon thread while ingest runs: the
    first shards of a stage that calls them would otherwise all wait on numba's lock for the load.
    Nothing depends on it finishing, and a failure only loses the head start."""
    from pipeline.dedup.hashing import warm_up as warm_kernels

    threading.Thread(target=warm_kernels, name="warm-kernels", daemon=True).start()


def ingest_all(ex: Executor, cfg: Config, store: WorkStore, specs: list[SourceSpec],
               prefixes: list[str]) -> list[IngestRef]:
    fn = functools.partial(_ingest, store_root=str(store.root), shard_rows=cfg.run.shard_rows,
                           batch_rows=cfg.run.read_batch_rows, shard_mb=cfg.run.shard_mb)
    refs = ex.map("ingest", fn, list(zip(specs, prefixes, strict=True)), [s.source_name for s in specs])
    for r in refs:
        ex.log(f"  {r.source['name']}: {r.source['read']:,} rows, {r.source['rejected']:,} rejected, "
               f"{len(r.chains)} shard(s){' (cached)' if r.cached else ''}")
    return refs


def _probe(chain: ShardChain, plan: Plan, seg_index: int, gref: GlobalRef | None,
           rows_pending: int) -> list[dict[str, Any]]:
    try:
        return probe_segment(chain, plan, seg_index, gref, rows_pending)
    except Exception as e:  # noqa: BLE001 - an estimate must not fail a run; the real step reports its error
        return [{"error": f"{type(e).__name__}: {e}"}]


def estimate_segment(ex: Executor, plan: Plan, seg_index: int, chains: list[ShardChain], gref: GlobalRef | None,
                     tally: StageTally, on_estimate: Callable[[list[dict[str, Any]]], None]) -> None:
    """Before a segment with model stages: probe one shard where steps run, print and record the
    estimate (:mod:`pipeline.engine.estimate`). Nothing when every such step is in the store."""
    positions = model_steps(plan, seg_index)
    pending = pending_chains(plan, seg_index, chains, gref, positions) if positions else []
    if not pending:
        return
    seg = plan.segments[seg_index]
    fn = functools.partial(_probe, plan=plan, seg_index=seg_index, gref=gref,
                           rows_pending=sum(c.rows for c in pending))
    recs = ex.map("shard", fn, [pending[0]], [f"estimate {seg.label(plan)}[{pending[0].name}]"],
                  _resources(plan, [s.stage for s in seg.steps]))[0]
    if recs and "error" in recs[0]:
        ex.log(f"  estimate unavailable ({recs[0]['error']})")
        return
    for line in estimate_lines(recs):
        ex.log(line)
    tally.estimates.update({r["stage"]: r for r in recs})
    on_estimate(recs)


def estimate_recorder(cfg: Config, manifest: dict[str, Any], run_dir: Path
                      ) -> Callable[[list[dict[str, Any]]], None] | None:
    """With ``run.estimate``: a callback that records estimates in the running manifest at once (an
    interrupted run keeps them); the final manifest has them in the stage entries instead."""
    if not cfg.run.estimate:
        return None

    def record(recs: list[dict[str, Any]]) -> None:
        manifest.setdefault("estimates", []).extend(recs)
        write_json_atomic(manifest, run_dir / "manifest.json")

    return record


def run_plan(ex: Executor, plan: Plan, chains: list[ShardChain], tally: StageTally,
             on_estimate: Callable[[list[dict[str, Any]]], None] | None = None
             ) -> tuple[list[ShardChain], list[GlobalResult]]:
    """Every segment's shard steps and every global step of ``plan``; the final chains. With
    ``on_estimate``, segments with model stages are probed first (:func:`estimate_segment`)."""
    globals_: list[GlobalResult] = []
    gref: GlobalRef | None = None
    for si, seg in enumerate(plan.segments):
        label = seg.label(plan)
        if seg.steps and chains:
            if on_estimate is not None:
                estimate_segment(ex, plan, si, chains, gref, tally, on_estimate)
            t0 = time.perf_counter()
            fn = functools.partial(_segment, plan=plan, seg_index=si, gref=gref)
            results = ex.map("shard", fn, chains, [f"{label}[{c.name}]" for c in chains],
                             _resources(plan, [s.stage for s in seg.steps]))
            chains = [r.chain for r in results]
            for r in results:
                tally.add(r.stats)
            ex.log(f"  {label}: {len(results)} shard(s), {sum(r.cached for r in results)} cached, "
                   f"{time.perf_counter() - t0:.2f}s")
        if seg.global_stage is not None:
            spec = plan.spec(seg.global_stage)
            fn = functools.partial(_global, plan=plan, chains=chains)
            g = ex.map("global", fn, [seg.global_stage], [f"{spec.name}.global"],
                       _resources(plan, [seg.global_stage]))[0]
            globals_.append(g)
            tally.add([g.stat])
            gref = g.ref
            ex.log(f"  {spec.name}.global: {'cached' if g.stat.cached else 'done'} in {g.stat.seconds:.2f}s")
    return chains, globals_


def finalize_all(ex: Executor, chains: list[ShardChain], run_dir: Path, write_shard: bool = True,
                 schema: tuple[Any, frozenset[str]] | None = None) -> list[dict[str, Any]]:
    """Final shards of ``chains`` (conformed to ``schema``, the run's :func:`run_schema`)."""
    sch, as_text = schema if schema is not None else (None, frozenset())
    fn = functools.partial(_finalize, run_dir=str(run_dir), write_shard=write_shard, schema=sch, as_text=as_text)
    return ex.map("finalize", fn, chains, [c.name for c in chains])


def rejects_records(run_dir: Path) -> dict[str, Any]:
    """File records of ``rejects/`` for the manifest."""
    import pyarrow.parquet as pq

    return {f"rejects/{p.name}": file_record(p, pq.read_metadata(p).num_rows) for p in list_shards(run_dir / "rejects")}


def _batch(ex: Executor, cfg: Config, layout: RunLayout, store: WorkStore, manifest: dict[str, Any],
           t_start: float) -> dict[str, Any]:
    run_dir = layout.run_dir
    stages = cfg.build_stages()
    plan = build_plan(stages, make_context(cfg, run_dir, cache_dir=layout.sidecars), store.root)
    ex.log(f"run {layout.run_id}: {len(cfg.sources)} source(s), {len(stages)} stage(s), work store {store.root}")
    t0 = time.perf_counter()
    specs = source_specs(cfg)
    prefixes = [f"part-{i:03d}-" for i in range(len(specs))]
    refs = ingest_all(ex, cfg, store, specs, prefixes)
    t_ingest = time.perf_counter() - t0
    chains = [c for r in refs for c in r.chains]
    schema = run_schema(chains) if chains else None
    tally = StageTally()
    try:
        chains, globals_ = run_plan(ex, plan, chains, tally, estimate_recorder(cfg, manifest, run_dir))
        t0 = time.perf_counter()
        outcome = merge_outcomes(finalize_all(ex, chains, run_dir, schema=schema))
        copy_rejects(refs, prefixes, run_dir)
        outcome["files"].update(rejects_records(run_dir))
        if plan.ctx.state_out is not None:
            collect_state(plan, globals_, plan.ctx.state_out)
        t_final = time.perf_counter() - t0
        reports = stage_reports(plan)
    finally:
        release_stage(plan)
    timings = {"ingest_s": t_ingest, "finalize_s": t_final, "compute_s": tally.compute_seconds,
               "total_s": time.perf_counter() - t_start}
    extra = {"cache": {"work_dir": str(store.root), "ingest_hits": sum(r.cached for r in refs),
                       "step_hits": sum(tally.hits.values()), "steps": sum(tally.steps.values())},
             **ex.info()}
    return complete_manifest(manifest, run_dir, stages, plan, [r.source for r in refs], outcome, tally, globals_,
                             timings, layout.manifest_entry(), extra, reports, schema[0] if schema else None)


def execute(cfg: Config, ex: Executor, out: str | Path | None = None, run_id: str | None = None,
            input_dir: str | None = None, finish: bool = False) -> RunResult:
    """Run ``cfg`` with executor ``ex``: the one place a run is sequenced.

    Parameters
    ----------
    cfg:
        A validated config (:func:`pipeline.config.load_config`).
    ex:
        Where steps run (:class:`LocalExecutor`, or the Prefect executor of ``flows/``).
    out:
        Output root (default ``run.out``).
    run_id:
        Run directory name; the same id resumes a run that did not complete.
    input_dir:
        Incremental nightly mode over this directory (or ``flow.incremental`` in the config).
    finish:
        Also write the report (``run.report``) and the configured exports once the run is complete.
        Their failures are recorded in the manifest (``finish.errors``) and in :attr:`RunResult.errors`;
        the run's data stays ``complete``.
    """
    t_start = time.perf_counter()
    progress.reset()  # long tasks run again after an earlier run in this process was interrupted
    layout = decide_layout(cfg, out, run_id, input_dir)
    with contextlib.ExitStack() as locks:
        # nothing is read, swept or deleted before the locks are held
        if layout.home is not None:
            locks.enter_context(DirLock(layout.home, f"nightly home {layout.home}"))
        locks.enter_context(DirLock(layout.run_dir, f"run {layout.run_id}"))
        _clean_outputs(layout.run_dir)
        manifest = start_manifest(cfg, layout.run_id, layout.run_dir, ex.name)
        sink = getattr(ex, "progress_sink", contextlib.nullcontext)
        with failure_recorded(manifest, layout.run_dir), sink():
            from pipeline.stages import get_stage

            if any(get_stage(e.stage).compiled_kernels for e in cfg.stages):
                warm_up()
            store = WorkStore(layout.work)
            store.sweep_temps()
            if layout.home is not None:
                from pipeline.engine.incremental import run_night

                manifest = run_night(ex, cfg, layout, store, manifest, input_dir, t_start)
            else:
                manifest = _batch(ex, cfg, layout, store, manifest, t_start)
            _log_counts(ex, manifest)
        result = RunResult(layout.run_dir, manifest)
        if finish and manifest["status"] == "complete":
            result.finish = finish_run(layout.run_dir, cfg, ex.log)
            result.manifest = json.loads((layout.run_dir / "manifest.json").read_text())
        ex.publish(result.manifest)
        return result


def _log_counts(ex: Executor, manifest: dict[str, Any]) -> None:
    c = manifest["counts"]
    ex.log(f"read {c['read']} = kept {c['kept']} + dropped {c['dropped']} + rejected {c['rejected']} "
           f"({'balanced' if c['balanced'] else 'UNBALANCED'}); selected {c['selected']}")
    for s in manifest["stages"]:
        ex.log(f"  {s['name']:<20} dropped {s['dropped']:>8}  {s['seconds']:>8.2f}s  "
               f"{s.get('cache_hits', 0)}/{s.get('steps', 0)} steps cached")


def finish_run(run_dir: Path, cfg: Config, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """After a complete run: the HTML report (``run.report``) and the configured exports (``export:``).

    Each runs on its own: one failing does not stop the others, and none changes the run's status.
    What happened is recorded in the manifest under ``finish`` (``report``, ``exports``, ``errors``).
    """
    log = log or (lambda _m: None)
    out: dict[str, Any] = {"errors": []}
    if cfg.run.report:
        try:
            from pipeline.inspect import write_report

            out["report"] = str(write_report(run_dir))
            log(f"  report: {out['report']}")
        except Exception as e:  # noqa: BLE001 - recorded and reported, the data is complete
            out["errors"].append(f"report: {type(e).__name__}: {e}")
    if cfg.export:
        from pipeline.export import run_exports

        try:
            out["exports"] = run_exports(run_dir, cfg.export)
            for e in out["exports"]:
                log(f"  export {e.get('format')}: {e.get('exported', '?')} rows -> {e.get('out')}")
        except Exception as e:  # noqa: BLE001
            out["errors"].append(f"export: {type(e).__name__}: {e}")
    for err in out["errors"]:
        log(f"  error: {err}")
    mf = run_dir / "manifest.json"
    manifest = json.loads(mf.read_text())
    manifest["finish"] = {k: v for k, v in out.items() if k != "exports"} | {
        "exports": [{k: v for k, v in e.items() if k in ("format", "out", "exported")} for e in out.get("exports", [])]}
    write_json_atomic(manifest, mf)
    return out


# ---------------------------------------------------------------- the local engine


def run(cfg: Config, out: str | Path | None = None, run_id: str | None = None, progress: bool = False,
        log: Callable[[str], None] | None = None, input_dir: str | None = None, finish: bool = False,
        max_workers: int | None = None) -> RunResult:
    """Run ``cfg`` in this process on the local executor (threads; ``flow.max_workers`` or all CPUs).

    Parameters
    ----------
    cfg:
        A validated config.
    out, run_id, input_dir, finish:
        As in :func:`execute`.
    progress:
        Progress bars on the terminal.
    log:
        Where progress lines go (``print``); nothing by default.
    max_workers:
        Threads (default ``flow.max_workers``, else the number of CPUs).
    """
    ex = LocalExecutor(max_workers or cfg.flow.max_workers, retries=cfg.flow.retries,
                       retry_delay_s=cfg.flow.retry_delay_s, log=log, progress=progress)
    return execute(cfg, ex, out, run_id, input_dir, finish)


def run_config(config_path: str | Path, out: str | Path | None = None, run_id: str | None = None,
               input_dir: str | None = None, quiet: bool = False, log: Callable[[str], None] | None = None,
               finish: bool = True) -> RunResult:
    """The ``local`` engine's entry for ``curate run``: load the config, run it, report and export."""
    return run(load_config(config_path), out, run_id, progress=not quiet, log=None if quiet else log,
               input_dir=input_dir, finish=finish)
