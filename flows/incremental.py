"""Incremental nightly curation of a growing input directory.

Each night (one run of the curation flow with ``flow.incremental`` or ``input_dir``):

1. list the files of the input directory (``pattern``) and keep only those whose content hash is
   not in the ledger: files already processed are never read again;
2. **phase A**: run the stages before the first selector on the new files, with ``state_in`` =
   the dedup state persisted by the previous night, so the stateful stages (exact, MinHash and
   embedding dedup) drop rows that duplicate rows kept on earlier nights; their merged state is
   persisted for the next night;
3. append those shards (every row, scored) to the *pool* (``<home>/pool/``);
4. **phase B**: run the selector stages (the first selector and everything after it) over the whole
   pool, i.e. re-select under the budget over the union of kept rows of every night;
5. write the night's run directory: ``shards/`` (this night's rows with their selection columns),
   ``selected/`` (the selection over the union), ``diff/added.parquet`` and ``diff/removed.parquet``
   (ids that entered or left the selection since the previous night), ``state/`` and the manifest;
6. commit the ledger (``<home>/current.json``) by atomic rename. A night killed before this step is
   simply redone by the next invocation, with every finished task found in the work store.

The home directory (``flow.incremental.home``, default ``<out>/<run.name>.incremental``) holds the
ledger, each night's persisted state, the pool and each night's selected ids.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline.config import Config, IncrementalSettings
from pipeline.io.readers import SourceSpec
from pipeline.io.shards import list_shards, write_parquet_atomic
from pipeline.runner import (
    ShardChain,
    StageTally,
    WorkStore,
    build_plan,
    collect_state,
    complete_manifest,
    copy_rejects,
    failure_recorded,
    file_fingerprint,
    make_context,
    materialize_chain,
    prepare_run_dir,
    release_stage,
    stage_reports,
    start_manifest,
    write_json_atomic,
)
from pipeline.schema import SELECTION

LEDGER = "current.json"
HIDDEN = (".", "_", "~")


@dataclass
class Ledger:
    """What earlier nights did: files seen (by content hash), state, pool and last selection."""

    night: int = 0
    run_id: str | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # content hash -> {path, size, night}
    state_dir: str | None = None
    pool: list[dict[str, Any]] = field(default_factory=list)  # {name, key, path, rows, kept, night}
    selected: str | None = None  # parquet of id, source, source_row

    @classmethod
    def load(cls, home: Path) -> Ledger:
        import json

        p = home / LEDGER
        return cls(**json.loads(p.read_text())) if p.exists() else cls()

    def save(self, home: Path) -> None:
        write_json_atomic(self.__dict__, home / LEDGER)


def incremental_settings(cfg: Config, input_dir: str | None) -> IncrementalSettings:
    inc = cfg.flow.incremental
    if input_dir:
        return inc.model_copy(update={"input_dir": input_dir}) if inc else IncrementalSettings(input_dir=input_dir)
    assert inc is not None
    return inc


def home_dir(cfg: Config, inc: IncrementalSettings, out: str | None) -> Path:
    if inc.home:
        return cfg.resolve(inc.home)
    return (Path(out) if out else cfg.resolve(cfg.run.out)).resolve() / f"{cfg.run.name}.incremental"


def new_files(root: Path, pattern: str, ledger: Ledger) -> tuple[list[tuple[Path, str]], list[str]]:
    """``(new files with their content hash, names of files already processed)``, in name order."""
    if not root.is_dir():
        raise FileNotFoundError(f"flow.incremental.input_dir: no such directory: {root}")
    fresh, seen, hashes = [], [], set(ledger.files)
    for p in sorted(root.glob(pattern)):
        rel = p.relative_to(root)
        if not p.is_file() or any(part.startswith(HIDDEN) for part in rel.parts):
            continue  # temp and partial uploads (.foo.tmp, _foo) are not inputs yet
        fp = file_fingerprint(p)
        if fp in hashes:
            seen.append(str(rel))
            continue
        hashes.add(fp)
        fresh.append((p, fp))
    return fresh, seen


def _sweep_orphans(home: Path, ledger: Ledger) -> None:
    """Remove pool/state/selected entries of nights that died before committing."""
    live = {Path(e["path"]).parent.name for e in ledger.pool}
    if ledger.state_dir:
        live.add(Path(ledger.state_dir).name)
    if ledger.selected:
        live.add(Path(ledger.selected).stem)
    for sub in ("pool", "state"):
        for d in (home / sub).glob("*") if (home / sub).is_dir() else []:
            if d.name not in live:
                shutil.rmtree(d, ignore_errors=True)
    for f in (home / "selected").glob("*.parquet") if (home / "selected").is_dir() else []:
        if f.stem not in live:
            f.unlink(missing_ok=True)


@task(name="pool", cache_policy=NO_CACHE, task_run_name="pool[{label}]")
def pool_task(chains: list[ShardChain], pool_dir: str, label: str) -> list[dict[str, Any]]:
    """Add tonight's shards to the durable pool (every column but the selection)."""
    return [materialize_chain(c, Path(pool_dir) / c.name, drop=SELECTION.names) for c in chains]


