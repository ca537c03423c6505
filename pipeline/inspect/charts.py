"""Charts of one run (:class:`Chart`: a matplotlib figure and its PNG; it renders itself in Jupyter).

:func:`plot_funnel`, :func:`plot_score_distributions`, :func:`plot_scores_by_source`,
:func:`plot_flags`, :func:`plot_lengths`, :func:`plot_cluster_sizes`, :func:`plot_embedding_map`. A
chart whose inputs the run lacks (no clusters, no embeddings sidecar) is a :class:`Chart` with
``missing`` set, saying what is missing.

matplotlib is imported inside the plotting functions and used through its object-oriented API with
the Agg canvas, so no GUI backend or pyplot state is involved.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.inspect.examples import selector_score_columns
from pipeline.inspect.run import COLORS, GROUP_LABELS, GROUPS, LENGTH_PLOTS, Run, _run
from pipeline.inspect.tables import accounting, cluster_table, flag_columns, score_columns


@dataclass
class Chart:
    """A figure and its PNG, or the reason there is none (``missing``). Renders itself in Jupyter."""

    name: str
    title: str
    fig: Any = None  # matplotlib.figure.Figure
    missing: str | None = None
    caption: str = ""
    _png: bytes | None = field(default=None, repr=False)

    @property
    def png(self) -> bytes | None:
        if self._png is None and self.fig is not None:
            buf = io.BytesIO()
            self.fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
            self._png = buf.getvalue()
        return self._png

    def save(self, path: str | Path) -> Path | None:
        """Write the PNG to ``path``; None (and nothing written) when the chart is missing."""
        if self.png is None:
            return None
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_bytes(self.png)
        os.replace(tmp, p)
        return p

    def html(self) -> str:
        if self.png is None:
            return f'<p class="missing"><b>{html.escape(self.title)}:</b> {html.escape(self.missing or "no data")}</p>'
        b64 = base64.b64encode(self.png).decode()
        cap = f"<figcaption>{html.escape(self.caption)}</figcaption>" if self.caption else ""
        return (f'<figure><img alt="{html.escape(self.title)}" src="data:image/png;base64,{b64}">{cap}</figure>')

    def _repr_html_(self) -> str:
        # HTML only (the PNG is inlined): a second image/png copy would double every notebook's size
        return self.html()


def _figure(nrows: int = 1, ncols: int = 1, width: float = 9.0, height: float = 3.6) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", color="#e6e6e6", linewidth=0.8)
        ax.set_axisbelow(True)
        ax.tick_params(labelsize=8)
    return fig, axes


#: rows per group whose words :func:`plot_lengths` counts when the run has no length stage
LENGTH_SAMPLE = 20_000


def _missing(name: str, title: str, why: str) -> Chart:
    return Chart(name=name, title=title, missing=why)


# ---------------------------------------------------------------- charts over one run


def plot_funnel(run: Run | str | Path) -> Chart:
    """Horizontal funnel of rows remaining after ingest, each stage, and selection."""
    run = _run(run)
    acc = accounting(run)
    if acc.is_empty():
        return _missing("funnel", "Row funnel", "the run has no rows")
    rows = acc.to_dicts()
    short = {"rejected at ingest": "ingest (rejects)", "not selected": "selection"}
    labels = [r["step"] if r["kind"] == "total" else short.get(r["step"], r["step"].replace("dropped by ", ""))
              for r in rows]
    fig, axes = _figure(width=9.0, height=0.38 * len(rows) + 0.9)
    ax = axes[0, 0]
    y = np.arange(len(rows))[::-1]
    read = max(rows[0]["rows"], 1)
    for yi, r in zip(y, rows, strict=True):
        rem = r["remaining"]
        color = COLORS["selected"] if r["step"] == "selected" else COLORS["read"] if r["kind"] == "total" else COLORS["kept"]
        ax.barh(yi, rem, color=color, height=0.62)
        if r["kind"] == "removed" and r["rows"]:
            ax.barh(yi, r["rows"], left=rem, color=COLORS["dropped"], alpha=0.55, height=0.62)
        txt = f"{rem:,}" if r["kind"] == "total" else f"{rem:,}   (−{r['rows']:,})"
        ax.text(rem + read * 0.01 + (r["rows"] if r["kind"] == "removed" else 0), yi, txt, va="center", fontsize=8)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, read * 1.22)
    ax.set_xlabel("rows")
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", color="#e6e6e6", linewidth=0.8)
    ax.set_title("Rows remaining after each step (red: removed at that step)", fontsize=10, loc="left")
    return Chart("funnel", "Row funnel", fig, caption="read = kept + dropped + rejected")


def _log_scale(values: np.ndarray) -> bool:
    """Whether to plot ``log10(1 + x)``: non-negative values with a long right tail (lengths, counts, PPL)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    return lo >= 0 and hi >= 50 and hi / max(float(np.median(values)), 1.0) > 15


