"""What if: replay a run's decisions with one threshold changed, over the stored columns.

:func:`what_if` re-runs each stage's own ``decide`` and ``score_global`` (the stage code the engine
runs) from the change on, over the columns stored in the shards, without recomputing any score.
Which columns a stage's global step writes is read from its declared contract in the manifest
(``stages[i]["contract"]["writes"]``, ``phase: global``); runs that predate contracts fall back to
probing the stage on empty frames (:func:`_global_writes`).

Uses one engine helper, ``global_new_columns`` (which columns a global step hands back to the
shards), imported lazily from the engine so that the inspection side does not import it at load.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from pipeline.inspect.html import table_html
from pipeline.inspect.run import SELECTION_COLUMNS, TEXT_COLUMNS, Run, _reason_stage_frame, _run
from pipeline.io.shards import list_shards
from pipeline.schema import CANONICAL, polars_schema


@dataclass
class WhatIf:
    """The outcome of :func:`what_if`: counts now vs in the what-if, and the rows that change.

    ``rows`` has one row per shard row: source, source_row, id, keep/drop_reason/selected as stored,
    and keep_new/drop_reason_new/selected_new. ``exact`` is False when some stage could not be
    replayed faithfully (see ``notes``).
    """

    change: str
    counts: pl.DataFrame
    rows: pl.DataFrame
    notes: list[str]

    @property
    def exact(self) -> bool:
        return not any(n.startswith("approximate") for n in self.notes)

    def _sel(self, new: bool) -> pl.Expr:
        k, s = ("keep_new", "selected_new") if new else ("keep", "selected")
        return pl.col(k) & pl.col(s).fill_null(False)

    @property
    def transitions(self) -> pl.DataFrame:
        """Row counts by (now, what-if) outcome: dropped / kept / selected."""
        def state(new: bool) -> pl.Expr:
            k = "keep_new" if new else "keep"
            return pl.when(~pl.col(k)).then(pl.lit("dropped")).when(self._sel(new)).then(pl.lit("selected")).otherwise(pl.lit("kept"))

        return (self.rows.group_by(state(False).alias("now"), state(True).alias("what_if")).agg(pl.len().cast(pl.Int64).alias("rows"))
                .sort(["now", "what_if"]))

    @property
    def newly_dropped(self) -> pl.DataFrame:
        return self.rows.filter(pl.col("keep") & ~pl.col("keep_new"))

    @property
    def newly_kept(self) -> pl.DataFrame:
        return self.rows.filter(~pl.col("keep") & pl.col("keep_new"))

    @property
    def newly_selected(self) -> pl.DataFrame:
        return self.rows.filter(~self._sel(False) & self._sel(True))

    @property
    def unselected(self) -> pl.DataFrame:
        return self.rows.filter(self._sel(False) & ~self._sel(True))

    def selected_keys(self, new: bool = True) -> pl.DataFrame:
        """(source, source_row) of the rows selected (in the what-if when ``new``)."""
        return self.rows.filter(self._sel(new)).select("source", "source_row").sort("source", "source_row")

    def _repr_html_(self) -> str:
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (f"<p><b>What if:</b> {html.escape(self.change)} ({'exact replay' if self.exact else 'approximate'})</p>"
                + table_html(self.counts) + (f"<ul>{notes}</ul>" if notes else ""))


def _rescore(run: Run, stage: Any, columns: Sequence[str], keep: pl.Series) -> list[pl.Series]:
    """Re-run ``stage.score`` shard by shard over the stored rows (with the what-if's ``keep``, as
    the runner would have it at that point) and return ``columns`` of it."""
    parts, at = [], 0
    for p in list_shards(run.path / "shards"):
        shard = pl.read_parquet(p)
        shard = shard.with_columns(keep.slice(at, shard.height).alias("keep"))
        at += shard.height
        scored = stage.score(shard)
        # a scratch column a stage writes only when needed (the dedup keeper's response length, when
        # the length stage's column is absent) is simply not there
        parts.append(scored.select([c for c in columns if c in scored.columns]))
    out = pl.concat(parts, how="vertical_relaxed")
    return [out[c] for c in columns if c in out.columns]


_OPS = {">=": ("<", lambda c, t: c < t), ">": ("<=", lambda c, t: c <= t),
        "<=": (">", lambda c, t: c > t), "<": (">=", lambda c, t: c >= t)}


def _declared_global_writes(contract: dict[str, Any] | None) -> set[str] | None:
    """The columns a stage's global step writes, as its manifest contract declares them (None without one)."""
    writes = (contract or {}).get("writes")
    if not isinstance(writes, dict):
        return None
    return {c for c, w in writes.items() if isinstance(w, dict) and w.get("phase") == "global"}


