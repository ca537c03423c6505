"""Prefect flow: run a YAML config as a DAG of per-shard and global tasks.

The flow only orchestrates; every step is a :mod:`pipeline.runner` building block:

* one ``ingest`` task per source (:func:`pipeline.runner.ingest_cached`);
* per segment of the plan (:func:`pipeline.runner.build_plan`: consecutive row stages, plus the
  ``score`` of the next global stage), one ``shard`` task per shard (:func:`pipeline.runner.run_segment`);
* one ``global`` task per global stage (LSH components, k-means, selection: :func:`pipeline.runner.run_global`);
* one ``finalize`` task per shard, then the manifest, also published as a Prefect markdown artifact.

Caching and resume come from the content-addressed work store (``flow.work_dir``, default
``<out>/.work``, shared across runs): a task whose outputs are all in the store returns at once in a
``Completed`` state named ``Cached``. Tasks that can fail transiently (model load, CUDA OOM, I/O)
are retried with exponential backoff (``flow.retries``, ``flow.retry_delay_s``).

The task runner is ``flow.task_runner``: ``threads`` (default), ``processes``, ``dask`` or ``ray``
(``flow.address`` points at an existing cluster; otherwise a local one is started for the run).

``python -m flows.curate CONFIG [--out DIR] [--run-id ID] [--input-dir DIR]`` runs it from a shell.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import quote

from pipeline.config import Config, FlowSettings, load_config
from pipeline.io.readers import SourceSpec
from pipeline.runner import (
    GlobalRef,
    GlobalResult,
    IngestRef,
    Plan,
    SegmentResult,
    ShardChain,
    StageTally,
    StepError,
    WorkStore,
    build_plan,
    complete_manifest,
    failure_recorded,
    finalize_chain,
    finish_run,
    ingest_cached,
    make_context,
    merge_outcomes,
    prepare_run_dir,
    release_stage,
    run_global,
    run_segment,
    source_specs,
    stage_reports,
    start_manifest,
    write_rejects_and_state,
)

TEMP_MAX_AGE_S = 6 * 3600


# ---------------------------------------------------------------- retries


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


def _retry_condition(_task: Any, _task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as e:  # noqa: BLE001 - classifying the task's own error
        return is_transient(e)
    return False


def _free_after_failure(plan: Plan, err: BaseException) -> None:
    """Before a retry: drop the failing stage's instance (and CUDA cache) so the retry loads it afresh."""
    if isinstance(err, StepError):
        release_stage(plan, err.stage)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- tasks


def _cached(value: Any, cached: bool, what: str) -> Any:
    return Completed(data=value, name="Cached", message=f"{what}: found in the work store") if cached else value


@task(name="ingest", cache_policy=NO_CACHE, task_run_name="ingest[{label}]")
def ingest_task(spec: SourceSpec, store_root: str, shard_rows: int, batch_rows: int, prefix: str, label: str,
                shard_mb: float | None = None) -> IngestRef:
    """Read one source into canonical shards in the work store."""
    ref = ingest_cached(spec, WorkStore(store_root), shard_rows, batch_rows, prefix, shard_mb)
    get_run_logger().info("%s: %d rows, %d rejected, %d shard(s)%s", label, ref.source["read"], ref.source["rejected"],
                          len(ref.chains), " (cached)" if ref.cached else "")
    return _cached(ref, ref.cached, label)


@task(name="shard", cache_policy=NO_CACHE, task_run_name="{label}")
def segment_task(plan: Plan, seg_index: int, chains: list[ShardChain], gref: GlobalRef | None,
                 label: str) -> list[SegmentResult]:
    """The per-shard steps of one segment on one shard (or a small batch: ``flow.shards_per_task``)."""
    try:
        res = [run_segment(plan, seg_index, c, gref) for c in chains]
    except Exception as e:
        if is_transient(e):
            _free_after_failure(plan, e)
        raise
    return _cached(res, all(r.cached for r in res), label)


