"""Keeper policy, graph resolution and dup columns of the dedup stages.

* **keeper policy** (:func:`keeper_rank`): the highest value of a named score column when the column
  is present, else the longest response, else the first row seen;
* **graph resolution** (:func:`connected_components`, :func:`resolve_duplicates`): duplicate edges
  -> connected components (vectorised union-find: hooking + pointer jumping in NumPy) -> one keeper
  per component, or greedily in keeper order (``linkage="keeper"``). Rows kept by an earlier run
  (incremental state) are nodes too and always win: they have been published already;
* **dup columns** (:func:`write_dup_columns`) and the keeper ids (kids) incremental state stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from pipeline.stages.base import Col, StageParams
from pipeline.text import text_expr

DUP_COLUMNS: dict[str, Any] = {
    "dup_of": pl.String,
    "dup_kind": pl.String,
    "dup_of_source": pl.String,
    "dup_of_row": pl.Int64,
}

RESPONSE_CHARS = "len_response_chars"  # written by the length stage; computed here when absent
SCRATCH_RESPONSE_CHARS = "_dedup_response_chars"
#: the scratch column :func:`response_chars` adds (only when the length stage did not run)
DEDUP_SCRATCH: dict[str, Col] = {SCRATCH_RESPONSE_CHARS: Col(pl.Int64, "internal", "row")}


class KeeperParams(StageParams):
    """Keeper policy shared by the dedup stages."""

    keeper: Literal["auto", "score", "longest", "first"] = Field(
        "auto",
        description="auto: keeper_column if given and present, else longest response, else first seen",
    )
    keeper_column: str | None = Field(None, description="score column; the highest value is kept")


# ---------------------------------------------------------------- keeper policy


def response_chars(df: pl.DataFrame, response: pl.Series | None = None) -> pl.DataFrame:
    """Add the scratch response length the 'longest' keeper needs, unless the length stage ran.

    ``response``: the rows' response text (``text_expr("response")``) when the caller already has it,
    so it is not rebuilt from the messages."""
    if RESPONSE_CHARS in df.columns:
        return df
    text = response if response is not None else text_expr("response")
    return df.with_columns(text.str.len_chars().cast(pl.Int64).alias(SCRATCH_RESPONSE_CHARS))


def keeper_inputs(params: KeeperParams) -> tuple[str, ...]:
    cols: tuple[str, ...] = (RESPONSE_CHARS, SCRATCH_RESPONSE_CHARS)
    if params.keeper_column:
        cols += (params.keeper_column,)
    return cols


def keeper_rank(df: pl.DataFrame, params: KeeperParams, extra: pl.Expr | None = None) -> np.ndarray:
    """Rank of every row of ``df`` under the keeper policy (0 = keep first); ties -> first seen.

    ``extra`` (descending) is inserted after the score column, e.g. SemDeDup's distance to centroid.
    """
    n = df.height
    keys: list[pl.Expr] = []
    desc: list[bool] = []
    policy = params.keeper
    if policy == "score" and (not params.keeper_column or params.keeper_column not in df.columns):
        raise ValueError(f"keeper=score needs keeper_column present in the data, got {params.keeper_column!r}")
    if policy in ("auto", "score") and params.keeper_column and params.keeper_column in df.columns:
        keys.append(pl.col(params.keeper_column).cast(pl.Float64).fill_nan(None))
        desc.append(True)
    if extra is not None:
        keys.append(extra)
        desc.append(True)
    if policy in ("auto", "score", "longest"):
        col = RESPONSE_CHARS if RESPONSE_CHARS in df.columns else SCRATCH_RESPONSE_CHARS
        if col in df.columns:
            keys.append(pl.col(col))
            desc.append(True)
    keys.append(pl.int_range(pl.len(), dtype=pl.Int64))
    desc.append(False)
    order = (
        df.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("_i"), *[k.alias(f"_k{j}") for j, k in enumerate(keys)])
        .sort([f"_k{j}" for j in range(len(keys))], descending=desc, nulls_last=True)["_i"]
        .to_numpy()
    )
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64)
    return rank


# ---------------------------------------------------------------- graph resolution


def connected_components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Component label (the smallest node index in the component) of each of ``n`` nodes.

    Vectorised union-find: every round hooks the larger root of each edge under the smaller one
    (``np.minimum.at``), then pointer jumping flattens the forest; repeat until no edge joins two roots.
    """
    parent = np.arange(n, dtype=np.int64)
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    while len(u):
        pu, pv = parent[u], parent[v]
        live = pu != pv
        if not live.any():
            break
        u, v, pu, pv = u[live], v[live], pu[live], pv[live]
        np.minimum.at(parent, np.maximum(pu, pv), np.minimum(pu, pv))
        while True:
            pp = parent[parent]
            if np.array_equal(pp, parent):
                break
            parent = pp
    return parent


