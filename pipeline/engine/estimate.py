"""Estimates before a long stage: how long an LM-scoring or embedding stage will take, from a probe.

Before a segment whose per-shard steps include a stage that loads a model (its class declares
``resources.loads_model``: LM scoring, embedding, semantic dedup, clustering, vector selectors), the
driver runs :func:`probe_segment` on one shard, where steps run (a task on Prefect), and prints and
records the result before the segment starts:

* the probe takes the first ``PROBE_ROWS + 1`` kept rows of the first shard whose step is not in
  the work store and runs the segment's steps on them in order; the first row of each model stage is
  scored alone (it pays for loading the model), the rest are timed as the stage's steady rate;
* the rows the stage will score are estimated as the rows of every shard still to compute, times
  the kept fraction of the probed shard, times the fraction of probe rows that reach the stage
  (earlier steps of the segment may drop some), times the stage's ``sample`` fraction;
* the estimate is ``load + rows / rate`` for one shard at a time (a model stage already uses every
  core or the GPU; running two shards of it side by side does not halve the time).

Nothing the probe computes is wasted or counted twice: LM scores and embeddings it computes land in
the score cache and the embedding sidecar, where the segment finds them, and the stage's own
counters (what its ``summary()`` reports) are put back as they were. The estimate is recorded in the
running manifest at once (so an interrupted run shows it) and in the stage's entry of the final one,
beside the ``seconds`` the stage really took.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Any

import polars as pl

from pipeline.engine.chains import ShardChain, read_chain_cached
from pipeline.engine.plan import Plan, stage_instance
from pipeline.engine.steps import GlobalRef, apply_step, global_slice, step_paths
from pipeline.engine.store import cached_meta
from pipeline.schema import with_decision
from pipeline.stages.base import Stage

#: rows timed after the first (which pays for loading the model); small enough that even a slow LM
#: on two CPU cores answers within seconds, and cached for the real step
PROBE_ROWS = 32
_POS = "_probe_pos"


@dataclass(frozen=True)
class Estimate:
    """What a probe measured for one model stage, and what it predicts.

    ``stage``/``name``: the stage's index and name; ``rows``: rows the stage is expected to score in
    the shards still to compute; ``probe_rows``/``probe_s``: rows timed and their seconds (after the
    first); ``first_s``: the first row alone, model loading included; ``rows_per_s``: the probe's rate;
    ``seconds``: the estimate for the whole stage."""

    stage: int
    name: str
    rows: int
    probe_rows: int
    probe_s: float
    first_s: float
    rows_per_s: float | None
    seconds: float

    def line(self) -> str:
        rate = f"{self.rows_per_s:,.1f} rows/s" if self.rows_per_s else "rate not measured"
        return (f"  estimate: {self.name} on ~{self.rows:,} rows ≈ {_duration(self.seconds)} "
                f"(probe: {self.probe_rows} rows in {self.probe_s:.2f}s = {rate}; "
                f"first row incl. model load {self.first_s:.2f}s)")

    def record(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def model_steps(plan: Plan, seg_index: int) -> list[int]:
    """Positions (in the segment) of the per-shard steps whose stage loads a model."""
    from pipeline.stages import get_stage

    seg = plan.segments[seg_index]
    return [i for i, s in enumerate(seg.steps) if s.kind != "post" and get_stage(plan.spec(s.stage).name).resources.loads_model]


def pending_chains(plan: Plan, seg_index: int, chains: list[ShardChain], gref: GlobalRef | None,
                   positions: list[int]) -> list[ShardChain]:
    """The chains with a step at one of ``positions`` of the segment not in the work store yet."""
    out = []
    for c in chains:
        paths = step_paths(plan, seg_index, c, gref)
        if any(cached_meta(paths[i]) is None for i in positions):
            out.append(c)
    return out


class _Counters:
    """The stage's numeric counters (dicts of numbers on the instance), put back after the probe so
    its ``summary()`` reports only the real steps."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.saved = {k: copy.copy(v) for k, v in vars(stage).items()
                      if isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values())}

    def restore(self) -> None:
        for k, v in self.saved.items():
            getattr(self.stage, k).clear()
            getattr(self.stage, k).update(v)


def _apply(step: Any, stage: Stage, df: pl.DataFrame, chain: ShardChain, gref: GlobalRef | None) -> pl.DataFrame:
    """The step on the probe's rows (a ``post`` step reads the same rows of the global step's slice)."""
    if step.kind == "post":
        if gref is None:
            return df
        return apply_step(stage, "post", df, global_slice(chain, gref)[df[_POS].to_list()])
    return apply_step(stage, step.kind, df)


def probe_segment(chain: ShardChain, plan: Plan, seg_index: int, gref: GlobalRef | None,
                  rows_pending: int, n: int = PROBE_ROWS) -> list[dict[str, Any]]:
    """Time the segment's model stages on the first ``n + 1`` kept rows of ``chain`` (see the module
    docstring); one :meth:`Estimate.record` per model stage.

    Parameters
    ----------
    chain:
        The shard to probe (its files at the segment's input).
    plan, seg_index, gref:
        The run's plan, the segment, and the previous global step's result (for a ``post`` step).
    rows_pending:
        Rows of all shards the segment has still to compute.
    n:
        Rows timed per model stage after the first.
    """
    seg = plan.segments[seg_index]
    wanted = set(model_steps(plan, seg_index))
    df = with_decision(read_chain_cached(chain.files)).with_row_index(_POS)
    kept_frac = float(df["keep"].mean() or 0.0) if df.height else 0.0
    probe = df.filter(pl.col("keep")).head(n + 1)
    start = max(probe.height, 1)
    out: list[dict[str, Any]] = []
    for i, step in enumerate(seg.steps):
        if i > max(wanted, default=-1) or probe.height == 0:
            break
        stage, _ = stage_instance(plan, step.stage)
        if i not in wanted:
            probe = _apply(step, stage, probe, chain, gref)
            continue
        counters = _Counters(stage)
        try:
            kept = probe.filter(pl.col("keep"))
            reach = kept.height / start
            t0 = time.perf_counter()
            stage.score(kept.head(1))
            t1 = time.perf_counter()
            stage.score(kept)  # the first row is cached now: this times the other rows
            t2 = time.perf_counter()
            probe = _apply(step, stage, probe, chain, gref)
        finally:
            counters.restore()
        timed = max(kept.height - 1, 0)
        rate = timed / (t2 - t1) if timed and t2 > t1 else None
        sample = getattr(stage.params, "sample", None)
        rows = round(rows_pending * kept_frac * reach * (sample if isinstance(sample, float) else 1.0))
        seconds = (t1 - t0) + (rows / rate if rate else (t1 - t0) * rows)
        out.append(Estimate(step.stage, plan.spec(step.stage).name, rows, timed, t2 - t1, t1 - t0, rate,
                            seconds).record())
    return out


def estimate_lines(records: list[dict[str, Any]]) -> list[str]:
    return [Estimate(**r).line() for r in records]