@task(name="global", cache_policy=NO_CACHE, task_run_name="{label}")
def global_task(plan: Plan, index: int, chains: list[ShardChain], label: str) -> GlobalResult:
    """A global stage over the whole pool (only its input columns are gathered)."""
    try:
        res = run_global(plan, index, chains)
    except Exception as e:
        if is_transient(e):
            _free_after_failure(plan, e)
        raise
    return _cached(res, res.stat.cached, label)


@task(name="finalize", cache_policy=NO_CACHE, task_run_name="finalize[{label}]")
def finalize_task(chains: list[ShardChain], run_dir: str, write_shard: bool, label: str) -> list[dict[str, Any]]:
    """Write final shards and their selected rows."""
    return [finalize_chain(c, Path(run_dir), write_shard) for c in chains]


def shards_per_task(fs: FlowSettings, n_shards: int) -> int:
    """Shards per task: ``flow.shards_per_task``, or by default one, except on a local Dask/Ray
    cluster, where a Prefect task costs ~0.1 s of API round trips from the worker (measured in
    benchmarks/flow_overhead.py), so shards are batched to about four tasks per worker per segment."""
    if fs.shards_per_task is not None:
        return fs.shards_per_task
    if fs.task_runner in ("dask", "ray") and not fs.address:
        return max(1, math.ceil(n_shards / (4 * (fs.max_workers or 2))))
    return 1


def batches(chains: list[ShardChain], k: int) -> list[list[ShardChain]]:
    return [chains[i:i + k] for i in range(0, len(chains), k)]


def batch_label(batch: list[ShardChain]) -> str:
    return batch[0].name if len(batch) == 1 else f"{batch[0].name}..{batch[-1].name}"


# ---------------------------------------------------------------- task runners


def make_task_runner(fs: FlowSettings) -> Any:
    """The Prefect task runner named by ``flow.task_runner``."""
    workers = fs.max_workers
    if fs.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers or max(2, os.cpu_count() or 2))
    if fs.task_runner == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    try:
        if fs.task_runner == "dask":
            from prefect_dask import DaskTaskRunner

            if fs.address:
                return DaskTaskRunner(address=fs.address)
            return DaskTaskRunner(cluster_kwargs={"n_workers": workers or 2, "threads_per_worker": 1,
                                                  "processes": True, "dashboard_address": None})
        from prefect_ray import RayTaskRunner

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if fs.address:
            return RayTaskRunner(address=fs.address)
        return RayTaskRunner(init_kwargs={"num_cpus": workers or 2, "include_dashboard": False,
                                          "log_to_driver": False})
    except ImportError as e:
        raise ImportError(f"flow.task_runner: {fs.task_runner} needs `pip install 'sft-curate[scale]'` ({e})") from e


@contextlib.contextmanager
def _placement(fs: FlowSettings, plan: Plan, stage_indices: list[int]) -> Iterator[None]:
    """On Ray, ask for the CPUs/GPUs the segment's stages declare in ``Stage.resources``."""
    if fs.task_runner != "ray" or not stage_indices:
        yield
        return
    from prefect_ray.context import remote_options

    res = [plan.spec(i).build().resources for i in stage_indices]
    gpus = max(r.gpus for r in res)
    cpus = max(r.cpus for r in res)
    opts: dict[str, Any] = {}
    if gpus:
        opts["num_gpus"] = gpus
    if cpus != 1.0:
        opts["num_cpus"] = cpus
    with remote_options(**opts) if opts else contextlib.nullcontext():
        yield


# ---------------------------------------------------------------- the DAG


def _q(value: Any) -> Any:
    """Spare Prefect walking big parameters (plans, chain lists) looking for futures.

    Only for the threads/processes runners: the Dask and Ray runners ship parameters through their
    own serialisation, which does not preserve the annotation.
    """
    from prefect.context import FlowRunContext
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    ctx = FlowRunContext.get()
    if ctx is not None and isinstance(ctx.task_runner, (ThreadPoolTaskRunner, ProcessPoolTaskRunner)):
        return quote(value)
    return value


