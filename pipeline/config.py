"""Run configuration: YAML validated by pydantic before any work starts.

A config names its sources and an ordered list of stages; each stage entry is ``stage: NAME`` plus
that stage's params (see the stage's ``Params`` model). Relative paths are resolved against the
config file's directory. A wrong key, type or value raises :class:`ConfigError` whose message
names the field (``stages[2] (minhash_dedup).threshold``) and what is allowed. A stage that needs
a column no earlier stage writes (``select_top_k`` by ``ifd`` with no ``ifd`` stage before it)
fails the same way, naming the stage, the column and the stage that would write it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.export import ExportSpec
from pipeline.io.containers import CONTAINERS, HF_KEYS
from pipeline.io.formats import FORMATS, REASONING_MODES, THINK_TAGS
from pipeline.io.textstream import DEFAULT_MAX_DEPTH, DEFAULT_MAX_RECORD_BYTES
from pipeline.stages import available_stages, get_stage
from pipeline.stages.base import Stage
from pipeline.stages.contract import check_columns, check_state_names


class ConfigError(ValueError):
    """A config that cannot run; the message names the field."""


class _Strict(BaseModel):
    # NaN and infinity pass every gt/ge/le bound (all comparisons with NaN are false): refused outright
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RunSettings(_Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$")
    out: str = "runs"
    shard_rows: int = Field(50_000, ge=1)
    shard_mb: float | None = Field(64.0, gt=0, description="also cut a shard at about this many MB of Arrow data "
                                   "(memory per shard follows text volume, not rows); null: rows only")
    read_batch_rows: int = Field(10_000, ge=1)
    max_record_mb: float = Field(DEFAULT_MAX_RECORD_BYTES / 2**20, gt=0, description="a JSON/JSONL record (line or "
                                 "array element) longer than this is one reject, skipped without being held in memory")
    max_depth: int = Field(DEFAULT_MAX_DEPTH, ge=1, le=254, description="a JSON/JSONL record nested deeper than this "
                           "is one reject (254: the most the store's JSON encoder writes)")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    state_in: str | None = None
    save_state: bool = False
    cache_dir: str | None = None
    report: bool = Field(True, description="write report.html + figures/ when `curate run` or the flow finishes")
    estimate: bool = Field(True, description="before a stage that loads a model (LM scoring, embeddings), time it "
                           "on a few rows of one shard and print and record how long it will take")


class SourceConfig(_Strict):
    path: str
    name: str | None = Field(None, description="the source's label in the `source` column (default: the shortest "
                             "tail of its path no other source has, e.g. the file name; labels must be unique)")
    container: Literal[CONTAINERS] = "auto"  # type: ignore[valid-type]
    format: Literal[("auto", *FORMATS)] = "auto"  # type: ignore[valid-type]
    hf_builder: str | None = Field(None, description=HF_KEYS["hf_builder"])
    hf_split: str | None = Field(None, description=HF_KEYS["hf_split"])
    hf_kwargs: dict[str, Any] = Field(default_factory=dict, description=HF_KEYS["hf_kwargs"])
    reasoning: Literal[REASONING_MODES] = Field(  # type: ignore[valid-type]
        "auto", description="auto: reasoning_content/reasoning fields, else a leading think block of the "
        "assistant content; fields: the fields only (content kept verbatim)")
    think_tags: tuple[str, str] = Field(THINK_TAGS, description="the opening and closing tag of a think block")
    max_record_mb: float | None = Field(None, gt=0, description="this source's run.max_record_mb")
    max_depth: int | None = Field(None, ge=1, le=254, description="this source's run.max_depth")
    limit: int | None = Field(None, ge=1, description="read only the first N records (a try-out on a slice; "
                              "read counts only those)")
    sample: float | None = Field(None, gt=0, le=1, description="read only this seeded fraction of the records "
                                 "(by record index and run.seed; read counts only those)")


class ScheduleSettings(_Strict):
    """When the deployment runs: a cron expression (``0 2 * * *``) or a fixed interval."""

    cron: str | None = None
    interval_s: float | None = Field(None, gt=0)
    anchor: datetime | None = Field(None, description="first run of an interval schedule (default: now)")
    timezone: str = "UTC"
    deployment: str = Field("nightly", pattern=r"^[A-Za-z0-9._-]+$")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if len(v.split()) not in (5, 6):
            raise ValueError(f"a cron expression has 5 fields (minute hour day month weekday), got {v!r}")
        return v

    @model_validator(mode="after")
    def _one(self) -> ScheduleSettings:
        if (self.cron is None) == (self.interval_s is None):
            raise ValueError("set exactly one of cron or interval_s")
        return self


class IncrementalSettings(_Strict):
    """Nightly curation of a growing directory: only new files are processed each run."""

    input_dir: str
    pattern: str = Field("*", description="glob of input files under input_dir, e.g. '**/*.jsonl.gz'")
    container: Literal[CONTAINERS] = "auto"  # type: ignore[valid-type]
    format: Literal[("auto", *FORMATS)] = "auto"  # type: ignore[valid-type]
    home: str | None = Field(None, description="ledger, dedup state, pool and selections (default <out>/<name>.incremental)")


class FlowSettings(_Strict):
    """Orchestration settings read by ``flows/`` (the local engine ignores them)."""

    task_runner: Literal["threads", "processes", "dask", "ray"] = "threads"
    address: str | None = Field(None, description="an existing Dask scheduler (tcp://host:8786) or Ray cluster (ray://host:10001 or 'auto')")
    max_workers: int | None = Field(None, ge=1, description="threads/processes, or workers of a local Dask/Ray cluster")
    shards_per_task: int | None = Field(None, ge=1, description="shards per Prefect task (default: 1; batched "
                                       "on a local Dask/Ray cluster, where each task costs API round trips)")
    retries: int = Field(2, ge=0, description="retries of tasks that fail transiently (model load, OOM, I/O)")
    retry_delay_s: float = Field(2.0, ge=0, description="first retry delay; doubles each retry")
    work_dir: str | None = Field(None, description="content-addressed step results shared across runs (default <out>/.work)")
    schedule: ScheduleSettings | None = None
    incremental: IncrementalSettings | None = None

    @model_validator(mode="after")
    def _address(self) -> FlowSettings:
        if self.address and self.task_runner not in ("dask", "ray"):
            raise ValueError(f"address is for task_runner dask or ray, not {self.task_runner!r}")
        return self


class StageEntry(BaseModel):
    model_config = ConfigDict(extra="allow")
    stage: str

    @field_validator("stage")
    @classmethod
    def _known(cls, v: str) -> str:
        allowed = available_stages()
        if v not in allowed:
            raise ValueError(f"unknown stage {v!r}; allowed: {', '.join(allowed)}")
        return v

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Config(_Strict):
    run: RunSettings = RunSettings()
    sources: list[SourceConfig] = Field(default_factory=list)
    stages: list[StageEntry] = Field(default_factory=list)
    flow: FlowSettings = Field(default_factory=FlowSettings, description="orchestration settings read by flows/")
    export: list[ExportSpec] = Field(default_factory=list, description="exports written after the run completes")
    base_dir: str = Field(".", exclude=True)

    @model_validator(mode="after")
    def _has_input(self) -> Config:
        if not self.sources and self.flow.incremental is None:
            raise ValueError("sources: List should have at least 1 item (or set flow.incremental.input_dir)")
        return self

    @model_validator(mode="after")
    def _labels(self) -> Config:
        """Give every source a unique label (its ``name``): rows are addressed by (source, source_row),
        so two sources called ``data.jsonl`` in different folders must not share one address space."""
        labels = source_labels([s.path for s in self.sources], [s.name for s in self.sources], Path(self.base_dir))
        seen: dict[str, int] = {}
        for i, (src, label) in enumerate(zip(self.sources, labels, strict=True)):
            if label in seen:
                raise ValueError(f"sources[{i}].name: the label {label!r} is also sources[{seen[label]}]'s; rows are "
                                 "addressed by (source, source_row), so give each source a unique name:")
            seen[label] = i
            src.name = label
        return self

    def reader_limits(self, source: SourceConfig | None = None) -> dict[str, int]:
        """``max_record_bytes`` and ``max_depth`` for a source's :class:`~pipeline.io.readers.SourceSpec`
        (the source's own settings, else the run's)."""
        mb = source.max_record_mb if source is not None and source.max_record_mb is not None else self.run.max_record_mb
        depth = source.max_depth if source is not None and source.max_depth is not None else self.run.max_depth
        return {"max_record_bytes": int(mb * 2**20), "max_depth": depth}

    def build_stages(self) -> list[Stage]:
        return [get_stage(e.stage)(e.params(), base_dir=self.base_dir) for e in self.stages]

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def source_labels(paths: list[str], names: list[str | None], base_dir: Path) -> list[str]:
    """Each source's label: its ``name`` if set, else the shortest tail of its path that no other
    source has: the file name alone when it is unique (as for one source), ``a/data.jsonl`` and
    ``b/data.jsonl`` when two files share a name. Relative paths are resolved against ``base_dir``
    first, so labels depend neither on the current directory nor on where the files sit otherwise;
    a label only grows when another source's file name collides with it."""
    parts = []
    for p in paths:
        full = Path(os.path.normpath(base_dir / Path(p).expanduser()))
        parts.append(full.parts[1:] if full.is_absolute() else full.parts)
    k = [1] * len(paths)
    while True:
        labels = [n if n is not None else "/".join(parts[i][-k[i]:]) for i, n in enumerate(names)]
        groups: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            groups.setdefault(label, []).append(i)
        grown = False
        for members in groups.values():
            if len(members) > 1:
                for i in members:
                    if names[i] is None and k[i] < len(parts[i]):
                        k[i] += 1
                        grown = True
        if not grown:
            return labels