def _selected_ids(run_dir: Path) -> pl.DataFrame:
    paths = list_shards(run_dir / "selected")
    cols = ["id", "source", "source_row"]
    if not paths:
        return pl.DataFrame(schema={"id": pl.String, "source": pl.String, "source_row": pl.Int64})
    return pl.concat([pl.read_parquet(p, columns=cols) for p in paths]).unique("id", keep="first", maintain_order=True)


def nightly_run(cfg: Config, out: str | None, run_id: str | None, input_dir: str | None,
                engine: str) -> dict[str, Any]:
    """One night of incremental curation (inside a flow whose task runner is the configured one)."""
    from flows.curate import (
        _q,
        batch_label,
        batches,
        finalize_all,
        ingest_all,
        prefect_info,
        publish,
        retry_options,
        run_plan,
        shards_per_task,
        sweep_old_temps,
        work_root,
    )

    logger = get_run_logger()
    t_start = time.perf_counter()
    inc = incremental_settings(cfg, input_dir)
    root = cfg.resolve(inc.input_dir)
    home = home_dir(cfg, inc, out)
    home.mkdir(parents=True, exist_ok=True)
    ledger = Ledger.load(home)
    _sweep_orphans(home, ledger)
    night = ledger.night + 1
    fresh, seen = new_files(root, inc.pattern, ledger)
    if cfg.sources:
        logger.warning("incremental mode reads %s; the config's `sources` are ignored", root)
    run_dir, run_id = prepare_run_dir(cfg, out, run_id)
    manifest = start_manifest(cfg, run_id, run_dir, engine)
    with failure_recorded(manifest, run_dir):
        store = WorkStore(work_root(cfg, out))
        sweep_old_temps(store)
        logger.info("night %d (%s): %d new file(s), %d already processed", night, run_id, len(fresh), len(seen))

        stages = cfg.build_stages()
        cut = next((i for i, s in enumerate(stages) if s.is_selector), len(stages))
        base_cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={
            "state_in": ledger.state_dir, "save_state": True})})
        ctx = make_context(base_cfg, run_dir, cache_dir=store.root / "sidecars")
        plan_a = build_plan(stages[:cut], ctx, store.root)
        plan_b = build_plan(stages[cut:], replace(ctx, state_in=None), store.root, start_index=cut)
        tally = StageTally()
        globals_a: list[Any] = []
        specs = [SourceSpec(path=str(p), name=str(p.relative_to(root)), container=inc.container, format=inc.format)
                 for p, _ in fresh]
        prefixes = [f"part-n{night:04d}-{i:03d}-" for i in range(len(specs))]
        t0 = time.perf_counter()
        refs = ingest_all(specs, prefixes, store, cfg) if specs else []
        t_ingest = time.perf_counter() - t0
        try:
            # phase A: tonight's files against the state of earlier nights
            chains = [c for r in refs for c in r.chains]
            if chains:
                chains, globals_a = run_plan(plan_a, chains, cfg.flow, tally, logger)
            pool_dir = home / "pool" / run_id
            t_pool = pool_task.with_options(**retry_options(cfg.flow))
            futs = [t_pool.submit(_q(b), str(pool_dir), label=batch_label(b))
                    for b in batches(chains, shards_per_task(cfg.flow, len(chains)))]
            added_pool = [{**e, "night": night} for f in futs for e in f.result()]
            pool = [*ledger.pool, *added_pool]
            state_dir = run_dir / "state"
            if chains:
                collect_state(plan_a, globals_a, state_dir)
            if ledger.state_dir and Path(ledger.state_dir).is_dir():
                for d in Path(ledger.state_dir).iterdir():  # stages that did not run tonight keep their state
                    if not (state_dir / d.name).exists():
                        shutil.copytree(d, state_dir / d.name)

            # phase B: re-select over the union of every night's rows
            pool_chains = [ShardChain(e["name"], e["key"], (e["path"],), e["rows"]) for e in pool]
            globals_b: list[Any] = []
            if pool_chains:
                pool_chains, globals_b = run_plan(plan_b, pool_chains, cfg.flow, tally, logger)
            n_old = len(ledger.pool)
            parts_old = finalize_all(pool_chains[:n_old], run_dir, cfg.flow, write_shard=False)
            parts_new = finalize_all(pool_chains[n_old:], run_dir, cfg.flow, write_shard=True)
            copy_rejects(refs, prefixes, run_dir)
            reports = {**stage_reports(plan_a), **stage_reports(plan_b)}
        finally:
            release_stage(plan_a)
            release_stage(plan_b)

        # the selection and its diff against the previous night
        now = _selected_ids(run_dir)
        prev = pl.read_parquet(ledger.selected) if ledger.selected and Path(ledger.selected).exists() else now.clear()
        added = now.join(prev.select("id"), on="id", how="anti")
        removed = prev.join(now.select("id"), on="id", how="anti")
        write_parquet_atomic(added, run_dir / "diff" / "added.parquet")
        write_parquet_atomic(removed, run_dir / "diff" / "removed.parquet")
        sel_path = home / "selected" / f"{run_id}.parquet"
        write_parquet_atomic(now, sel_path)

        outcome = {"rows": 0, "kept": 0, "selected": 0, "dropped_by_reason": {}}
        for p in parts_new:
            outcome["rows"] += p["rows"]
            outcome["kept"] += p["kept"]
            for r, n in p["dropped_by_reason"].items():
                outcome["dropped_by_reason"][r] = outcome["dropped_by_reason"].get(r, 0) + n
        outcome["selected"] = sum(p["selected"] for p in [*parts_old, *parts_new])
        kept_state = home / "state" / run_id
        if kept_state.exists():
            shutil.rmtree(kept_state)
        if state_dir.exists():
            shutil.copytree(state_dir, kept_state)
        info = {
            "night": night,
            "input_dir": str(root),
            "home": str(home),
            "new_files": [s.name for s in specs],
            "already_processed": seen,
            "previous_run": ledger.run_id,
            "pool_shards": len(pool),
            "pool_rows": sum(p["rows"] for p in [*parts_old, *parts_new]),
            "pool_kept": sum(p["kept"] for p in [*parts_old, *parts_new]),
            "selected": now.height,
            "added": added.height,
            "removed": removed.height,
        }
        timings = {"ingest_s": t_ingest, "compute_s": tally.compute_seconds, "total_s": time.perf_counter() - t_start}
        plan_all = replace(plan_a, stages=(*plan_a.stages, *plan_b.stages))
        manifest = complete_manifest(
            manifest, run_dir, stages, plan_all, [r.source for r in refs], outcome, tally, [*globals_a, *globals_b],
            timings, {"incremental": info, "cache": {"work_dir": str(store.root), "step_hits": sum(tally.hits.values()),
                                                      "steps": sum(tally.steps.values())},
                      "prefect": prefect_info()}, reports)
        manifest["layout"].update(diff="diff/", state="state/")
        write_json_atomic(manifest, run_dir / "manifest.json")

        # commit: from here on tonight's files count as processed
        files = dict(ledger.files)
        for (p, fp), spec in zip(fresh, specs, strict=True):
            files[fp] = {"path": spec.name, "size": p.stat().st_size, "night": night, "run_id": run_id}
        Ledger(night=night, run_id=run_id, files=files, state_dir=str(kept_state) if kept_state.exists() else None,
               pool=pool, selected=str(sel_path)).save(home)
        logger.info("night %d: %d new row(s) read, %d kept; pool %d rows; selection %d (+%d / -%d)", night,
                    manifest["counts"]["read"], manifest["counts"]["kept"], info["pool_rows"], now.height,
                    added.height, removed.height)
        publish(manifest, cfg.run.name)
        return {"run_dir": str(run_dir), "manifest": manifest}
