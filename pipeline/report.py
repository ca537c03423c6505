"""Inspect a curated run: row accounting, score distributions, clusters, examples, what-if, comparisons.

Everything the notebooks (``notebooks/inspect_run.ipynb``, ``notebooks/compare_runs.ipynb``) and the
HTML report show is computed here, so the notebooks stay thin and this module is what gets tested.

* :func:`load_run` opens a run directory: its manifest and lazy scans of ``shards/``, ``selected/``
  and ``rejects/`` (nothing is read until a table or chart needs it, and then only its columns).
* Tables (Polars frames): :func:`accounting`, :func:`drop_reasons`, :func:`reject_reasons`,
  :func:`sources_table`, :func:`stages_table`, :func:`score_summary`, :func:`drop_examples`.
* Charts (:class:`Chart`, a matplotlib figure with its PNG; it renders itself in Jupyter):
  :func:`plot_funnel`, :func:`plot_score_distributions`, :func:`plot_flags`, :func:`plot_lengths`,
  :func:`plot_cluster_sizes`, :func:`plot_embedding_map`. A chart whose inputs the run lacks (no
  clusters, no embeddings sidecar) is a :class:`Chart` with ``missing`` set, saying what is missing.
* :func:`what_if` replays the run's decide and selection steps over the stored columns with one
  threshold changed, without recomputing any score; :func:`compare_runs` puts two runs side by side.
* :func:`write_report` writes ``<run>/figures/*.png`` and a self-contained ``<run>/report.html``
  (images inlined as base64) and links it from the manifest (``"report": "report.html"``).

matplotlib is imported inside the plotting functions and used through its object-oriented API with
the Agg canvas, so no GUI backend or pyplot state is involved.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from pipeline.io.shards import list_shards
from pipeline.schema import CANONICAL, polars_schema

# ---------------------------------------------------------------- constants

GROUPS: tuple[str, ...] = ("dropped", "kept", "selected")
COLORS: dict[str, str] = {"dropped": "#c44e52", "kept": "#4c72b0", "selected": "#55a868", "rejected": "#8172b3",
                          "read": "#64656b", "a": "#4c72b0", "b": "#dd8452"}
GROUP_LABELS: dict[str, str] = {"dropped": "dropped", "kept": "kept, not selected", "selected": "selected"}

#: numeric columns that are keys, ranks or labels rather than scores
NON_SCORE_COLUMNS: frozenset[str] = frozenset(
    {"source_row", "select_rank", "cluster", "dup_of_row", "minhash_component", "_shard", "_pos"}
)
NON_SCORE_SUFFIXES: tuple[str, ...] = ("_hash", "_row", "_rank", "_component", "_cluster", "_id", "_index")
LENGTH_PLOTS: tuple[tuple[str, str], ...] = (
    ("len_response_tokens", "response tokens"),
    ("len_instruction_tokens", "instruction tokens"),
    ("len_turns", "assistant turns"),
)
TEXT_COLUMNS: tuple[str, ...] = ("messages", "tools")
SELECTION_COLUMNS: tuple[str, ...] = ("selected", "select_reason", "select_rank")


# ---------------------------------------------------------------- charts


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


def _missing(name: str, title: str, why: str) -> Chart:
    return Chart(name=name, title=title, missing=why)


# ---------------------------------------------------------------- the run


@dataclass
class Run:
    """A run directory: manifest plus lazy scans of its shards, selected subset and rejects."""

    path: Path
    manifest: dict[str, Any]
    shards: pl.LazyFrame | None
    selected: pl.LazyFrame | None
    rejects: pl.LazyFrame | None

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id", self.path.name))

    @cached_property
    def schema(self) -> dict[str, pl.DataType]:
        return dict(self.shards.collect_schema()) if self.shards is not None else {}

    @property
    def columns(self) -> list[str]:
        return list(self.schema)

    def has(self, *columns: str) -> bool:
        return all(c in self.schema for c in columns)

    @property
    def stage_names(self) -> list[str]:
        return [s["name"] for s in self.manifest.get("stages", [])]

    @cached_property
    def has_selector(self) -> bool:
        """Whether a selector ran: some kept row was not selected, or a selection reason exists."""
        if self.shards is None or not self.has("selected", "keep"):
            return False
        q = self.shards.select(
            (pl.col("keep") & ~pl.col("selected").fill_null(True)).any().alias("a"),
            (pl.col("select_reason").is_not_null().any() if self.has("select_reason") else pl.lit(False)).alias("b"),
        ).collect()
        return bool(q["a"][0] or q["b"][0])

    def group_expr(self) -> pl.Expr:
        """``dropped`` / ``kept`` (not selected) / ``selected`` for each row."""
        sel = pl.col("selected").fill_null(False) if self.has("selected") and self.has_selector else pl.lit(False)
        return (pl.when(~pl.col("keep")).then(pl.lit("dropped")).when(sel).then(pl.lit("selected"))
                .otherwise(pl.lit("kept")).alias("group"))

    def frame(self, columns: Iterable[str] | None = None, with_group: bool = True) -> pl.DataFrame:
        """Collect the named columns (those that exist; all but the text ones when None) of every row."""
        if self.shards is None:
            return pl.DataFrame()
        cols = [c for c in (columns if columns is not None else self.columns) if c in self.schema]
        if columns is None:
            cols = [c for c in cols if c not in TEXT_COLUMNS]
        exprs: list[pl.Expr] = [pl.col(c) for c in dict.fromkeys(cols)]
        if with_group and self.has("keep"):
            exprs.append(self.group_expr())
        return self.shards.select(exprs).collect() if exprs else pl.DataFrame()

    @cached_property
    def stage_columns(self) -> dict[str, list[str]]:
        """Stage name -> the output columns it declared (from the manifest)."""
        out: dict[str, list[str]] = {}
        for s in self.manifest.get("stages", []):
            out.setdefault(s["name"], []).extend(c for c in s.get("columns", {}) if c not in out.get(s["name"], []))
        return out

    def sidecar_roots(self) -> list[Path]:
        """Where this run's sidecars may be: ``<run>/sidecars`` and the configured ``cache_dir``."""
        roots = [self.path / "sidecars"]
        recorded = (self.manifest.get("layout") or {}).get("sidecars")
        if recorded:  # where the engine put them (decided once per run, recorded in the manifest)
            roots.insert(0, self.path / recorded)  # an absolute path stays absolute under `/`
        cache = (self.manifest.get("config", {}).get("run", {}) or {}).get("cache_dir")
        if cache:
            p = Path(cache).expanduser()
            roots += [p] if p.is_absolute() else [Path.cwd() / p, self.path / p]
        return [r for r in dict.fromkeys(roots) if r.is_dir()]

    def embedding_dirs(self) -> list[tuple[str, str, Path]]:
        """(model_id, view, directory) of every embeddings sidecar this run can see."""
        out = []
        for root in self.sidecar_roots():
            for d in sorted((root / "embeddings").glob("*/*")):
                if d.is_dir() and list_shards(d):
                    out.append((d.parent.name, d.name, d))
        return out

    def embeddings(self, ids: Sequence[str], view: str | None = None) -> tuple[np.ndarray, np.ndarray, str] | None:
        """Vectors for ``ids`` from the run's embeddings sidecar: (vectors, found mask, "model/view").

        Read through :class:`pipeline.embeddings.EmbeddingStore` when the stage that wrote it is
        named in the manifest (model + view params), else straight from the documented layout
        ``<root>/embeddings/<model_id>/<view>/part-*.parquet`` (id, vector; newest part wins).
        """
        dirs = self.embedding_dirs()
        if view is not None:
            dirs = [d for d in dirs if d[1] == view]
        if not dirs:
            return None
        preferred = self._embedding_view_from_manifest()
        dirs.sort(key=lambda d: (d[1] != preferred, d[0], d[1]))
        model_id, v, d = dirs[0]
        store = self._store_for(d)
        if store is not None:
            vecs, found = store.get(list(ids))
            return vecs, found, f"{model_id}/{v}"
        return (*_read_vectors(d, ids), f"{model_id}/{v}")

    def _embedding_view_from_manifest(self) -> str | None:
        for s in self.manifest.get("stages", []):
            v = (s.get("params") or {}).get("view")
            if isinstance(v, str):
                return v
        return None

    def _store_for(self, directory: Path) -> Any:
        try:
            from pipeline.embeddings import EmbeddingStore
        except ImportError:
            return None
        for s in self.manifest.get("stages", []):
            p = s.get("params") or {}
            model, view = p.get("model"), p.get("view")
            if not (isinstance(model, str) and isinstance(view, str)):
                continue
            try:
                store = EmbeddingStore(directory.parents[2], model=model, view=view)
            except Exception:  # model package not installed here: read the files directly
                continue
            if store.dir.resolve() == directory.resolve():
                return store
        return None


