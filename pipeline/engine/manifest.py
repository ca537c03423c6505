"""The run's manifest: counts that must balance, per-stage entries, layout, and the record of every
output file, written ``running`` at the start and ``complete`` only after every file verifies."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import Config
from pipeline.engine.keys import versions
from pipeline.engine.plan import Plan, StageSpec, safe_report
from pipeline.engine.steps import GlobalResult, StepStat
from pipeline.io.atomic import write_json_atomic
from pipeline.io.fingerprint import file_fingerprint
from pipeline.io.shards import list_shards
from pipeline.schema import CANONICAL, DECISION, REJECTS, SELECTION
from pipeline.stages.base import Stage


def _group_reasons(reasons: dict[str, int], depth: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for r, n in reasons.items():
        key = ":".join(r.split(":")[:depth])
        out[key] = out.get(key, 0) + n
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def make_counts(read: int, rejected: int, outcome: dict[str, Any]) -> dict[str, Any]:
    reasons = outcome["dropped_by_reason"]
    dropped = sum(reasons.values())
    counts = {
        "read": read,
        "rejected": rejected,
        "ingested": outcome["rows"],
        "kept": outcome["kept"],
        "dropped": dropped,
        "selected": outcome["selected"],
        "dropped_by_stage": _group_reasons(reasons, 1),
        "dropped_by_rule": _group_reasons(reasons, 2),
        "dropped_by_reason": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:200]),
    }
    counts["balanced"] = counts["read"] == counts["kept"] + counts["dropped"] + counts["rejected"]
    return counts


@dataclass
class StageTally:
    """Per-stage compute seconds and cache hits, summed over steps."""

    seconds: dict[int, float] = field(default_factory=dict)
    io_seconds: dict[int, float] = field(default_factory=dict)
    steps: dict[int, int] = field(default_factory=dict)
    hits: dict[int, int] = field(default_factory=dict)
    dropped: dict[int, int] = field(default_factory=dict)
    estimates: dict[int, dict[str, Any]] = field(default_factory=dict)  # pipeline.engine.estimate

    def add(self, stats: Iterable[StepStat]) -> None:
        for s in stats:
            self.dropped[s.stage] = self.dropped.get(s.stage, 0) + s.dropped
            self.seconds[s.stage] = self.seconds.get(s.stage, 0.0) + s.seconds
            self.io_seconds[s.stage] = self.io_seconds.get(s.stage, 0.0) + s.io_seconds
            self.steps[s.stage] = self.steps.get(s.stage, 0) + 1
            self.hits[s.stage] = self.hits.get(s.stage, 0) + int(s.cached)

    @property
    def compute_seconds(self) -> float:
        return sum(self.seconds.values())


def stage_entries(stages: list[Stage], specs: tuple[StageSpec, ...], tally: StageTally, counts: dict[str, Any],
                  globals_: Iterable[GlobalResult] = (), reports: dict[int, dict[str, Any]] | None = None
                  ) -> list[dict[str, Any]]:
    """The manifest's ``stages`` list (foundation format, plus cache statistics)."""
    by_stage = {g.ref.stage: g for g in globals_}
    reports = reports or {}
    out = []
    for st, spec in zip(stages, specs, strict=True):
        g = by_stage.get(spec.index)
        rep = reports.get(spec.index) or {"summary": safe_report(st, "summary"), "models": safe_report(st, "models")}
        entry = {
            "name": st.name,
            "scope": st.scope,
            "fingerprint": st.fingerprint(),
            "params": st.params.model_dump(mode="json"),
            "columns": {c: str(t) for c, t in st.output_schema().items()},
            # the declared contract (reads, writes with role and phase, reason prefix, selector), so
            # the report and export read what a stage did instead of guessing it
            "contract": st.contract(),
            # counted where keep flips, so a stage whose reasons carry another prefix (exact_dedup ->
            # "exact:dup") or a stage used twice is still attributed right
            "dropped": tally.dropped.get(spec.index, 0),
            "seconds": round(tally.seconds.get(spec.index, 0.0), 3),
            "io_seconds": round(tally.io_seconds.get(spec.index, 0.0), 3),
            "steps": tally.steps.get(spec.index, 0),
            "cache_hits": tally.hits.get(spec.index, 0),
        }
        if spec.index in tally.estimates:  # what the probe predicted, beside what it took
            entry["estimate"] = {k: v for k, v in tally.estimates[spec.index].items() if k not in ("stage", "name")}
        models = g.models if g is not None and g.models is not None else rep["models"]
        if models is not None:
            entry["models"] = models
        summary = g.summary if g is not None and g.summary is not None else rep["summary"]
        if summary is not None:
            entry["summary"] = summary
        out.append(entry)
    return out


