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
field named. Output columns and their types are declared in :attr:`Stage.columns`, so the schema of
a shard is known before a run starts. Columns whose name starts with ``_`` are scratch columns that
the runner drops before writing final shards.

Worked example: a stage that drops responses shorter than ``min_chars`` characters::

    import polars as pl
    from pipeline.stages.base import Stage, StageParams, drop_where
    from pipeline.text import text_expr

    class ShortParams(StageParams):
        min_chars: int = 1

    class Short(Stage):
        name = "short"
        Params = ShortParams
        columns = {"short_chars": pl.Int64}

        def score(self, df):
            return df.with_columns(text_expr("response").str.len_chars().cast(pl.Int64).alias("short_chars"))

        def decide(self, df):
            p = self.params
            return drop_where(df, pl.col("short_chars") < p.min_chars, f"short:chars<{p.min_chars}")

    table = Short(min_chars=20)(table)          # in memory: setup, score, decide
    table.filter(~pl.col("keep"))["drop_reason"]  # -> "short:chars<20" for the short ones

Every stage module also exports a plain function with the stage's name
(``from pipeline.stages import minhash_dedup``) that does the same in one call.
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

    model_config = ConfigDict(extra="forbid", frozen=True)


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
    """Accept a Polars frame, an Arrow table or anything Polars can build a frame from."""
    if isinstance(table, pl.DataFrame):
        return table
    if isinstance(table, pa.Table):
        return pl.from_arrow(table)  # type: ignore[return-value]
    return pl.DataFrame(table)


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
    columns: ClassVar[dict[str, Any]] = {}
    scope: ClassVar[Literal["row", "global"]] = "row"
    global_inputs: ClassVar[tuple[str, ...]] = ()
    #: global inputs the runner leaves out of the gathered frame (large values needed for few rows,
    #: such as MinHash shingle lists): :meth:`score_global` reads the rows it needs with
    #: :meth:`global_column`, which the runner serves from the shard files one shard at a time
    global_lazy_inputs: ClassVar[tuple[str, ...]] = ()
    resources: ClassVar[Resources] = Resources()
    version: ClassVar[str] = "1"  # bump when the stage computes something different for the same params
    #: first field of this stage's drop reasons (``minhash`` in ``minhash:dup``); defaults to ``name``
    reason_prefix: ClassVar[str] = ""
    is_selector: ClassVar[bool] = False

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

    def score_global(self, df: pl.DataFrame) -> pl.DataFrame:
        """Scores that need the whole pool; same rows, same order, columns added. Default: nothing."""
        return df

    def decide(self, df: pl.DataFrame) -> pl.DataFrame:
        """Set keep/drop_reason on rows still kept. Default: drop nothing."""
        return df

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
        return dict(self.columns)

    def global_frame_columns(self) -> list[str]:
        return [*KEY_COLUMNS, "keep", *self.global_inputs]

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
        from pipeline.frames import column_hints, to_polars_like

        df, back = to_polars_like(table)
        df = with_decision(df)
        with column_hints(self.name, df):
            if not self._ready or ctx is not None:
                self.setup(ctx)
            df = self.score(df)
            if self.scope == "global":
                df = self.score_global(df)
            return back(self.decide(df))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"
