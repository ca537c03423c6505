"""The stage contract every curation step plugs into.

A stage has two halves, kept apart so scores survive for dropped rows (as in data-juicer):

* **score** adds the stage's columns and never removes or reorders rows. A *row* stage scores one
  shard at a time (:meth:`Stage.score`). A *global* stage may also need the whole pool
  (:meth:`Stage.score_global`): the runner first runs :meth:`Stage.score` on every shard (e.g.
  MinHash signatures), then calls :meth:`Stage.score_global` once on the concatenation of only
  :attr:`Stage.global_inputs` (plus ``source``, ``source_row``, ``keep``) from every shard, and
  writes the columns it returns back to the shards.
* **decide** sets ``keep=False`` and ``drop_reason`` (``stage:rule[:detail]``) from the scores and
  the thresholds in the params, and only on rows that are still kept: the first stage to drop a row
  names the reason.

Lifecycle (after NeMo Curator): ``setup(ctx)`` loads models once per process, ``teardown()`` frees
them; :attr:`Stage.resources` declares what a stage needs so an orchestrator can place it.

Params are a pydantic model (``extra="forbid"``), so a YAML typo fails before any work with the
field named. Output columns are declared in :attr:`Stage.columns`, each with its dtype, role
(score / flag / internal) and phase (row / global) as a :class:`~pipeline.stages.contract.Col`,
so the schema of a shard is known before a run starts. Columns whose name starts with ``_`` are
scratch columns that the runner drops before writing final shards. Input columns are declared too
(:attr:`Stage.requires_columns`, :attr:`Stage.uses_columns`, :attr:`Stage.input_params`), so a
config whose stage needs a column no earlier stage writes fails before any work; the declaration
is checked when the class is defined and given as data by :meth:`Stage.contract` (see
:mod:`pipeline.stages.contract`).

Worked example: a stage that drops responses shorter than ``min_chars`` characters::

    import polars as pl
    from pipeline.stages.base import Col, Stage, StageParams, drop_where
    from pipeline.text import text_expr

    class ShortParams(StageParams):
        min_chars: int = 1

    class Short(Stage):
        name = "short"
        Params = ShortParams
        requires_columns = ("messages",)
        columns = {"short_chars": Col(pl.Int64, role="score", phase="row")}

        def score(self, df):
            return df.with_columns(text_expr("response").str.len_chars().cast(pl.Int64).alias("short_chars"))

        def decide(self, df):
            p = self.params
            return drop_where(df, pl.col("short_chars") < p.min_chars, f"short:chars<{p.min_chars}")

    table = Short(min_chars=20)(table)          # in memory: setup, score, decide
    table.filter(~pl.col("keep"))["drop_reason"]  # -> "short:chars<20" for the short ones

Every stage module also exports a plain function with the stage's name
(``from pipeline.stages import minhash_dedup``) that does the same in one call. A new stage is one
module plus one line in :data:`pipeline.stages.REGISTRY`; ``tests/stages/test_contract.py`` then
runs the contract checks on it (see "How to add a stage" in docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo

from pipeline.schema import KEY_COLUMNS, with_decision
from pipeline.stages.contract import Col, check_stage_class, cols


def _resolve_path(v: str, info: ValidationInfo) -> str:
    base = (info.context or {}).get("base_dir") if info is not None else None
    p = Path(v).expanduser()
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return str(p)


#: A file or directory parameter. In a config it is resolved against the config file's directory
#: (like ``sources[].path``); from Python, against the current directory.
LocalPath = Annotated[str, AfterValidator(_resolve_path)]


class StageParams(BaseModel):
    """Base of every stage's params: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # NaN passes every bound


