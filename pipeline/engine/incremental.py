"""Incremental nightly curation of a growing input directory.

Each night (a run with ``flow.incremental`` or ``input_dir``, on any engine):

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
ledger, each night's persisted state, the pool and each night's selected ids. A night holds the
home's lock from before it reads the ledger until it has committed, so a second invocation fails at
once instead of sweeping the live night's pool as an orphan.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.config import Config, IncrementalSettings
from pipeline.engine.chains import ShardChain
from pipeline.engine.driver import (
    RunLayout,
    estimate_recorder,
    finalize_all,
    ingest_all,
    rejects_records,
    run_plan,
)
from pipeline.engine.executor import Executor
from pipeline.engine.finalize import (
    collect_state,
    copy_rejects,
    materialize_chain,
    merge_outcomes,
    run_schema,
)
from pipeline.engine.manifest import StageTally, complete_manifest
from pipeline.engine.plan import build_plan, make_context, release_stage, stage_reports
from pipeline.engine.steps import GlobalResult
from pipeline.engine.store import WorkStore
from pipeline.io.atomic import write_json_atomic
from pipeline.io.fingerprint import file_fingerprint
from pipeline.io.readers import SourceSpec
from pipeline.io.shards import list_shards, write_parquet_atomic
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


def home_dir(cfg: Config, inc: IncrementalSettings, out_root: Path) -> Path:
    """``flow.incremental.home``, or ``<out>/<run.name>.incremental``."""
    if inc.home:
        return cfg.resolve(inc.home).resolve()
    return out_root / f"{cfg.run.name}.incremental"


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


def sweep_orphans(home: Path, ledger: Ledger) -> None:
    """Remove pool/state/selected entries of nights that died before committing.

    Only ever called with the home's lock held: an entry not in the ledger then cannot belong to a
    night in progress."""
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


def check_pool(ledger: Ledger) -> None:
    """Every pool file the ledger lists must exist with its rows: a missing one cannot be recomputed
    (its input file is marked processed), so say exactly that instead of failing later."""
    import pyarrow.parquet as pq

    missing = []
    for e in ledger.pool:
        p = Path(e["path"])
        try:
            if pq.read_metadata(p).num_rows != e["rows"]:
                missing.append(f"{p} (rows differ)")
        except (OSError, ValueError):
            missing.append(str(p))
    if missing:
        raise RuntimeError(f"the nightly pool is damaged: {len(missing)} file(s) the ledger lists are missing or "
                           f"changed ({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); restore them, "
                           "or start a new home (flow.incremental.home) to re-read every input file")


def _materialize(chain: ShardChain, pool_dir: str) -> dict[str, Any]:
    return materialize_chain(chain, Path(pool_dir) / chain.name, drop=SELECTION.names)


def _selected_ids(run_dir: Path) -> pl.DataFrame:
    paths = list_shards(run_dir / "selected")
    cols = ["id", "source", "source_row"]
    if not paths:
        return pl.DataFrame(schema={"id": pl.String, "source": pl.String, "source_row": pl.Int64})
    return pl.concat([pl.read_parquet(p, columns=cols) for p in paths]).unique("id", keep="first", maintain_order=True)


def run_night(ex: Executor, cfg: Config, layout: RunLayout, store: WorkStore, manifest: dict[str, Any],
              input_dir: str | None, t_start: float) -> dict[str, Any]:
    """One night of incremental curation (the home's and the run's locks are held); the manifest."""
    inc = incremental_settings(cfg, input_dir)
    root = cfg.resolve(inc.input_dir)
    home, run_dir, run_id = layout.home, layout.run_dir, layout.run_id
    assert home is not None
    ledger = Ledger.load(home)
    check_pool(ledger)
    fresh, seen = new_files(root, inc.pattern, ledger)  # a wrong input dir fails here, before any sweep
    sweep_orphans(home, ledger)
    night = ledger.night + 1
    if cfg.sources:
        ex.log(f"incremental mode reads {root}; the config's `sources` are ignored")
    ex.log(f"night {night} ({run_id}): {len(fresh)} new file(s), {len(seen)} already processed")

    stages = cfg.build_stages()
    cut = next((i for i, s in enumerate(stages) if s.is_selector), len(stages))
    base_cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={
        "state_in": ledger.state_dir, "save_state": True})})
    from pipeline.config import ConfigError, check_stages

    problems = check_stages(base_cfg)  # nights keep state: a stateful stage twice is an error here
    if problems:
        raise ConfigError("invalid config for incremental runs\n  " + "\n  ".join(problems))
    ctx = make_context(base_cfg, run_dir, cache_dir=layout.sidecars)
    plan_a = build_plan(stages[:cut], ctx, store.root)
    plan_b = build_plan(stages[cut:], replace(ctx, state_in=None), store.root, start_index=cut)
    tally = StageTally()
    globals_a: list[GlobalResult] = []
    specs = [SourceSpec(path=str(p), name=str(p.relative_to(root)), container=inc.container, format=inc.format,
                        **cfg.reader_limits()) for p, _ in fresh]
    prefixes = [f"part-n{night:04d}-{i:03d}-" for i in range(len(specs))]
    t0 = time.perf_counter()
    refs = ingest_all(ex, cfg, store, specs, prefixes) if specs else []
    t_ingest = time.perf_counter() - t0
    try:
        # phase A: tonight's files against the state of earlier nights
        chains = [c for r in refs for c in r.chains]
        if chains:
            chains, globals_a = run_plan(ex, plan_a, chains, tally, estimate_recorder(cfg, manifest, run_dir))
        pool_dir = home / "pool" / run_id
        fn = functools.partial(_materialize, pool_dir=str(pool_dir))
        added_pool = [{**e, "night": night} for e in ex.map("pool", fn, chains, [c.name for c in chains])]
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
        globals_b: list[GlobalResult] = []
        if pool_chains:
            pool_chains, globals_b = run_plan(ex, plan_b, pool_chains, tally, estimate_recorder(cfg, manifest, run_dir))
        n_old = len(ledger.pool)
        schema = run_schema(pool_chains) if pool_chains else None
        parts_old = finalize_all(ex, pool_chains[:n_old], run_dir, write_shard=False, schema=schema)
        parts_new = finalize_all(ex, pool_chains[n_old:], run_dir, write_shard=True, schema=schema)
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

    outcome = merge_outcomes(parts_new)
    outcome["selected"] = sum(p["selected"] for p in [*parts_old, *parts_new])
    for p in parts_old:
        outcome["files"].update(p["files"])
    outcome["files"].update(rejects_records(run_dir))
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
        timings, layout.manifest_entry(),
        {"incremental": info, "cache": {"work_dir": str(store.root), "step_hits": sum(tally.hits.values()),
                                        "steps": sum(tally.steps.values())}, **ex.info()}, reports)

    # commit: from here on tonight's files count as processed (only after the pool verifies)
    new_ledger = Ledger(night=night, run_id=run_id, files=dict(ledger.files),
                        state_dir=str(kept_state) if kept_state.exists() else None, pool=pool, selected=str(sel_path))
    check_pool(new_ledger)
    for (p, fp), spec in zip(fresh, specs, strict=True):
        new_ledger.files[fp] = {"path": spec.name, "size": p.stat().st_size, "night": night, "run_id": run_id}
    new_ledger.save(home)
    ex.log(f"night {night}: {manifest['counts']['read']:,} new row(s) read, {manifest['counts']['kept']:,} kept; "
           f"pool {info['pool_rows']:,} rows; selection {now.height:,} (+{added.height:,} / -{removed.height:,})")
    return manifest
