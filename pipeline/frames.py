"""In-memory tables of every kind a user holds: into Polars for a stage, and back to the same kind.

Stages and selectors called from Python accept a Polars ``DataFrame`` or ``LazyFrame``, an Arrow
``Table``, a pandas ``DataFrame`` or a ``datasets.Dataset`` (anything else Polars can build a frame
from, such as a list of dicts, comes back as a Polars frame) and return the same kind
(:func:`to_polars_like`). :func:`canonicalize` turns raw records held in memory (an
instruction/output frame, a list of dicts, one or many ``messages`` lists) into canonical rows with
the record formats of :mod:`pipeline.io.formats`, exactly as a source file would be read.
:func:`column_hints` turns a missing-column error inside a stage into one that says what to call
first. pandas and datasets are imported only when such an object is passed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import polars as pl
import pyarrow as pa

#: the columns every canonical row has (pipeline.schema.CANONICAL)
CANONICAL_COLUMNS = ("id", "source", "source_row", "messages")


def _is(obj: Any, module: str, name: str) -> bool:
    """``isinstance`` by class path, without importing ``module`` (pandas, datasets may be absent)."""
    return any(c.__module__.split(".")[0] == module and c.__name__ == name for c in type(obj).__mro__)


def kind_of(obj: Any) -> str:
    """``polars``, ``lazy``, ``arrow``, ``pandas``, ``datasets`` or ``other``."""
    if isinstance(obj, pl.DataFrame):
        return "polars"
    if isinstance(obj, pl.LazyFrame):
        return "lazy"
    if isinstance(obj, (pa.Table, pa.RecordBatch)):
        return "arrow"
    if _is(obj, "pandas", "DataFrame"):
        return "pandas"
    if _is(obj, "datasets", "Dataset"):
        return "datasets"
    if _is(obj, "datasets", "DatasetDict") or _is(obj, "datasets", "IterableDataset"):
        raise TypeError(f"a {type(obj).__name__} holds several splits or streams: pass one split, e.g. ds['train'] "
                        "(or datasets.concatenate_datasets over the splits)")
    return "other"


def _from_datasets(ds: Any) -> pl.DataFrame:
    table = ds.with_format("arrow")[:] if len(ds) else ds.data.table.slice(0, 0)  # [:] honours select/shuffle
    return pl.from_arrow(table)  # type: ignore[return-value]


def _restore_types(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Columns that came in keep their Arrow type (``string`` stays ``string``, not Polars'
    ``large_string``), so the result concatenates with the input; added columns keep Polars' types."""
    for i, name in enumerate(table.column_names):
        j = schema.get_field_index(name)
        if j >= 0 and not table.schema.field(i).type.equals(schema.field(j).type):
            # a stage that changed the column's type on purpose keeps the new one
            with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
                table = table.set_column(i, schema.field(j), table.column(i).cast(schema.field(j).type))
    return table


def _to_datasets(df: pl.DataFrame, schema: pa.Schema) -> Any:
    import datasets

    return datasets.Dataset(_restore_types(df.to_arrow(), schema))


def to_polars_like(obj: Any) -> tuple[pl.DataFrame, Callable[[pl.DataFrame], Any]]:
    """``(frame, back)``: ``obj`` as a Polars DataFrame, and the function that turns a result frame
    into the kind ``obj`` was (a LazyFrame is collected and comes back lazy)."""
    kind = kind_of(obj)
    if kind == "polars":
        return obj, lambda df: df
    if kind == "lazy":
        return obj.collect(), lambda df: df.lazy()
    if kind == "arrow":
        t = pa.Table.from_batches([obj]) if isinstance(obj, pa.RecordBatch) else obj
        return pl.from_arrow(t), lambda df: _restore_types(df.to_arrow(), t.schema)  # type: ignore[return-value]
    if kind == "pandas":
        return pl.from_pandas(obj), lambda df: df.to_pandas()
    if kind == "datasets":
        schema = obj.features.arrow_schema
        return _from_datasets(obj), lambda df: _to_datasets(df, schema)
    return pl.DataFrame(obj), lambda df: df


# ---------------------------------------------------------------- helpful errors
def _writer_of(column: str) -> str | None:
    """The config name of a registered stage that writes ``column``, if any."""
    from pipeline.stages import REGISTRY, get_stage

    for name in REGISTRY:
        try:
            cols = get_stage(name).columns
        except (ValueError, ImportError):
            continue
        if column in cols:
            return name
    return None


def missing_column_hint(stage: str, column: str, columns: list[str]) -> str:
    """What a user should call first when ``stage`` needs ``column`` and the table lacks it."""
    have = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
    base = f"{stage}: column {column!r} not in table (columns: {have})"
    if column in CANONICAL_COLUMNS:
        return (f"{base}; stages work on canonical rows (id, source, source_row, messages): "
                f"call pipeline.canonicalize(df) first")
    writer = _writer_of(column)
    if writer is not None:
        return f"{base}; it is written by the {writer!r} stage: call pipeline.stages.{writer}(df) first"
    return base


class MissingColumnError(ValueError):
    """A stage called from Python on a table that lacks a column it reads; the message says what to call first."""


_POLARS_MISSING = re.compile(r'"([^"]+)"')
_OWN_MISSING = re.compile(r"column '([^']+)' not in table")