def shard_columns(stages: list[Stage], row_schema: pa.Schema | None = None) -> dict[str, str]:
    """The declared schema of a final shard: canonical + user columns (``row_schema``: the run's union
    schema of its sources) + every stage's columns + decision + selection."""
    cols: dict[str, str] = {f.name: str(f.type) for f in CANONICAL}
    if row_schema is not None:
        cols.update({f.name: str(f.type) for f in row_schema if f.name not in cols})
    for s in stages:
        cols.update({c: str(t) for c, t in s.output_schema().items() if not c.startswith("_")})
    cols.update({f.name: str(f.type) for f in DECISION})
    cols.update({f.name: str(f.type) for f in SELECTION})
    return cols


def rejects_frame(run_dir: str | Path) -> pl.DataFrame:
    paths = list_shards(Path(run_dir) / "rejects")
    if not paths:
        return pl.from_arrow(REJECTS.empty_table())  # type: ignore[return-value]
    return pl.concat([pl.read_parquet(p) for p in paths])


def start_manifest(cfg: Config, run_id: str, run_dir: Path, engine: str) -> dict[str, Any]:
    """Write the ``running`` manifest of a run that is starting."""
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "status": "running",
        "engine": engine,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.model_dump(mode="json"),
        "config_hash": cfg.config_hash(),
        "versions": versions(),
    }
    write_json_atomic(manifest, run_dir / "manifest.json")
    return manifest


def complete_manifest(manifest: dict[str, Any], run_dir: Path, stages: list[Stage], plan: Plan,
                      sources: list[dict[str, Any]], outcome: dict[str, Any], tally: StageTally,
                      globals_: list[GlobalResult], timings: dict[str, float], layout: dict[str, Any],
                      extra: dict[str, Any] | None = None,
                      reports: dict[int, dict[str, Any]] | None = None, row_schema: pa.Schema | None = None
                      ) -> dict[str, Any]:
    """Fill in counts, stages, sources, timings, layout and the record of every output file; verify
    that every listed file is on disk as recorded; write ``manifest.json``.

    The status is ``complete`` only when the counts balance and every file verifies; otherwise
    ``unbalanced`` or :class:`RunIntegrityError` (the caller marks the run ``failed``)."""
    read = sum(s["read"] for s in sources)
    rejected = sum(s["rejected"] for s in sources)
    counts = make_counts(read, rejected, outcome)
    manifest.pop("estimates", None)  # the running manifest's; the stage entries carry them now
    manifest.update(
        status="complete",
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        counts=counts,
        sources=[{k: v for k, v in s.items() if k not in ("shards", "rejects")} for s in sources],
        stages=stage_entries(stages, plan.stages, tally, counts, globals_, reports),
        timings={k: round(v, 3) for k, v in timings.items()},
        layout={**layout, "shard_columns": shard_columns(stages, row_schema)},
        files=dict(sorted(outcome.get("files", {}).items())),
        **(extra or {}),
    )
    problems = verify_files(run_dir, manifest["files"])
    if problems:
        raise RunIntegrityError(run_dir, problems)
    if not counts["balanced"]:
        manifest["status"] = "unbalanced"
    write_json_atomic(manifest, run_dir / "manifest.json")
    return manifest


def fail_manifest(manifest: dict[str, Any], run_dir: Path, err: BaseException) -> None:
    """Mark the run ``failed`` (``interrupted`` for Ctrl-C / SIGTERM) with the error, best effort
    (the disk may be what failed)."""
    status = "interrupted" if is_interrupt(err) else "failed"
    manifest.update(status=status, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    error=f"{type(err).__name__}: {err}")
    with contextlib.suppress(OSError):
        write_json_atomic(manifest, run_dir / "manifest.json")


