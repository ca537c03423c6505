"""Shared plumbing of the three dedup kinds (exact, MinHash-LSH, SemDeDup), one concern per module:
:mod:`.hashing` (text and hashing), :mod:`.resolve` (keeper policy, graph resolution, dup columns),
:mod:`.state` (incremental state); this module holds the stage skeleton (:class:`DedupStage`) and
re-exports the others' names, so ``from pipeline.dedup import ...`` is the one import path.

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

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl

from pipeline.dedup.hashing import (  # noqa: F401 - the dedup stages' shared names, one import path
    HASH_SEED,
    band_keys,
    hash_probe,
    list_buffer,
    minhash_params,
    minhash_signatures,
    mix64,
    normalize_text,
    normalized_equal,
    shingle_hashes,
    shingles_from_words,
    text_series,
    utf8_buffer,
    word_hashes,
)
from pipeline.dedup.resolve import (  # noqa: F401 - the dedup stages' shared names, one import path
    DEDUP_SCRATCH,
    DUP_COLUMNS,
    RESPONSE_CHARS,
    SCRATCH_RESPONSE_CHARS,
    KeeperParams,
    OldKeepers,
    Resolution,
    assign_kids,
    connected_components,
    empty_keepers,
    keeper_inputs,
    keeper_rank,
    kid_index,
    merge_keepers,
    participants,
    resolve_duplicates,
    response_chars,
    star_edges,
    write_dup_columns,
)
from pipeline.dedup.state import (  # noqa: F401 - the dedup stages' shared names, one import path
    STATE_FORMAT,
    StateMeta,
    StateMismatch,
    load_state_files,
    save_state_files,
)
from pipeline.stages.base import RunContext, Stage, StageParams, drop_where

#: Dedup keys: which text of a conversation two rows must share to be duplicates (see pipeline.text).
DedupKey = Literal["instruction", "response", "reasoning", "conversation", "first_instruction", "last_response"]


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