def work_root(cfg: Config, out: str | None) -> Path:
    if cfg.flow.work_dir:
        return cfg.resolve(cfg.flow.work_dir)
    return (Path(out) if out else cfg.resolve(cfg.run.out)).resolve() / ".work"


def sweep_old_temps(store: WorkStore, max_age_s: float = TEMP_MAX_AGE_S) -> int:
    """Remove temp entries left by killed runs; young ones may belong to a run in progress."""
    import shutil

    n = 0
    if not store.root.is_dir():
        return 0
    now = time.time()
    for p in store.root.rglob(".*.tmp"):
        try:
            if now - p.stat().st_mtime < max_age_s:
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            n += 1
        except FileNotFoundError:
            continue
    return n


def retry_options(fs: FlowSettings) -> dict[str, Any]:
    """Retries with exponential backoff, for transient errors only (:func:`is_transient`)."""
    return {"retries": fs.retries, "retry_delay_seconds": exponential_backoff(backoff_factor=fs.retry_delay_s),
            "retry_condition_fn": _retry_condition}


def ingest_all(specs: list[SourceSpec], prefixes: list[str], store: WorkStore, cfg: Config) -> list[IngestRef]:
    t = ingest_task.with_options(**retry_options(cfg.flow))
    futs = [t.submit(spec, str(store.root), cfg.run.shard_rows, cfg.run.read_batch_rows, prefix, label=spec.source_name,
                     shard_mb=cfg.run.shard_mb)
            for spec, prefix in zip(specs, prefixes, strict=True)]
    return [f.result() for f in futs]


def run_plan(plan: Plan, chains: list[ShardChain], fs: FlowSettings, tally: StageTally,
             logger: logging.Logger | logging.LoggerAdapter) -> tuple[list[ShardChain], list[GlobalResult]]:
    """Submit every segment's shard tasks and every global task of ``plan``; the final chains."""
    seg_t = segment_task.with_options(**retry_options(fs))
    glob_t = global_task.with_options(**retry_options(fs))
    globals_: list[GlobalResult] = []
    gref: GlobalRef | None = None
    qplan = _q(plan)
    k = shards_per_task(fs, len(chains))
    for si, seg in enumerate(plan.segments):
        label = seg.label(plan)
        if seg.steps and chains:
            t0 = time.perf_counter()
            with _placement(fs, plan, [s.stage for s in seg.steps]):
                futs = [seg_t.submit(qplan, si, _q(b), _q(gref), label=f"{label}[{batch_label(b)}]")
                        for b in batches(chains, k)]
            results: list[SegmentResult] = [r for f in futs for r in f.result()]
            chains = [r.chain for r in results]
            for r in results:
                tally.add(r.stats)
            hits = sum(r.cached for r in results)
            logger.info("%s: %d shard(s), %d cached, %.2fs", label, len(results), hits, time.perf_counter() - t0)
        if seg.global_stage is not None:
            spec = plan.spec(seg.global_stage)
            with _placement(fs, plan, [seg.global_stage]):
                g = glob_t.submit(qplan, seg.global_stage, _q(chains), label=f"{spec.name}.global").result()
            globals_.append(g)
            tally.add([g.stat])
            gref = g.ref
            logger.info("%s.global: %s in %.2fs", spec.name, "cached" if g.stat.cached else "done", g.stat.seconds)
    return chains, globals_


def finalize_all(chains: list[ShardChain], run_dir: Path, fs: FlowSettings,
                 write_shard: bool = True) -> list[dict[str, Any]]:
    t = finalize_task.with_options(**retry_options(fs))
    futs = [t.submit(_q(b), str(run_dir), write_shard, label=batch_label(b))
            for b in batches(chains, shards_per_task(fs, len(chains)))]
    return [r for f in futs for r in f.result()]