@dataclass
class OldKeepers:
    """Keepers from earlier runs (incremental state): node ``j`` is row ``j`` of ``frame``.

    ``frame`` has ``kid`` (global first-seen order across runs), ``id``, ``source``, ``source_row``.
    """

    frame: pl.DataFrame = field(default_factory=lambda: empty_keepers())

    @property
    def n(self) -> int:
        return self.frame.height


def empty_keepers() -> pl.DataFrame:
    return pl.DataFrame(schema={"kid": pl.Int64, "id": pl.String, "source": pl.String, "source_row": pl.Int64})


@dataclass
class Resolution:
    """Per new row: its component label, and who keeps it.

    ``keeper_new[i]``: index of the keeping new row (``i`` itself for keepers), or -1 when an old
    keeper keeps it; ``keeper_old[i]``: index into the old keepers, or -1.
    """

    component: np.ndarray
    keeper_new: np.ndarray
    keeper_old: np.ndarray
    component_size: np.ndarray

    @property
    def is_dup(self) -> np.ndarray:
        return (self.keeper_old >= 0) | (self.keeper_new != np.arange(len(self.keeper_new)))


def resolve_duplicates(
    n: int,
    rank: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray] | None = None,
    old_edges: tuple[np.ndarray, np.ndarray] | None = None,
    old: OldKeepers | None = None,
    linkage: Literal["component", "keeper"] = "component",
) -> Resolution:
    """Who keeps each new row (``0..n-1``), given duplicate edges among them and to old keepers.

    ``edges``: pairs of new rows that are duplicates; ``old_edges``: (new row, old keeper index)
    pairs. Old keepers outrank every new row (among themselves: first seen, smallest ``kid``); new
    rows go by ``rank``.

    ``linkage="component"``: connected components of the edges, one keeper each (its best-ranked
    member). Right when the relation is transitive (exact duplicates). For a similarity threshold it
    is not: a chain ``a ~ b ~ c`` drops ``c`` for ``a`` although ``c`` may be far from ``a``.

    ``linkage="keeper"``: rows are decided in rank order and a row is dropped only when it has an
    edge to a row that is kept (then the best-ranked such row keeps it), the order datasketch/rensa
    users get by querying an index of the rows kept so far. Every dropped row is then a duplicate
    of its own keeper. ``component`` is the keeper's index (rows sharing a keeper share it).
    """
    if linkage == "keeper":
        return _resolve_by_keeper(n, rank, edges, old_edges, old)
    m, eu, ev, full_rank = _joint_graph(n, rank, edges, old_edges, old)
    label = connected_components(n + m, eu, ev)
    best = np.full(n + m, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, label, full_rank)
    winner = np.full(n + m, -1, dtype=np.int64)
    is_best = full_rank == best[label]
    winner[label[is_best]] = np.flatnonzero(is_best)
    keeper = winner[label[:n]]
    sizes = np.bincount(label[:n], minlength=n + m)[label[:n]]
    return Resolution(
        component=label[:n],
        keeper_new=np.where(keeper < n, keeper, -1),
        keeper_old=np.where(keeper >= n, keeper - n, -1),
        component_size=sizes.astype(np.int64),
    )