def _global_writes(stage: Any, df: pl.DataFrame, ctx: Any) -> set[str] | None:
    """Fallback for runs without a declared contract.

    The columns ``stage``'s global step writes: those it declares minus those its row-local
    ``score`` makes (found by running ``score`` on an empty frame), plus any undeclared column a
    ``score_global`` on an empty frame adds. A fresh instance is used, so the probe leaves no state
    behind in the one that replays. None when ``score`` cannot run on an empty frame.
    """
    from pipeline.engine.steps import global_new_columns

    declared = stage.output_schema()
    probe = type(stage)(stage.params)
    try:
        probe.setup(ctx)
        rows = df.clear().drop([c for c in declared if c in df.columns])
        canon = pl.DataFrame(schema=polars_schema(CANONICAL))
        rows = pl.concat([canon.select([c for c in canon.columns if c not in rows.columns]), rows], how="horizontal")
        from_score = set(probe.score(rows).columns) & set(declared)
    except Exception:
        return None
    writes = set(declared) - from_score
    schema = {c: (df.schema[c] if c in df.columns else declared[c])
              for c in [*stage.global_frame_columns(), "_shard", "_pos"] if c in df.columns or c in declared}
    try:
        empty = pl.DataFrame(schema=schema)
        writes |= set(global_new_columns(stage, empty.columns, probe.score_global(empty))) - from_score
    except Exception:  # noqa: S110 - some global steps refuse an empty pool; the declared columns suffice
        pass
    probe.teardown()
    return writes


def _unscored_rows(df: pl.DataFrame, entered: np.ndarray, reached_before: np.ndarray,
                   columns: Sequence[str]) -> np.ndarray | None:
    """Rows that reach a row stage in the what-if but that it never scored in the run.

    A row counts as unscored when all the stage's columns are null on it, which is only telling for
    stages that wrote something on every row they saw in the run (a clean decontamination row is
    all null too: such stages give None).
    """
    cols = [c for c in columns if c in df.columns]
    new = entered & ~reached_before
    if not cols or not new.any():
        return None
    empty = df.select(pl.all_horizontal([pl.col(c).is_null() for c in cols])).to_series().to_numpy()
    if empty[reached_before].any():
        return None
    return empty & new


def _rows_at(run: Run, positions: np.ndarray, keep: pl.Series) -> pl.DataFrame:
    """Full stored rows (messages included) at global ``positions``, with the what-if's ``keep``."""
    parts, at = [], 0
    for p in list_shards(run.path / "shards"):
        n = pl.scan_parquet(p).select(pl.len()).collect().item()
        local = positions[(positions >= at) & (positions < at + n)] - at
        if len(local):
            parts.append(pl.read_parquet(p)[local.tolist()])
        at += n
    out = pl.concat(parts, how="diagonal_relaxed")
    return out.with_columns(keep.gather(positions.tolist()).alias("keep"))


def _entry_keep(reason_stage: np.ndarray, i: int) -> np.ndarray:
    """Rows that reached stage ``i`` in the stored run (not dropped by an earlier stage).

    ``reason_stage`` is -1 for kept rows and -2 for a reason no stage claims (counted as dropped
    before every stage, so it is never revived).
    """
    return (reason_stage == -1) | (reason_stage >= i)


def _decision_counts(df: pl.DataFrame, keep: str, reason: str, selected: str, names: Sequence[str],
                     rejected: int, selectors: set[int], prefixes: Sequence[str | None] = ()) -> dict[str, int]:
    kept = int(df[keep].sum())
    sel = int((df[keep] & df[selected].fill_null(False)).sum()) if selected in df.columns else kept
    out = {"read": df.height + rejected, "rejected": rejected, "kept": kept, "dropped": df.height - kept, "selected": sel}
    labels = [*names, "what_if"]
    for i, n in enumerate(labels):
        if i not in selectors:
            out[f"dropped by {n}"] = 0
    reasons = df.filter(~pl.col(keep))[reason]
    rs = _reason_stage_frame(reasons, labels, prefixes)
    per = reasons.value_counts().join(rs, left_on=reason, right_on="drop_reason", how="left")
    for st, n in per.group_by("_stage").agg(pl.col("count").sum()).iter_rows():
        label = labels[st] if st is not None else "(unknown stage)"
        out[f"dropped by {label}"] = out.get(f"dropped by {label}", 0) + int(n)
    return out