def _bins(values: np.ndarray, n: int = 40) -> np.ndarray:
    """Histogram bin edges: one per integer for small integer ranges, else ``n`` equal bins."""
    lo, hi = float(np.min(values)), float(np.max(values))
    if lo == hi:
        return np.array([lo - 0.5, hi + 0.5])
    if np.all(np.mod(values, 1) == 0) and hi - lo <= n:
        return np.arange(lo - 0.5, hi + 1.5, 1.0)
    return np.linspace(lo, hi, n + 1)


def _log_ticks(ax: Any, hi: float) -> None:
    ticks = [t for t in (0, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000) if t <= hi * 1.01]
    ax.set_xticks(np.log10(1 + np.array(ticks, dtype=float)),
                  [f"{t:,}" if t < 1000 else f"{t // 1000:,}k" for t in ticks])


def _hist_panel(ax: Any, series: dict[str, np.ndarray], colors: dict[str, str], filled: bool = True) -> None:
    """Overlaid density histograms of ``series`` on shared bins (log10(1+x) axis for long tails)."""
    nonempty = [v for v in series.values() if v.size]
    allv = np.concatenate(nonempty) if nonempty else np.array([])
    if allv.size == 0:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="#888")
        return
    logx = _log_scale(allv)
    tr = (lambda v: np.log10(1 + v)) if logx else (lambda v: v)
    edges = _bins(tr(allv)) if not logx else np.linspace(0, float(np.log10(1 + allv.max())), 41)
    for g, v in series.items():
        if v.size == 0:
            continue
        if filled:
            ax.hist(tr(v), bins=edges, density=True, histtype="stepfilled", alpha=0.28, color=colors[g])
        ax.hist(tr(v), bins=edges, density=True, histtype="step", linewidth=1.3, color=colors[g])
    if logx:
        _log_ticks(ax, float(allv.max()))


def _hist_grid(df: pl.DataFrame, cols: Sequence[tuple[str, str]], title: str, name: str, ncols: int = 3,
               counts: dict[str, int] | None = None) -> Chart:
    """Histograms of ``cols`` per group; ``counts``: the groups' row counts for the legend when
    ``df`` is a sample of them."""
    groups = [g for g in GROUPS if g in set(df["group"].unique().to_list())]
    nrows = -(-len(cols) // ncols)
    ncols_eff = min(ncols, len(cols))
    fig, axes = _figure(nrows, ncols_eff, width=3.3 * ncols_eff + 0.6, height=2.3 * nrows + 0.5)
    for ax, (c, label) in zip(axes.flat, cols, strict=False):
        vals = df[c].cast(pl.Float64)
        series = {g: df.filter(pl.col("group") == g)[c].cast(pl.Float64).drop_nulls().drop_nans().to_numpy()
                  for g in groups}
        _hist_panel(ax, series, COLORS)
        n_null = int(vals.null_count())
        ax.set_title(label + (f"  ({n_null:,} null)" if n_null else ""), fontsize=9)
        ax.set_yticks([])
    for ax in list(axes.flat)[len(cols):]:
        ax.set_visible(False)
    from matplotlib.patches import Patch

    counts = counts if counts is not None else dict(df.group_by("group").len().iter_rows())
    handles = [Patch(color=COLORS[g], alpha=0.6, label=f"{GROUP_LABELS[g]} ({counts.get(g, 0):,})") for g in groups]
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize=8, frameon=False)
    return Chart(name, title, fig, caption="histograms normalised per group (area 1), so groups of different sizes "
                                           "compare; long-tailed columns on a log(1+x) axis")