def _fmt_loc(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            if i > 0 and loc[i - 1] == "stages":
                with contextlib.suppress(KeyError, IndexError, TypeError):
                    out += f" ({raw['stages'][part]['stage']})"
        else:
            out += ("." if out else "") + str(part)
    return out


def _error_lines(err: ValidationError, raw: dict[str, Any], prefix: tuple[Any, ...] = (), allowed: list[str] | None = None) -> list[str]:
    lines = []
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden" and allowed is not None:
            msg = f"unknown field; allowed: {', '.join(allowed)}"
        elif e["type"] == "extra_forbidden":
            msg = "unknown field"
        # a model-level check names its field in its message ("sources: at least one source ...")
        lines.append(f"{_fmt_loc(loc, raw)}: {msg}" if loc else msg.removeprefix("Value error, "))
    return lines


def _source_columns(cfg: Config) -> set[str]:
    """The columns the sources' rows will have (user columns included; JSON sources from their first
    records), for the column check; a source that cannot be read yet adds nothing (its path is checked
    on its own)."""
    from pipeline.io.readers import SourceError, SourceSpec, source_schema

    cols: set[str] = set()
    for sc in cfg.sources:
        path = cfg.resolve(sc.path)
        if not path.exists() and sc.container != "hf_load":
            continue
        try:
            cols |= set(source_schema(SourceSpec.from_config(sc, str(path))).names)
        except (SourceError, OSError, ValueError):
            continue
    return cols


def check_stages(cfg: Config) -> list[str]:
    """The checks that need the configured stages: each builds, each one's required columns are
    written by an earlier stage (or canonical), and a stateful stage is not listed twice in a run
    that keeps state (see :mod:`pipeline.stages.contract`)."""
    problems: list[str] = []
    built: list[Stage] = []
    for i, entry in enumerate(cfg.stages):
        try:
            built.append(get_stage(entry.stage)(entry.params(), base_dir=cfg.base_dir))
        except (ValueError, TypeError) as e:
            problems.append(f"stages[{i}] ({entry.stage}): {e}")
    if problems:
        return problems
    missing = check_columns(built)
    if missing and cfg.sources:  # a column may be the sources' own (a user column): read their schemas
        missing = check_columns(built, inputs=_source_columns(cfg))
    problems += missing
    if cfg.run.save_state or cfg.flow.incremental is not None:
        problems += check_state_names(built)
    return problems


def load_config(source: str | Path | dict[str, Any], base_dir: str | Path | None = None) -> Config:
    """Parse and validate a config (a YAML path or a dict). Raises :class:`ConfigError`."""
    where = "config"
    if isinstance(source, dict):
        raw = source
        base = Path(base_dir or ".").resolve()
    else:
        path = Path(source)
        where = str(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        base = Path(base_dir).resolve() if base_dir else path.resolve().parent
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping with 'sources' and 'stages'")
    try:
        cfg = Config.model_validate({**raw, "base_dir": str(base)})
    except ValidationError as e:
        raise ConfigError(f"{where}: invalid config\n  " + "\n  ".join(_error_lines(e, raw))) from None
    problems: list[str] = []
    for i, entry in enumerate(cfg.stages):
        cls = get_stage(entry.stage)
        try:
            cls.Params.model_validate(entry.params(), context={"base_dir": str(base)})
        except ValidationError as e:
            problems += _error_lines(e, raw, ("stages", i), allowed=sorted(cls.Params.model_fields))
    if not problems:
        problems += check_stages(cfg)
    for i, src in enumerate(cfg.sources):
        if src.container in ("auto", "jsonl", "json", "parquet", "csv", "tsv", "hf_disk") and not cfg.resolve(src.path).exists():
            problems.append(f"sources[{i}].path: no such file or directory: {cfg.resolve(src.path)}")
    if problems:
        raise ConfigError(f"{where}: invalid config\n  " + "\n  ".join(problems))
    return cfg
