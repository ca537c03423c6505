"""Two runs side by side: counts, overlap of the selected ids, pool changes, outcome transitions,
score shifts (:func:`compare_runs`), and their charts.

Rows are matched by ``id`` (the content hash), so a comparison holds across sources, reruns and
re-ordered inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.inspect.charts import Chart, _figure, _hist_panel, _missing
from pipeline.inspect.run import COLORS, Run, _run
from pipeline.inspect.tables import accounting, score_columns


@dataclass
class Comparison:
    """Two runs side by side (see :func:`compare_runs`)."""

    a: Run
    b: Run
    counts: pl.DataFrame
    overlap: dict[str, Any]
    pool: pl.DataFrame
    transitions: pl.DataFrame
    score_shifts: pl.DataFrame
    added: pl.DataFrame
    removed: pl.DataFrame
    newly_selected: pl.DataFrame
    no_longer_selected: pl.DataFrame

    def overlap_table(self) -> pl.DataFrame:
        return pl.DataFrame({"metric": list(self.overlap), "value": [float(v) for v in self.overlap.values()]})


def _outcome_frame(run: Run) -> pl.DataFrame:
    """One row per distinct id: its best outcome in the run (selected > kept > dropped) and source."""
    df = run.frame(["id", "source", "source_row", "keep", "selected"])
    rank = pl.col("group").replace_strict({"dropped": 0, "kept": 1, "selected": 2}, return_dtype=pl.Int8)
    return (df.with_columns(rank.alias("_r")).sort("_r", descending=True)
            .unique("id", keep="first", maintain_order=True).select("id", "source", "source_row", "group"))


def compare_runs(a: Run | str | Path, b: Run | str | Path) -> Comparison:
    """Compare run ``a`` (e.g. last night, or config A) with run ``b``.

    Rows are matched by ``id`` (the content hash), so the comparison holds across sources, reruns
    and re-ordered inputs. Gives: counts side by side; overlap of the selected ids (both, only a,
    only b, Jaccard); rows added to / removed from the pool; outcome transitions for ids in both
    runs; shifts of every score column present in both (mean and median over all rows and over the
    selected rows, and the mean per-id change).
    """
    a, b = _run(a), _run(b)
    ca, cb = accounting(a), accounting(b)
    steps = list(dict.fromkeys([*ca["step"].to_list(), *cb["step"].to_list()]))
    va, vb = dict(zip(ca["step"], ca["rows"], strict=True)), dict(zip(cb["step"], cb["rows"], strict=True))
    counts = pl.DataFrame({"step": steps, "a": [va.get(s) for s in steps], "b": [vb.get(s) for s in steps]},
                          schema={"step": pl.String, "a": pl.Int64, "b": pl.Int64}).with_columns(
        (pl.col("b").fill_null(0) - pl.col("a").fill_null(0)).alias("change"))
    oa, ob = _outcome_frame(a), _outcome_frame(b)
    sa = set(oa.filter(pl.col("group") == "selected")["id"].to_list()) if a.has_selector else set(
        oa.filter(pl.col("group") != "dropped")["id"].to_list())
    sb = set(ob.filter(pl.col("group") == "selected")["id"].to_list()) if b.has_selector else set(
        ob.filter(pl.col("group") != "dropped")["id"].to_list())
    both = len(sa & sb)
    overlap = {"selected_a": len(sa), "selected_b": len(sb), "both": both, "only_a": len(sa - sb),
               "only_b": len(sb - sa), "jaccard": round(both / max(len(sa | sb), 1), 4)}
    ida, idb = oa.select("id"), ob.select("id")
    added = ob.join(ida, on="id", how="anti")
    removed = oa.join(idb, on="id", how="anti")
    pool = pl.DataFrame({"metric": ["distinct ids in a", "distinct ids in b", "in both", "added in b", "removed in b"],
                         "rows": [oa.height, ob.height, oa.join(idb, on="id", how="semi").height, added.height,
                                  removed.height]})
    j = oa.join(ob, on="id", how="inner", suffix="_b")
    transitions = (j.group_by(pl.col("group").alias("a"), pl.col("group_b").alias("b")).agg(pl.len().cast(pl.Int64).alias("rows"))
                   .sort("a", "b"))
    newly_selected = j.filter((pl.col("group") != "selected") & (pl.col("group_b") == "selected"))
    no_longer = j.filter((pl.col("group") == "selected") & (pl.col("group_b") != "selected"))
    common = [c for c in score_columns(a, include_lengths=True) if c in set(score_columns(b, include_lengths=True))]
    rows = []
    if common:
        fa = a.frame(["id", *common]).unique("id", keep="first", maintain_order=True)
        fb = b.frame(["id", *common]).unique("id", keep="first", maintain_order=True)
        jj = fa.join(fb, on="id", how="inner", suffix="_b")
        for c in common:
            xa, xb = fa[c].cast(pl.Float64), fb[c].cast(pl.Float64)
            sa_ = fa.filter(pl.col("group") == "selected")[c].cast(pl.Float64)
            sb_ = fb.filter(pl.col("group") == "selected")[c].cast(pl.Float64)
            delta = (jj[f"{c}_b"].cast(pl.Float64) - jj[c].cast(pl.Float64))
            rows.append({"column": c, "mean_a": xa.mean(), "mean_b": xb.mean(), "median_a": xa.median(),
                         "median_b": xb.median(), "selected_mean_a": sa_.mean(), "selected_mean_b": sb_.mean(),
                         "mean_change_same_id": delta.mean(), "ids_changed": int((delta.abs() > 1e-9).sum())})
    shifts = pl.DataFrame(rows, schema={"column": pl.String, "mean_a": pl.Float64, "mean_b": pl.Float64,
                                        "median_a": pl.Float64, "median_b": pl.Float64, "selected_mean_a": pl.Float64,
                                        "selected_mean_b": pl.Float64, "mean_change_same_id": pl.Float64,
                                        "ids_changed": pl.Int64})
    return Comparison(a=a, b=b, counts=counts, overlap=overlap, pool=pool, transitions=transitions,
                      score_shifts=shifts, added=added, removed=removed, newly_selected=newly_selected,
                      no_longer_selected=no_longer)


def plot_compare_counts(cmp: Comparison) -> Chart:
    """Rows at each accounting step, run a vs run b."""
    c = cmp.counts.filter(pl.col("step") != "not selected")
    fig, axes = _figure(width=9.0, height=0.45 * c.height + 1.2)
    ax = axes[0, 0]
    y = np.arange(c.height)
    ax.barh(y - 0.2, c["a"].fill_null(0), height=0.4, color=COLORS["a"], label=f"a: {cmp.a.run_id}")
    ax.barh(y + 0.2, c["b"].fill_null(0), height=0.4, color=COLORS["b"], label=f"b: {cmp.b.run_id}")
    ax.set_yticks(y, c["step"].to_list())
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", color="#e6e6e6", linewidth=0.8)
    ax.legend(fontsize=8, frameon=False)
    ax.set_xlabel("rows")
    return Chart("compare_counts", "Row accounting, a vs b", fig)


def plot_selection_overlap(cmp: Comparison) -> Chart:
    """Selected ids: only in a, in both, only in b."""
    o = cmp.overlap
    fig, axes = _figure(width=7.0, height=1.8)
    ax = axes[0, 0]
    left = 0
    for key, color, label in (("only_a", COLORS["a"], "only a"), ("both", COLORS["selected"], "both"),
                              ("only_b", COLORS["b"], "only b")):
        v = o[key]
        ax.barh(0, v, left=left, color=color, height=0.5)
        if v:
            ax.text(left + v / 2, 0, f"{label}\n{v:,}", ha="center", va="center", fontsize=8, color="white")
        left += v
    ax.set_yticks([])
    ax.set_xlabel("selected ids")
    ax.set_title(f"Selected ids: Jaccard {o['jaccard']:.3f}", fontsize=10, loc="left")
    return Chart("compare_overlap", "Selection overlap", fig)


def plot_score_shifts(cmp: Comparison, columns: Sequence[str] | None = None, ncols: int = 3) -> Chart:
    """Distributions of the common score columns over the selected rows, run a vs run b."""
    title = "Score distributions of the selected rows, a vs b"
    cols = list(columns) if columns is not None else cmp.score_shifts["column"].to_list()
    if not cols:
        return _missing("compare_scores", title, "the runs share no score column")
    fa = cmp.a.frame(cols).filter(pl.col("group") == ("selected" if cmp.a.has_selector else "kept"))
    fb = cmp.b.frame(cols).filter(pl.col("group") == ("selected" if cmp.b.has_selector else "kept"))
    df = pl.concat([fa.with_columns(pl.lit("a").alias("run")), fb.with_columns(pl.lit("b").alias("run"))],
                   how="diagonal_relaxed")
    nrows = -(-len(cols) // ncols)
    nc = min(ncols, len(cols))
    fig, axes = _figure(nrows, nc, width=3.3 * nc + 0.6, height=2.4 * nrows + 0.6)
    for ax, c in zip(axes.flat, cols, strict=False):
        ax.set_title(c, fontsize=9)
        ax.set_yticks([])
        series = {r: df.filter(pl.col("run") == r)[c].cast(pl.Float64).drop_nulls().drop_nans().to_numpy()
                  for r in ("a", "b")}
        _hist_panel(ax, series, COLORS, filled=False)
    for ax in list(axes.flat)[len(cols):]:
        ax.set_visible(False)
    from matplotlib.lines import Line2D

    fig.legend(handles=[Line2D([], [], color=COLORS["a"], label=f"a: {cmp.a.run_id}"),
                        Line2D([], [], color=COLORS["b"], label=f"b: {cmp.b.run_id}")],
               loc="outside upper center", ncols=2, fontsize=8, frameon=False)
    return Chart("compare_scores", title, fig)