def plot_score_distributions(run: Run | str | Path, columns: Sequence[str] | None = None, ncols: int = 3) -> Chart:
    """Distribution of every score column for dropped vs kept vs selected rows (small multiples)."""
    run = _run(run)
    title = "Score distributions: dropped vs kept vs selected"
    cols = list(columns) if columns is not None else score_columns(run)
    if run.shards is None:
        return _missing("scores", title, "the run has no shards")
    if not cols:
        return _missing("scores", title, "no score columns besides lengths in this run (add scoring or heuristic stages)")
    df = run.frame(cols)
    shown, nulls, const = _drawable(df, cols)
    if not shown:
        return _missing("scores", title, f"every score column is empty or constant ({', '.join(cols)})")
    ch = _hist_grid(df, [(c, c) for c in shown], title, "scores", ncols)
    skipped = ([f"no values: {', '.join(sorted(nulls))}"] if nulls else []) + \
        ([f"constant: {', '.join(sorted(const))}"] if const else [])
    if skipped:
        ch.caption += ". Not drawn: " + "; ".join(skipped)
    return ch


def _drawable(df: pl.DataFrame, cols: Sequence[str]) -> tuple[list[str], set[str], set[str]]:
    """(columns with a distribution to draw, all-null columns, constant columns)."""
    # all-null columns (a check that was off) and constant ones have no distribution to draw
    stats = df.select([pl.col(c).cast(pl.Float64).drop_nans().n_unique().alias(c) for c in cols]).row(0, named=True)
    nulls = {c for c in cols if df[c].null_count() == df.height}
    const = {c for c in cols if c not in nulls and stats[c] - int(df[c].null_count() > 0) <= 1}
    return [c for c in cols if c not in nulls and c not in const], nulls, const


def plot_scores_by_source(run: Run | str | Path, columns: Sequence[str] | None = None, ncols: int = 3,
                          max_sources: int = 12, max_columns: int = 3) -> Chart:
    """Box plots of every score column per source: all ingested rows and the selected ones side by side.

    Whiskers at the 5th and 95th percentiles, outliers not drawn; long-tailed columns on a
    log(1+x) axis. The ``max_sources`` largest sources and the first ``max_columns`` columns with a
    distribution are drawn: the selector's score columns first, then other scores, then lengths.
    A run with one source has nothing to compare across sources (``missing`` says so).
    """
    run = _run(run)
    title = "Score distributions per source"
    if run.shards is None:
        return _missing("scores_by_source", title, "the run has no shards")
    if columns is None:
        # what the selector ranks by first, then the other scores, then lengths
        found = score_columns(run, include_lengths=True)
        first = [c for c in selector_score_columns(run) if c in found]
        cols = [*first, *[c for c in found if c not in first and not c.startswith("len_")],
                *[c for c in found if c not in first and c.startswith("len_")]]
    else:
        cols = list(columns)
    if not cols:
        return _missing("scores_by_source", title, "no score columns in this run")
    df = run.frame(["source", *cols])
    shown, _nulls, _const = _drawable(df, cols)
    shown = shown[:max_columns]
    if not shown:
        return _missing("scores_by_source", title, "every score column is empty or constant")
    chosen = "selected" if run.has_selector else "kept"
    sizes = df.group_by("source").len().sort(["len", "source"], descending=[True, False])
    if sizes.height < 2:
        return _missing("scores_by_source", title, f"one source only ({', '.join(map(str, sizes['source']))}): "
                        "its distributions are the score distributions above")
    sources = sizes["source"].head(max_sources).to_list()
    stats, logx = _box_stats(df.filter(pl.col("source").is_in(sources)), shown, chosen)
    nrows = -(-len(shown) // ncols)
    nc = min(ncols, len(shown))
    fig, axes = _figure(nrows, nc, width=3.3 * nc + 1.2, height=(0.32 * len(sources) + 1.0) * nrows + 0.5)
    where = {s: j for j, s in enumerate(sources)}
    stats = stats.with_columns(
        (pl.col("source").replace_strict(where, return_dtype=pl.Float64)
         + pl.when(pl.col("side") == "all").then(0.18).otherwise(-0.18)).alias("y"))
    for k, (ax, c) in enumerate(zip(axes.flat, shown, strict=False)):
        # drawn as one bar, one whisker and two tick collections per panel (not an artist per box)
        b = stats.filter(pl.col("column") == c)
        if b.height:
            y = b["y"].to_numpy()
            q = {k_: b[k_].to_numpy() for k_ in ("q05", "q25", "q50", "q75", "q95")}
            colors = [COLORS["kept"] if sd == "all" else COLORS["selected"] for sd in b["side"].to_list()]
            ax.hlines(y, q["q05"], q["q95"], color="#333333", linewidth=0.8, zorder=1)
            ax.vlines(np.concatenate([q["q05"], q["q95"]]), np.tile(y - 0.07, 2), np.tile(y + 0.07, 2),
                      color="#333333", linewidth=0.8, zorder=1)
            ax.barh(y, q["q75"] - q["q25"], left=q["q25"], height=0.3, color=colors, alpha=0.55, edgecolor=colors,
                    zorder=2)
            ax.vlines(q["q50"], y - 0.15, y + 0.15, color="#222222", linewidth=1.0, zorder=3)
            ax.margins(x=0.03)
        ax.set_yticks(range(len(sources)), sources if k % nc == 0 else [""] * len(sources), fontsize=7)
        ax.set_ylim(-0.6, len(sources) - 0.4)
        ax.invert_yaxis()
        ax.set_title(c, fontsize=9)
        ax.grid(axis="y", visible=False)
        ax.grid(axis="x", color="#e6e6e6", linewidth=0.8)
        if logx.get(c) is not None:
            _log_ticks(ax, logx[c])
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=COLORS["kept"], alpha=0.6, label="all rows of the source"),
                        Patch(color=COLORS["selected"], alpha=0.6, label=f"{GROUP_LABELS[chosen]} rows")],
               loc="outside upper center", ncols=2, fontsize=8, frameon=False)
    more = f"; {len(cols) - len(shown)} more column(s) in the table below" if len(cols) > len(shown) else ""
    return Chart("scores_by_source", title, fig,
                 caption=f"boxes: quartiles, line: median, whiskers: 5th-95th percentile{more}")