@contextlib.contextmanager
def failure_recorded(manifest: dict[str, Any], run_dir: Path) -> Iterator[None]:
    """Around a run's body: any error (or interrupt) marks ``manifest.json`` ``failed`` and goes on
    up. The manifest last written to disk is the one marked (it holds whatever the run recorded so
    far); ``manifest`` stands in when that cannot be read."""
    try:
        yield
    except BaseException as e:
        try:
            latest = json.loads((run_dir / "manifest.json").read_text())
        except (OSError, ValueError):
            latest = manifest
        fail_manifest(latest, run_dir, e)
        with contextlib.suppress(AttributeError, TypeError):
            e.run_id = latest.get("run_id")  # type: ignore[union-attr]  # for "resume with --run-id ..."
        raise


class Interrupted(Exception):
    """The run was asked to stop (SIGTERM); the manifest says ``interrupted`` and the run resumes
    with the same command and run id."""


def is_interrupt(err: BaseException) -> bool:
    """Ctrl-C, SIGTERM, or a step stopped because of one (:class:`pipeline.progress.Cancelled`).

    Any other signal-like exception counts too: a ``BaseException`` that is not an ``Exception``
    (nor ``SystemExit``/``GeneratorExit``), such as the ``TerminationSignal`` an orchestrator raises
    when it takes SIGTERM over while its flow runs."""
    from pipeline.progress import Cancelled

    if isinstance(err, (Interrupted, Cancelled)):
        return True
    return not isinstance(err, (Exception, SystemExit, GeneratorExit))


# ---------------------------------------------------------------- verification


class RunIntegrityError(RuntimeError):
    """Files a manifest lists are missing or differ from what was recorded."""

    def __init__(self, run_dir: str | Path, problems: list[str]) -> None:
        self.problems = problems
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"run {run_dir} does not match its manifest: {'; '.join(problems[:5])}{more}")


def verify_files(run_dir: str | Path, files: dict[str, dict[str, Any]], checksums: bool = True) -> list[str]:
    """Problems with the recorded output files of a run (empty when each is on disk as recorded):
    missing, another size, another row count, another checksum; and part files on disk that the
    manifest does not list."""
    run_dir = Path(run_dir)
    problems = []
    for rel, rec in files.items():
        p = run_dir / rel
        if not p.is_file():
            problems.append(f"{rel} is missing")
            continue
        if p.stat().st_size != rec["bytes"]:
            problems.append(f"{rel} has {p.stat().st_size} bytes, recorded {rec['bytes']}")
            continue
        try:
            rows = pq.read_metadata(p).num_rows
        except (OSError, pa.ArrowException) as e:
            problems.append(f"{rel} does not read ({e})")
            continue
        if rows != rec["rows"]:
            problems.append(f"{rel} has {rows} rows, recorded {rec['rows']}")
        elif checksums and file_fingerprint(p) != rec["xxh3"]:
            problems.append(f"{rel} has another checksum than recorded")
    listed_dirs = {rel.split("/")[0] for rel in files}
    for d in sorted(listed_dirs):
        for p in list_shards(run_dir / d):
            if f"{d}/{p.name}" not in files:
                problems.append(f"{d}/{p.name} is not in the manifest")
    return problems


def verify_run(run_dir: str | Path, checksums: bool = True) -> dict[str, Any]:
    """The manifest of a run after checking that every file it lists is on disk as recorded.

    Raises :class:`RunIntegrityError` naming what differs, and :class:`FileNotFoundError` when
    ``run_dir`` holds no manifest. Manifests from before file records were kept are returned as they
    are (nothing to check them against)."""
    mf = Path(run_dir) / "manifest.json"
    if not mf.is_file():
        raise FileNotFoundError(f"{run_dir} has no manifest.json (not a run directory)")
    manifest = json.loads(mf.read_text())
    if manifest.get("status") in ("complete", "unbalanced") and "files" in manifest:
        problems = verify_files(run_dir, manifest["files"], checksums)
        if problems:
            raise RunIntegrityError(run_dir, problems)
    return manifest