def manifest_markdown(m: dict[str, Any]) -> str:
    """The manifest as markdown tables (counts, stages, top drop reasons) for the Prefect UI."""
    c = m["counts"]
    lines = [f"# curate run `{m['run_id']}`", "", f"status **{m['status']}**, config `{m['config_hash']}`, "
             f"engine `{m.get('engine', '-')}`", "",
             "| read | rejected | kept | dropped | selected | balanced |", "|---:|---:|---:|---:|---:|:---:|",
             f"| {c['read']:,} | {c['rejected']:,} | {c['kept']:,} | {c['dropped']:,} | {c['selected']:,} | "
             f"{'yes' if c['balanced'] else 'NO'} |", "",
             "| stage | scope | dropped | seconds | steps | cached |", "|---|---|---:|---:|---:|---:|"]
    for s in m["stages"]:
        lines.append(f"| {s['name']} | {s['scope']} | {s['dropped']:,} | {s['seconds']:.2f} | {s.get('steps', 0)} | "
                     f"{s.get('cache_hits', 0)} |")
    if c["dropped_by_rule"]:
        lines += ["", "| drop rule | rows |", "|---|---:|"]
        lines += [f"| `{r}` | {n:,} |" for r, n in list(c["dropped_by_rule"].items())[:20]]
    if "incremental" in m:
        inc = m["incremental"]
        lines += ["", f"night {inc['night']}: {len(inc['new_files'])} new file(s); pool {inc['pool_rows']:,} rows, "
                  f"{inc['pool_kept']:,} kept; selection +{inc['added']:,} / -{inc['removed']:,}"]
    return "\n".join(lines)


def publish(manifest: dict[str, Any], name: str) -> None:
    from prefect.artifacts import create_markdown_artifact

    key = re.sub(r"[^a-z0-9-]+", "-", f"curate-{name}".lower()).strip("-")[:100]
    create_markdown_artifact(markdown=manifest_markdown(manifest), key=key,
                             description=f"manifest of run {manifest['run_id']}")


def batch_run(cfg: Config, out: str | None, run_id: str | None, engine: str) -> dict[str, Any]:
    """The whole batch DAG (called inside a flow whose task runner is the configured one)."""
    logger = get_run_logger()
    t_start = time.perf_counter()
    run_dir, run_id = prepare_run_dir(cfg, out, run_id)
    stages = cfg.build_stages()
    manifest = start_manifest(cfg, run_id, run_dir, engine)
    with failure_recorded(manifest, run_dir):
        store = WorkStore(work_root(cfg, out))
        sweep_old_temps(store)
        plan = build_plan(stages, make_context(cfg, run_dir, cache_dir=store.root / "sidecars"), store.root)
        logger.info("run %s: %d source(s), %d stage(s), work store %s", run_id, len(cfg.sources), len(stages), store.root)

        t0 = time.perf_counter()
        specs = source_specs(cfg)
        prefixes = [f"part-{i:03d}-" for i in range(len(specs))]
        refs = ingest_all(specs, prefixes, store, cfg)
        t_ingest = time.perf_counter() - t0
        chains = [c for r in refs for c in r.chains]
        tally = StageTally()
        try:
            chains, globals_ = run_plan(plan, chains, cfg.flow, tally, logger)
            t0 = time.perf_counter()
            outcome = merge_outcomes(finalize_all(chains, run_dir, cfg.flow))
            write_rejects_and_state(plan, globals_, refs, prefixes, run_dir)
            t_final = time.perf_counter() - t0
            reports = stage_reports(plan)
        finally:
            release_stage(plan)
        timings = {"ingest_s": t_ingest, "finalize_s": t_final, "compute_s": tally.compute_seconds,
                   "total_s": time.perf_counter() - t_start}
        extra = {"cache": {"work_dir": str(store.root), "ingest_hits": sum(r.cached for r in refs),
                           "step_hits": sum(tally.hits.values()), "steps": sum(tally.steps.values())},
                 "prefect": prefect_info()}
        manifest = complete_manifest(manifest, run_dir, stages, plan, [r.source for r in refs], outcome, tally,
                                     globals_, timings, extra, reports)
        _log_counts(logger, manifest)
        finish_run(run_dir, cfg, logger.info)
        manifest = json.loads((run_dir / "manifest.json").read_text())  # the report links itself in
        publish(manifest, cfg.run.name)
        return {"run_dir": str(run_dir), "manifest": manifest}