def _box_stats(df: pl.DataFrame, cols: Sequence[str], chosen: str) -> tuple[pl.DataFrame, dict[str, float]]:
    """Per (column, source, side): the 5/25/50/75/95th percentiles, side ``all`` (every row of the
    source) or ``chosen`` (its rows in that group), in one Polars pass.

    Long-tailed columns (:func:`_log_scale`) come back on the log(1+x) axis: their order statistics
    (``nearest`` percentiles) are transformed, which is exact for a monotone transform. Returns the
    stats and, per log-scaled column, its maximum (for the axis ticks).
    """
    long = (df.unpivot(index=["source", "group"], on=list(cols), variable_name="column", value_name="v")
            .with_columns(pl.col("v").cast(pl.Float64)).filter(pl.col("v").is_not_null() & pl.col("v").is_not_nan()))
    shape = long.group_by("column").agg(pl.col("v").min().alias("lo"), pl.col("v").max().alias("hi"),
                                        pl.col("v").median().alias("med"))
    logx = {r["column"]: r["hi"] for r in shape.iter_rows(named=True)
            if r["lo"] >= 0 and r["hi"] >= 50 and r["hi"] / max(r["med"], 1.0) > 15}
    sides = pl.concat([long.with_columns(pl.lit("all").alias("side")),
                       long.filter(pl.col("group") == chosen).with_columns(pl.lit(chosen).alias("side"))])
    qs = {"q05": 0.05, "q25": 0.25, "q50": 0.5, "q75": 0.75, "q95": 0.95}
    stats = sides.group_by("column", "source", "side").agg(
        [pl.col("v").quantile(q, interpolation="nearest").alias(k) for k, q in qs.items()])
    log_cols = list(logx)
    stats = stats.with_columns([
        pl.when(pl.col("column").is_in(log_cols)).then((1 + pl.col(k)).log10()).otherwise(pl.col(k)).alias(k)
        for k in qs])
    return stats, logx