def _joint_graph(n: int, rank: np.ndarray, edges: tuple[np.ndarray, np.ndarray] | None,
                 old_edges: tuple[np.ndarray, np.ndarray] | None, old: OldKeepers | None
                 ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """The graph both linkages resolve: ``n`` new rows then the ``m`` old keepers (``old_edges`` point
    at them), as ``(m, u, v, full_rank)``. Old keepers outrank every new row, and among themselves go
    by first seen (``kid``)."""
    m = old.n if old is not None else 0
    us, vs = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    if edges is not None:
        us.append(np.asarray(edges[0], np.int64))
        vs.append(np.asarray(edges[1], np.int64))
    if old_edges is not None and m:
        us.append(np.asarray(old_edges[0], np.int64))
        vs.append(np.asarray(old_edges[1], np.int64) + n)
    full_rank = np.empty(n + m, dtype=np.int64)
    full_rank[:n] = rank
    if m:
        kid = old.frame["kid"].to_numpy()  # type: ignore[union-attr]
        full_rank[n:] = np.argsort(np.argsort(kid, kind="stable"), kind="stable") - m
    return m, np.concatenate(us), np.concatenate(vs), full_rank


def _resolve_by_keeper(
    n: int,
    rank: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray] | None,
    old_edges: tuple[np.ndarray, np.ndarray] | None,
    old: OldKeepers | None,
) -> Resolution:
    """``linkage="keeper"`` of :func:`resolve_duplicates`: a greedy pass in rank order, vectorised.

    Each edge is oriented from its better-ranked end. A round drops every undecided row with a kept
    better neighbour, then keeps every undecided row all of whose better neighbours are dropped;
    rounds repeat until every row is decided (as many rounds as the longest chain of alternating
    decisions, a handful on real data), each one pass over the edges.
    """
    m, u, v, full_rank = _joint_graph(n, rank, edges, old_edges, old)
    u_all, v_all = u, v  # self-loops included, as the keeper lookup below had them
    if n == 0:
        z = np.zeros(0, np.int64)
        return Resolution(component=z, keeper_new=z, keeper_old=z, component_size=z)
    keep = u != v
    u, v = u[keep], v[keep]
    swap = full_rank[u] > full_rank[v]
    a = np.where(swap, v, u)  # better-ranked end
    b = np.where(swap, u, v)
    undecided, kept, dropped = 0, 1, 2
    status = np.zeros(n + m, dtype=np.int8)
    status[n:] = kept  # published earlier: always kept
    live = np.ones(len(a), dtype=bool)
    while True:
        sa, sb = status[a], status[b]
        hit = (sa == kept) & (sb == undecided)
        status[b[hit]] = dropped
        sb = status[b]
        live = sb == undecided
        if not live.any():
            break
        blocked = np.zeros(n + m, dtype=bool)
        blocked[b[live & (status[a] != dropped)]] = True
        free = (status == undecided) & ~blocked
        free[b[live & (status[a] == kept)]] = False
        if not free.any():  # cannot happen with a strict order; guard against a cycle all the same
            raise AssertionError("keeper resolution made no progress")
        status[free] = kept
        a, b = a[live], b[live]
    status[status == undecided] = kept  # rows without an undecided edge left
    # the keeper of a dropped row: its best-ranked kept better neighbour
    swap = full_rank[u_all] > full_rank[v_all]
    a_all = np.where(swap, v_all, u_all)
    b_all = np.where(swap, u_all, v_all)
    ok = (status[a_all] == kept) & (status[b_all] == dropped) & (a_all != b_all)
    best = np.full(n + m, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, b_all[ok], full_rank[a_all[ok]])
    node_of_rank = np.empty(n + m, dtype=np.int64)
    node_of_rank[full_rank - full_rank.min()] = np.arange(n + m)
    keeper = np.arange(n + m, dtype=np.int64)
    d = np.flatnonzero(status == dropped)
    keeper[d] = node_of_rank[best[d] - full_rank.min()]
    keeper = keeper[:n]
    sizes = np.bincount(keeper, minlength=n + m)[keeper]
    return Resolution(
        component=keeper,
        keeper_new=np.where(keeper < n, keeper, -1),
        keeper_old=np.where(keeper >= n, keeper - n, -1),
        component_size=sizes.astype(np.int64),
    )


def star_edges(frame: pl.DataFrame, group_cols: Sequence[str], node: str = "node") -> pl.DataFrame:
    """Edges (pivot, node) linking every member of each group to the group's first member.

    A star keeps a group of k rows at k-1 edges (a clique would be k(k-1)/2).
    """
    return (
        frame.with_columns(pl.col(node).min().over(group_cols).alias("pivot"))
        .filter(pl.col(node) != pl.col("pivot"))
        .select("pivot", node)
        .unique()
    )


# ---------------------------------------------------------------- dup columns