def _read_vectors(directory: Path, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    parts = list_shards(directory)
    frames, mats = [], []
    for i, p in enumerate(parts):
        t = pq.read_table(p)
        col = t.column("vector").combine_chunks()
        mats.append(col.values.to_numpy(zero_copy_only=False).reshape(-1, col.type.list_size).astype(np.float32))
        frames.append(pl.from_arrow(t.select(["id"])).with_columns(pl.lit(i, pl.Int32).alias("_p"),
                                                                   pl.int_range(pl.len(), dtype=pl.Int64).alias("_r")))
    index = pl.concat(frames).unique(subset="id", keep="last", maintain_order=True)
    hit = pl.DataFrame({"id": pl.Series(list(ids), dtype=pl.String)}).join(index, on="id", how="left", maintain_order="left")
    found = hit["_p"].is_not_null().to_numpy()
    out = np.zeros((hit.height, mats[0].shape[1] if mats else 0), dtype=np.float32)
    part, row = hit["_p"].fill_null(0).to_numpy(), hit["_r"].fill_null(0).to_numpy()
    for pi in np.unique(part[found]):
        m = found & (part == pi)
        out[m] = mats[int(pi)][row[m]]
    return out, found


def _scan(directory: Path) -> pl.LazyFrame | None:
    paths = list_shards(directory)
    if not paths:
        return None
    # per-file scans concatenated diagonally: a column that is all-null in one shard must not break the scan
    return pl.concat([pl.scan_parquet(p) for p in paths], how="diagonal_relaxed")


def load_run(run_dir: str | Path) -> Run:
    """Open a run directory: ``manifest.json`` plus lazy scans of shards, selected and rejects."""
    if isinstance(run_dir, Run):
        return run_dir
    path = Path(run_dir).resolve()
    mpath = path / "manifest.json"
    if not mpath.exists():
        raise FileNotFoundError(f"{path} has no manifest.json (not a run directory)")
    manifest = json.loads(mpath.read_text())
    return Run(path=path, manifest=manifest, shards=_scan(path / "shards"), selected=_scan(path / "selected"),
               rejects=_scan(path / "rejects"))


def _run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else load_run(run)


# ---------------------------------------------------------------- reasons and stages


def stage_of_reason(reason: str | None, stage_names: Sequence[str]) -> int | None:
    """Index of the stage that wrote ``reason`` (``stage:rule[:detail]``), or None.

    The prefix is the stage name or a short form of it (``minhash`` for ``minhash_dedup``,
    ``decontam`` for ``decontaminate``); the first stage with a matching name wins.
    """
    if reason is None:
        return None
    prefix = reason.split(":", 1)[0]
    for i, n in enumerate(stage_names):
        if n == prefix:
            return i
    for i, n in enumerate(stage_names):
        if n.startswith(prefix) or prefix.startswith(n):
            return i
    return None


def _reason_stage_frame(reasons: pl.Series, stage_names: Sequence[str]) -> pl.DataFrame:
    """Distinct reasons -> stage index (small: one row per distinct reason)."""
    uniq = reasons.drop_nulls().unique().to_list()
    return pl.DataFrame({"drop_reason": uniq, "_stage": [stage_of_reason(r, stage_names) for r in uniq]},
                        schema={"drop_reason": pl.String, "_stage": pl.Int64})


def _stage_label(i: int | None, names: Sequence[str]) -> str:
    return names[i] if i is not None and 0 <= i < len(names) else "(unknown stage)"


# ---------------------------------------------------------------- tables


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
        rs = _reason_stage_frame(drops, names)
        counted = drops.value_counts().join(rs, on="drop_reason", how="left")
        for st, n in counted.group_by("_stage").agg(pl.col("count").sum()).iter_rows():
            per_stage[st] = int(n)
    by_stage_manifest = c.get("dropped_by_stage", {})
    selectors = {i for i, s in enumerate(run.manifest.get("stages", [])) if "selected" in (s.get("columns") or {})}
    for i, n in enumerate(names):
        if i in per_stage or i not in selectors:
            k = per_stage.get(i, 0)
            remaining -= k
            steps.append((f"dropped by {n}", "removed", k, remaining, by_stage_manifest.get(n)))
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
    rs = _reason_stage_frame(d["drop_reason"], names)
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


def is_score_column(name: str, dtype: pl.DataType) -> bool:
    """Numeric and not a key, hash, rank, cluster id or scratch column."""
    return (dtype.is_numeric() and name not in NON_SCORE_COLUMNS and not name.startswith("_")
            and not name.endswith(NON_SCORE_SUFFIXES))


def score_columns(run: Run | str | Path, include_lengths: bool = False) -> list[str]:
    """Numeric columns that hold scores (keys, ranks, cluster ids and scratch columns excluded)."""
    run = _run(run)
    out = []
    for c, t in run.schema.items():
        if not is_score_column(c, t):
            continue
        if c.startswith("len_") and not include_lengths:
            continue
        out.append(c)
    return out


def flag_columns(run: Run | str | Path) -> list[str]:
    """Boolean per-row flags written by stages (e.g. ``heur_empty_response``)."""
    run = _run(run)
    skip = {"keep", "selected"}
    return [c for c, t in run.schema.items() if t == pl.Boolean and c not in skip and not c.startswith("_")]


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


def _hist_grid(df: pl.DataFrame, cols: Sequence[tuple[str, str]], title: str, name: str, ncols: int = 3) -> Chart:
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

    counts = dict(df.group_by("group").len().iter_rows())
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
    # all-null columns (a check that was off) and constant ones have no distribution to draw
    stats = df.select([pl.col(c).cast(pl.Float64).drop_nans().n_unique().alias(c) for c in cols]).row(0, named=True)
    nulls = {c for c in cols if df[c].null_count() == df.height}
    const = {c for c in cols if c not in nulls and stats[c] - int(df[c].null_count() > 0) <= 1}
    shown = [c for c in cols if c not in nulls and c not in const]
    if not shown:
        return _missing("scores", title, f"every score column is empty or constant ({', '.join(cols)})")
    ch = _hist_grid(df, [(c, c) for c in shown], title, "scores", ncols)
    skipped = ([f"no values: {', '.join(sorted(nulls))}"] if nulls else []) + \
        ([f"constant: {', '.join(sorted(const))}"] if const else [])
    if skipped:
        ch.caption += ". Not drawn: " + "; ".join(skipped)
    return ch


def plot_lengths(run: Run | str | Path) -> Chart:
    """Length distributions (response tokens, instruction tokens, turns) for dropped vs kept vs selected.

    Uses the length stage's columns when the run has them, else counts words and turns from the
    messages with the same word tokenizer (:data:`pipeline.text.WORD_TOKEN_PATTERN`).
    """
    run = _run(run)
    title = "Length distributions"
    if run.shards is None:
        return _missing("lengths", title, "the run has no shards")
    present = [(c, lab) for c, lab in LENGTH_PLOTS if run.has(c)]
    caption = "lengths from the length stage"
    if present:
        df = run.frame([c for c, _ in present])
    else:
        from pipeline.text import WORD_TOKEN_PATTERN, text_expr

        df = run.shards.select(
            text_expr("response").str.count_matches(WORD_TOKEN_PATTERN).cast(pl.Int64).alias("len_response_tokens"),
            text_expr("instruction").str.count_matches(WORD_TOKEN_PATTERN).cast(pl.Int64).alias("len_instruction_tokens"),
            pl.col("messages").list.eval(pl.element().struct.field("role") == "assistant").list.sum()
            .cast(pl.Int64).alias("len_turns"),
            run.group_expr(),
        ).collect()
        present = list(LENGTH_PLOTS)
        caption = "the run has no length stage: word counts computed from the messages"
    ch = _hist_grid(df, present, title, "lengths", ncols=3)
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


# ---------------------------------------------------------------- examples per drop reason


def _clip(expr: pl.Expr, n: int) -> pl.Expr:
    return pl.when(expr.str.len_chars() > n).then(expr.str.slice(0, n) + pl.lit(" …")).otherwise(expr)


def _texts(lf: pl.LazyFrame, keys: pl.DataFrame, max_chars: int) -> pl.DataFrame:
    """instruction/response text of the rows named by (source, source_row) in ``keys``."""
    from pipeline.text import text_expr

    if keys.is_empty():
        return pl.DataFrame(schema={"source": pl.String, "source_row": pl.Int64, "instruction": pl.String,
                                    "response": pl.String})
    rows = keys["source_row"].unique().to_list()
    srcs = keys["source"].unique().to_list()
    got = (lf.filter(pl.col("source_row").is_in(rows) & pl.col("source").is_in(srcs))
           .select("source", "source_row", _clip(text_expr("instruction"), max_chars).alias("instruction"),
                   _clip(text_expr("response"), max_chars).alias("response"))
           .collect())
    return got.join(keys.select("source", "source_row").unique(), on=["source", "source_row"], how="semi")


def _benchmark_files(run: Run) -> dict[str, tuple[str, str]]:
    """Benchmark label -> (file, record format), from the decontamination stage's params.

    Labels as :mod:`pipeline.stages.decontam` makes them: the benchmark's ``name``, else the file
    name without its extensions.
    """
    out: dict[str, tuple[str, str]] = {}

    def label(path: str) -> str:
        base = Path(path).name
        for suf in (".gz", ".jsonl", ".json", ".ndjson", ".parquet"):
            base = base.removesuffix(suf)
        return base

    for s in run.manifest.get("stages", []):
        if not s["name"].startswith("decontam"):
            continue
        for b in (s.get("params") or {}).get("benchmarks") or []:
            b = {"path": b} if isinstance(b, str) else b
            if isinstance(b, dict) and isinstance(b.get("path"), str):
                out[str(b.get("name") or label(b["path"]))] = (b["path"], str(b.get("format") or "auto"))
    return out


def _benchmark_items(run: Run, matches: Sequence[str], max_chars: int) -> dict[str, tuple[str, str]]:
    """``label:item`` -> (instruction, response) of the benchmark items named, read with the product's reader.

    An item is named by its ``id`` / ``task_id`` field, else its record index, as the stage names it.
    """
    from pipeline.io.readers import read_table
    from pipeline.text import text_expr

    files = _benchmark_files(run)
    wanted: dict[str, set[str]] = {}
    for m in matches:
        name, _, item = m.partition(":")
        wanted.setdefault(name, set()).add(item)
    out: dict[str, tuple[str, str]] = {}
    for name, items in wanted.items():
        path, fmt = files.get(name, (None, "auto"))
        if path is None or not Path(path).exists():
            continue
        try:
            rows, _rej = read_table(path, fmt=fmt, name=name)
        except Exception:  # an unreadable benchmark only costs the example its right-hand side
            continue
        from pipeline.stages.decontam import item_id_expr

        hit = rows.select(
            item_id_expr(rows.columns).alias("_item"),
            _clip(text_expr("instruction"), max_chars).alias("i"), _clip(text_expr("response"), max_chars).alias("r"),
        ).filter(pl.col("_item").is_in(list(items)))
        for item, i, r in hit.iter_rows():
            out[f"{name}:{item}"] = (i, r)
    return out


def drop_examples(run: Run | str | Path, per_reason: int = 3, max_chars: int = 400, seed: int = 0) -> pl.DataFrame:
    """A few dropped rows per rule, each beside what it matched.

    For a duplicate (``dup_of``), the kept row it duplicated (by ``dup_of_source``/``dup_of_row``
    when present, else the first kept row with id ``dup_of``); for a contaminated row
    (``decontam_match``), the benchmark item (read from the file in the stage's params); for other
    rules, the stage's own column values. Columns: reason, row, instruction, response, match_kind,
    match_ref, match_instruction, match_response, scores.
    """
    run = _run(run)
    schema = {"reason": pl.String, "row": pl.String, "instruction": pl.String, "response": pl.String,
              "match_kind": pl.String, "match_ref": pl.String, "match_instruction": pl.String,
              "match_response": pl.String, "scores": pl.String}
    if run.shards is None or not run.has("keep", "drop_reason"):
        return pl.DataFrame(schema=schema)
    extra = [c for c in ("dup_of", "dup_kind", "dup_of_source", "dup_of_row", "decontam_match") if run.has(c)]
    names = run.stage_names
    dropped = run.frame(["source", "source_row", "id", "drop_reason", *extra], with_group=False).filter(
        pl.col("drop_reason").is_not_null())
    if dropped.is_empty():
        return pl.DataFrame(schema=schema)
    dropped = dropped.with_columns(pl.col("drop_reason").str.split(":").list.head(2).list.join(":").alias("rule"))
    rs = _reason_stage_frame(dropped["drop_reason"], names).with_columns(pl.col("_stage").fill_null(len(names)))
    picks = (dropped.join(rs, on="drop_reason", how="left")
             .with_columns(pl.int_range(pl.len()).shuffle(seed).over("rule").alias("_k"))
             .filter(pl.col("_k") < per_reason).sort("_stage", "rule", "_k").drop("_stage"))
    texts = _texts(run.shards, picks.select("source", "source_row"), max_chars)
    picks = picks.join(texts, on=["source", "source_row"], how="left")
    # what each row matched
    match_kind = [None] * picks.height
    match_ref = [None] * picks.height
    keeper_keys: list[tuple[str, int]] = []
    if "dup_of" in extra:
        if "dup_of_source" in extra and "dup_of_row" in extra:
            keeper_keys = [(s, int(r)) for s, r in picks.select("dup_of_source", "dup_of_row").drop_nulls().iter_rows()]
        else:
            ids = picks["dup_of"].drop_nulls().unique().to_list()
            if ids:
                first = (run.shards.filter(pl.col("id").is_in(ids) & pl.col("keep")).select("id", "source", "source_row")
                         .collect().unique("id", keep="first", maintain_order=True))
                picks = picks.join(first.rename({"source": "dup_of_source", "source_row": "dup_of_row"}),
                                   left_on="dup_of", right_on="id", how="left")
                keeper_keys = [(s, int(r)) for s, r in first.select("source", "source_row").iter_rows()]
    keepers = _texts(run.shards, pl.DataFrame(keeper_keys, schema={"source": pl.String, "source_row": pl.Int64},
                                              orient="row"), max_chars)
    keeper_map = {(s, r): (i, t) for s, r, i, t in keepers.iter_rows()}
    bench = _benchmark_items(run, picks["decontam_match"].drop_nulls().unique().to_list(), max_chars) \
        if "decontam_match" in picks.columns else {}
    mi: list[str | None] = [None] * picks.height
    mr: list[str | None] = [None] * picks.height
    scores: list[str] = []
    rows = picks.to_dicts()
    for k, r in enumerate(rows):
        if r.get("dup_of"):
            src, srow = r.get("dup_of_source"), r.get("dup_of_row")
            match_kind[k] = f"duplicate ({r.get('dup_kind') or 'dup'})"
            match_ref[k] = f"{src}:{srow}" if src is not None else f"id {r['dup_of']}"
            hit = keeper_map.get((src, int(srow))) if src is not None and srow is not None else None
            if hit:
                mi[k], mr[k] = hit
            else:
                mi[k] = f"(keeper id {r['dup_of']} is not in this run: an earlier run's row, or itself dropped)"
        elif r.get("decontam_match"):
            match_kind[k] = "benchmark item"
            match_ref[k] = r["decontam_match"]
            b = bench.get(r["decontam_match"])
            if b:
                mi[k], mr[k] = b
            else:
                mi[k] = "(benchmark file not readable here)"
    # the stage's own columns as key=value, to show why a rule fired
    idx = [stage_of_reason(r["drop_reason"], names) for r in rows]
    stage_cols = {i: [c for c in run.stage_columns.get(_stage_label(i, names), []) if run.has(c)] for i in set(idx)}
    want = sorted({c for cs in stage_cols.values() for c in cs})
    vals = (run.shards.filter(pl.col("source_row").is_in(picks["source_row"].unique().to_list()))
            .select("source", "source_row", *want).collect()
            .join(picks.select("source", "source_row"), on=["source", "source_row"], how="semi")) if want else None
    vmap = {(d["source"], d["source_row"]): d for d in vals.to_dicts()} if vals is not None else {}
    for r, i in zip(rows, idx, strict=True):
        d = vmap.get((r["source"], r["source_row"]), {})
        cols = [c for c in stage_cols.get(i, []) if d.get(c) is not None and not c.endswith("_hash")
                and c not in ("dup_of", "dup_of_source", "dup_of_row", "dup_kind", "decontam_match")]
        # the columns the rule names (``length:response_tokens<8`` -> len_response_tokens), else all
        rule = r["drop_reason"].split(":")[1] if ":" in r["drop_reason"] else ""
        token = rule.split("<")[0].split(">")[0].split("=")[0]
        named = [c for c in cols if token and token in c]
        scores.append(", ".join(f"{c}={_fmt(d.get(c))}" for c in (named or cols)[:8]))
    return pl.DataFrame(
        {"reason": picks["drop_reason"], "row": [f"{r['source']}:{r['source_row']}" for r in rows],
         "instruction": picks["instruction"], "response": picks["response"], "match_kind": match_kind,
         "match_ref": match_ref, "match_instruction": mi, "match_response": mr, "scores": scores},
        schema=schema,
    ).with_columns(picks["rule"].alias("rule")).select("rule", *schema)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, str) and len(v) > 40:
        return v[:16] + "…"
    return str(v)