def plot_lengths(run: Run | str | Path) -> Chart:
    """Length distributions (response tokens, instruction tokens, turns) for dropped vs kept vs selected.

    Uses the length stage's columns when the run has them, else counts words and turns from the
    messages with the same word tokenizer (:data:`pipeline.text.WORD_TOKEN_PATTERN`), on every row of
    a group of at most :data:`LENGTH_SAMPLE` rows and on a seeded uniform sample of that many of a
    larger one (the caption says so; the legend gives the groups' true sizes).
    """
    run = _run(run)
    title = "Length distributions"
    if run.shards is None:
        return _missing("lengths", title, "the run has no shards")
    present = [(c, lab) for c, lab in LENGTH_PLOTS if run.has(c)]
    caption = "lengths from the length stage"
    counts = None
    if present:
        df = run.frame([c for c, _ in present])
    else:
        from pipeline.text import WORD_TOKEN_PATTERN, text_expr

        # tokenising every row's text is most of a large run's report time (1.6 s of 300k long
        # documents); a histogram needs a sample: every row of a group up to LENGTH_SAMPLE, else a
        # seeded uniform sample of that many (the legend keeps the groups' true counts)
        groups = run.shards.select(run.group_expr()).collect()
        counts = dict(groups.group_by("group").len().iter_rows())
        pick = groups.with_row_index("_i").filter(
            pl.int_range(pl.len()).shuffle(seed=0).over("group") < LENGTH_SAMPLE)["_i"]
        df = run.shards.with_row_index("_i").filter(pl.col("_i").is_in(pick.implode())).select(
            text_expr("response").str.count_matches(WORD_TOKEN_PATTERN).cast(pl.Int64).alias("len_response_tokens"),
            text_expr("instruction").str.count_matches(WORD_TOKEN_PATTERN).cast(pl.Int64).alias("len_instruction_tokens"),
            pl.col("messages").list.eval(pl.element().struct.field("role") == "assistant").list.sum()
            .cast(pl.Int64).alias("len_turns"),
            run.group_expr(),
        ).collect()
        present = list(LENGTH_PLOTS)
        sampled = any(v > LENGTH_SAMPLE for v in counts.values())
        caption = ("the run has no length stage: word counts computed from the messages"
                   + (f" of a uniform sample of at most {LENGTH_SAMPLE:,} rows per group" if sampled else ""))
    ch = _hist_grid(df, present, title, "lengths", ncols=3, counts=counts)
    ch.caption = caption + "; " + ch.caption
    return ch


def plot_flags(run: Run | str | Path) -> Chart:
    """Share of rows with each boolean flag set (e.g. heuristics), per group."""
    run = _run(run)
    title = "Flags: share of rows flagged, per group"
    cols = flag_columns(run)
    if not cols:
        return _missing("flags", title, "no boolean flag columns in this run")
    df = run.frame(cols)
    rates = df.group_by("group").agg([pl.col(c).cast(pl.Float64).mean().alias(c) for c in cols])
    groups = [g for g in GROUPS if g in rates["group"].to_list()]
    fig, axes = _figure(width=9.0, height=0.3 * len(cols) * max(len(groups), 1) ** 0.5 + 1.0)
    ax = axes[0, 0]
    y = np.arange(len(cols))
    h = 0.8 / max(len(groups), 1)
    for j, g in enumerate(groups):
        r = rates.filter(pl.col("group") == g).row(0, named=True)
        vals = [100.0 * (r[c] or 0.0) for c in cols]
        ax.barh(y + (len(groups) - 1 - j) * h - 0.4 + h / 2, vals, height=h, color=COLORS[g], label=GROUP_LABELS[g])
    ax.set_yticks(y, cols)
    ax.invert_yaxis()
    ax.set_xlabel("% of rows in group")
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", color="#e6e6e6", linewidth=0.8)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return Chart("flags", title, fig)