def prefect_info() -> dict[str, Any]:
    """The Prefect flow run this run executed in (to find its tasks, logs and artifact in the UI/API)."""
    from prefect.runtime import flow_run

    return {"flow_run_id": flow_run.get_id(), "flow_run_name": flow_run.get_name(),
            "parent_flow_run_id": flow_run.get_parent_flow_run_id()}


def _log_counts(logger: logging.Logger | logging.LoggerAdapter, manifest: dict[str, Any]) -> None:
    c = manifest["counts"]
    logger.info("read %d = kept %d + dropped %d + rejected %d (%s); selected %d", c["read"], c["kept"], c["dropped"],
                c["rejected"], "balanced" if c["balanced"] else "UNBALANCED", c["selected"])
    for s in manifest["stages"]:
        logger.info("  %-20s dropped %8d  %8.2fs  %d/%d steps cached", s["name"], s["dropped"], s["seconds"],
                    s.get("cache_hits", 0), s.get("steps", 0))


# ---------------------------------------------------------------- flows


@flow(name="curate-run", log_prints=True)
def curate_run(config_path: str, out: str | None = None, run_id: str | None = None,
               input_dir: str | None = None) -> dict[str, Any]:
    """The DAG itself, under the configured task runner (a subflow of :func:`curate_flow`)."""
    cfg = load_config(config_path)
    engine = f"prefect:{cfg.flow.task_runner}"
    if input_dir or cfg.flow.incremental is not None:
        from flows.incremental import nightly_run

        return nightly_run(cfg, out, run_id, input_dir, engine)
    return batch_run(cfg, out, run_id, engine)


@flow(name="curate", log_prints=True)
def curate_flow(config_path: str, out: str | None = None, run_id: str | None = None,
                input_dir: str | None = None) -> dict[str, Any]:
    """Curate with the config at ``config_path``: returns ``{"run_dir", "manifest"}``.

    ``input_dir`` (or ``flow.incremental`` in the config) switches to incremental nightly curation
    of a growing directory. The task runner comes from ``flow.task_runner``; it is chosen here, at
    run time, so a deployment of this flow follows its config.
    """
    cfg = load_config(config_path)
    runner = make_task_runner(cfg.flow)
    return curate_run.with_options(task_runner=runner)(config_path=config_path, out=out, run_id=run_id,
                                                       input_dir=input_dir)


def run_flow(config_path: str, out: str | None = None, run_id: str | None = None, quiet: bool = False,
             input_dir: str | None = None) -> dict[str, Any]:
    """Run the curation flow (what ``curate run CONFIG`` calls); ``{"run_dir": str, "manifest": dict}``."""
    config_path = str(Path(config_path).resolve())
    out = str(Path(out).resolve()) if out else None
    quiet_loggers = [logging.getLogger(n) for n in ("prefect", "distributed", "ray")] if quiet else []
    levels = [lg.level for lg in quiet_loggers]
    for lg in quiet_loggers:
        lg.setLevel(logging.WARNING)
    try:
        return curate_flow(config_path=config_path, out=out, run_id=run_id, input_dir=input_dir)
    finally:
        for lg, lv in zip(quiet_loggers, levels, strict=True):
            lg.setLevel(lv)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.curate", description="Run the curation flow once.")
    ap.add_argument("config")
    ap.add_argument("--out")
    ap.add_argument("--run-id")
    ap.add_argument("--input-dir", help="incremental mode: process new files of this directory")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    res = run_flow(args.config, out=args.out, run_id=args.run_id, quiet=args.quiet, input_dir=args.input_dir)
    c = res["manifest"]["counts"]
    print(json.dumps({"run_dir": res["run_dir"], "counts": {k: c[k] for k in ("read", "kept", "dropped", "rejected",
                                                                               "selected", "balanced")}}))
    return 0 if c["balanced"] else 1


if __name__ == "__main__":
    sys.exit(main())
