"""The plan of a run: stages as data, split into per-shard segments and global steps; and the
per-process instances of set-up stages (a model loads once per process and run).

A plan is pure data (picklable), so any executor can ship it to a thread, a process or a cluster
worker, which rebuilds the stages it needs from their specs (:meth:`StageSpec.build`).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.config import Config
from pipeline.engine.keys import STORE_VERSION, hkey, package_version, stage_input_key
from pipeline.engine.store import WorkStore
from pipeline.io.fingerprint import file_fingerprint
from pipeline.stages.base import RunContext, Stage


@dataclass(frozen=True)
class StageSpec:
    """A stage as data: enough to rebuild it in any worker process."""

    index: int
    name: str
    params: dict[str, Any]
    fingerprint: str
    scope: str
    stateful: bool
    is_selector: bool
    key: str  # fingerprint + the run context that can change its output

    @property
    def label(self) -> str:
        return f"{self.index:02d}-{self.name}"

    def build(self) -> Stage:
        from pipeline.stages import get_stage

        return get_stage(self.name)(self.params)


@dataclass(frozen=True)
class Step:
    kind: Literal["row", "pre", "post"]
    stage: int


@dataclass(frozen=True)
class Segment:
    """Per-shard steps run back to back in one task, then (optionally) one global step."""

    steps: tuple[Step, ...]
    global_stage: int | None

    def label(self, plan: Plan) -> str:
        names = [f"{plan.spec(s.stage).name}{'' if s.kind == 'row' else '.' + s.kind}" for s in self.steps]
        return "+".join(names) or "noop"


@dataclass(frozen=True)
class Plan:
    stages: tuple[StageSpec, ...]
    segments: tuple[Segment, ...]
    ctx: RunContext
    store_root: str
    token: str  # identifies the run for per-process stage instances

    @property
    def store(self) -> WorkStore:
        return WorkStore(self.store_root)

    def spec(self, index: int) -> StageSpec:
        """The spec of stage ``index`` (indices run on across plans split at the first selector)."""
        return self.stages[index - self.stages[0].index]


def make_context(cfg: Config, run_dir: Path, cache_dir: Path | None = None) -> RunContext:
    return RunContext(run_dir=run_dir, seed=cfg.run.seed, device=cfg.run.device,
                      state_in=cfg.resolve(cfg.run.state_in) if cfg.run.state_in else None,
                      state_out=run_dir / "state" if cfg.run.save_state else None,
                      cache_dir=cfg.resolve(cfg.run.cache_dir) if cfg.run.cache_dir else cache_dir)


def build_plan(stages: list[Stage] | list[tuple[str, dict[str, Any]]], ctx: RunContext, store_root: str | Path,
               start_index: int = 0) -> Plan:
    """Segments and stage specs for ``stages`` (instances or ``(name, params)`` pairs)."""
    built = [s if isinstance(s, Stage) else _build(*s) for s in stages]
    fp_cache = WorkStore(store_root).fingerprint_cache()
    specs = []
    for i, st in enumerate(built, start=start_index):
        stateful = st.has_state()
        state_fp = "-"
        if stateful and ctx.state_in is not None and (ctx.state_in / st.name).exists():
            state_fp = file_fingerprint(ctx.state_in / st.name, fp_cache)
        # the content of every file the stage reads (benchmarks, models), not just their paths
        inputs = stage_input_key(st, fp_cache, ctx.device)
        key = hkey("stage", STORE_VERSION, package_version(), st.fingerprint(), ctx.seed, ctx.device, state_fp, inputs)
        specs.append(StageSpec(i, st.name, st.params.model_dump(mode="python"), st.fingerprint(), st.scope,
                               stateful, st.is_selector, key))
    segments: list[Segment] = []
    steps: list[Step] = []
    for sp in specs:
        j = sp.index
        if sp.scope == "row":
            steps.append(Step("row", j))
            continue
        steps.append(Step("pre", j))
        segments.append(Segment(tuple(steps), j))
        steps = [Step("post", j)]
    segments.append(Segment(tuple(steps), None))
    return Plan(tuple(specs), tuple(segments), ctx, str(store_root), uuid.uuid4().hex)


def _build(name: str, params: dict[str, Any]) -> Stage:
    from pipeline.stages import get_stage

    return get_stage(name)(params)


# ---------------------------------------------------------------- per-process stage instances

_INSTANCES: dict[tuple[str, int], Stage] = {}
_SETUP_SECONDS: dict[tuple[str, int], float] = {}
_LOCK = threading.Lock()
MAX_LIVE_PLANS = 4
RELEASE_WAIT_S = 5.0


def stage_instance(plan: Plan, index: int) -> tuple[Stage, float]:
    """The set-up instance of stage ``index`` in this process (models load once per process and run);
    returns it and the seconds its setup took if this call did the setup (else 0)."""
    k = (plan.token, index)
    with _LOCK:
        st = _INSTANCES.get(k)
        if st is not None:
            return st, 0.0
        tokens = list(dict.fromkeys(o[0] for o in _INSTANCES))
        if plan.token not in tokens and len(tokens) >= MAX_LIVE_PLANS:
            # long-lived workers (an external cluster) serve many runs: drop the oldest run's models
            for other in [o for o in _INSTANCES if o[0] == tokens[0]]:
                _evict(other)
        t0 = time.perf_counter()
        st = plan.spec(index).build()
        st.setup(plan.ctx)
        _INSTANCES[k] = st
        dt = time.perf_counter() - t0
        _SETUP_SECONDS[k] = dt
        return st, dt


def _evict(k: tuple[str, int]) -> None:
    st = _INSTANCES.pop(k, None)
    _SETUP_SECONDS.pop(k, None)
    if st is not None:
        # a failing teardown must not mask the run's own error
        with contextlib.suppress(Exception):
            st.teardown()


def release_stage(plan: Plan, index: int | None = None) -> None:
    """Tear down this process's instance(s) of the plan's stages (all when ``index`` is None).

    Gives up after ``RELEASE_WAIT_S`` when another thread holds the instance lock (a model still
    loading on a worker thread after an interrupt): an interrupted run must not wait for it."""
    if not _LOCK.acquire(timeout=RELEASE_WAIT_S):
        return
    try:
        for k in [k for k in _INSTANCES if k[0] == plan.token and (index is None or k[1] == index)]:
            _evict(k)
    finally:
        _LOCK.release()


def local_instances(plan: Plan) -> dict[int, Stage]:
    return {k[1]: st for k, st in _INSTANCES.items() if k[0] == plan.token}


def stage_reports(plan: Plan) -> dict[int, dict[str, Any]]:
    """``summary()``/``models()`` of the stages set up in this process, taken before teardown.

    Global stages report from their global step (stored with it); this covers row stages that ran
    here (local and threads engines). On process/cluster runners row stages report from a fresh,
    unused instance.
    """
    return {i: {"summary": safe_report(st, "summary"), "models": safe_report(st, "models")}
            for i, st in local_instances(plan).items()}



def safe_report(stage: Stage | None, attr: str) -> Any:
    """``stage.summary()``/``stage.models()`` as JSON-able data; an error is reported, never raised."""
    fn = getattr(stage, attr, None)
    if fn is None:
        return None
    try:
        return json.loads(json.dumps(fn(), default=str))
    except Exception as e:  # noqa: BLE001 - a summary must never fail a run
        return {"error": f"{type(e).__name__}: {e}"}