def plot_cluster_sizes(run: Run | str | Path, max_clusters: int = 80) -> Chart:
    """Cluster sizes (largest first), stacked by dropped / kept / selected."""
    run = _run(run)
    title = "Cluster sizes"
    if not run.has("cluster"):
        return _missing("clusters", title, "no `cluster` column in this run (add the cluster stage)")
    t = cluster_table(run)
    if t.is_empty():
        return _missing("clusters", title, "no row was assigned a cluster")
    shown = t.head(max_clusters)
    fig, axes = _figure(width=9.5, height=3.4)
    ax = axes[0, 0]
    x = np.arange(shown.height)
    bottom = np.zeros(shown.height)
    for g in ("selected", "kept", "dropped"):
        v = shown[g].to_numpy().astype(float)
        if v.sum() == 0:
            continue
        ax.bar(x, v, bottom=bottom, color=COLORS[g], width=0.85, label=GROUP_LABELS[g])
        bottom += v
    step = max(1, shown.height // 25)
    ax.set_xticks(x[::step], [str(c) for c in shown["cluster"].to_list()[::step]], fontsize=7)
    ax.set_xlabel("cluster id (largest first)")
    ax.set_ylabel("rows")
    ax.legend(fontsize=8, frameon=False)
    sizes = t["rows"].to_numpy()
    cap = (f"{t.height} clusters; sizes min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}"
           + (f"; showing the {max_clusters} largest" if t.height > max_clusters else ""))
    return Chart("clusters", title, fig, caption=cap)


def embedding_map(run: Run | str | Path, max_points: int = 4000, seed: int = 0) -> pl.DataFrame | None:
    """2-D PCA of the run's embeddings for a sample of rows: source, source_row, group, cluster, x, y.

    None when the run has no embeddings sidecar. Rows whose id has no stored vector (e.g. dropped
    before the embedding stage) are left out.
    """
    run = _run(run)
    if run.shards is None or not run.embedding_dirs():
        return None
    cols = ["id", "source", "source_row"] + (["cluster"] if run.has("cluster") else [])
    df = run.frame(cols)
    if df.height > max_points:
        df = df.sample(max_points, seed=seed)
    got = run.embeddings(df["id"].to_list())
    if got is None:
        return None
    vecs, found, which = got
    df, vecs = df.filter(pl.Series(found)), vecs[found]
    if df.height < 3:
        return None
    x = vecs - vecs.mean(axis=0, keepdims=True)
    _u, _s, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    return df.with_columns(pl.Series("x", xy[:, 0]), pl.Series("y", xy[:, 1]), pl.lit(which).alias("embedding"))


def plot_embedding_map(run: Run | str | Path, max_points: int = 4000, seed: int = 0) -> Chart:
    """PCA map of the embeddings, coloured by cluster (left) and by dropped / kept / selected (right)."""
    run = _run(run)
    title = "Embedding map (PCA)"
    m = embedding_map(run, max_points, seed)
    if m is None:
        return _missing("embedding_map", title,
                        "no embeddings sidecar (sidecars/embeddings/<model>/<view>/) for this run's rows (add the embed stage)")
    has_cluster = "cluster" in m.columns and m["cluster"].null_count() < m.height
    fig, axes = _figure(1, 2 if has_cluster else 1, width=10.0 if has_cluster else 6.0, height=4.4)
    panels = list(axes.flat)
    if has_cluster:
        from matplotlib import colormaps

        ax = panels.pop(0)
        cm = colormaps["tab20"]
        c = m.filter(pl.col("cluster").is_not_null())
        ax.scatter(c["x"], c["y"], s=5, c=[cm(int(k) % 20) for k in c["cluster"].to_list()], alpha=0.75, linewidths=0)
        nc = m.filter(pl.col("cluster").is_null())
        if nc.height:
            ax.scatter(nc["x"], nc["y"], s=4, color="#cccccc", alpha=0.5, linewidths=0, label="no cluster")
            ax.legend(fontsize=7, frameon=False, markerscale=2)
        ax.set_title(f"by cluster ({c['cluster'].n_unique()} clusters)", fontsize=9)
    ax = panels[0]
    for g in GROUPS:
        s = m.filter(pl.col("group") == g)
        if s.height:
            ax.scatter(s["x"], s["y"], s=5 if g != "selected" else 7, color=COLORS[g], alpha=0.65, linewidths=0,
                       label=f"{GROUP_LABELS[g]} ({s.height:,})")
    ax.legend(fontsize=7, frameon=False, markerscale=2)
    ax.set_title("by outcome", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    return Chart("embedding_map", title, fig,
                 caption=f"{m.height:,} rows with stored vectors ({m['embedding'][0]}), first two principal components")


