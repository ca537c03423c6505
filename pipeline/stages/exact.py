"""Exact dedup: rows whose normalised key text is identical are duplicates; one keeper per group.

The key is a text view of the conversation (:mod:`pipeline.text`, multi-turn aware):
``instruction`` (every system and user turn), ``response`` (every assistant turn),
``conversation`` (every turn with its role), or ``first_instruction`` / ``last_response``.
With ``normalize`` (default) the text is NFKC-normalised, case-folded, punctuation and symbols are
removed and whitespace is collapsed before hashing, so "Hello, World!" and "hello world" match. A
text made only of punctuation and symbols (ASCII art, a table rule) would normalise to the empty
string and match every other such text: it is compared as written instead (white space folded).

``exact_hash`` is a 64-bit Polars hash of that text (fixed seed), computed per shard; the global
step groups equal hashes (a collision at 64 bits is ~3e-8 for a million distinct rows).
Keeper policy: :class:`pipeline.dedup.KeeperParams`. Dropped rows get ``drop_reason = exact:dup``
and ``dup_of`` / ``dup_of_source`` / ``dup_of_row`` pointing at their keeper, ``dup_kind = exact``.

Incremental mode: the state holds every hash seen with its keeper, so a row of a later run whose
hash is already there is dropped as a duplicate of the earlier keeper.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from pydantic import Field

from pipeline.dedup import (
    DEDUP_SCRATCH,
    DUP_COLUMNS,
    HASH_SEED,
    DedupKey,
    DedupStage,
    KeeperParams,
    keeper_rank,
    kid_index,
    normalize_text,
    participants,
    resolve_duplicates,
    response_chars,
    star_edges,
    text_series,
    write_dup_columns,
)
from pipeline.stages.base import Col, Resources, cols
from pipeline.stages.functions import stage_function


class ExactParams(KeeperParams):
    key: DedupKey = Field("conversation", description="text that must match: instruction, response, conversation, ...")
    normalize: bool = Field(True, description="NFKC + case fold + punctuation/whitespace folding before hashing")


class ExactDedup(DedupStage):
    """Exact duplicates of a normalised key (instruction, response or whole conversation)."""

    compiled_kernels = True

    name = "exact_dedup"
    kind = "exact"
    reason_prefix = "exact"
    Params = ExactParams
    version = "2"  # 2: a text of punctuation and symbols only is compared as written (work-store keys change)
    columns = {"exact_hash": Col(pl.UInt64, "internal", "row"), **DEDUP_SCRATCH, **cols(DUP_COLUMNS, "internal", "global")}
    resources = Resources(cpus=1.0, memory_gb=1.0)
    dedup_inputs = ("exact_hash",)
    state_params = ("key", "normalize")
    state_tables = ("hashes",)

    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        raw = text_series(df, p.key, normalize=False)
        key = raw
        if p.normalize:
            key = normalize_text(raw)
            empty = (key.str.len_bytes() == 0).arg_true()  # few rows: the fallback touches only them
            if len(empty):
                verbatim = raw.gather(empty).str.replace_all(r"\s+", " ").str.strip_chars()
                erased = (verbatim.str.len_bytes() > 0).arg_true()
                if len(erased):
                    key = key.scatter(empty.gather(erased), verbatim.gather(erased))
        df = df.with_columns(key.hash(seed=HASH_SEED).alias("exact_hash"))
        return response_chars(df)

    def score_global(self, df: pl.DataFrame) -> pl.DataFrame:
        self.load_state()
        idx = participants(df)
        sub = df[idx]
        rank = keeper_rank(sub, self.params)
        nodes = pl.DataFrame({"node": np.arange(len(idx), dtype=np.int64), "exact_hash": sub["exact_hash"]})
        old_edges = None
        seen = self._old_tables.get("hashes")
        if self._old is not None and seen is not None and seen.height:
            hit = nodes.join(seen, on="exact_hash", how="inner")
            old_edges = (hit["node"].to_numpy(), kid_index(self._old, hit["kid"]))
            nodes = nodes.join(seen, on="exact_hash", how="anti")
        e = star_edges(nodes, ["exact_hash"])
        res = resolve_duplicates(len(idx), rank, (e["pivot"].to_numpy(), e["node"].to_numpy()), old_edges, self._old)
        out = write_dup_columns(df, idx, res, self.kind, self._old)
        new_keepers, kid = self._finish(df, idx, res)
        fresh = (
            pl.DataFrame({"exact_hash": sub["exact_hash"], "kid": kid})
            .unique("exact_hash", keep="first", maintain_order=True)
        )
        if seen is not None:
            fresh = pl.concat([seen, fresh.join(seen, on="exact_hash", how="anti")])
        self._state_new = {"keepers": self._state_keepers, "hashes": fresh}
        return out


exact_dedup = stage_function(ExactDedup)
