"""Training arms: which rows each fine-tuned model sees.

Every arm of a run is drawn from the run's own ``messages`` export (:func:`pipeline.export.export`
with ``where="TRUE"`` and the score columns), so the evaluation also proves that the export loads
into a trainer. From the first run (the *primary* run) come the arms a user expects without writing
them:

* ``selected`` (named after the run's selector stages, e.g. ``kmq``): the run's selection, best
  first by ``select_rank``, the first ``budget`` rows. The same rows for every seed.
* ``random``: a seeded uniform draw of ``budget`` rows from the rows the selector chose from (those
  still kept after the filters), a different draw per seed: the baseline of "Rethinking Data
  Selection at Scale" (Xia et al. 2024).
* ``longest``: the ``budget`` kept rows with the longest responses (Long-is-More, Zhao et al. 2024),
  by ``len_response_tokens`` when the length stage ran, else by characters.
* ``uncurated``: a seeded draw of ``budget`` rows from the pool before curation (every ingested row,
  whether a stage dropped it or not); what training on the raw data at the same budget gives.

User arms: another run directory (its selection, as above) or any file the readers accept, whose
first ``budget`` usable rows in file order are the arm.

Rows whose prompt leaves no room for a response token within ``max_length`` cannot train (TRL would
drop them silently); they are skipped while drawing, and an arm that cannot fill the budget with
rows that fit is an error, as is an arm with fewer rows than the budget.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.evaluate.errors import EvaluationError

Messages = list[dict[str, str]]


@dataclass
class Candidates:
    """Rows an arm may draw from, in the order it draws them; ``per_seed`` draws anew for each seed."""

    name: str
    kind: str  # selected | random | longest | uncurated | user
    messages: list[Messages]
    ids: list[str]
    order: Callable[[int], np.ndarray]
    per_seed: bool
    source: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ArmData:
    """One arm at one seed: the rows that train it."""

    name: str
    kind: str
    seed: int
    messages: list[Messages]
    ids: list[str]
    skipped_too_long: int

    @property
    def data_hash(self) -> str:
        """sha256 of the ordered row ids: two arms with the same hash trained on the same rows."""
        return hashlib.sha256("\n".join(self.ids).encode()).hexdigest()


def split_prompt(msgs: Messages) -> tuple[Messages, Messages] | None:
    """``(prompt, [last assistant turn])``; None when there is no assistant turn after a prompt."""
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)
    if last < 1 or not msgs[last]["content"]:
        return None
    return [dict(m) for m in msgs[:last]], [dict(msgs[last])]


def _fixed(n: int) -> Callable[[int], np.ndarray]:
    return lambda _seed: np.arange(n)


def _seeded(n: int) -> Callable[[int], np.ndarray]:
    return lambda seed: np.random.default_rng(seed).permutation(n)


def export_pool(run_dir: Path, work: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Every row of ``run_dir`` through the ``messages`` export, with its score columns, in id order."""
    from pipeline.export import ExportError, export

    out = work / f"pool-{run_dir.name}.jsonl"
    if out.exists():
        out.unlink()
    try:
        info = export(run_dir, "messages", out, where="TRUE", with_scores=True)
    except (ExportError, FileNotFoundError) as e:
        raise EvaluationError(f"arm run {run_dir}: {e}") from e
    df = pl.read_ndjson(out, infer_schema_length=None)
    if df.height == 0:
        raise EvaluationError(f"arm run {run_dir}: the export holds no rows")
    df = df.with_columns(pl.col("messages").list.eval(pl.struct(
        pl.element().struct.field("role"), pl.element().struct.field("content"))))
    # canonical order: the draws do not depend on shard or input order
    return df.sort(["id", "source", "source_row"]), info


def _selectors(run_dir: Path) -> list[str]:
    from pipeline.export.card import _is_selector

    m = json.loads((run_dir / "manifest.json").read_text())
    return [s["name"] for s in m.get("stages", []) if _is_selector(s["name"], s.get("params", {}), s.get("contract"))]


def _msgs(df: pl.DataFrame) -> list[Messages]:
    return df["messages"].to_list()


def _response_len(df: pl.DataFrame) -> np.ndarray:
    if "len_response_tokens" in df.columns:
        return df["len_response_tokens"].fill_null(0).to_numpy()
    expr = pl.col("messages").list.eval(
        pl.when(pl.element().struct.field("role") == "assistant")
        .then(pl.element().struct.field("content").str.len_chars()).otherwise(0)).list.sum()
    return df.select(expr).to_series().to_numpy()