@dataclass(frozen=True)
class Resources:
    """What a stage needs; orchestrators use it to place and size work."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float = 0.5
    loads_model: bool = False


@dataclass
class RunContext:
    """What a stage may know about the run it is part of."""

    run_dir: Path | None = None
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda"
    state_in: Path | None = None  # persisted state of an earlier run (incremental mode)
    state_out: Path | None = None  # where to persist this run's state
    cache_dir: Path | None = None  # shared caches (embedding sidecars, LM score caches)
    extra: dict[str, Any] = field(default_factory=dict)

    def sidecar_dir(self, *parts: str) -> Path | None:
        base = self.cache_dir or (self.run_dir / "sidecars" if self.run_dir else None)
        return base.joinpath(*parts) if base is not None else None


def to_polars(table: pl.DataFrame | pa.Table | Any) -> pl.DataFrame:
    """Accept a Polars frame, an Arrow table or anything Polars can build a frame from; a role/content
    ``messages`` column gets the other message fields (null), which the text views name."""
    from pipeline.schema import conform_messages

    if isinstance(table, pl.DataFrame):
        return conform_messages(table)
    if isinstance(table, pa.Table):
        return conform_messages(pl.from_arrow(table))  # type: ignore[arg-type]
    return conform_messages(pl.DataFrame(table))


def drop_where(df: pl.DataFrame, mask: pl.Expr, reason: pl.Expr | str) -> pl.DataFrame:
    """Drop rows that are still kept and match ``mask`` (null counts as no match), naming ``reason``."""
    hit = pl.col("keep") & mask.fill_null(False)
    reason_expr = pl.lit(reason) if isinstance(reason, str) else reason
    return df.with_columns(
        pl.when(hit).then(reason_expr).otherwise(pl.col("drop_reason")).cast(pl.String).alias("drop_reason"),
        pl.when(hit).then(False).otherwise(pl.col("keep")).alias("keep"),
    )


class Stage:
    """Base class; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[StageParams]] = StageParams
    #: output columns: name -> :class:`Col` (or a bare dtype: role inferred, phase row); after the
    #: class is defined, ``columns`` maps name -> dtype and ``column_specs`` name -> :class:`Col`
    columns: ClassVar[dict[str, Any]] = {}
    column_specs: ClassVar[dict[str, Col]] = {}
    scope: ClassVar[Literal["row", "global"]] = "row"
    #: input columns the stage cannot run without (besides source, source_row, keep, drop_reason)
    requires_columns: ClassVar[tuple[str, ...]] = ()
    #: input columns read when present (e.g. an earlier stage's ``len_response_chars``)
    uses_columns: ClassVar[tuple[str, ...]] = ()
    #: params whose value (a name, a list of names, or None) names required input columns
    input_params: ClassVar[tuple[str, ...]] = ()
    #: global inputs the runner leaves out of the gathered frame (large values needed for few rows,
    #: such as MinHash shingle lists): :meth:`score_global` reads the rows it needs with
    #: :meth:`global_column`, which the runner serves from the shard files one shard at a time
    global_lazy_inputs: ClassVar[tuple[str, ...]] = ()
    resources: ClassVar[Resources] = Resources()
    #: the stage calls the compiled loops of :mod:`pipeline._kernels`: the runner loads them on a
    #: thread while it ingests (numba's start-up and cache load take ~0.7 s per process)
    compiled_kernels: ClassVar[bool] = False
    version: ClassVar[str] = "1"  # bump when the stage computes something different for the same params
    #: first field of this stage's drop reasons (``minhash`` in ``minhash:dup``); set to ``name``
    #: when a class names itself without declaring one
    reason_prefix: ClassVar[str] = ""
    is_selector: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_stage_class(cls)  # a malformed declaration fails when its module is imported

    def __init__(self, params: StageParams | dict[str, Any] | None = None, /, *, base_dir: str | Path | None = None,
                 **kwargs: Any) -> None:
        if isinstance(params, StageParams):
            self.params = params.model_copy(update=kwargs) if kwargs else params
        else:
            context = {"base_dir": str(base_dir)} if base_dir is not None else None
            self.params = self.Params.model_validate({**(params or {}), **kwargs}, context=context)
        self.ctx = RunContext()
        self._ready = False
        #: set by the runner around :meth:`score_global`: ``(column, rows) -> Series`` for lazy inputs
        self.column_reader: Callable[[str, np.ndarray], pl.Series] | None = None

    # ------------------------------------------------------------------ lifecycle
    def setup(self, ctx: RunContext | None = None) -> None:
        """Load models and state. Called once per process before scoring."""
        if ctx is not None:
            self.ctx = ctx
        self._ready = True

    def teardown(self) -> None:
        """Release what setup loaded."""
        self._ready = False

    def save_state(self, path: Path) -> None:
        """Persist state for incremental runs (dedup hashes, LSH bands, embedding index) under ``path``.

        Called by the runner after the run when ``ctx.state_out`` is set; a later run passes that
        directory back as ``ctx.state_in``, which :meth:`setup` reads. Stateless stages do nothing.
        """

    # ------------------------------------------------------------------ the two halves
    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        """Row-local scores for one shard. Default: nothing."""
        return df

    def score_table(self, df: pl.DataFrame) -> pl.DataFrame:
        """Row-local scores of a whole in-memory table (a call from Python, :meth:`__call__`). Default:
        :meth:`score`; a stage overrides it to score a large table in slices or on threads."""
        return self.score(df)

    def score_global(self, df: pl.DataFrame) -> pl.DataFrame:
        """Scores that need the whole pool; same rows, same order, columns added. Default: nothing."""
        return df

    def decide(self, df: pl.DataFrame) -> pl.DataFrame:
        """Set keep/drop_reason on rows still kept. Default: drop nothing."""
        return df

    # ------------------------------------------------------------------ the declared contract
    def requires(self) -> tuple[str, ...]:
        """Input columns this configured stage cannot run without: :attr:`requires_columns` plus the
        columns named by its :attr:`input_params`."""
        out = list(self.requires_columns)
        for f in self.input_params:
            v = getattr(self.params, f)
            out += [v] if isinstance(v, str) else list(v or ())
        return tuple(dict.fromkeys(out))

    def uses(self) -> tuple[str, ...]:
        """Input columns read when present (not required)."""
        return tuple(c for c in self.uses_columns if c not in self.requires())

    def writes(self) -> dict[str, Col]:
        """The columns this configured stage writes (name -> :class:`Col`)."""
        return dict(self.column_specs)

    def global_inputs(self) -> tuple[str, ...]:
        """Columns :meth:`score_global` needs in the gathered frame (besides source, source_row, keep)."""
        return ()

    @classmethod
    def has_state(cls) -> bool:
        """Whether the stage persists state for incremental runs (overrides :meth:`save_state`)."""
        return cls.save_state is not Stage.save_state

    def contract(self) -> dict[str, Any]:
        """This configured stage's contract as JSON-able data (the form kept in the run manifest)::

            {"name": "exact_dedup", "scope": "global", "reason_prefix": "exact", "is_selector": false,
             "stateful": true, "requires": ["messages", "id"], "uses": ["len_response_chars", ...],
             "global_inputs": [...], "writes": {"exact_hash": {"type": "UInt64", "role": "internal",
             "phase": "row"}, ...}}
        """
        return {
            "name": self.name,
            "scope": self.scope,
            "reason_prefix": self.drop_prefix(),
            "is_selector": self.is_selector,
            "stateful": self.has_state(),
            "requires": list(self.requires()),
            "uses": list(self.uses()),
            "global_inputs": list(self.global_inputs()) if self.scope == "global" else [],
            "writes": {c: spec.as_dict() for c, spec in self.writes().items()},
        }

    def summary(self) -> dict[str, Any] | None:
        """What the run manifest records about this stage's work (counts, cutoffs); None: nothing."""
        return None

    def models(self) -> dict[str, Any] | None:
        """The models this stage used (for the manifest and dataset card); None: none."""
        return None

    # ------------------------------------------------------------------ helpers
    def fingerprint(self) -> str:
        """Hash of what determines this stage's output besides its input rows."""
        payload = json.dumps(
            {"stage": self.name, "version": self.version, "params": self.params.model_dump(mode="json")},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @classmethod
    def drop_prefix(cls) -> str:
        return cls.reason_prefix or cls.name

    def output_schema(self) -> dict[str, Any]:
        """Name -> dtype of the columns this configured stage writes."""
        return {c: spec.dtype for c, spec in self.writes().items()}

    def global_frame_columns(self) -> list[str]:
        return [*dict.fromkeys([*KEY_COLUMNS, "keep", *self.global_inputs()])]

    def global_column(self, df: pl.DataFrame, name: str, rows: np.ndarray) -> pl.Series:
        """Global input ``name`` at ``rows`` (positions in ``df``, in that order): from ``df`` when it
        holds the column (a call on an in-memory table), else through :attr:`column_reader`."""
        rows = np.asarray(rows, dtype=np.int64)
        if name in df.columns:
            return df[name].gather(rows)
        if self.column_reader is None:
            raise KeyError(f"{self.name}: global input {name!r} is not in the frame and no column reader is set")
        return self.column_reader(name, rows)

    def release_global(self) -> None:
        """Drop what :meth:`score_global` kept for a later :meth:`save_state` (the runner calls this
        when the run keeps no state). Default: nothing kept."""

    def __call__(self, table: Any, ctx: RunContext | None = None) -> Any:
        """Run the whole stage on one in-memory table: setup, score, global score, decide. ``table`` is
        a Polars DataFrame/LazyFrame, Arrow table, pandas DataFrame or datasets.Dataset; the result is
        the same kind (:mod:`pipeline.frames`)."""
        from pipeline import progress
        from pipeline.frames import column_hints, to_polars_like
        from pipeline.schema import conform_messages

        # a call from Python is new work: an earlier run interrupted in this process (a notebook's
        # interrupt cancels its steps) must not stop it
        progress.reset()
        df, back = to_polars_like(table)
        given = df
        df = with_decision(conform_messages(df))  # role/content-only messages get the other fields
        with column_hints(self.name, df):
            if not self._ready or ctx is not None:
                self.setup(ctx)
            df = self.score_table(df)
            if self.scope == "global":
                df = self.score_global(df)
            out = self.decide(df)
        # the contract: input columns come back as they went in (conforming widened messages; a
        # stage never changes an input column's type), so the result lines up with the caller's table
        changed = [given[c] for c in given.columns
                   if c in out.columns and c not in ("keep", "drop_reason") and out.schema[c] != given.schema[c]]
        return back(out.with_columns(changed) if changed else out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


__all__ = ["Col", "LocalPath", "Resources", "RunContext", "Stage", "StageParams", "cols", "drop_where", "to_polars"]
