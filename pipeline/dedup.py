"""Shared plumbing of the three dedup kinds (exact, MinHash-LSH, SemDeDup).

What the stages in :mod:`pipeline.stages.exact`, :mod:`pipeline.stages.minhash` and
:mod:`pipeline.stages.semdedup` have in common lives here:

* **text and hashing**: the text a dedup key means, normalised (:func:`text_series`), word n-gram shingles hashed
  in Polars + NumPy (:func:`shingle_hashes`), and a probe of the hash functions that incremental
  state is checked against (:func:`hash_probe`);
* **keeper policy** (:func:`keeper_rank`): the highest value of a named score column when the column
  is present, else the longest response, else the first row seen;
* **graph resolution** (:func:`connected_components`, :func:`resolve_duplicates`): duplicate edges
  -> connected components (vectorised union-find: hooking + pointer jumping in NumPy) -> one keeper
  per component. Rows kept by an earlier run (incremental state) are nodes too and always win: they
  have been published already;
* **dup columns** (:func:`write_dup_columns`): every dropped duplicate records ``dup_of`` (the
  keeper's ``id``), ``dup_kind`` (exact/minhash/semantic), ``dup_of_source`` and ``dup_of_row`` (the
  keeper's address, so a notebook can show the pair side by side: identical conversations share an
  id, the address tells them apart);
* **state** (:class:`StateMeta`, :func:`save_state_files`, :func:`load_state_files`): Parquet files
  plus a JSON header, checked on load against the params and hash functions that wrote them.

Only rows with ``keep == True`` take part in a dedup stage: rows dropped earlier are neither keepers
nor duplicates and their dup columns keep whatever an earlier stage wrote (usually null).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field

from pipeline._nfkc import NFKC_MAY_CHANGE
from pipeline._wordsep import separator_bits
from pipeline.io.shards import write_parquet_atomic
from pipeline.stages.base import Col, RunContext, Stage, StageParams, drop_where
from pipeline.text import text_expr

DUP_COLUMNS: dict[str, Any] = {
    "dup_of": pl.String,
    "dup_kind": pl.String,
    "dup_of_source": pl.String,
    "dup_of_row": pl.Int64,
}

#: Dedup keys: which text of a conversation two rows must share to be duplicates (see pipeline.text).
DedupKey = Literal["instruction", "response", "reasoning", "conversation", "first_instruction", "last_response"]

RESPONSE_CHARS = "len_response_chars"  # written by the length stage; computed here when absent
SCRATCH_RESPONSE_CHARS = "_dedup_response_chars"
#: the scratch column :func:`response_chars` adds (only when the length stage did not run)
DEDUP_SCRATCH: dict[str, Col] = {SCRATCH_RESPONSE_CHARS: Col(pl.Int64, "internal", "row")}

#: Fixed seeds: hashes must be identical across processes and runs (incremental state).
HASH_SEED = 0x5F7C_2A11


class KeeperParams(StageParams):
    """Keeper policy shared by the dedup stages."""

    keeper: Literal["auto", "score", "longest", "first"] = Field(
        "auto",
        description="auto: keeper_column if given and present, else longest response, else first seen",
    )
    keeper_column: str | None = Field(None, description="score column; the highest value is kept")


# ---------------------------------------------------------------- text and hashing


def hash_probe(minhash: bool = False) -> str:
    """A fingerprint of the hash functions a dedup state depends on (with ``minhash``: its signatures too).

    Polars documents its ``hash`` as stable only within one version, and this package's word and
    MinHash hashes may change between its releases; state written under other functions would
    silently match nothing, so state files record this probe and loading compares it.
    """
    import hashlib

    s = pl.Series(["sft-curate hash probe", "", "naïve café ﬁ 42 a b c"])
    parts: list[Any] = [s.hash(seed=HASH_SEED).to_list()]
    flat, off = shingle_hashes(normalize_text(s), n=2)
    parts.append(flat.tolist())
    if minhash:
        parts.append(minhash_signatures(flat, off, num_perm=8, seed=1).tolist())
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def normalize_text(s: pl.Series) -> pl.Series:
    """:func:`pipeline.text.normalize_expr` on a Series, same output, about 3x faster.

    NFKC runs only on the strings with a character it may change
    (:data:`pipeline._nfkc.NFKC_MAY_CHANGE`; the others are NFKC-invariant), and the
    punctuation/symbol and whitespace folds are one regex pass (a run of either becomes one space).
    """
    return _folded(s).str.replace_all(r"[\p{P}\p{S}\s]+", " ").str.strip_chars()


def _folded(s: pl.Series) -> pl.Series:
    """NFKC, then lower-cased: the first two steps of :func:`normalize_text` (nulls as "")."""
    return _nfkc(s).str.to_lowercase()


def _non_ascii(s: pl.Series) -> pl.Series:
    """Positions of the strings holding a non-ASCII character (far cheaper than a regex: their
    UTF-8 length differs from their length in characters)."""
    return (s.str.len_bytes() != s.str.len_chars()).fill_null(False).arg_true()


def _nfkc(s: pl.Series) -> pl.Series:
    """NFKC of every string (nulls as ""), run only on those holding a character it may change."""
    s = s.fill_null("")
    wide = _non_ascii(s)  # ASCII strings are NFKC-stable
    if len(wide):
        unstable = wide.gather(s.gather(wide).str.contains(NFKC_MAY_CHANGE).arg_true())
        if len(unstable):
            s = s.scatter(unstable, s.gather(unstable).str.normalize("NFKC"))
    return s


def text_series(df: pl.DataFrame, key: str, normalize: bool = True) -> pl.Series:
    """The key text of every row of ``df`` (a view of :mod:`pipeline.text`), normalised unless told not to."""
    t = df.select(text_expr(key).alias("_t"))["_t"]
    return normalize_text(t) if normalize else t.fill_null("")


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the bits of a combined hash (wrapping uint64 arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def word_hashes(texts: pl.Series, seed: int = HASH_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the words of each text: ``(uint64 hashes in text order, words per row)``.

    The words are those of :func:`normalize_text` split on spaces: after NFKC and lower-casing (in
    Polars), maximal runs of characters that are not punctuation, symbols or white space
    (:data:`pipeline._wordsep.SEPARATOR_RANGES`, the classes of Polars' regex). Each word is
    hashed as FNV-1a of its UTF-8 bytes (from a start value drawn from ``seed``) finished with
    splitmix64, by a compiled loop over the Arrow string buffer (:mod:`pipeline._kernels`).
    Compute them once and pass them to :func:`shingles_from_words` for several shingle widths.
    """
    from pipeline._kernels import FNV_OFFSET, utf8_word_hashes

    buf, off = utf8_buffer(_folded(texts))
    start = FNV_OFFSET ^ mix64(np.array([seed], dtype=np.uint64))[0]
    return utf8_word_hashes(buf, off, _separator_bits(), start)