@contextlib.contextmanager
def column_hints(stage: str, df: pl.DataFrame) -> Iterator[None]:
    """Re-raise a missing-column error inside ``stage`` as :class:`MissingColumnError` with a hint."""
    try:
        yield
    except pl.exceptions.ColumnNotFoundError as e:
        m = _POLARS_MISSING.search(str(e))
        if m is None:
            raise
        raise MissingColumnError(missing_column_hint(stage, m.group(1), df.columns)) from e
    except ValueError as e:
        m = _OWN_MISSING.search(str(e))
        if m is None or isinstance(e, MissingColumnError) or m.group(1) in df.columns:
            raise
        raise MissingColumnError(missing_column_hint(stage, m.group(1), df.columns)) from e


# ---------------------------------------------------------------- canonicalize
def _records(obj: Any) -> tuple[list[Any] | None, pa.Table | None]:
    """Raw input as (records, None) for per-record mapping or (None, arrow table) for the vectorised path."""
    if isinstance(obj, dict):
        if "messages" in obj or "conversations" in obj or any(not isinstance(v, list) for v in obj.values()):
            return [obj], None  # one record
        obj = pl.DataFrame(obj)  # dict of columns
    if isinstance(obj, (list, tuple)):
        items = list(obj)
        if items and all(isinstance(m, dict) and "role" in m for m in items):
            return [{"messages": items}], None  # one messages list
        return [{"messages": x} if isinstance(x, list) else x for x in items], None  # records or messages lists
    if kind_of(obj) == "other":
        raise TypeError(f"canonicalize: cannot read a {type(obj).__name__}; pass a frame/table/Dataset, a list of "
                        "dicts or a list of messages lists")
    df, _ = to_polars_like(obj)
    return None, df.to_arrow()


def canonicalize(obj: Any, format: str = "auto", *, source: str = "memory",
                 rejects: str = "raise") -> Any:
    """Canonical rows (``id, source, source_row, messages, meta``) from raw records held in memory.

    Parameters
    ----------
    obj
        A Polars/pandas frame, Arrow table or ``datasets.Dataset`` of raw records (alpaca's
        instruction/input/output, ``conversations``, ``messages``, prompt/completion, question/answer,
        ...), a list of such dicts, one ``messages`` list (``[{"role", "content"}, ...]``) or a list of
        them. Frames come back as the same kind; lists and dicts as a Polars DataFrame.
    format
        A record format of :mod:`pipeline.io.formats` (``curate formats`` lists them) or ``auto``
        (detected from the first record, as for a source file).
    source
        The ``source`` value of the rows (``source_row`` is the record's position in ``obj``).
    rejects
        ``raise`` (default): a record that cannot be mapped raises ValueError naming its position
        and reason, so no row is lost silently; ``return``: return ``(rows, rejects)`` instead,
        rejects as a Polars frame (source, source_row, reason, raw).
    """
    from pipeline.io.formats import FORMATS, detect_format
    from pipeline.io.readers import _BatchBuilder, map_arrow_batch

    if format != "auto" and format not in FORMATS:
        raise ValueError(f"canonicalize: unknown format {format!r}; allowed: auto, {', '.join(FORMATS)}")
    if rejects not in ("raise", "return"):
        raise ValueError("canonicalize: rejects must be 'raise' or 'return'")
    back: Callable[[pl.DataFrame], Any] = lambda df: df  # noqa: E731
    if kind_of(obj) != "other":
        _, back = to_polars_like(obj if not isinstance(obj, pl.LazyFrame) else obj.head(0))
    records, table = _records(obj)
    if table is not None and table.num_rows and "messages" in table.column_names and "id" in table.column_names \
            and "source_row" in table.column_names:
        raise ValueError("canonicalize: the table is canonical already (it has id, source_row and messages)")
    fmt = None if format == "auto" else format
    if fmt is None:
        first = (table.slice(0, 1).to_pylist()[0] if table is not None and table.num_rows
                 else records[0] if records else None)
        fmt = detect_format(first) if first is not None else None
        if fmt is None and first is not None:
            keys = ", ".join(map(str, first)) if isinstance(first, dict) else type(first).__name__
            raise ValueError(f"canonicalize: unknown record format (fields: {keys}); pass format=... "
                             "(see `curate formats`)")
    batch = map_arrow_batch(table, fmt, 0, source) if table is not None and fmt is not None else None
    if batch is None:
        if records is None:
            records = table.to_pylist() if table is not None else []
        builder = _BatchBuilder(source)
        for i, rec in enumerate(records):
            builder.add(i, rec, fmt or "messages", format == "auto")
        batch = builder.build(fmt)
    rows: pl.DataFrame = pl.from_arrow(batch.rows)  # type: ignore[assignment]
    rej: pl.DataFrame = pl.from_arrow(batch.rejects)  # type: ignore[assignment]
    if rejects == "return":
        return back(rows), rej
    if rej.height:
        first_bad = rej.row(0, named=True)
        raise ValueError(f"canonicalize: {rej.height} of {rows.height + rej.height} records cannot be mapped "
                         f"(first: record {first_bad['source_row']}: {first_bad['reason']}); "
                         "fix them or pass rejects='return' to get them as a table")
    return back(rows)
