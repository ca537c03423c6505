"""The plain-function form of every stage, with a real signature and docstring built from its params.

``length = stage_function(Length)`` gives ``length(table, *, min_response_tokens=1, ...)``: every
field of the stage's pydantic ``Params`` is a parameter with its default, ``help(length)`` and
``inspect.signature(length)`` list them with their meaning, and the call runs the whole stage on one
in-memory table (setup, score, global score, decide, teardown) and returns the same kind of table it
was given (see :mod:`pipeline.frames`). :func:`param_rows` and :func:`describe` serve the same text
to ``curate stages``.
"""

from __future__ import annotations

import inspect
import os
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefined

from pipeline.stages.base import RunContext, Stage

_TABLE_DOC = ("Polars DataFrame or LazyFrame, Arrow table, pandas DataFrame or datasets.Dataset of canonical "
              "rows (``pipeline.canonicalize`` makes them from raw records); the result is the same kind.")


def type_text(annotation: Any) -> str:
    """``int | None``, ``'a' | 'b'``, ``list[str]``: a short, readable form of a field's type."""
    if annotation is None or annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(type_text(a) for a in args)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_text(a) for a in args)}]" if args else name
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _default(field: Any) -> Any:
    """The field's default value, or :data:`inspect.Parameter.empty` when it is required."""
    if field.default is not PydanticUndefined:
        return field.default
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return inspect.Parameter.empty


def param_rows(cls: type[Stage]) -> list[dict[str, Any]]:
    """One dict per param of ``cls``: ``name``, ``type``, ``default`` (repr, or None when required),
    ``required`` and ``description``."""
    rows = []
    for name, f in cls.Params.model_fields.items():
        d = _default(f)
        rows.append({"name": name, "type": type_text(f.annotation), "required": d is inspect.Parameter.empty,
                     "default": None if d is inspect.Parameter.empty else repr(d),
                     "description": f.description or ""})
    return rows


def summary_line(cls: type[Stage]) -> str:
    """The first sentence-line of the stage class's docstring (else its module's)."""
    doc = inspect.getdoc(cls) if cls.__doc__ else inspect.getdoc(inspect.getmodule(cls))
    return (doc or cls.__name__).strip().splitlines()[0]


def _short(default: str | None, limit: int = 70) -> str | None:
    """A long default (a prompt template) cut for display; the signature keeps the whole value."""
    if default is None or len(default) <= limit:
        return default
    return default[: limit - 5] + "...'" + f" ({len(default):,} chars)"


def describe(cls: type[Stage], name: str | None = None) -> str:
    """Plain text: the stage's name, summary, output columns and every param with default and meaning."""
    name = name or cls.name
    lines = [f"{name}  ({cls.__module__}.{cls.__name__}, {'selector' if cls.is_selector else cls.scope + ' stage'})",
             f"  {summary_line(cls)}"]
    if cls.columns:
        lines.append("  writes: " + ", ".join(cls.columns))
    lines.append("  params:")
    for r in param_rows(cls):
        default = "required" if r["required"] else f"default {_short(r['default'])}"
        lines.append(f"    {r['name']}: {r['type']} ({default})")
        if r["description"]:
            lines += textwrap.wrap(r["description"], 100, initial_indent="        ", subsequent_indent="        ")
    return "\n".join(lines)


def _docstring(cls: type[Stage], name: str, extras: Sequence[str]) -> str:
    doc = inspect.getdoc(cls) if cls.__doc__ else None
    head = doc or summary_line(cls)
    out = [f"Run the ``{cls.name}`` stage ({cls.__name__}) on an in-memory table.", "", head, "", "Parameters",
           "----------", "table", textwrap.indent(textwrap.fill(_TABLE_DOC, 96), "    ")]
    for r in param_rows(cls):
        default = "required" if r["required"] else f"default {_short(r['default'])}"
        out.append(f"{r['name']} : {r['type']}, {default}")
        if r["description"]:
            out.append(textwrap.indent(textwrap.fill(r["description"], 96), "    "))
    if "cache_dir" in extras:
        out += ["cache_dir : str | Path | None, default None",
                "    directory of the sidecar store (embeddings, LM scores) kept between calls"]
    out += ["ctx : RunContext | None, default None", "    run context (seed, device, cache_dir); default: a fresh one",
            "", "Returns", "-------", "The table with the stage's columns added"
            + (" and ``selected``/``select_reason``/``select_rank`` filled" if cls.is_selector
               else " and ``keep``/``drop_reason`` set") + "."]
    return "\n".join(out)


def _plain(v: Any) -> Any:
    """Paths given from Python become strings (params are validated as str)."""
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, (list, tuple)) and any(isinstance(x, os.PathLike) for x in v):
        return [os.fspath(x) if isinstance(x, os.PathLike) else x for x in v]
    return v


def stage_function(cls: type[Stage], positional: Sequence[str] = (), name: str | None = None) -> Callable[..., Any]:
    """The plain function of stage class ``cls``.

    ``positional`` names the params that may also be given by position after the table, in that
    order (``kmq(table, 1000, "deita_score")``); every other param is keyword-only. ``name`` is the
    function's name (default: the stage's config name).
    """
    fields = cls.Params.model_fields
    for p in positional:
        if p not in fields:
            raise ValueError(f"{cls.__name__}: positional param {p!r} is not a field of {cls.Params.__name__}")
    extras = [e for e in ("cache_dir",) if e not in fields]
    params = [inspect.Parameter("table", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Any)]
    for p in positional:
        params.append(inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=_default(fields[p]),
                                        annotation=fields[p].annotation))
    for fname, f in fields.items():
        if fname not in positional:
            params.append(inspect.Parameter(fname, inspect.Parameter.KEYWORD_ONLY, default=_default(f),
                                            annotation=f.annotation))
    if "cache_dir" in extras:
        params.append(inspect.Parameter("cache_dir", inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=str | Path | None))
    params.append(inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation=RunContext | None))
    # a required param after one with a default is only legal among keyword-only params
    pos = [q for q in params if q.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    for a, b in zip(pos, pos[1:], strict=False):
        if a.default is not inspect.Parameter.empty and b.default is inspect.Parameter.empty:
            raise ValueError(f"{cls.__name__}: required positional param {b.name!r} follows one with a default")
    sig = inspect.Signature(params, return_annotation=Any)

    def fn(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(*args, **kwargs)
        values = dict(bound.arguments)
        table = values.pop("table")
        ctx = values.pop("ctx", None)
        cache_dir = values.pop("cache_dir", None) if "cache_dir" in extras else None
        if ctx is None:
            ctx = RunContext(cache_dir=Path(cache_dir) if cache_dir is not None else None)
        stage = cls(**{k: _plain(v) for k, v in values.items()})
        try:
            return stage(table, ctx)
        finally:
            stage.teardown()

    fn.__name__ = fn.__qualname__ = name or cls.name
    fn.__module__ = cls.__module__
    fn.__signature__ = sig  # type: ignore[attr-defined]
    fn.__doc__ = _docstring(cls, fn.__name__, extras)
    fn.stage_class = cls  # type: ignore[attr-defined]
    return fn