def participants(df: pl.DataFrame) -> np.ndarray:
    """Indices of rows that take part in a dedup stage: the ones still kept."""
    if "keep" not in df.columns:
        return np.arange(df.height)
    return np.flatnonzero(df["keep"].fill_null(False).to_numpy())


def _scatter(n: int, rows: np.ndarray, values: pl.Series, dtype: Any) -> pl.Series:
    out = pl.repeat(None, n, dtype=dtype, eager=True)
    if len(rows):
        out = out.scatter(rows.astype(np.int64), values.cast(dtype))
    return out


def write_dup_columns(
    df: pl.DataFrame,
    idx: np.ndarray,
    res: Resolution,
    kind: str,
    old: OldKeepers | None = None,
    extra: dict[str, np.ndarray | pl.Series] | None = None,
    extra_dtypes: dict[str, Any] | None = None,
) -> pl.DataFrame:
    """Write dup_of/dup_kind/dup_of_source/dup_of_row for the duplicates found among rows ``idx``.

    ``res`` is indexed like ``idx``. Rows this stage did not mark keep the values an earlier stage
    wrote. ``extra`` columns (indexed like ``idx``) are scattered to the full frame, null elsewhere.
    """
    n = df.height
    dup_local = np.flatnonzero(res.is_dup)
    rows = idx[dup_local]
    kn = res.keeper_new[dup_local]
    ko = res.keeper_old[dup_local]
    addr = ["id", "source", "source_row"]
    parts = [
        pl.DataFrame({"_r": rows[kn >= 0]}).hstack(df.select(addr)[idx[kn[kn >= 0]]]),
    ]
    if old is not None and (ko >= 0).any():
        parts.append(pl.DataFrame({"_r": rows[ko >= 0]}).hstack(old.frame.select(addr)[ko[ko >= 0]]))
    upd = pl.concat(parts).rename({"id": "dup_of", "source": "dup_of_source", "source_row": "dup_of_row"})
    upd = upd.with_columns(pl.lit(kind, dtype=pl.String).alias("dup_kind"))
    at = upd["_r"].to_numpy()
    out = df
    for c, t in DUP_COLUMNS.items():
        new = _scatter(n, at, upd[c], t)
        if c in df.columns:
            new = new.fill_null(df[c].cast(t))  # keep what an earlier stage wrote
        out = out.with_columns(new.alias(c))
    for c, vals in (extra or {}).items():
        s = vals if isinstance(vals, pl.Series) else pl.Series(c, vals)
        dtype = (extra_dtypes or {}).get(c, s.dtype)
        out = out.with_columns(_scatter(n, idx, s, dtype).alias(c))
    return out


def assign_kids(
    df: pl.DataFrame, idx: np.ndarray, res: Resolution, old: OldKeepers | None, next_kid: int
) -> tuple[pl.DataFrame, np.ndarray]:
    """Keeper ids for the state: ``(new keepers frame, kid of each participant's keeper)``.

    New keepers get ``kid = next_kid, next_kid + 1, ...`` in row order (kid is the global
    first-seen order across runs); a row kept by an old keeper gets that keeper's kid.
    """
    kpos = np.flatnonzero(~res.is_dup)
    new_kid = np.arange(next_kid, next_kid + len(kpos), dtype=np.int64)
    local = np.full(len(idx), -1, dtype=np.int64)
    local[kpos] = new_kid
    kid = local[np.maximum(res.keeper_new, 0)]
    if old is not None and old.n and (res.keeper_old >= 0).any():
        okid = old.frame["kid"].to_numpy()
        kid = np.where(res.keeper_old >= 0, okid[np.maximum(res.keeper_old, 0)], kid)
    table = df.select("id", "source", "source_row")[idx[kpos]].with_columns(pl.Series("kid", new_kid))
    return table.select("kid", "id", "source", "source_row"), kid


def merge_keepers(old: OldKeepers | None, new: pl.DataFrame) -> pl.DataFrame:
    frames = [old.frame] if old is not None and old.n else []
    return pl.concat([*frames, new.select(empty_keepers().columns)]) if frames else new.select(empty_keepers().columns)


def kid_index(old: OldKeepers, kids: pl.Series) -> np.ndarray:
    """Row index in ``old.frame`` of each kid (old keepers are stored sorted by kid)."""
    pos = np.searchsorted(old.frame["kid"].to_numpy(), kids.to_numpy())
    return pos.astype(np.int64)

