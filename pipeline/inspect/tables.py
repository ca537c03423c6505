"""Tables of one run (Polars frames): accounting, drop and reject reasons, sources, stages, parameters,
score summaries (by outcome and by source) and clusters.

Counts are recomputed from the shards and rejects themselves; ``matches_manifest`` in
:func:`accounting` says whether each agrees with what the manifest recorded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import polars as pl

from pipeline.inspect.run import (
    GROUP_LABELS,
    GROUPS,
    NON_SCORE_COLUMNS,
    NON_SCORE_SUFFIXES,
    Run,
    _run,
    _stage_label,
    stage_of_reason,
)


def accounting(run: Run | str | Path) -> pl.DataFrame:
    """The row funnel: read -> rejected at ingest -> dropped by each stage in order -> kept -> selected.

    Counted from the shards and rejects themselves (not the manifest); ``matches_manifest`` says
    whether each count agrees with the manifest's. Columns: step, kind (total/removed), rows,
    remaining, pct_of_read, matches_manifest.
    """
    run = _run(run)
    names = run.stage_names
    rejected = int(run.rejects.select(pl.len()).collect().item()) if run.rejects is not None else 0
    if run.shards is not None:
        df = run.frame(["keep", "drop_reason", "selected"], with_group=False)
    else:
        df = pl.DataFrame(schema={"keep": pl.Boolean, "drop_reason": pl.String, "selected": pl.Boolean})
    ingested = df.height
    read = ingested + rejected
    c = run.manifest.get("counts", {})
    steps: list[tuple[str, str, int, int, Any]] = [("read", "total", read, read, c.get("read"))]
    remaining = read - rejected
    steps.append(("rejected at ingest", "removed", rejected, remaining, c.get("rejected")))
    drops = df.filter(~pl.col("keep"))["drop_reason"]
    per_stage: dict[int | None, int] = {}
    if drops.len():
        rs = run.reason_stages(drops)
        counted = drops.value_counts().join(rs, on="drop_reason", how="left")
        for st, n in counted.group_by("_stage").agg(pl.col("count").sum()).iter_rows():
            per_stage[st] = int(n)
    # the manifest counts drops by reason prefix (``decontam`` for ``decontaminate``, ``exact`` for
    # ``exact_dedup``): map its keys to stages the same way the shards' reasons are mapped
    by_prefix = c.get("dropped_by_stage")
    by_stage_manifest: dict[int | None, int] = {}
    for key, v in (by_prefix or {}).items():
        j = stage_of_reason(str(key), names, run.reason_prefixes)
        by_stage_manifest[j] = by_stage_manifest.get(j, 0) + int(v)
    selectors = run.selector_indices
    for i, n in enumerate(names):
        if i in per_stage or i not in selectors:
            k = per_stage.get(i, 0)
            remaining -= k
            steps.append((f"dropped by {n}", "removed", k, remaining,
                          by_stage_manifest.get(i, 0) if by_prefix is not None else None))
    for st, k in per_stage.items():
        if st is None or st >= len(names):
            remaining -= k
            steps.append(("dropped, stage unknown", "removed", k, remaining, None))
    kept = int(df["keep"].sum()) if df.height else 0
    steps.append(("kept", "total", kept, kept, c.get("kept")))
    if run.has_selector:
        sel = int((df["keep"] & df["selected"].fill_null(False)).sum())
        steps.append(("not selected", "removed", kept - sel, sel, None))
        steps.append(("selected", "total", sel, sel, c.get("selected")))
    out = pl.DataFrame(
        {
            "step": [s[0] for s in steps],
            "kind": [s[1] for s in steps],
            "rows": [s[2] for s in steps],
            "remaining": [s[3] for s in steps],
            "manifest": [s[4] for s in steps],
        },
        schema={"step": pl.String, "kind": pl.String, "rows": pl.Int64, "remaining": pl.Int64, "manifest": pl.Int64},
    )
    return out.with_columns(
        (100.0 * pl.col("rows") / max(read, 1)).round(2).alias("pct_of_read"),
        pl.when(pl.col("manifest").is_null()).then(None).otherwise(pl.col("manifest") == pl.col("rows")).alias("matches_manifest"),
    ).drop("manifest")


def drop_reasons(run: Run | str | Path, level: Literal["rule", "reason"] = "rule") -> pl.DataFrame:
    """Dropped rows by stage and rule (``stage:rule``; details such as a benchmark item folded in),
    or by full reason with ``level="reason"``. Columns: stage, reason, rows, pct_of_read, details."""
    run = _run(run)
    schema = {"stage": pl.String, "reason": pl.String, "rows": pl.Int64, "pct_of_read": pl.Float64, "details": pl.Int64}
    if run.shards is None or not run.has("keep", "drop_reason"):
        return pl.DataFrame(schema=schema)
    read = max(int(run.manifest.get("counts", {}).get("read") or 0), 1)
    d = run.shards.filter(~pl.col("keep")).select("drop_reason").collect()
    if d.height == 0:
        return pl.DataFrame(schema=schema)
    key = (pl.col("drop_reason").str.split(":").list.head(2).list.join(":") if level == "rule"
           else pl.col("drop_reason"))
    names = run.stage_names
    rs = run.reason_stages(d["drop_reason"])
    g = (
        d.join(rs, on="drop_reason", how="left")
        .group_by(key.alias("reason"))
        .agg(pl.len().cast(pl.Int64).alias("rows"), pl.col("drop_reason").n_unique().cast(pl.Int64).alias("details"),
             pl.col("_stage").first().alias("_stage"))
        .with_columns(pl.col("_stage").fill_null(len(names)))
        .sort(["_stage", "rows", "reason"], descending=[False, True, False])
    )
    return g.select(
        pl.col("_stage").map_elements(lambda i: _stage_label(i, names), return_dtype=pl.String).alias("stage"),
        "reason",
        "rows",
        (100.0 * pl.col("rows") / read).round(2).alias("pct_of_read"),
        "details",
    )


def reject_reasons(run: Run | str | Path) -> pl.DataFrame:
    """Rows rejected at ingest by source and reason."""
    run = _run(run)
    if run.rejects is None:
        return pl.DataFrame(schema={"source": pl.String, "reason": pl.String, "rows": pl.Int64})
    return (run.rejects.group_by("source", "reason").agg(pl.len().cast(pl.Int64).alias("rows"))
            .sort(["rows", "source", "reason"], descending=[True, False, False]).collect())


def sources_table(run: Run | str | Path) -> pl.DataFrame:
    """Per source: format, read, rejected, dropped, kept, selected (the last three from the shards)."""
    run = _run(run)
    src = pl.DataFrame(
        [{"source": s.get("name"), "format": s.get("format"), "read": s.get("read", 0), "rejected": s.get("rejected", 0)}
         for s in run.manifest.get("sources", [])],
        schema={"source": pl.String, "format": pl.String, "read": pl.Int64, "rejected": pl.Int64},
    )
    if run.shards is None:
        return src
    sel = pl.col("selected").fill_null(False) if run.has("selected") and run.has_selector else pl.lit(True)
    per = run.shards.group_by("source").agg(
        (~pl.col("keep")).sum().cast(pl.Int64).alias("dropped"),
        pl.col("keep").sum().cast(pl.Int64).alias("kept"),
        (pl.col("keep") & sel).sum().cast(pl.Int64).alias("selected"),
    ).collect()
    out = src.join(per, on="source", how="full", coalesce=True).with_columns(
        pl.col("dropped", "kept", "selected").fill_null(0))
    return out.with_columns((100.0 * pl.col("selected") / pl.col("selected").sum().clip(1)).round(1)
                            .alias("pct_of_selected"))


def stages_table(run: Run | str | Path) -> pl.DataFrame:
    """The stages in run order: scope, rows dropped, seconds, fingerprint, declared columns, params."""
    run = _run(run)
    rows = [
        {"stage": s["name"], "scope": s.get("scope"), "dropped": s.get("dropped", 0), "seconds": s.get("seconds"),
         "fingerprint": s.get("fingerprint"),
         "columns": ", ".join(c for c in s.get("columns", {}) if not c.startswith("_")),
         "params": json.dumps({k: v for k, v in (s.get("params") or {}).items() if v is not None}, default=str)}
        for s in run.manifest.get("stages", [])
    ]
    return pl.DataFrame(rows, schema={"stage": pl.String, "scope": pl.String, "dropped": pl.Int64,
                                      "seconds": pl.Float64, "fingerprint": pl.String, "columns": pl.String,
                                      "params": pl.String})


def is_score_column(name: str, dtype: pl.DataType, role: str | None = None) -> bool:
    """Numeric and a score: the declared ``role`` when the stage contract gives one, else not a key,
    hash, rank, cluster id or scratch column by name."""
    if not dtype.is_numeric():
        return False
    if role is not None:
        return role == "score"
    return name not in NON_SCORE_COLUMNS and not name.startswith("_") and not name.endswith(NON_SCORE_SUFFIXES)


def score_columns(run: Run | str | Path, include_lengths: bool = False) -> list[str]:
    """Numeric columns that hold scores (keys, ranks, cluster ids and scratch columns excluded)."""
    run = _run(run)
    roles = run.column_roles
    out = []
    for c, t in run.schema.items():
        if not is_score_column(c, t, roles.get(c)):
            continue
        if c.startswith("len_") and not include_lengths:
            continue
        out.append(c)
    return out


def flag_columns(run: Run | str | Path) -> list[str]:
    """Boolean per-row flags written by stages (e.g. ``heur_empty_response``)."""
    run = _run(run)
    skip = {"keep", "selected"}
    roles = run.column_roles
    return [c for c, t in run.schema.items() if t == pl.Boolean and c not in skip and not c.startswith("_")
            and roles.get(c, "flag") == "flag"]


def _flatten(value: Any, key: str = "", skip_none: bool = False) -> list[tuple[str, str]]:
    """(dotted key, readable value) pairs of a JSON-like value: dicts by key, lists of scalars joined,
    lists of objects by index (``benchmarks[0].path``); ``skip_none`` leaves out unset (None) entries."""
    if isinstance(value, dict):
        if not value:
            return [(key, "{}")] if key else []
        out: list[tuple[str, str]] = []
        for k, v in value.items():
            if not (skip_none and v is None):
                out += _flatten(v, f"{key}.{k}" if key else str(k), skip_none)
        return out
    if isinstance(value, list | tuple):
        if any(isinstance(v, dict | list | tuple) for v in value):
            out = []
            for i, v in enumerate(value):
                out += _flatten(v, f"{key}[{i}]", skip_none)
            return out
        return [(key, ", ".join(_scalar(v) for v in value) if value else "[]")]
    return [(key, _scalar(value))]


def _scalar(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def params_table(run: Run | str | Path, include_defaults: bool = False) -> pl.DataFrame:
    """Every stage's parameters, one row per (stage, parameter), nested values flattened to dotted keys.

    ``include_defaults=False`` leaves out parameters that are unset (``None``: the stage or the run
    picks), nested ones included. Columns: step (1-based stage position), stage, parameter, value.
    """
    run = _run(run)
    rows = []
    for i, s in enumerate(run.manifest.get("stages", []), start=1):
        for k, v in _flatten(s.get("params") or {}, skip_none=not include_defaults):
            rows.append({"step": i, "stage": s["name"], "parameter": k, "value": v})
    return pl.DataFrame(rows, schema={"step": pl.Int64, "stage": pl.String, "parameter": pl.String,
                                      "value": pl.String})


def settings_table(run: Run | str | Path) -> pl.DataFrame:
    """The run's own settings (config ``run:`` section) and where its parts live (``layout``), as
    (section, setting, value) rows."""
    run = _run(run)
    m = run.manifest
    rows = [{"section": "run", "setting": k, "value": v}
            for k, v in _flatten((m.get("config") or {}).get("run") or {}, skip_none=True)]
    layout = {k: v for k, v in (m.get("layout") or {}).items() if k != "shard_columns"}
    rows += [{"section": "layout", "setting": k, "value": v} for k, v in _flatten(layout)]
    return pl.DataFrame(rows, schema={"section": pl.String, "setting": pl.String, "value": pl.String})


def score_summary(run: Run | str | Path, columns: Sequence[str] | None = None, wide: bool = False) -> pl.DataFrame:
    """Per score column and group (dropped / kept / selected): non-null rows, mean and quantiles.

    ``wide=True`` gives one row per column with the mean and median of each group side by side
    (constant columns left out).
    """
    run = _run(run)
    cols = list(columns) if columns is not None else score_columns(run, include_lengths=True)
    schema = {"column": pl.String, "group": pl.String, "rows": pl.Int64, "mean": pl.Float64, "p05": pl.Float64,
              "p50": pl.Float64, "p95": pl.Float64}
    if not cols or run.shards is None:
        return pl.DataFrame(schema=schema)
    df = run.frame(cols).with_columns(pl.col(cols).cast(pl.Float64))
    long = df.unpivot(index="group", on=cols, variable_name="column", value_name="v")
    out = long.group_by("column", "group").agg(
        pl.col("v").count().cast(pl.Int64).alias("rows"), pl.col("v").mean().alias("mean"),
        pl.col("v").quantile(0.05).alias("p05"), pl.col("v").quantile(0.5).alias("p50"),
        pl.col("v").quantile(0.95).alias("p95"))
    order = {c: i for i, c in enumerate(cols)}
    gorder = {g: i for i, g in enumerate(GROUPS)}
    if wide:
        const = set(long.group_by("column").agg((pl.col("v").max() == pl.col("v").min()).fill_null(True).alias("k"))
                    .filter(pl.col("k"))["column"].to_list())
        out = out.filter(~pl.col("column").is_in(list(const)))
        groups = [g for g in GROUPS if g in set(out["group"].to_list())]
        w = out.pivot(on="group", index="column", values=["mean", "p50"]).with_columns(
            pl.col("column").replace_strict(order, return_dtype=pl.Int64).alias("_c")).sort("_c")
        return w.select("column", *[pl.col(f"mean_{g}").alias(f"mean {GROUP_LABELS[g]}") for g in groups],
                        *[pl.col(f"p50_{g}").alias(f"median {GROUP_LABELS[g]}") for g in groups])
    return (out.with_columns(pl.col("column").replace_strict(order, return_dtype=pl.Int64).alias("_c"),
                             pl.col("group").replace_strict(gorder, return_dtype=pl.Int64).alias("_g"))
            .sort("_c", "_g").select(list(schema)))


def cluster_table(run: Run | str | Path) -> pl.DataFrame:
    """Per cluster: rows, dropped, kept, selected, mean centroid distance (empty without ``cluster``)."""
    run = _run(run)
    if not run.has("cluster"):
        return pl.DataFrame(schema={"cluster": pl.Int64, "rows": pl.Int64})
    cols = ["cluster"] + (["centroid_dist"] if run.has("centroid_dist") else [])
    df = run.frame(cols).filter(pl.col("cluster").is_not_null())
    aggs = [pl.len().cast(pl.Int64).alias("rows")] + [(pl.col("group") == g).sum().cast(pl.Int64).alias(g) for g in GROUPS]
    if "centroid_dist" in cols:
        aggs.append(pl.col("centroid_dist").cast(pl.Float64).mean().round(4).alias("mean_centroid_dist"))
    return df.group_by("cluster").agg(aggs).sort(["rows", "cluster"], descending=[True, False])



def score_by_source(run: Run | str | Path, columns: Sequence[str] | None = None,
                    drop_constant: bool = False) -> pl.DataFrame:
    """Per score column and source: rows with a value, mean and quantiles over every ingested row,
    and the mean and row count over the selected rows (kept rows when no selector ran).
    ``drop_constant`` leaves out columns with one value over the whole run.

    Columns: column, source, rows, mean, p05, p50, p95, selected, mean_selected.
    """
    run = _run(run)
    cols = list(columns) if columns is not None else score_columns(run, include_lengths=True)
    schema = {"column": pl.String, "source": pl.String, "rows": pl.Int64, "mean": pl.Float64, "p05": pl.Float64,
              "p50": pl.Float64, "p95": pl.Float64, "selected": pl.Int64, "mean_selected": pl.Float64}
    if not cols or run.shards is None or not run.has("source"):
        return pl.DataFrame(schema=schema)
    chosen = "selected" if run.has_selector else "kept"
    df = run.frame(["source", *cols]).with_columns(pl.col(cols).cast(pl.Float64))
    long = df.unpivot(index=["source", "group"], on=cols, variable_name="column", value_name="v").filter(
        pl.col("v").is_not_null() & pl.col("v").is_not_nan())
    sel = pl.col("group") == chosen if chosen == "selected" else pl.col("group") != "dropped"
    out = long.group_by("column", "source").agg(
        pl.len().cast(pl.Int64).alias("rows"), pl.col("v").mean().alias("mean"),
        pl.col("v").quantile(0.05).alias("p05"), pl.col("v").quantile(0.5).alias("p50"),
        pl.col("v").quantile(0.95).alias("p95"), sel.sum().cast(pl.Int64).alias("selected"),
        pl.col("v").filter(sel).mean().alias("mean_selected"))
    if drop_constant:  # e.g. len_turns of single-turn data: nothing to compare across sources
        const = set(long.group_by("column").agg((pl.col("v").max() == pl.col("v").min()).alias("k"))
                    .filter(pl.col("k"))["column"].to_list())
        out = out.filter(~pl.col("column").is_in(list(const)))
    order = {c: i for i, c in enumerate(cols)}
    return (out.with_columns(pl.col("column").replace_strict(order, return_dtype=pl.Int64).alias("_c"))
            .sort("_c", "source").select(list(schema)))