def selection_candidates(df: pl.DataFrame, run_dir: Path, name: str | None) -> Candidates:
    sel = df.filter(pl.col("keep") & pl.col("selected").fill_null(False))
    if "select_rank" in sel.columns:
        sel = sel.sort(["select_rank", "id"], nulls_last=True)
    sels = _selectors(run_dir)
    label = name or ("+".join(sels) if sels else "selected")
    return Candidates(label, "selected", _msgs(sel), sel["id"].to_list(), _fixed(sel.height), False, str(run_dir),
                      {"selectors": sels, "rows": sel.height})


def run_candidates(run_dir: Path, work: Path, with_baselines: bool, name: str | None = None,
                   baselines: tuple[str, ...] = ("random", "longest", "uncurated")) -> tuple[list[Candidates], dict[str, Any]]:
    """The arms of one run: its selection, plus (primary run) random, longest and uncurated."""
    if not (run_dir / "manifest.json").exists():
        raise EvaluationError(f"arm {run_dir}: not a run directory (no manifest.json)")
    df, info = export_pool(run_dir, work)
    out = [selection_candidates(df, run_dir, name)]
    if with_baselines:
        kept = df.filter(pl.col("keep"))
        if "random" in baselines:
            out.append(Candidates("random", "random", _msgs(kept), kept["id"].to_list(), _seeded(kept.height), True,
                                  str(run_dir), {"rows": kept.height}))
        if "longest" in baselines:
            lens = _response_len(kept)
            ids = np.array(kept["id"].to_list(), dtype=object)
            order = np.lexsort((ids, -lens))  # longest first, ties by id
            out.append(Candidates("longest", "longest", _msgs(kept), kept["id"].to_list(),
                                  lambda _s, o=order: o, False, str(run_dir), {"rows": kept.height}))
        if "uncurated" in baselines:
            out.append(Candidates("uncurated", "uncurated", _msgs(df), df["id"].to_list(), _seeded(df.height), True,
                                  str(run_dir), {"rows": df.height}))
    return out, {"run_dir": str(run_dir), "export_sha256": info.get("sha256"), "rows": df.height,
                 "run_id": info.get("run_id"), "config_hash": info.get("config_hash")}


def file_candidates(spec: str) -> Candidates:
    """A user arm from a file the readers accept (``name=path`` or ``path``): first rows in file order."""
    from pipeline.evaluate.targets import named_path
    from pipeline.io.readers import read_table

    name, path = named_path(spec, f"arm {spec!r}")
    try:
        rows, _rej = read_table(str(path))
    except Exception as e:
        raise EvaluationError(f"arm {name!r} ({path}): cannot read: {e}") from e
    return Candidates(name, "user", _msgs(rows), rows["id"].to_list(), _fixed(rows.height), False, str(path),
                      {"rows": rows.height})


def draw(c: Candidates, seed: int, budget: int, fits: Callable[[list[Messages]], np.ndarray]) -> ArmData:
    """The first ``budget`` rows of ``c`` in its order (for ``seed``) that have a prompt, a response and fit.

    ``fits`` maps a list of conversations to a bool mask (the trainer's sequence-length check).
    """
    if len(c.messages) < budget:
        raise EvaluationError(f"arm {c.name!r} has {len(c.messages)} rows, fewer than the budget of {budget} "
                              f"({c.source})")
    order = c.order(seed)
    chosen: list[int] = []
    too_long = 0
    pos = 0
    while len(chosen) < budget and pos < len(order):
        chunk = order[pos: pos + max(64, 2 * (budget - len(chosen)))]
        pos += len(chunk)
        ok_idx = [int(i) for i in chunk if split_prompt(c.messages[int(i)]) is not None]
        mask = fits([c.messages[i] for i in ok_idx]) if ok_idx else np.zeros(0, bool)
        too_long += int((~mask).sum())
        chosen.extend(i for i, m in zip(ok_idx, mask, strict=True) if m)
    if len(chosen) < budget:
        raise EvaluationError(
            f"arm {c.name!r}: only {len(chosen)} of its {len(c.messages)} rows can train within the sequence "
            f"length ({too_long} have a prompt too long to leave room for a response, the rest no assistant "
            f"turn); the budget of {budget} does not fit: raise max_length or lower the budget")
    chosen = chosen[:budget]
    return ArmData(c.name, c.kind, seed, [c.messages[i] for i in chosen], [c.ids[i] for i in chosen], too_long)