def what_if(run: Run | str | Path, stage_or_column: str, threshold: float | None = None, *,
            keep_if: Literal[">=", ">", "<=", "<"] = ">=", rerun_global: bool = True, recompute_scratch: bool = True,
            compute_missing: bool = False, **params: Any) -> WhatIf:
    """Replay the run's decisions with one threshold changed, over the stored columns, and compare.

    Two forms:

    * ``what_if(run, "length", min_response_tokens=20)``: the named stage with these params
      changed (validated by the stage's own ``Params``), as a rerun with the edited config would;
    * ``what_if(run, "ifd", 0.9, keep_if="<=")``: an extra filter on a stored column right after
      the stage that wrote it, keeping rows whose value satisfies ``value keep_if threshold``
      (null never drops, as in :func:`pipeline.stages.base.drop_where`).

    No score is recomputed. Stages before the change keep their stored decisions; from the change
    on, row stages re-run ``decide`` on their stored columns and global stages (dedup, clusters,
    selectors) re-run ``score_global`` on the gathered columns, as the runner does, or keep their
    stored result when the rows reaching them are unchanged. A global stage whose inputs are scratch
    columns that the shards do not keep (MinHash band keys) gets them back from its own row-local
    ``score`` over the stored messages (``recompute_scratch``; a hashing pass, no model), else its
    stored result is reused. A looser threshold lets rows through that the run dropped early, so
    later stages that only score surviving rows (embeddings, LM scores) never scored them: with
    ``compute_missing`` those stages score just these rows (loading their model), as a rerun would;
    without it the notes say which stages lacked them. Where the replay cannot match a real rerun
    (scratch not recomputed, missing scores, a stage that fails to replay) the result says so in
    ``notes`` and ``exact`` is False.
    """
    from pipeline.engine.steps import global_new_columns
    from pipeline.stages import get_stage
    from pipeline.stages.base import RunContext, Stage, drop_where

    run = _run(run)
    if run.shards is None:
        raise ValueError(f"{run.path} has no shards")
    stages_m = run.manifest.get("stages", [])
    names = [s["name"] for s in stages_m]
    # where the change applies
    if stage_or_column in names:
        if threshold is not None:
            raise TypeError(f"what_if: {stage_or_column!r} is a stage: pass its params by name "
                            f"(e.g. what_if(run, {stage_or_column!r}, some_param=...)), not a threshold")
        if not params:
            raise TypeError(f"what_if: give the params of {stage_or_column!r} to change")
        changed = names.index(stage_or_column)
        col_rule = None
        change = f"{stage_or_column}: " + ", ".join(f"{k}={v!r}" for k, v in params.items())
    elif stage_or_column in run.schema:
        if threshold is None:
            raise TypeError(f"what_if: a threshold is needed to filter on column {stage_or_column!r}")
        if params:
            raise TypeError("what_if: params are for a stage; a column takes threshold and keep_if")
        producer = next((i for i, s in enumerate(stages_m) if stage_or_column in s.get("columns", {})), -1)
        changed = producer + 1
        neg, fn = _OPS[keep_if]
        col_rule = (fn(pl.col(stage_or_column), threshold), f"what_if:{stage_or_column}{neg}{threshold}")
        change = f"keep rows with {stage_or_column} {keep_if} {threshold}" + (
            f" (applied after {names[producer]})" if producer >= 0 else " (applied before the first stage)")
    else:
        raise ValueError(f"what_if: {stage_or_column!r} is neither a stage of this run ({', '.join(names)}) "
                         f"nor a stored column")

    stages = []
    for i, s in enumerate(stages_m):
        p = dict(s.get("params") or {})
        if i == changed and col_rule is None:
            p.update(params)
        stages.append(get_stage(s["name"])(p))

    rejected = int(run.manifest.get("counts", {}).get("rejected") or 0)
    need = set(run.columns) - set(TEXT_COLUMNS)
    for st in stages:
        if st.scope == "global":
            need |= {c for c in st.global_frame_columns() if c in TEXT_COLUMNS and run.has(c)}
    # stored frame with shard/position, as the runner's gather_global sees it
    frames = []
    for si, p in enumerate(list_shards(run.path / "shards")):
        f = pl.scan_parquet(p)
        cols = [c for c in f.collect_schema() if c in need]
        frames.append(f.select(cols).collect().with_columns(pl.lit(si, dtype=pl.Int32).alias("_shard"),
                                                            pl.int_range(pl.len(), dtype=pl.Int64).alias("_pos")))
    stored = pl.concat(frames, how="diagonal_relaxed")
    rs = run.reason_stages(stored["drop_reason"])
    reason_stage = (stored.select("drop_reason").join(rs, on="drop_reason", how="left", maintain_order="left")["_stage"]
                    .fill_null(-2).to_numpy())
    reason_stage = np.where(stored["drop_reason"].is_null().to_numpy(), -1, reason_stage)
    notes: list[str] = []

    # Stages before ``start`` keep their stored decisions. Selectors compose through the selection
    # columns, and only the final state is stored, so every selector is replayed.
    first_selector = next((i for i, s in enumerate(stages) if s.is_selector), len(stages))
    start = min(changed, first_selector)
    keep0 = _entry_keep(reason_stage, start)
    df = stored.drop([c for c in SELECTION_COLUMNS if c in stored.columns]).with_columns(
        pl.Series("keep", keep0),
        pl.when(pl.Series(keep0)).then(None).otherwise(pl.col("drop_reason")).alias("drop_reason"))
    cfg_run = run.manifest.get("config", {}).get("run") or {}
    ctx = RunContext(run_dir=run.path, seed=int(cfg_run.get("seed") or 0), device="cpu")
    if cfg_run.get("cache_dir") and Path(cfg_run["cache_dir"]).is_absolute():
        ctx.cache_dir = Path(cfg_run["cache_dir"])
    if cfg_run.get("state_in") and Path(cfg_run["state_in"]).is_absolute():
        ctx.state_in = Path(cfg_run["state_in"])

    # The stored shards hold each column's *final* value, but a global step reads some columns that
    # global steps write (dedup stages pass on the dup_of/dup_kind an earlier dedup wrote). So the
    # columns written by global steps from ``start`` on are rolled back to what they were at
    # ``start``: the stored value on rows dropped before it (written by the stage that dropped
    # them), null elsewhere; each step then writes them again, as in the run.
    glob = [i for i in range(start, len(stages)) if stages[i].scope == "global"]
    writes: dict[int, set[str]] = {}
    for i in glob:
        w = _declared_global_writes(run.contract(i))
        if w is None:
            w = _global_writes(stages[i], df, ctx)
        if w is None:
            w = set(stages[i].output_schema()) - set(stages[i].global_frame_columns())
            notes.append(f"approximate: {stages[i].name}: could not tell which columns its global step writes")
        writes[i] = w - set(SELECTION_COLUMNS)
    dropped_before = pl.Series(~keep0)
    for c in sorted(set().union(*writes.values()) if writes else set()):
        if c in df.columns:
            df = df.with_columns(pl.when(dropped_before).then(pl.col(c)).otherwise(None).alias(c))

    def restore(i: int) -> None:
        """Put back stage ``i``'s stored outcome (its drops and the columns it wrote)."""
        nonlocal df
        mine = pl.Series(reason_stage == i)
        later = set().union(*[w for j, w in writes.items() if j > i])
        df = df.with_columns(
            pl.when(mine & pl.col("keep")).then(stored["drop_reason"]).otherwise(pl.col("drop_reason")).alias("drop_reason"),
            pl.when(mine).then(False).otherwise(pl.col("keep")).alias("keep"))
        after = df["keep"]
        df = df.with_columns([
            pl.when(mine | (after & pl.lit(c not in later))).then(stored[c]).otherwise(pl.col(c)).alias(c)
            for c in writes.get(i, set()) if c in stored.columns])

    for i in range(start, len(stages) + 1):
        if i == changed and col_rule is not None:
            df = drop_where(df, col_rule[0], col_rule[1])
        if i == len(stages):
            break
        st = stages[i]
        entered = df["keep"].to_numpy()
        same_entry = np.array_equal(entered, _entry_keep(reason_stage, i)) and i != changed
        if st.scope == "row" and not st.is_selector:
            cols = [c for c in run.stage_columns.get(st.name, []) if c in df.columns]
            todo = None if i == changed or same_entry else _unscored_rows(df, entered, _entry_keep(reason_stage, i), cols)
            if todo is not None and todo.any():
                pos = np.flatnonzero(todo)
                if compute_missing:
                    st.setup(ctx)
                    got = st.score(_rows_at(run, pos, df["keep"]))
                    st.teardown()
                    df = df.with_columns([df[c].scatter(pos, got[c].cast(df.schema[c])) for c in cols if c in got.columns])
                    notes.append(f"{st.name}: scored {len(pos):,} row(s) that reach it in the what-if but never did "
                                 f"in the run (compute_missing=True)")
                elif type(st).decide is Stage.decide:
                    notes.append(f"{st.name}: {len(pos):,} row(s) reach it in the what-if that it never saw (its "
                                 f"columns are null on them; later stages that need them may fail: compute_missing=True)")
                else:
                    notes.append(f"approximate: {st.name} never scored {len(pos):,} row(s) that reach it in the "
                                 f"what-if; a rerun would score them (kept here; compute_missing=True scores them)")
            df = st.decide(df)
            continue
        # a global stage (dedup, clustering, selection)
        if same_entry and not st.is_selector:
            restore(i)
            continue
        inputs = [c for c in st.global_frame_columns() if c != "selected" or c in df.columns]
        # inputs the stage's own row-local score() writes but the final shards do not keep (scratch)
        scratch = [c for c in inputs if c not in df.columns and c in st.output_schema()]
        if rerun_global and (not scratch or recompute_scratch):
            try:
                st.setup(ctx)
                if scratch:
                    df = df.with_columns(_rescore(run, st, scratch, df["keep"]))
                    notes.append(f"{st.name}: recomputed its scratch inputs {scratch} from the messages "
                                 f"(the shards do not store them)")
                g = df.select([c for c in dict.fromkeys([*inputs, "_shard", "_pos"]) if c in df.columns])
                g2 = st.score_global(g)
                added = global_new_columns(st, g.columns, g2)
                df = st.decide(df.with_columns(g2.select(added)))
                st.teardown()
                continue
            except Exception as e:  # a stage that cannot replay from stored columns: say so, reuse its result
                notes.append(f"approximate: {st.name}: could not re-run its global step ({type(e).__name__}: {e!s:.200}); "
                             f"reused its stored result")
        elif scratch:
            notes.append(f"approximate: {st.name}: its global inputs {scratch} are scratch columns the shards do not "
                         f"store (recompute_scratch=False); reused its stored result")
        else:
            notes.append(f"approximate: {st.name}: global step not re-run (rerun_global=False); reused its stored result")
        # fallback: the stored outcome of this stage
        if st.is_selector:
            df = df.with_columns(stored.select([c for c in SELECTION_COLUMNS if c in stored.columns]))
        else:
            restore(i)
    if "selected" not in df.columns:
        df = df.with_columns(pl.when(pl.col("keep")).then(pl.lit(True)).otherwise(None).alias("selected"))
    rows = stored.select("source", "source_row", "id", "keep", "drop_reason",
                         pl.col("selected") if "selected" in stored.columns else pl.lit(None, pl.Boolean).alias("selected")).with_columns(
        df["keep"].alias("keep_new"), df["drop_reason"].alias("drop_reason_new"), df["selected"].alias("selected_new"))
    selectors = {i for i, st in enumerate(stages) if st.is_selector} | ({len(names)} if col_rule is None else set())
    now = _decision_counts(rows, "keep", "drop_reason", "selected", names, rejected, selectors, run.reason_prefixes)
    new = _decision_counts(rows, "keep_new", "drop_reason_new", "selected_new", names, rejected, selectors, run.reason_prefixes)
    metrics = list(dict.fromkeys([*now, *new]))
    counts = pl.DataFrame({"metric": metrics, "now": [now.get(m, 0) for m in metrics],
                           "what_if": [new.get(m, 0) for m in metrics]}).with_columns(
        (pl.col("what_if") - pl.col("now")).alias("change"))
    return WhatIf(change=change, counts=counts, rows=rows, notes=notes)

