"""MinHash-LSH near-duplicate removal (Broder 1997; as in FineWeb/datatrove and data-juicer).

Per shard (:meth:`MinHashDedup.score`): the key text is normalised (NFKC, case fold, punctuation
and whitespace folded), split into words, and every word ``ngram``-gram (default 5) is a shingle;
words and shingles are hashed by compiled loops over the Arrow text buffer
(:func:`pipeline.dedup.shingle_hashes`), and each row's signature is, for each of ``num_perm``
hash functions, the minimum over its shingles (:func:`pipeline.dedup.minhash_signatures`, also
compiled). The signature is cut into ``bands`` bands of ``rows`` values and each band is hashed to
one 64-bit bucket key.

Over the pool (:meth:`MinHashDedup.score_global`): rows sharing a bucket in any band are candidate
pairs (band by band, Polars finds the keys seen more than once and links each bucket's members to
its member the keeper policy ranks first: a star rather than a clique), candidates are optionally
checked against the exact Jaccard similarity of their shingle sets (``verify``, default on; only
candidate rows' messages are read, each once, through the runner from the shard files, and hashed
again: no shingle list is stored per shard), and the surviving pairs decide who is dropped
(``minhash:dup``):

* ``linkage: keeper`` (default): rows are taken in keeper order (:class:`pipeline.dedup.KeeperParams`)
  and a row is dropped only when it is a near-duplicate of a row that is kept
  (:func:`pipeline.dedup.resolve_duplicates`), the rule datasketch and rensa users apply when they
  query an index of the rows kept so far. Every dropped row is within ``threshold`` of its keeper.
* ``linkage: component``: connected components of the pairs (vectorised union-find), one keeper
  each, as datatrove and data-juicer cluster. Near-duplicate is not transitive: through a chain
  ``a ~ b ~ c`` it drops ``c`` for ``a`` although ``c`` may be far from ``a``. On 100k real
  documents with their natural near-duplicates plus 5,000 planted copies (10x12 LSH, 0.7), 760 of
  its 8,186 removals were below 0.7 to their keeper and 132 planted pairs lost both members; the
  keeper rule removed 7,549 rows, none below 0.7 to its keeper, with the same recall (0.782 vs
  0.784; ``benchmarks/peers``). That chaining was the extra false removals measured against rensa
  and datasketch, hence the default.

``bands``/``rows`` default to the pair that minimises the weighted false-positive and
false-negative areas under the LSH S-curve ``1 - (1 - s^r)^b`` around ``threshold``
(datasketch's ``_optimal_param``); with ``verify`` on, false positives are removed by the check, so
false negatives weigh 0.8 instead of 0.5 (more candidates, fewer misses).

Columns: ``minhash_component`` is the ``id`` of the row's keeper (rows with the same value are one
near-duplicate group; a row alone is its own group), ``minhash_component_size`` the number of rows
of this run in that group, ``minhash_jaccard`` the highest verified Jaccard similarity of the row to
another row of its group (null when it has none or ``verify`` is off).

Memory: the engine scores shard by shard, keeping only band keys, and reads back only candidate
rows' messages; a call on an in-memory table (:func:`minhash_dedup`) hashes the table in slices of
:data:`IN_MEMORY_ROWS` rows (on all cores), keeps only the band keys, and recomputes candidate
rows' shingles from their text, so it holds the table plus ~100 bytes a row rather than every
row's shingles.

Behaviour on templated data (tested on T0, ``t0_templated_50k``, at the defaults): rows that render
one source example through different templates of its dataset are near-duplicates when the example
text dominates the prompt (long passages: duorc, quoref, ropes), so different questions about one
passage collapse too; rows of one template whose fixed wording dominates a short input collapse
even though the inputs differ (``dbpedia_14_given_a_list_of_category_what_does_the_title_belong_to``:
the 14 category names); a template with short wording keeps its rows apart
(``dbpedia_14_given_a_choice_of_categories_``); near-duplicates never cross source datasets. Raise
``threshold`` or dedup on a key without the template when that is not wanted.

Departures from the textbook method, all documented choices: shingles of a text shorter than
``ngram`` words are the whole text (one shingle), and empty texts take no part; the ``num_perm``
random permutations are multiply-add-shift hash functions ``((a x + b) mod 2^64) >> 32`` of the
64-bit shingle hashes (datasketch uses ``(a x + b) mod (2^61 - 1)``, rensa the same shift form):
min-wise independent only approximately, so ``tests/test_kernels.py`` checks that slot agreement
estimates Jaccard without bias and with the binomial spread; with ``verify``, a bucket's members
are checked against the bucket's best-ranked member only (star), so two members that both fail
against it but match each other are linked only if another band joins them.

Incremental mode: the state holds each bucket key seen (with its pivot: the first kept row that had
it in keeper order, else its first row; that row's keeper and whether it was kept), plus the pivot's
shingle hashes when ``verify`` is on; new rows landing in a saved bucket are checked against the
pivot and dropped as duplicates of the earlier keeper (with keeper linkage, only when the pivot
was itself kept). Old rows always stay
kept, so if one new row bridges two earlier components both keepers stay (a run over everything at
once would have merged them).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field, model_validator

from pipeline.dedup import (
    DEDUP_SCRATCH,
    DUP_COLUMNS,
    DedupKey,
    DedupStage,
    KeeperParams,
    band_keys,
    keeper_inputs,
    keeper_rank,
    kid_index,
    list_buffer,
    minhash_signatures,
    participants,
    resolve_duplicates,
    response_chars,
    shingle_hashes,
    text_series,
    write_dup_columns,
)
from pipeline.stages.base import Col, Resources, cols
from pipeline.stages.functions import stage_function
from pipeline.text import text_expr

BANDS = "_minhash_bands"
SHINGLES = "_minhash_shingles"
PAIR_CHUNK = 200_000  # candidate pairs whose shingle lists are compared at once
IN_MEMORY_ROWS = 16_384  # rows hashed at once by a call on an in-memory table


class MinHashParams(KeeperParams):
    key: DedupKey = Field("conversation", description="text compared: instruction, response, conversation, ...")
    ngram: int = Field(5, ge=1, le=64, description="words per shingle")
    num_perm: int = Field(128, ge=8, le=2048, description="MinHash signature length")
    threshold: float = Field(0.7, gt=0.0, lt=1.0, description="target Jaccard similarity of a near-duplicate")
    bands: int | None = Field(None, ge=1, description="LSH bands (default: derived from threshold)")
    rows: int | None = Field(None, ge=1, description="signature values per band (default: derived)")
    verify: bool = Field(True, description="check candidate pairs against their exact shingle Jaccard")
    seed: int = Field(1, ge=0, description="MinHash seed")
    linkage: Literal["keeper", "component"] = Field(
        "keeper",
        description="keeper: drop a row only when it is a near-duplicate of a kept row (greedy in keeper order); "
                    "component: one keeper per connected component of near-duplicate pairs (datatrove's clusters)",
    )

    @model_validator(mode="after")
    def _bands_rows(self) -> MinHashParams:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither (then they are derived from threshold)")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def lsh(self) -> tuple[int, int]:
        """``(bands, rows)``: the configured pair, else the optimum for ``threshold``."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        fp, fn = (0.2, 0.8) if self.verify else (0.5, 0.5)
        return optimal_bands(self.threshold, self.num_perm, fp, fn)