def _large_array(s: pl.Series, typ: pa.DataType) -> pa.Array:
    """``s`` as one Arrow array of type ``typ`` (64-bit offsets), as the compiled loops read it."""
    arr = s.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr if arr.type == typ else arr.cast(typ)


def utf8_buffer(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of a string Series and each row's offsets into them (a null row is empty):
    what the compiled loops of :mod:`pipeline._kernels` read (a view where Arrow allows it)."""
    arr = _large_array(texts.fill_null(""), pa.large_string())
    _, offsets, data = arr.buffers()
    off = np.frombuffer(offsets, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    buf = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return buf, off


def list_buffer(lists: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The values of a column of ``uint32`` hash lists and each row's offsets into them (a null
    list is empty), for the compiled loops."""
    s = lists.cast(pl.List(pl.UInt32))
    if s.null_count():
        s = s.fill_null(pl.Series([[]], dtype=pl.List(pl.UInt32)))
    arr = _large_array(s, pa.large_list(pa.uint32()))
    return arr.values.to_numpy(zero_copy_only=False), arr.offsets.to_numpy().astype(np.int64)


def normalized_equal(a: pl.Series, b: pl.Series) -> pl.Series:
    """``normalize_text(a) == normalize_text(b)`` row by row (null where either is null).

    Only rows that can be equal are normalised. Normalisation keeps exactly the word characters
    (neither punctuation, symbol nor space) of the NFKC, lower-cased text, so two texts whose counts
    of those differ cannot be equal; the counts come from a compiled loop over the UTF-8 bytes, on
    the raw text for ASCII rows (NFKC and lower-casing keep their word characters) and on the NFKC,
    lower-cased text for the others. Equal counts are rare unless the texts are near copies.
    """
    from pipeline._kernels import nonseparator_counts

    if len(a) != len(b):
        raise ValueError(f"normalized_equal: {len(a)} rows against {len(b)}")
    sep = _separator_bits()

    def counts(s: pl.Series) -> np.ndarray:
        c = nonseparator_counts(*utf8_buffer(s), sep)
        wide = _non_ascii(s)
        if len(wide):
            c[wide.to_numpy()] = nonseparator_counts(*utf8_buffer(_folded(s.gather(wide))), sep)
        return c

    rows = np.flatnonzero(counts(a) == counts(b))
    out = np.zeros(len(a), dtype=bool)
    if len(rows):
        idx = pl.Series(rows)
        out[rows] = (normalize_text(a.gather(idx)) == normalize_text(b.gather(idx))).to_numpy()
    res = pl.Series("normalized_equal", out)
    return pl.select(pl.when(a.is_null() | b.is_null()).then(None).otherwise(res)).to_series().alias("normalized_equal")


@lru_cache(maxsize=1)
def _separator_bits() -> np.ndarray:
    return separator_bits()


def shingle_hashes(texts: pl.Series, n: int = 5, seed: int = HASH_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Word n-gram shingles of texts, hashed: ``(flat uint64 hashes, row offsets)``.

    Texts are normalised as by :func:`normalize_text` (raw or already normalised text give the same
    shingles) and split into words (:func:`word_hashes`); each n-gram hash is an FNV-style combine
    of its word hashes finished with splitmix64 (:func:`shingles_from_words`). A text with fewer
    than ``n`` (but at least one) words is one shingle of all its words, so short texts can still
    match; an empty text has no shingles (offsets of row ``i``: ``off[i]:off[i+1]``).
    """
    return shingles_from_words(*word_hashes(texts, seed), n)


def shingles_from_words(wh: np.ndarray, lens: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The shingle hashes of :func:`shingle_hashes` from word hashes (:func:`word_hashes`)."""
    from pipeline._kernels import ngram_shingles

    return ngram_shingles(np.ascontiguousarray(wh, dtype=np.uint64), np.ascontiguousarray(lens, dtype=np.int64), int(n))


def minhash_signatures(flat: np.ndarray, off: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures (Broder 1997) of each row's shingle set: ``uint32 (rows, num_perm)``.

    Slot ``j`` is the minimum over the row's shingle hashes ``x`` of the multiply-add-shift hash
    ``((a_j x + b_j) mod 2^64) >> 32`` (Dietzfelbinger et al. 1997; ``a_j`` odd), the same family
    rensa's R-MinHash and datasketch's ``(a x + b) mod p`` stand for: one independent hash function
    per slot, so each slot of two signatures agrees with probability ~ their Jaccard similarity.
    ``a_j, b_j`` come from splitmix64 of ``seed`` and ``j``, so signatures depend on nothing but
    the inputs. Computed by a compiled loop (:func:`pipeline._kernels.minhash_matrix`).
    Rows without shingles get the all-ones signature; callers exclude them.
    """
    from pipeline._kernels import minhash_matrix

    if len(off) <= 1:
        return np.zeros((0, num_perm), np.uint32)
    a, b = minhash_params(num_perm, seed)
    return minhash_matrix(np.ascontiguousarray(flat, dtype=np.uint64), np.ascontiguousarray(off, dtype=np.int64), a, b)


def minhash_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``(a, b)`` of :func:`minhash_signatures`' hash functions (``a`` odd), from splitmix64."""
    with np.errstate(over="ignore"):
        k = mix64(np.array([seed], dtype=np.uint64)) * np.uint64(2 * num_perm + 1) + np.arange(2 * num_perm, dtype=np.uint64)
    v = mix64(mix64(k)).reshape(num_perm, 2)
    # contiguous: a strided view would make the kernel compile for any layout, unvectorised
    return np.ascontiguousarray(v[:, 0] | np.uint64(1)), np.ascontiguousarray(v[:, 1])


def band_keys(sig: np.ndarray, bands: int, rows: int, seed: int = HASH_SEED) -> np.ndarray:
    """LSH band keys: one uint64 per (row, band), hashing that band's ``rows`` signature values
    (the FNV-style combine of the n-gram hashes, finished with splitmix64)."""
    from pipeline._kernels import FNV_PRIME

    n = sig.shape[0]
    s = sig[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = mix64(np.arange(bands, dtype=np.uint64) + np.uint64(seed))[None, :].repeat(n, axis=0)
        for j in range(rows):
            h = (h ^ s[:, :, j]) * FNV_PRIME
        return mix64(h)


# ---------------------------------------------------------------- keeper policy


def response_chars(df: pl.DataFrame) -> pl.DataFrame:
    """Add the scratch response length the 'longest' keeper needs, unless the length stage ran."""
    if RESPONSE_CHARS in df.columns:
        return df
    return df.with_columns(text_expr("response").str.len_chars().cast(pl.Int64).alias(SCRATCH_RESPONSE_CHARS))


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


# ---------------------------------------------------------------- incremental state

STATE_FORMAT = 1


class StateMismatch(ValueError):
    """Saved dedup state that cannot be used with this stage's params or hash functions."""


@dataclass
class StateMeta:
    """The JSON header of a dedup state directory."""

    kind: str
    params: dict[str, Any]
    hash_probe: str
    rows: int = 0
    next_kid: int = 0
    format: int = STATE_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)


def save_state_files(path: Path, meta: StateMeta, tables: dict[str, pl.DataFrame]) -> None:
    """Write ``<name>.parquet`` for each table and ``meta.json`` last (its presence marks a whole state)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "meta.json").unlink(missing_ok=True)
    for name, t in tables.items():
        write_parquet_atomic(t, path / f"{name}.parquet")
    tmp = path / ".meta.json.tmp"
    tmp.write_text(json.dumps(meta.__dict__, indent=2, sort_keys=True))
    tmp.replace(path / "meta.json")


def load_state_files(
    path: Path, kind: str, params: dict[str, Any], names: Sequence[str], probe: str
) -> tuple[StateMeta, dict[str, pl.DataFrame]] | None:
    """Read a state directory written by :func:`save_state_files`; None when there is none.

    Raises :class:`StateMismatch` when it was written by another kind of stage, with other params
    (those in ``params``) or under other hash functions.
    """
    mpath = path / "meta.json"
    if not mpath.exists():
        return None
    raw = json.loads(mpath.read_text())
    meta = StateMeta(**raw)
    if meta.format != STATE_FORMAT or meta.kind != kind:
        raise StateMismatch(f"{path}: state of kind {meta.kind!r} format {meta.format}, expected {kind!r} format {STATE_FORMAT}")
    diff = {k: (meta.params.get(k), v) for k, v in params.items() if meta.params.get(k) != v}
    if diff:
        pretty = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise StateMismatch(f"{path}: state was written with other params ({pretty}); start a fresh state")
    if meta.hash_probe != probe:
        raise StateMismatch(
            f"{path}: state was written under other hash functions (probe {meta.hash_probe}, now {probe}: "
            "a polars or sft-curate upgrade); rebuild it by rerunning the kept rows with save_state"
        )
    tables = {n: pl.read_parquet(path / f"{n}.parquet") for n in names if (path / f"{n}.parquet").exists()}
    return meta, tables



# ---------------------------------------------------------------- the common stage skeleton


class DedupStage(Stage):
    """A global dedup stage: score() per shard, score_global() over the pool, decide() drops dups.

    Subclasses set :attr:`kind`, :attr:`dedup_inputs` (their own global columns),
    :attr:`state_params` (params a saved state must share) and :attr:`state_tables`, and fill
    ``self._state_new`` (tables to save) in ``score_global``. Loading happens in :meth:`setup` from
    ``ctx.state_in / self.name``; :meth:`save_state` writes the old state merged with this run's.
    """

    kind: ClassVar[str] = ""  # dup_kind written on duplicates; subclasses also set reason_prefix
    scope = "global"
    Params: ClassVar[type[StageParams]] = KeeperParams
    requires_columns = ("messages", "id")  # the key text; dup_of points at the keeper's id
    uses_columns = (RESPONSE_CHARS, *DUP_COLUMNS)  # the keeper policy; an earlier dedup's pointers
    input_params = ("keeper_column",)
    dedup_inputs: ClassVar[tuple[str, ...]] = ()
    state_params: ClassVar[tuple[str, ...]] = ()
    state_tables: ClassVar[tuple[str, ...]] = ()
    minhash_probe: ClassVar[bool] = False

    def __init__(self, params: StageParams | dict[str, Any] | None = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._old: OldKeepers | None = None
        self._old_meta: StateMeta | None = None
        self._old_tables: dict[str, pl.DataFrame] = {}
        self._state_new: dict[str, pl.DataFrame] | None = None
        self._next_kid = 0
        self._state_dir: Path | None = None
        self._summary: dict[str, Any] = {}

    def global_inputs(self) -> tuple[str, ...]:
        return ("id", *self.dedup_inputs, *keeper_inputs(self.params), *DUP_COLUMNS)  # type: ignore[arg-type]

    def state_key(self) -> dict[str, Any]:
        dumped = self.params.model_dump(mode="json")
        return {k: dumped[k] for k in self.state_params}

    def probe(self) -> str:
        return hash_probe(minhash=self.minhash_probe)

    def setup(self, ctx: RunContext | None = None) -> None:
        """Check the saved state (if any) against the params now; its tables load on first use."""
        super().setup(ctx)
        self._old, self._old_meta, self._old_tables, self._next_kid = None, None, {}, 0
        self._state_new = None
        self._state_dir = None
        if self.ctx.state_in is None:
            return
        d = Path(self.ctx.state_in) / self.name
        loaded = load_state_files(d, self.kind, self.state_key(), (), self.probe())
        if loaded is not None:
            self._old_meta = loaded[0]
            self._next_kid = self._old_meta.next_kid
            self._state_dir = d

    def load_state(self) -> None:
        """Read the saved state's tables (once); only the global step needs them."""
        if self._state_dir is None or self._old is not None:
            return
        names = ("keepers", *self.state_tables)
        tables = {n: pl.read_parquet(self._state_dir / f"{n}.parquet") for n in names
                  if (self._state_dir / f"{n}.parquet").exists()}
        self._old = OldKeepers(tables.pop("keepers", empty_keepers()).sort("kid"))
        self._old_tables = tables

    def save_state(self, path: Path) -> None:
        """Write the dedup state (old state + this run's) under ``path`` as Parquet + meta.json."""
        tables = self._state_new
        if tables is None:  # nothing ran: carry the old state over unchanged
            self.load_state()
            tables = {"keepers": self._old.frame if self._old is not None else empty_keepers(), **self._old_tables}
        meta = StateMeta(kind=self.kind, params=self.state_key(), hash_probe=self.probe(),
                         rows=int(tables["keepers"].height), next_kid=self._next_kid,
                         extra=self.state_extra())
        save_state_files(Path(path), meta, tables)

    def state_extra(self) -> dict[str, Any]:
        return {}

    def decide(self, df: pl.DataFrame) -> pl.DataFrame:
        if "dup_kind" not in df.columns:
            return df
        return drop_where(df, pl.col("dup_kind") == self.kind, f"{self.drop_prefix()}:dup")

    def summary(self) -> dict[str, Any]:
        return dict(self._summary)

    def _finish(self, df: pl.DataFrame, idx: np.ndarray, res: Resolution) -> tuple[pl.DataFrame, np.ndarray]:
        """Common bookkeeping after resolution: kids for the state, counts for the manifest."""
        new_keepers, kid = assign_kids(df, idx, res, self._old, self._next_kid)
        self._next_kid += new_keepers.height
        self._state_keepers = merge_keepers(self._old, new_keepers)
        dup = res.is_dup
        self._summary = {
            "participants": int(len(idx)),
            "duplicates": int(dup.sum()),
            "duplicates_of_earlier_runs": int((res.keeper_old >= 0).sum()),
            "groups_with_duplicates": int(len(np.unique(res.component[dup]))) if dup.any() else 0,
            "state_keepers_in": int(self._old.n) if self._old is not None else 0,
        }
        return new_keepers, kid

__all__ = [
    "DUP_COLUMNS",
    "KeeperParams",
    "OldKeepers",
    "Resolution",
    "StateMeta",
    "StateMismatch",
    "band_keys",
    "connected_components",
    "hash_probe",
    "list_buffer",
    "normalize_text",
    "normalized_equal",
    "text_series",
    "keeper_rank",
    "minhash_signatures",
    "mix64",
    "resolve_duplicates",
    "shingle_hashes",
    "shingles_from_words",
    "word_hashes",
    "write_dup_columns",
]
