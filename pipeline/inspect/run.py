"""A run directory opened for inspection: manifest, lazy scans, layout, embeddings, reasons -> stages.

:func:`load_run` opens a run directory: its manifest and lazy scans of ``shards/``, ``selected/``
and ``rejects/`` (nothing is read until a table or chart needs it, and then only its columns).
Where things live is read from the manifest's ``layout`` (``layout.sidecars``: the embeddings
sidecar root, relative to the run directory or absolute), with fallbacks for runs written before
the layout recorded it: ``<run>/sidecars``, the Prefect work store's ``sidecars/``
(``cache.work_dir``) and the configured ``run.cache_dir``.

A stage's declared contract (manifest ``stages[i]["contract"]``: ``requires``, ``writes``
``{column: {type, role, phase}}``, ``reason_prefix``, ``is_selector``) is preferred wherever the
inspection side needs to know what a stage wrote or which drop reasons are its own; runs without
it fall back to the stage's ``columns`` and to matching reason prefixes against stage names.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.io.shards import list_shards

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

    def contract(self, index: int) -> dict[str, Any] | None:
        """Stage ``index``'s declared contract from the manifest (None for runs that predate it)."""
        stages = self.manifest.get("stages", [])
        c = stages[index].get("contract") if 0 <= index < len(stages) else None
        return c if isinstance(c, dict) else None

    @cached_property
    def stage_columns(self) -> dict[str, list[str]]:
        """Stage name -> the output columns it declared (contract ``writes``, else ``columns``)."""
        out: dict[str, list[str]] = {}
        for i, s in enumerate(self.manifest.get("stages", [])):
            c = self.contract(i)
            cols = list((c.get("writes") or {}) if c is not None else []) + list(s.get("columns", {}))
            mine = out.setdefault(s["name"], [])
            mine.extend(x for x in dict.fromkeys(cols) if x not in mine)
        return out

    @cached_property
    def reason_prefixes(self) -> list[str | None]:
        """Per stage, the drop-reason prefix its contract declares (None where it declares none)."""
        out: list[str | None] = []
        for i in range(len(self.manifest.get("stages", []))):
            c = self.contract(i)
            p = c.get("reason_prefix") if c is not None else None
            out.append(p if isinstance(p, str) and p else None)
        return out

    @cached_property
    def selector_indices(self) -> set[int]:
        """Indices of the stages that are selectors (contract ``is_selector``, else they write ``selected``)."""
        out = set()
        for i, s in enumerate(self.manifest.get("stages", [])):
            c = self.contract(i)
            if (c.get("is_selector") if c is not None and "is_selector" in c else "selected" in (s.get("columns") or {})):
                out.add(i)
        return out

    @cached_property
    def column_roles(self) -> dict[str, str]:
        """Column -> declared role (``score`` / ``flag`` / ``internal`` ...) from the stage contracts."""
        out: dict[str, str] = {}
        for i in range(len(self.manifest.get("stages", []))):
            c = self.contract(i)
            for col, w in ((c or {}).get("writes") or {}).items():
                if isinstance(w, dict) and isinstance(w.get("role"), str):
                    out.setdefault(col, w["role"])
        return out

    def reason_stages(self, reasons: pl.Series, labels: Sequence[str] | None = None) -> pl.DataFrame:
        """Distinct drop reasons -> index of the stage that wrote them (``_stage``; see :func:`stage_of_reason`)."""
        names = self.stage_names if labels is None else list(labels)
        return _reason_stage_frame(reasons, names, self.reason_prefixes)

    def sidecar_roots(self) -> list[Path]:
        """Where this run's sidecars may be, existing directories only, first the recorded one.

        ``layout.sidecars`` of the manifest (relative to the run directory, or absolute), then for
        runs that predate it ``<run>/sidecars``, the Prefect work store's ``<cache.work_dir>/sidecars``
        and the configured ``run.cache_dir`` (relative to the working directory or the run).
        """
        roots: list[Path] = []
        recorded = (self.manifest.get("layout") or {}).get("sidecars")
        if isinstance(recorded, str) and recorded:
            p = Path(recorded).expanduser()
            roots.append(p if p.is_absolute() else self.path / p)
        roots.append(self.path / "sidecars")
        work = (self.manifest.get("cache") or {}).get("work_dir")
        if isinstance(work, str) and work:
            roots.append(Path(work).expanduser() / "sidecars")
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


def stage_of_reason(reason: str | None, stage_names: Sequence[str],
                    prefixes: Sequence[str | None] | None = None) -> int | None:
    """Index of the stage that wrote ``reason`` (``stage:rule[:detail]``), or None.

    A stage whose contract declares a ``reason_prefix`` (``prefixes[i]``) owns the reasons with
    exactly that prefix. Otherwise the prefix is the stage name or a short form of it (``minhash``
    for ``minhash_dedup``, ``decontam`` for ``decontaminate``); the first stage with a matching
    name wins.
    """
    if reason is None:
        return None
    prefix = reason.split(":", 1)[0]
    for i, p in enumerate(prefixes or ()):
        if p is not None and p == prefix:
            return i
    for i, n in enumerate(stage_names):
        if n == prefix:
            return i
    for i, n in enumerate(stage_names):
        if n.startswith(prefix) or prefix.startswith(n):
            return i
    return None


def _reason_stage_frame(reasons: pl.Series, stage_names: Sequence[str],
                        prefixes: Sequence[str | None] | None = None) -> pl.DataFrame:
    """Distinct reasons -> stage index (small: one row per distinct reason)."""
    uniq = reasons.drop_nulls().unique().to_list()
    return pl.DataFrame({"drop_reason": uniq, "_stage": [stage_of_reason(r, stage_names, prefixes) for r in uniq]},
                        schema={"drop_reason": pl.String, "_stage": pl.Int64})


def _stage_label(i: int | None, names: Sequence[str]) -> str:
    return names[i] if i is not None and 0 <= i < len(names) else "(unknown stage)"