# ---------------------------------------------------------------- what if


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
        parts.append(stage.score(shard).select(columns))
    out = pl.concat(parts, how="vertical_relaxed")
    return [out[c] for c in columns]


_OPS = {">=": ("<", lambda c, t: c < t), ">": ("<=", lambda c, t: c <= t),
        "<=": (">", lambda c, t: c > t), "<": (">=", lambda c, t: c >= t)}


def _global_writes(stage: Any, df: pl.DataFrame, ctx: Any) -> set[str] | None:
    """The columns ``stage``'s global step writes: those it declares minus those its row-local
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
                     rejected: int, selectors: set[int]) -> dict[str, int]:
    kept = int(df[keep].sum())
    sel = int((df[keep] & df[selected].fill_null(False)).sum()) if selected in df.columns else kept
    out = {"read": df.height + rejected, "rejected": rejected, "kept": kept, "dropped": df.height - kept, "selected": sel}
    labels = [*names, "what_if"]
    for i, n in enumerate(labels):
        if i not in selectors:
            out[f"dropped by {n}"] = 0
    reasons = df.filter(~pl.col(keep))[reason]
    rs = _reason_stage_frame(reasons, labels)
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
    rs = _reason_stage_frame(stored["drop_reason"], names)
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
    now = _decision_counts(rows, "keep", "drop_reason", "selected", names, rejected, selectors)
    new = _decision_counts(rows, "keep_new", "drop_reason_new", "selected_new", names, rejected, selectors)
    metrics = list(dict.fromkeys([*now, *new]))
    counts = pl.DataFrame({"metric": metrics, "now": [now.get(m, 0) for m in metrics],
                           "what_if": [new.get(m, 0) for m in metrics]}).with_columns(
        (pl.col("what_if") - pl.col("now")).alias("change"))
    return WhatIf(change=change, counts=counts, rows=rows, notes=notes)


# ---------------------------------------------------------------- two runs


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


# ---------------------------------------------------------------- HTML


def table_html(df: pl.DataFrame, max_rows: int = 200, classes: str = "") -> str:
    """A plain, escaped HTML table of a frame (numbers right-aligned and thousands-separated)."""
    if df.is_empty():
        return '<p class="missing">(empty)</p>'
    numeric = {c for c, t in df.schema.items() if t.is_numeric()}
    head = "".join(f'<th class="{"num" if c in numeric else ""}">{html.escape(c)}</th>' for c in df.columns)
    body = []
    for row in df.head(max_rows).iter_rows():
        cells = []
        for c, v in zip(df.columns, row, strict=True):
            if v is None:
                s, cls = "–", "null"
            elif isinstance(v, bool):
                s, cls = ("yes" if v else "no"), ""
            elif isinstance(v, int):
                s, cls = f"{v:,}", "num"
            elif isinstance(v, float):
                s, cls = (f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"), "num"
            else:
                s, cls = str(v), ""
            cells.append(f'<td class="{cls if c in numeric or cls == "null" else cls}">{html.escape(s)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f'<p class="note">{df.height - max_rows:,} more rows not shown</p>' if df.height > max_rows else ""
    return f'<table class="{classes}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{more}'


def examples_html(ex: pl.DataFrame) -> str:
    """The rows of :func:`drop_examples` as side-by-side cards (dropped row | what it matched), by rule."""
    if ex.is_empty():
        return '<p class="missing">No dropped rows.</p>'
    out = []
    for rule, g in ex.group_by("rule", maintain_order=True):
        out.append(f"<h3>{html.escape(str(rule[0]))}</h3>")
        for r in g.iter_rows(named=True):
            left = (f'<div class="card drop"><div class="tag">dropped · {html.escape(r["row"])} · '
                    f'{html.escape(r["reason"] or "")}</div>'
                    f'<div class="lbl">instruction</div><pre>{html.escape(r["instruction"] or "")}</pre>'
                    f'<div class="lbl">response</div><pre>{html.escape(r["response"] or "")}</pre></div>')
            if r["match_kind"]:
                right = (f'<div class="card match"><div class="tag">{html.escape(r["match_kind"])} · '
                         f'{html.escape(r["match_ref"] or "")}</div>'
                         f'<div class="lbl">instruction</div><pre>{html.escape(r["match_instruction"] or "")}</pre>'
                         f'<div class="lbl">response</div><pre>{html.escape(r["match_response"] or "")}</pre></div>')
            else:
                right = (f'<div class="card match"><div class="tag">why · {html.escape(r["reason"] or "")}</div>'
                         f'<pre>{html.escape((r["scores"] or "").replace(", ", chr(10)))}</pre></div>')
            out.append(f'<div class="pair">{left}{right}</div>')
    return "".join(out)


_CSS = """
body{font:14px/1.5 -apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif;color:#222;margin:0;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px 32px 64px;background:#fff;box-shadow:0 0 0 1px #e5e7eb}
h1{font-size:24px;margin:8px 0 4px} h2{font-size:19px;margin:36px 0 10px;padding-bottom:4px;border-bottom:2px solid #e5e7eb}
h3{font-size:15px;margin:20px 0 8px;color:#333}
.meta{color:#555;font-size:13px} .meta code{background:#f1f3f5;padding:1px 5px;border-radius:3px}
.kpis{display:flex;gap:12px;flex-wrap:wrap;margin:18px 0}
.kpi{flex:1 1 120px;border:1px solid #e5e7eb;border-radius:8px;padding:10px 14px}
.kpi .v{font-size:22px;font-weight:600} .kpi .k{font-size:12px;color:#666;text-transform:uppercase;letter-spacing:.04em}
.kpi.ok{border-left:4px solid #55a868} .kpi.bad{border-left:4px solid #c44e52}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px;width:auto;max-width:100%}
th,td{padding:4px 10px;border-bottom:1px solid #eceef1;text-align:left;vertical-align:top}
th{background:#f8f9fb;font-weight:600} th.num,td.num{text-align:right;font-variant-numeric:tabular-nums}
td.null{color:#aaa} tbody tr:hover{background:#fafbfc}
figure{margin:10px 0 18px} figure img{max-width:100%;border:1px solid #eceef1;border-radius:6px}
figcaption{font-size:12px;color:#666;margin-top:4px}
.missing{color:#8a6d3b;background:#fcf8e3;border:1px solid #faebcc;border-radius:6px;padding:8px 12px}
.note{color:#666;font-size:12px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:10px;margin:8px 0 14px}
.card{border:1px solid #e5e7eb;border-radius:6px;padding:8px 10px;min-width:0}
.card.drop{border-left:4px solid #c44e52} .card.match{border-left:4px solid #4c72b0}
.card pre{white-space:pre-wrap;word-break:break-word;font-size:12px;margin:2px 0 6px;background:#fafbfc;padding:6px;border-radius:4px;max-height:220px;overflow:auto}
.tag{font-size:12px;font-weight:600;color:#444;margin-bottom:4px} .lbl{font-size:11px;color:#888;text-transform:uppercase}
nav{font-size:13px;margin:10px 0 0} nav a{margin-right:12px;color:#4c72b0;text-decoration:none}
.params{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.setAttribute('data-images-loaded', imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length);
  document.body.setAttribute('data-images', imgs.length);
});
"""


def _kpis(acc: pl.DataFrame, balanced: bool | None) -> str:
    d = dict(zip(acc["step"], acc["rows"], strict=True))
    items = [("read", d.get("read")), ("rejected", d.get("rejected at ingest")),
             ("dropped", sum(r for s, r in d.items() if s.startswith("dropped"))), ("kept", d.get("kept")),
             ("selected", d.get("selected", d.get("kept")))]
    cells = "".join(f'<div class="kpi"><div class="k">{k}</div><div class="v">{(v or 0):,}</div></div>' for k, v in items)
    if balanced is not None:
        cls = "ok" if balanced else "bad"
        cells += (f'<div class="kpi {cls}"><div class="k">read = kept + dropped + rejected</div>'
                  f'<div class="v">{"balanced" if balanced else "UNBALANCED"}</div></div>')
    return f'<div class="kpis">{cells}</div>'


def report_charts(run: Run | str | Path) -> list[Chart]:
    """Every chart of the report, in order (missing ones included, saying what is missing)."""
    run = _run(run)
    return [plot_funnel(run), plot_score_distributions(run), plot_flags(run), plot_lengths(run),
            plot_cluster_sizes(run), plot_embedding_map(run)]


def render_report(run: Run | str | Path, charts: Sequence[Chart] | None = None) -> str:
    """The self-contained HTML report of a run (images inlined as base64 PNG)."""
    run = _run(run)
    m = run.manifest
    charts = list(charts) if charts is not None else report_charts(run)
    ch = {c.name: c for c in charts}
    acc = accounting(run)
    counts = m.get("counts", {})
    sections: list[tuple[str, str, str]] = []
    missing: list[str] = []
    for c in charts:
        if c.missing:
            missing.append(f"{c.title}: {c.missing}")

    warn = ""
    if run.shards is None:
        warn += (f'<p class="missing"><b>No shards:</b> this run has no <code>shards/</code> (status '
                 f'<code>{html.escape(str(m.get("status")))}</code>); the counts below are what is on disk.</p>')
    off = acc.filter(pl.col("matches_manifest") == False)["step"].to_list()  # noqa: E712 - null means not in the manifest
    if off:
        warn += ('<p class="missing"><b>Counts differ from the manifest</b> (recomputed from the shards) at: '
                 + html.escape(", ".join(off)) + "</p>")
    sections.append(("accounting", "Row accounting",
                     warn + _kpis(acc, counts.get("balanced")) + table_html(acc) + ch["funnel"].html()))
    dr = drop_reasons(run)
    rj = reject_reasons(run)
    sections.append(("reasons", "Drop reasons",
                     (table_html(dr) if not dr.is_empty() else '<p class="missing">No row was dropped.</p>')
                     + "<h3>Rejected at ingest</h3>"
                     + (table_html(rj) if not rj.is_empty() else '<p class="note">No row was rejected.</p>')))
    sections.append(("sources", "Sources", table_html(sources_table(run))))
    st = stages_table(run)
    sections.append(("stages", "Stages", table_html(st.drop("params"))
                     + "<h3>Parameters</h3>" + table_html(st.select("stage", "params"), classes="params")))
    summ = score_summary(run, wide=True)
    sections.append(("scores", "Score distributions",
                     ch["scores"].html() + ch["flags"].html()
                     + (("<h3>Mean and median by group</h3>" + table_html(summ, max_rows=400)) if not summ.is_empty() else "")))
    sections.append(("lengths", "Length distributions", ch["lengths"].html()))
    ct = cluster_table(run)
    sections.append(("clusters", "Clusters and embeddings",
                     ch["clusters"].html() + ch["embedding_map"].html()
                     + (("<h3>Largest clusters</h3>" + table_html(ct, max_rows=20)) if not ct.is_empty() else "")))
    sections.append(("examples", "Examples per drop reason", examples_html(drop_examples(run))))
    if missing:
        sections.append(("missing", "What this run does not have",
                         "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in missing) + "</ul>"))
    nav = "".join(f'<a href="#{sid}">{html.escape(t)}</a>' for sid, t, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{html.escape(t)}</h2>{content}</section>' for sid, t, content in sections)
    versions = ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items())
    head = (f"<h1>Curation run <code>{html.escape(run.run_id)}</code></h1>"
            f'<p class="meta">status <code>{html.escape(str(m.get("status")))}</code> · created '
            f'{html.escape(str(m.get("created", "")))} · finished {html.escape(str(m.get("finished", "–")))} · '
            f'config hash <code>{html.escape(str(m.get("config_hash", "")))}</code> · total '
            f'{(m.get("timings") or {}).get("total_s", "–")} s<br>{html.escape(versions)}<br>'
            f'report generated {datetime.now(timezone.utc).isoformat(timespec="seconds")}</p><nav>{nav}</nav>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Run {html.escape(run.run_id)} · sft-curate report</title><style>{_CSS}</style>"
            f"<script>{_SCRIPT}</script></head><body><main>{head}{body}</main></body></html>")


def write_report(run_dir: str | Path) -> Path:
    """Write ``<run>/figures/*.png`` and ``<run>/report.html``; link the report from the manifest.

    The manifest is re-read just before it is rewritten (atomically) so that only the ``report``
    and ``figures`` keys change.
    """
    from pipeline.io.atomic import write_json_atomic

    run = load_run(run_dir)
    charts = report_charts(run)
    fig_dir = run.path / "figures"
    figures = []
    for i, c in enumerate(charts):
        p = c.save(fig_dir / f"{i:02d}-{c.name}.png")
        if p is not None:
            figures.append(str(p.relative_to(run.path)))
    html_text = render_report(run, charts)
    out = run.path / "report.html"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(html_text, encoding="utf-8")
    os.replace(tmp, out)
    manifest = json.loads((run.path / "manifest.json").read_text())
    manifest["report"] = "report.html"
    manifest["figures"] = figures
    write_json_atomic(manifest, run.path / "manifest.json")
    return out


__all__ = [
    "Chart", "Comparison", "Run", "WhatIf", "accounting", "cluster_table", "compare_runs", "drop_examples",
    "drop_reasons", "embedding_map", "examples_html", "flag_columns", "load_run", "plot_cluster_sizes", "plot_compare_counts",
    "plot_embedding_map", "plot_flags", "plot_funnel", "plot_lengths", "plot_score_distributions",
    "plot_score_shifts", "plot_selection_overlap", "reject_reasons", "render_report", "report_charts",
    "score_columns", "score_summary", "sources_table", "stage_of_reason", "stages_table", "table_html",
    "what_if", "write_report",
]