@lru_cache(maxsize=64)
def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """The ``(b, r)`` with ``b * r <= num_perm`` minimising weighted false positive/negative areas.

    Same objective as datasketch's ``MinHashLSH._optimal_param`` (integrals by the trapezoid rule).
    """
    lo = np.linspace(0.0, threshold, 401)
    hi = np.linspace(threshold, 1.0, 401)
    best = (np.inf, 1, 1)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1.0 - (1.0 - lo**r) ** b, lo)
            fn = np.trapezoid((1.0 - hi**r) ** b, hi)
            err = fp_weight * fp + fn_weight * fn
            if err < best[0]:
                best = (err, b, r)
    return best[1], best[2]


class MinHashDedup(DedupStage):
    """Near-duplicates by MinHash-LSH over word n-gram shingles."""

    compiled_kernels = True

    name = "minhash_dedup"
    kind = "minhash"
    reason_prefix = "minhash"
    Params = MinHashParams
    columns = {
        "minhash_component": Col(pl.String, "internal", "global"),
        "minhash_component_size": Col(pl.Int64, "internal", "global"),
        "minhash_jaccard": Col(pl.Float32, "score", "global"),
        **cols(DUP_COLUMNS, "internal", "global"),
        BANDS: Col(pl.List(pl.UInt64), "internal", "row"),
        **DEDUP_SCRATCH,
    }
    resources = Resources(cpus=2.0, memory_gb=4.0)
    # 2: shingle lists are no longer written per shard; verify recomputes candidates' from their text
    version = "2"
    dedup_inputs = (BANDS,)
    # verify needs candidate rows' shingles: their messages are read (a shard at a time) and hashed
    # again, rather than every row's shingle list written per shard and read back (measured on 300k
    # long documents: ~140 MB of uint32 lists written and decoded per run for ~5% of rows used)
    global_lazy_inputs = ("messages",)
    state_params = ("key", "ngram", "num_perm", "threshold", "bands", "rows", "verify", "seed")
    state_tables = ("buckets", "pivots")
    minhash_probe = True
    _next_pref: int | None = None
    _pending: tuple | None = None

    def setup(self, ctx: Any = None) -> None:
        super().setup(ctx)
        self._next_pref = None
        self._pending = None

    def state_key(self) -> dict[str, Any]:
        key = super().state_key()
        key["bands"], key["rows"] = self.params.lsh()
        return key

    # ------------------------------------------------------------ per shard
    def _score_rows(self, df: pl.DataFrame) -> pl.DataFrame:
        """``df`` with its band keys (null for a row without shingles) and the keeper's response
        length (from the key text when the key is the response, so the response is built once)."""
        p = self.params
        b, r = p.lsh()
        text = df.select(text_expr(p.key).alias("_t"))["_t"]
        scored = response_chars(df, text if p.key == "response" else None)
        flat, off = shingle_hashes(text.fill_null(""), p.ngram)
        keys = band_keys(minhash_signatures(flat, off, p.num_perm, p.seed, slots=b * r), b, r)
        has = np.diff(off) > 0
        bands = pl.Series(BANDS, keys).cast(pl.List(pl.UInt64))
        bands = pl.select(pl.when(pl.Series(has)).then(pl.lit(bands)).otherwise(None)).to_series().alias(BANDS)
        return scored.with_columns(bands)

    @staticmethod
    def _shingle_lists(flat: np.ndarray, off: np.ndarray) -> pl.Series:
        # low 32 bits suffice for a pair's Jaccard; lists may repeat a shingle (set ops ignore it)
        vals = pa.array((flat & np.uint64(0xFFFFFFFF)).astype(np.uint32))
        lists = pa.LargeListArray.from_arrays(pa.array(off, type=pa.int64()), vals)
        return pl.Series(SHINGLES, lists).cast(pl.List(pl.UInt32))

    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        return self._score_rows(df)

    def score_table(self, df: pl.DataFrame) -> pl.DataFrame:
        """Row scores of a whole in-memory table (:meth:`Stage.__call__`), in bounded memory.

        The engine scores shard by shard; here the table is scored in slices of
        :data:`IN_MEMORY_ROWS` rows on threads keeping only the band keys (80 bytes a row at 10
        bands), and the global step recomputes the shingle lists of candidate rows from their text,
        so memory is the table plus the band keys plus one slice's hashes per thread (~20 bytes per
        word), not every row's shingles (4-8 bytes per word, several copies while scoring a frame).
        """
        if df.height <= IN_MEMORY_ROWS:  # one slice (or none): no threads to start
            return self._score_rows(df)
        # slices on threads, one per core (the hashing kernels and Polars release the GIL)
        with ThreadPoolExecutor(max_workers=self._workers()) as ex:
            parts = list(ex.map(lambda lo: self._score_rows(df.slice(lo, IN_MEMORY_ROWS)),
                                range(0, df.height, IN_MEMORY_ROWS)))
        # only the added columns are concatenated, not copies of the table's slices
        added = [c for c in parts[0].columns if c not in df.columns]
        return df.with_columns(pl.concat([f[c] for f in parts]) for c in added)

    def global_inputs(self) -> tuple[str, ...]:
        # verify hashes candidate rows' text again (read lazily, :attr:`global_lazy_inputs`)
        return (*super().global_inputs(), "messages") if self.params.verify else super().global_inputs()

    def global_column(self, df: pl.DataFrame, name: str, rows: np.ndarray) -> pl.Series:
        """The shingle lists (``SHINGLES``) of ``rows``, hashed again from their messages (from ``df``
        on an in-memory table, else through the run's column reader); other columns as the base class."""
        if name != SHINGLES:
            return super().global_column(df, name, rows)
        rows = np.asarray(rows, dtype=np.int64)
        out = []
        for lo in range(0, len(rows), IN_MEMORY_ROWS):
            part = rows[lo:lo + IN_MEMORY_ROWS]
            msgs = pl.DataFrame([super().global_column(df, "messages", part)])
            flat, off = shingle_hashes(text_series(msgs, self.params.key, normalize=False), self.params.ngram)
            out.append(self._shingle_lists(flat, off))
        return pl.concat(out) if out else pl.Series(SHINGLES, [], dtype=pl.List(pl.UInt32))

    def _workers(self) -> int:
        """Threads for this stage's own parallel loops: its declared CPUs, at most the machine's."""
        return max(1, min(int(self.resources.cpus), os.cpu_count() or 1))

    # ------------------------------------------------------------ over the pool
    def score_global(self, df: pl.DataFrame) -> pl.DataFrame:
        self.load_state()
        p = self.params
        b, _ = p.lsh()
        idx = participants(df)
        n_participants = len(idx)
        idx = idx[df[BANDS].gather(idx).is_not_null().to_numpy()] if len(idx) else idx
        n = len(idx)
        # only the small columns are gathered; band keys and shingle lists are read in place
        sub = df.select([c for c in ("id", *keeper_inputs(p)) if c in df.columns])
        sub = sub if n == df.height else sub[idx]
        rank = keeper_rank(sub, p)
        bands = df[BANDS] if n == df.height else df[BANDS].gather(idx)
        keys = bands.explode().to_numpy().astype(np.uint64, copy=False).reshape(n, b) if n else np.zeros((0, b), np.uint64)
        del bands

        workers = self._workers()

        def shingles(nodes: Any) -> pl.Series:
            return self.global_column(df, SHINGLES, idx[np.asarray(nodes, dtype=np.int64)])

        def node_jaccard(u: np.ndarray, other: pl.Series | np.ndarray) -> np.ndarray:
            """Jaccard of node ``u[i]``'s shingles with ``other[i]`` (a node or a list of hashes):
            each node's list is read once (memory: the distinct nodes' lists, not one copy per
            pair), then pairs are compared in chunks on threads (the kernel releases the GIL)."""
            from pipeline._kernels import pair_jaccard

            both = isinstance(other, np.ndarray)
            nodes = np.unique(np.concatenate([u, other]) if both else u)
            va, oa = list_buffer(shingles(nodes))
            ia = np.searchsorted(nodes, u)
            if both:
                vb, ob, ib = va, oa, np.searchsorted(nodes, other)
            else:
                (vb, ob), ib = list_buffer(other), np.arange(len(u), dtype=np.int64)
            out = np.empty(len(u))
            step = max(1, min(PAIR_CHUNK, -(-len(u) // workers)))

            def chunk(lo: int) -> None:
                out[lo : lo + step] = pair_jaccard(va, oa, ia[lo : lo + step], vb, ob, ib[lo : lo + step])

            with ThreadPoolExecutor(max_workers=workers) as ex:
                list(ex.map(chunk, range(0, len(u), step)))
            return out

        buckets = self._old_tables.get("buckets")
        pivots = self._old_tables.get("pivots")
        use_state = self._old is not None and buckets is not None and buckets.height > 0
        by_band = ({k[0]: v for k, v in buckets.partition_by("band", as_dict=True).items()}  # type: ignore[union-attr]
                   if use_state else {})
        # band by band (a loop over bands, not rows), a few bands at a time on threads (Polars
        # releases the GIL): memory stays at a few bands' keys, and only keys seen twice (a tiny
        # share) go through the group-by
        # nodes are labelled by keeper rank, so a bucket's star centre (its smallest label) is the
        # member the keeper policy prefers: the row most likely kept, which the others are checked
        # against; labels go back to row positions after the bucketing
        nodes = pl.Series("node", rank.astype(np.uint32))
        node_of_rank = np.argsort(rank).astype(np.int64)
        in_state = np.zeros((n, b), dtype=bool) if use_state else None

        def band(j: int) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
            fr = pl.DataFrame([nodes, pl.Series("key", keys[:, j])])
            bj = by_band.get(j)
            hit = None
            if bj is not None:
                # a saved bucket's first row that was itself dropped keeps nobody with keeper linkage
                # (states written before the flag existed count every first row as kept)
                kept = pl.col("kept") if "kept" in bj.columns else pl.lit(True)
                hit = (fr.join(bj.select("key", "pref", "kid", kept.alias("kept")), on="key", how="inner")
                       .select("node", "pref", "kid", "kept"))
                hit = hit.with_columns(pl.Series("node", node_of_rank[hit["node"].to_numpy()], dtype=pl.UInt32))
                in_state[hit["node"].to_numpy(), j] = True  # type: ignore[index]
                fr = fr.join(bj.select("key"), on="key", how="anti")
            dup = fr.filter(pl.col("key").is_duplicated())
            if not dup.height:
                return None, hit
            return (dup.with_columns(pl.col("node").min().over("key").alias("pivot"))
                    .filter(pl.col("node") != pl.col("pivot")).select("pivot", "node")), hit

        with ThreadPoolExecutor(max_workers=workers) as ex:
            per_band = list(ex.map(band, range(b)))
        edge_parts = [e for e, _ in per_band if e is not None]
        hit_parts = [h for _, h in per_band if h is not None]
        old_edges = None
        old_sim = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
        if hit_parts:
            hit = pl.concat(hit_parts)
            if p.linkage == "keeper":
                hit = hit.filter(pl.col("kept"))
            hit = hit.drop("kept").unique()
            if p.verify and pivots is not None and hit.height:
                hs = hit.join(pivots, on="pref", how="left", maintain_order="left")
                jac = node_jaccard(hs["node"].to_numpy().astype(np.int64), hs["shingles"])
                ok = jac >= p.threshold
                hit = hit.filter(pl.Series(ok))
                old_sim = (hs["node"].to_numpy().astype(np.int64)[ok], jac[ok],
                           kid_index(self._old, hs["kid"].filter(pl.Series(ok))))  # type: ignore[arg-type]
            old_edges = (hit["node"].to_numpy().astype(np.int64), kid_index(self._old, hit["kid"]))  # type: ignore[arg-type]
        e = (pl.concat(edge_parts).unique() if edge_parts
             else pl.DataFrame(schema={"pivot": pl.UInt32, "node": pl.UInt32}))
        eu, ev = node_of_rank[e["pivot"].to_numpy().astype(np.int64)], node_of_rank[e["node"].to_numpy().astype(np.int64)]
        j = np.zeros(0)
        if p.verify and len(eu):
            j = node_jaccard(eu, ev)
            ok = j >= p.threshold
            eu, ev, j = eu[ok], ev[ok], j[ok]
        res = resolve_duplicates(n, rank, (eu, ev), old_edges, self._old, linkage=p.linkage)
        jac = None
        if p.verify:
            # a row's best verified similarity to another row of its component (with keeper linkage a
            # verified pair may straddle two components: a row is not checked against others' keepers)
            same = res.component[eu] == res.component[ev] if len(eu) else np.zeros(0, bool)
            o_same = (res.keeper_old[old_sim[0]] == old_sim[2] if p.linkage == "keeper"
                      else np.ones(len(old_sim[0]), bool))
            sim_node = [old_sim[0][o_same], eu[same], ev[same]]
            sim_val = [old_sim[1][o_same], j[same], j[same]]
            best = np.full(n, -1.0)
            np.maximum.at(best, np.concatenate(sim_node).astype(np.int64), np.concatenate(sim_val))
            jac = pl.Series("minhash_jaccard", np.where(best >= 0, best, np.nan)).fill_nan(None)
        comp_id = self._keeper_ids(sub, res)
        extra = {"minhash_component": comp_id, "minhash_component_size": pl.Series(res.component_size)}
        if jac is not None:
            extra["minhash_jaccard"] = jac
        out = write_dup_columns(df, idx, res, self.kind, self._old, extra=extra,
                                extra_dtypes={"minhash_component": pl.String, "minhash_component_size": pl.Int64,
                                              "minhash_jaccard": pl.Float32})
        if "minhash_jaccard" not in out.columns:
            out = out.with_columns(pl.lit(None, dtype=pl.Float32).alias("minhash_jaccard"))
        _, kid = self._finish(df, idx, res)
        # the state tables are built only if save_state asks for them (they copy every shingle list)
        self._pending = (keys, in_state, kid, shingles if p.verify else None, buckets, pivots, res.is_dup,
                         rank)
        self._state_new = None
        self._summary.update({"bands": b, "rows": p.lsh()[1], "candidate_edges": int(e.height),
                              "verified_edges": int(len(eu)), "no_shingles": n_participants - n})
        return out

    def _keeper_ids(self, sub: pl.DataFrame, res: Any) -> pl.Series:
        ids = sub["id"].to_numpy()
        out = ids[np.maximum(res.keeper_new, 0)].astype(object)
        if self._old is not None and (res.keeper_old >= 0).any():
            old_ids = self._old.frame["id"].to_numpy()
            m = res.keeper_old >= 0
            out[m] = old_ids[res.keeper_old[m]]
        return pl.Series("minhash_component", out, dtype=pl.String)

    def _save_buckets(self, keys: np.ndarray, in_state: np.ndarray | None, kid: np.ndarray, shingles: Any,
                      buckets: pl.DataFrame | None, pivots: pl.DataFrame | None, is_dup: np.ndarray,
                      rank: np.ndarray) -> None:
        """State: each new bucket's pivot (its first kept row in keeper order, else its first row),
        that row's keeper and whether it was kept; pivot shingles if verifying."""
        start = int(self._old_meta.extra.get("next_pref", 0)) if self._old_meta is not None else 0
        n, b = keys.shape
        order = is_dup.astype(np.int64) * max(n, 1) + rank
        parts = []
        for j in range(b):
            fr = pl.DataFrame({"node": np.arange(n, dtype=np.int64), "key": keys[:, j], "o": order})
            if in_state is not None:
                fr = fr.filter(pl.Series(~in_state[:, j]))
            parts.append(fr.group_by("key").agg(pl.col("node").sort_by("o").first())
                         .with_columns(pl.lit(j, dtype=pl.UInt16).alias("band")))
        firsts = pl.concat(parts) if parts else pl.DataFrame(schema={"key": pl.UInt64, "node": pl.Int64, "band": pl.UInt16})
        piv_nodes = np.flatnonzero(np.bincount(firsts["node"].to_numpy(), minlength=len(kid)))
        pref_of = np.full(len(kid), -1, dtype=np.int64)
        pref_of[piv_nodes] = np.arange(start, start + len(piv_nodes))
        nodes = firsts["node"].to_numpy()
        new_b = firsts.select("band", "key").with_columns(
            pl.Series("pref", pref_of[nodes]), pl.Series("kid", kid[nodes].astype(np.int64)),
            pl.Series("kept", ~is_dup[nodes]),
        )
        new_p = pl.DataFrame({"pref": pref_of[piv_nodes]}).with_columns(
            (shingles(piv_nodes) if shingles is not None else pl.lit(None, dtype=pl.List(pl.UInt32))).alias("shingles")
        )
        self._next_pref = start + len(piv_nodes)
        self._state_new = {
            "keepers": self._state_keepers,
            "buckets": (pl.concat([buckets, new_b], how="diagonal_relaxed").with_columns(pl.col("kept").fill_null(True))
                        if buckets is not None else new_b),
            "pivots": pl.concat([pivots, new_p]) if pivots is not None else new_p,
        }

    def release_global(self) -> None:
        self._pending = None

    def save_state(self, path: Any) -> None:
        if self._pending is not None:
            self._save_buckets(*self._pending)
            self._pending = None
        super().save_state(path)

    def state_extra(self) -> dict[str, Any]:
        nxt = self._next_pref
        if nxt is None and self._old_meta is not None:
            nxt = self._old_meta.extra.get("next_pref", 0)
        return {"next_pref": int(nxt or 0)}

    def decide(self, df: pl.DataFrame) -> pl.DataFrame:
        # the band keys and shingle lists are only needed by score_global: do not carry them on
        return super().decide(df).drop([BANDS, SHINGLES], strict=False)


minhash_dedup = stage_function(MinHashDedup)
