"""The declared stage contract: what a stage reads and writes, checked when the class is defined.

Every stage declares (see :class:`pipeline.stages.base.Stage`):

* the columns it **writes**, each a :class:`Col` with a dtype, a *role* and a *phase*:

  - role ``score``: a number worth plotting, filtering or ranking by (``ifd``, ``len_response_tokens``);
  - role ``flag``: a boolean verdict (``heur_empty_response``, ``grape_best``, ``selected``);
  - role ``internal``: keys, hashes, ids, pointers, labels, model ids and scratch columns
    (``exact_hash``, ``dup_of``, ``cluster``, ``ppl_model``; every ``_*`` column);
  - phase ``row``: written by :meth:`~pipeline.stages.base.Stage.score`, one shard at a time;
  - phase ``global``: written by :meth:`~pipeline.stages.base.Stage.score_global` over the pool;

* the columns it **requires** (must be in its input: written by an earlier stage or canonical) and
  the columns it **uses** when present (``len_response_chars`` for the dedup keeper, ``selected``
  of an earlier selector). Params that name an input column are listed in ``input_params``
  (``select_top_k.column``, ``kmq.score``): their values are required columns, and a config error
  names the param;
* its drop-reason prefix (``exact`` for ``exact:dup``; default: the stage name) and whether it is a
  selector.

:func:`check_stage_class` runs from ``Stage.__init_subclass__``, so a malformed declaration fails
when its module is imported (as data-juicer checks its operators at class definition).
``Stage.contract()`` gives the declaration of one configured stage as JSON-able data, the form
kept in the run manifest; :func:`stage_of_reason`, :func:`column_roles` and :func:`global_writes`
read that form back, so the report and export need no stage classes and no guessing.
:func:`check_columns` is the config check: every stage's required columns against what earlier
stages (and the canonical schema) write.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from pipeline.schema import CANONICAL, DECISION, SELECTION

if TYPE_CHECKING:
    from pipeline.stages.base import Stage

Role = Literal["score", "flag", "internal"]
Phase = Literal["row", "global"]
ROLES: tuple[str, ...] = ("score", "flag", "internal")
PHASES: tuple[str, ...] = ("row", "global")

#: columns every stage's input has: the canonical row and the decision
BASE_COLUMNS: tuple[str, ...] = (*CANONICAL.names, *DECISION.names)
SELECTION_COLUMNS: tuple[str, ...] = tuple(SELECTION.names)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Col:
    """One output column of a stage: its Polars dtype, role and phase (see the module docstring)."""

    dtype: Any
    role: Role = "score"
    phase: Phase = "row"

    def as_dict(self) -> dict[str, str]:
        return {"type": str(self.dtype), "role": self.role, "phase": self.phase}


def cols(dtypes: Mapping[str, Any], role: Role, phase: Phase) -> dict[str, Col]:
    """``{name: Col(dtype, role, phase)}`` for a mapping of dtypes (e.g. the shared dedup columns)."""
    return {n: Col(t, role, phase) for n, t in dtypes.items()}


def infer_role(name: str, dtype: Any) -> Role:
    """The role of a column declared by dtype alone: ``_*`` internal, Boolean flag, numeric score,
    anything else (strings, lists, structs) internal."""
    if name.startswith("_"):
        return "internal"
    if dtype == pl.Boolean:
        return "flag"
    if isinstance(dtype, pl.DataType) or (isinstance(dtype, type) and issubclass(dtype, pl.DataType)):
        return "score" if dtype.is_numeric() else "internal"
    return "internal"


def _is_dtype(t: Any) -> bool:
    return isinstance(t, pl.DataType) or (isinstance(t, type) and issubclass(t, pl.DataType))


class StageDefinitionError(TypeError):
    """A stage class whose contract declaration is malformed (raised when its module is imported)."""


def check_stage_class(cls: type[Stage]) -> None:
    """Normalise and check ``cls``'s declaration; raise :class:`StageDefinitionError` naming the problem.

    ``columns`` may map a name to a :class:`Col` or to a bare dtype (then the role is inferred with
    :func:`infer_role` and the phase is ``row``; a global stage must give every column's phase).
    Afterwards ``cls.column_specs`` holds the :class:`Col` of every column and ``cls.columns`` the
    dtypes (what the runner reads).
    """
    from pipeline.stages.base import StageParams

    where = f"stage class {cls.__module__}.{cls.__qualname__}"

    def fail(msg: str) -> None:
        raise StageDefinitionError(f"{where}: {msg}")

    own = cls.__dict__
    if "name" in own and cls.name and not _NAME.match(cls.name):
        fail(f"name {cls.name!r} must be lower_snake_case")
    if not (isinstance(cls.Params, type) and issubclass(cls.Params, StageParams)):
        fail("Params must be a subclass of pipeline.stages.base.StageParams")
    if cls.scope not in ("row", "global"):
        fail(f"scope must be 'row' or 'global', got {cls.scope!r}")
    if not isinstance(cls.is_selector, bool):
        fail("is_selector must be a bool")
    if "reason_prefix" not in own and "name" in own:
        cls.reason_prefix = cls.name  # type: ignore[misc]
    if cls.reason_prefix and not _NAME.match(cls.reason_prefix):
        fail(f"reason_prefix {cls.reason_prefix!r} must be lower_snake_case (no ':')")
    for attr in ("global_inputs", "requires", "uses", "writes", "summary", "models", "contract"):
        v = own.get(attr)
        if v is not None and (isinstance(v, (property, tuple, list, str)) or not callable(v)):
            fail(f"{attr} must be a method (def {attr}(self) -> ...), not a {type(v).__name__}")
    for attr in ("requires_columns", "uses_columns", "input_params", "global_lazy_inputs"):
        v = getattr(cls, attr)
        if not isinstance(v, tuple) or not all(isinstance(c, str) and c for c in v):
            fail(f"{attr} must be a tuple of column names, got {v!r}")
    fields = cls.Params.model_fields
    for f in cls.input_params:
        if f not in fields:
            fail(f"input_params names {f!r}, which is not a field of {cls.Params.__name__}")
    if "columns" in own:
        specs: dict[str, Col] = {}
        for n, t in own["columns"].items():
            if not isinstance(n, str) or not n:
                fail(f"column names must be non-empty strings, got {n!r}")
            if isinstance(t, Col):
                spec = t
            elif _is_dtype(t):
                if cls.scope == "global":
                    fail(f"column {n!r}: a global stage declares each column as Col(dtype, role, phase)")
                spec = Col(t, infer_role(n, t), "row")
            else:
                fail(f"column {n!r}: declare a Polars dtype or Col(dtype, role, phase), got {t!r}")
            if not _is_dtype(spec.dtype):
                fail(f"column {n!r}: {spec.dtype!r} is not a Polars dtype")
            if spec.role not in ROLES:
                fail(f"column {n!r}: role must be one of {', '.join(ROLES)}, got {spec.role!r}")
            if spec.phase not in PHASES:
                fail(f"column {n!r}: phase must be one of {', '.join(PHASES)}, got {spec.phase!r}")
            if spec.phase == "global" and cls.scope != "global":
                fail(f"column {n!r} has phase 'global' but the stage's scope is 'row'")
            if n in BASE_COLUMNS:
                fail(f"column {n!r} is canonical or a decision column; stages add columns, keep/drop_reason "
                     f"change only through drop_where")
            if n in SELECTION_COLUMNS and not cls.is_selector:
                fail(f"column {n!r} is a selection column: only selectors (is_selector = True) write it")
            specs[n] = spec
        cls.column_specs = specs  # type: ignore[misc]
        cls.columns = {n: s.dtype for n, s in specs.items()}  # type: ignore[misc]


# ---------------------------------------------------------------- reading a manifest's stage list


def _contract(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """The contract of a manifest stage entry: its ``contract`` key, or the entry itself."""
    c = entry.get("contract")
    return c if isinstance(c, Mapping) else entry


def reason_prefix(entry: Mapping[str, Any]) -> str:
    """The drop-reason prefix of a manifest stage entry (for manifests written before the contract
    was recorded: the registered class's, else the stage name)."""
    c = _contract(entry)
    if c.get("reason_prefix"):
        return str(c["reason_prefix"])
    name = str(entry.get("name", ""))
    try:
        from pipeline.stages import get_stage

        return get_stage(name).reason_prefix or name
    except ValueError:
        return name


def stage_of_reason(reason: str | None, stages: Sequence[Mapping[str, Any]]) -> int | None:
    """Index in ``stages`` (the manifest's stage list) of the stage that wrote drop reason ``reason``.

    A reason is ``<prefix>:<rule>[:detail]``; the stage is the first one whose declared
    ``reason_prefix`` is ``<prefix>`` (a stage listed twice cannot be told apart by its reasons: the
    runner's per-stage drop counts, taken where ``keep`` flips, can). None when no stage matches.
    """
    if not reason:
        return None
    prefix = reason.split(":", 1)[0]
    for i, s in enumerate(stages):
        if reason_prefix(s) == prefix:
            return i
    return None


def reason_owners(stages: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """``{reason prefix: index of the first stage declaring it}`` (to map many reasons at once)."""
    out: dict[str, int] = {}
    for i, s in enumerate(stages):
        out.setdefault(reason_prefix(s), i)
    return out


def column_roles(stages: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """``{column: role}`` over the manifest's stage list (the last writer of a column wins)."""
    out: dict[str, str] = {}
    for s in stages:
        for col, spec in (_contract(s).get("writes") or {}).items():
            out[col] = spec["role"]
    return out


def global_writes(entry: Mapping[str, Any]) -> list[str]:
    """The columns a manifest stage entry's global step writes (phase ``global``)."""
    return [c for c, spec in (_contract(entry).get("writes") or {}).items() if spec["phase"] == "global"]


# ---------------------------------------------------------------- config check


def _param_for(stage: Stage, column: str) -> str | None:
    """The param of ``stage`` whose value names ``column`` (for an error that names the field)."""
    for f in stage.input_params:
        v = getattr(stage.params, f, None)
        if v == column or (isinstance(v, (list, tuple)) and column in v):
            return f
    for f in type(stage.params).model_fields:
        v = getattr(stage.params, f, None)
        if v == column:
            return f
    return None


def _registered_columns() -> dict[str, list[str]]:
    """``{column: [registered stages whose class declares it]}`` (imports every stage module)."""
    from pipeline.stages import available_stages, get_stage

    out: dict[str, list[str]] = {}
    for name in available_stages():
        try:
            cls = get_stage(name)
        except Exception:  # noqa: BLE001 - a broken optional module must not hide the real error
            continue
        for c in getattr(cls, "column_specs", {}):
            out.setdefault(c, []).append(name)
    return out


def check_columns(stages: Sequence[Stage], where: str = "stages", inputs: Iterable[str] = ()) -> list[str]:
    """Problems (one line each, empty when none) with the columns ``stages`` (in run order) require.

    A required column must be canonical, one of the sources' own columns (``inputs``: user columns
    such as AlpacaEval's ``preference``), or written by an earlier stage. A line names the stage, the
    field that references the column (when a param does), the column, and the stage that would
    write it: a later stage of the list ("runs after it: move it before"), or a registered stage
    that is not in the list ("add a 'length' stage before it").
    """
    problems: list[str] = []
    available: set[str] = set(BASE_COLUMNS) | set(inputs)
    for i, st in enumerate(stages):
        for col in st.requires():
            if col in available:
                continue
            field = _param_for(st, col)
            loc = f"{where}[{i}] ({st.name})" + (f".{field}" if field else "")
            later = [f"{where}[{j}] ({s.name})" for j, s in enumerate(stages) if j > i and col in s.writes()]
            if later:
                hint = f"{later[0]} writes it but runs later: move that stage before {where}[{i}]"
            else:
                known = _registered_columns()
                writers = known.get(col, [])
                close = difflib.get_close_matches(col, [*known, *available], n=1)
                hint = (f"stage {' or '.join(repr(w) for w in writers)} writes it: add it before {where}[{i}]"
                        if writers else "no stage writes it" + (f" (did you mean {close[0]!r}?)" if close else ""))
            problems.append(f"{loc}: needs column {col!r}, which no earlier stage writes; {hint}")
        available |= set(st.writes())
    return problems


def check_state_names(stages: Sequence[Stage], where: str = "stages") -> list[str]:
    """Problems with stateful stages listed twice: their state is kept under the stage name, so one
    instance's state would overwrite the other's (and the next run would fail on a mismatch)."""
    problems: list[str] = []
    first: dict[str, int] = {}
    for i, st in enumerate(stages):
        if not st.has_state():
            continue
        if st.name in first:
            problems.append(f"{where}[{i}] ({st.name}): listed twice (also {where}[{first[st.name]}]) in a run that "
                            f"keeps state; its state is saved under state/{st.name}, so one instance's state would "
                            f"be lost: keep one {st.name} stage, or run without run.save_state")
        else:
            first[st.name] = i
    return problems


__all__ = ["Col", "cols", "ROLES", "PHASES", "Role", "Phase", "BASE_COLUMNS", "StageDefinitionError",
           "check_stage_class", "infer_role", "reason_prefix", "stage_of_reason", "reason_owners", "column_roles",
           "global_writes", "check_columns", "check_state_names"]
