"""Run a config: ingest, stages shard by shard, shards + manifest; and the building blocks flows use.

A run is a DAG of *steps* over shards (see :func:`build_plan`):

* ``ingest`` (one per source) reads a source into canonical shards;
* ``row`` (per shard): a row stage's ``score`` then ``decide``;
* ``pre`` (per shard): a global stage's ``score`` (e.g. MinHash signatures);
* ``global`` (once): a global stage's ``score_global`` over the concatenated
  ``global_frame_columns()`` of every shard (:func:`gather_chains`), split back per shard;
* ``post`` (per shard): attach that global result and run the stage's ``decide``.

Consecutive per-shard steps between two global steps form a *segment*: one task per shard.

Every step's output is **content-addressed** in a :class:`WorkStore`: its key hashes the key of its
input (the shard's previous step, or for ingest the source file's content hash and reader settings),
the stage's fingerprint (name, version, params) and the run context that can change its result (seed,
device, the persisted state it reads). A per-shard step stores only its *delta* (the columns it added
or changed, plus ``keep``/``drop_reason``) as one Parquet file written atomically, so a shard is the
chain ``ingest shard + delta + delta ...`` and :func:`read_chain` reassembles it; a global step
stores its per-shard slices (and the stage's persisted state) in a directory committed by rename.
Hence a rerun of an unchanged config finds every step done and recomputes nothing; a changed
threshold changes that stage's key and so the keys of everything downstream of it; and a process
killed at any point (even ``kill -9`` mid-write) leaves only complete entries or temp files that
nothing reads, so the next run resumes where it stopped, without losing or duplicating a row.

:func:`run` is the sequential in-process engine (``curate run --engine local``); it keeps its work
store in ``<run>/work`` and removes it when the run completes. ``flows/curate.py`` maps the same
steps onto Prefect tasks with a store shared across runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from pipeline.config import Config
from pipeline.io.readers import SourceSpec, read_source
from pipeline.io.shards import ShardWriter, list_shards, write_parquet_atomic, write_table
from pipeline.schema import CANONICAL, DECISION, REJECTS, SELECTION, with_decision
from pipeline.stages.base import RunContext, Stage

ShardOp = Callable[[pl.DataFrame, int], pl.DataFrame]

#: bumped when the layout or meaning of work-store entries changes
STORE_VERSION = "1"
META_KEY = b"sft_curate"


# ---------------------------------------------------------------- small utilities


def write_json_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str))
    os.replace(tmp, path)


def _progress(it: Iterable[Any], desc: str, total: int | None, enabled: bool) -> Iterable[Any]:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, unit="shard", leave=False)


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("sft-curate", "polars", "pyarrow", "pydantic", "numba", "faiss-cpu", "torch", "transformers",
                "sentence-transformers", "prefect"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("sft-curate")
    except metadata.PackageNotFoundError:
        return "dev"


def new_run_id(name: str) -> str:
    return f"{name}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def hkey(*parts: Any) -> str:
    """A 128-bit content key (hex) of the given parts."""
    return xxhash.xxh3_128_hexdigest("\x1f".join(str(p) for p in parts).encode())


_FP_CACHE: dict[tuple[str, int, int], str] = {}


def file_fingerprint(path: str | Path) -> str:
    """xxh3-128 of a file's bytes, or of every file under a directory (names + bytes)."""
    p = Path(path)
    if p.is_dir():
        h = xxhash.xxh3_128()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode() + b"\0" + file_fingerprint(f).encode())
        return h.hexdigest()
    st = p.stat()
    ck = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if ck in _FP_CACHE:
        return _FP_CACHE[ck]
    h = xxhash.xxh3_128()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    _FP_CACHE[ck] = h.hexdigest()
    return _FP_CACHE[ck]


def is_stateful(stage: Stage) -> bool:
    """Whether a stage persists state for incremental runs (overrides :meth:`Stage.save_state`)."""
    return type(stage).save_state is not Stage.save_state


# ---------------------------------------------------------------- the work store


class WorkStore:
    """Content-addressed step outputs: ``<root>/<stage>/<kind>/<key>.parquet`` (per shard),
    ``<root>/<stage>/global/<key>/`` and ``<root>/_ingest/<key>/`` (directories committed by rename).
    Any entry may be deleted at any time; it is then recomputed."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def step_path(self, stage: str, kind: str, key: str) -> Path:
        return self.root / stage / kind / f"{key}.parquet"

    def global_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / "global" / key

    def ingest_dir(self, key: str) -> Path:
        return self.root / "_ingest" / key

    @staticmethod
    def done(entry: Path) -> bool:
        return (entry / "_meta.json").is_file()

    @staticmethod
    def tmp_for(entry: Path) -> Path:
        tmp = entry.with_name(f".{entry.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.mkdir(parents=True)
        return tmp

    @staticmethod
    def commit(tmp: Path, entry: Path, meta: dict[str, Any]) -> None:
        """Write ``_meta.json`` last, then rename the temp dir into place (a racing twin may win)."""
        write_json_atomic(meta, tmp / "_meta.json")
        if entry.exists() and not WorkStore.done(entry):
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not WorkStore.done(entry):
                raise
            shutil.rmtree(tmp, ignore_errors=True)

    def sweep_temps(self) -> int:
        """Remove temp files/dirs left by killed processes; returns how many."""
        n = 0
        if not self.root.is_dir():
            return 0
        for p in self.root.rglob(".*.tmp"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
        return n


# ---------------------------------------------------------------- plan


@dataclass(frozen=True)
class StageSpec:
    """A stage as data: enough to rebuild it in any worker process."""

    index: int
    name: str
    params: dict[str, Any]
    fingerprint: str
    scope: str
    stateful: bool
    is_selector: bool
    key: str  # fingerprint + the run context that can change its output

    @property
    def label(self) -> str:
        return f"{self.index:02d}-{self.name}"

    def build(self) -> Stage:
        from pipeline.stages import get_stage

        return get_stage(self.name)(self.params)


@dataclass(frozen=True)
class Step:
    kind: Literal["row", "pre", "post"]
    stage: int


@dataclass(frozen=True)
class Segment:
    """Per-shard steps run back to back in one task, then (optionally) one global step."""

    steps: tuple[Step, ...]
    global_stage: int | None

    def label(self, plan: Plan) -> str:
        names = [f"{plan.spec(s.stage).name}{'' if s.kind == 'row' else '.' + s.kind}" for s in self.steps]
        return "+".join(names) or "noop"


@dataclass(frozen=True)
class Plan:
    stages: tuple[StageSpec, ...]
    segments: tuple[Segment, ...]
    ctx: RunContext
    store_root: str
    token: str  # identifies the run for per-process stage instances

    @property
    def store(self) -> WorkStore:
        return WorkStore(self.store_root)

    def spec(self, index: int) -> StageSpec:
        """The spec of stage ``index`` (indices run on across plans split at the first selector)."""
        return self.stages[index - self.stages[0].index]


def make_context(cfg: Config, run_dir: Path, cache_dir: Path | None = None) -> RunContext:
    return RunContext(run_dir=run_dir, seed=cfg.run.seed, device=cfg.run.device,
                      state_in=cfg.resolve(cfg.run.state_in) if cfg.run.state_in else None,
                      state_out=run_dir / "state" if cfg.run.save_state else None,
                      cache_dir=cfg.resolve(cfg.run.cache_dir) if cfg.run.cache_dir else cache_dir)


def build_plan(stages: list[Stage] | list[tuple[str, dict[str, Any]]], ctx: RunContext, store_root: str | Path,
               start_index: int = 0) -> Plan:
    """Segments and stage specs for ``stages`` (instances or ``(name, params)`` pairs)."""
    built = [s if isinstance(s, Stage) else _build(*s) for s in stages]
    specs = []
    for i, st in enumerate(built, start=start_index):
        stateful = is_stateful(st)
        state_fp = "-"
        if stateful and ctx.state_in is not None and (ctx.state_in / st.name).exists():
            state_fp = file_fingerprint(ctx.state_in / st.name)
        key = hkey("stage", STORE_VERSION, _package_version(), st.fingerprint(), ctx.seed, ctx.device, state_fp)
        specs.append(StageSpec(i, st.name, st.params.model_dump(mode="python"), st.fingerprint(), st.scope,
                               stateful, st.is_selector, key))
    segments: list[Segment] = []
    steps: list[Step] = []
    for sp in specs:
        j = sp.index
        if sp.scope == "row":
            steps.append(Step("row", j))
            continue
        steps.append(Step("pre", j))
        segments.append(Segment(tuple(steps), j))
        steps = [Step("post", j)]
    segments.append(Segment(tuple(steps), None))
    return Plan(tuple(specs), tuple(segments), ctx, str(store_root), uuid.uuid4().hex)


def _build(name: str, params: dict[str, Any]) -> Stage:
    from pipeline.stages import get_stage

    return get_stage(name)(params)


# ---------------------------------------------------------------- per-process stage instances

_INSTANCES: dict[tuple[str, int], Stage] = {}
_SETUP_SECONDS: dict[tuple[str, int], float] = {}
_LOCK = threading.Lock()
MAX_LIVE_PLANS = 4


def stage_instance(plan: Plan, index: int) -> tuple[Stage, float]:
    """The set-up instance of stage ``index`` in this process (models load once per process and run);
    returns it and the seconds its setup took if this call did the setup (else 0)."""
    k = (plan.token, index)
    with _LOCK:
        st = _INSTANCES.get(k)
        if st is not None:
            return st, 0.0
        tokens = list(dict.fromkeys(o[0] for o in _INSTANCES))
        if plan.token not in tokens and len(tokens) >= MAX_LIVE_PLANS:
            # long-lived workers (an external cluster) serve many runs: drop the oldest run's models
            for other in [o for o in _INSTANCES if o[0] == tokens[0]]:
                _evict(other)
        t0 = time.perf_counter()
        st = plan.spec(index).build()
        st.setup(plan.ctx)
        _INSTANCES[k] = st
        dt = time.perf_counter() - t0
        _SETUP_SECONDS[k] = dt
        return st, dt


def _evict(k: tuple[str, int]) -> None:
    st = _INSTANCES.pop(k, None)
    _SETUP_SECONDS.pop(k, None)
    if st is not None:
        # a failing teardown must not mask the run's own error
        with contextlib.suppress(Exception):
            st.teardown()


def release_stage(plan: Plan, index: int | None = None) -> None:
    """Tear down this process's instance(s) of the plan's stages (all when ``index`` is None)."""
    with _LOCK:
        for k in [k for k in _INSTANCES if k[0] == plan.token and (index is None or k[1] == index)]:
            _evict(k)


def local_instances(plan: Plan) -> dict[int, Stage]:
    return {k[1]: st for k, st in _INSTANCES.items() if k[0] == plan.token}


def stage_reports(plan: Plan) -> dict[int, dict[str, Any]]:
    """``summary()``/``models()`` of the stages set up in this process, taken before teardown.

    Global stages report from their global step (stored with it); this covers row stages that ran
    here (local and threads engines). On process/cluster runners row stages report from a fresh,
    unused instance.
    """
    return {i: {"summary": _safe(st, "summary"), "models": _safe(st, "models")}
            for i, st in local_instances(plan).items()}


# ---------------------------------------------------------------- chains of shard files


@dataclass(frozen=True)
class ShardChain:
    """One shard: its final name, the files that make it (base, then deltas) and the key of the last."""

    name: str
    key: str
    files: tuple[str, ...]
    rows: int

    def extend(self, key: str, path: Path) -> ShardChain:
        return replace(self, key=key, files=(*self.files, str(path)))


class StoreCorruption(RuntimeError):
    """A work-store file could not be read; it has been removed so that a rerun recomputes it."""

    def __init__(self, path: str | Path, err: BaseException) -> None:
        self.path = str(path)
        super().__init__(f"work-store file {path} is unreadable ({type(err).__name__}: {err}); it was removed, "
                         "rerun (same run id) to recompute it")


def discard_entry(path: str | Path) -> None:
    """Remove a work-store entry: a step file, or the whole committed directory (ingest or global
    result, marked by ``_meta.json``) it belongs to, so the store never holds half an entry."""
    path = Path(path)
    if (path.parent / "_meta.json").is_file():
        shutil.rmtree(path.parent, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _guarded(path: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` (a read of ``path``), turning an unreadable or vanished file into :class:`StoreCorruption`."""
    try:
        return fn()
    except (OSError, pl.exceptions.PolarsError, pa.ArrowException) as e:
        discard_entry(path)
        raise StoreCorruption(path, e) from e


def _schema_names(path: str) -> list[str]:
    return _guarded(path, lambda: list(pl.read_parquet_schema(path)))


def read_chain(files: Iterable[str | Path], columns: Iterable[str] | None = None) -> pl.DataFrame:
    """Reassemble a shard from its chain: later files override earlier columns of the same name.

    With ``columns``, only those (that exist) are read, each from the last file that has it.
    """
    files = [str(f) for f in files]
    if columns is None:  # everything: no need to read the footers first
        series: dict[str, pl.Series] = {}
        height = None
        for f in files:
            df = _guarded(f, lambda f=f: pl.read_parquet(f))
            if height is not None and df.height != height:
                raise RuntimeError(f"shard chain is inconsistent: {f} has {df.height} rows, expected {height}")
            height = df.height
            series.update({s.name: s for s in df.iter_columns()})
        return pl.DataFrame(list(series.values()))
    owner: dict[str, int] = {}
    for i, f in enumerate(files):
        for c in _schema_names(f):
            owner[c] = i
    wanted = set(columns)
    order = [c for c in owner if c in wanted]
    by_file: dict[int, list[str]] = {}
    for c in order:
        by_file.setdefault(owner[c], []).append(c)
    series = {}
    height = None
    for i, cols in sorted(by_file.items()):
        df = _guarded(files[i], lambda i=i, cols=cols: pl.read_parquet(files[i], columns=cols))
        if height is not None and df.height != height:
            raise RuntimeError(f"shard chain is inconsistent: {files[i]} has {df.height} rows, expected {height}")
        height = df.height
        series.update({s.name: s for s in df.iter_columns()})
    return pl.DataFrame([series[c] for c in order])


def _delta(stage: Stage, before: list[str], out: pl.DataFrame, extra: Iterable[str] = ()) -> pl.DataFrame:
    declared = set(stage.output_schema()) | set(extra) | {"keep", "drop_reason"}
    cols = [c for c in out.columns if c not in before or c in declared]
    return out.select(cols)


def write_cache_file(table: pa.Table | pl.DataFrame, path: Path) -> Path:
    """Write a work-store file atomically (temp name + rename), without fsync.

    A killed process (even ``kill -9``) loses nothing the page cache holds, which is what resume
    needs; fsync only guards against an OS crash, after which the store (a cache) can be deleted.
    It halves the cost of a small step (measured: ~1.6 ms per fsync, ~1 per step and shard).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(table, pl.DataFrame):
        table = table.to_arrow()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_delta(df: pl.DataFrame, path: Path, meta: dict[str, Any]) -> Path:
    table = df.to_arrow()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    return write_cache_file(table, path)


def step_meta(path: str | Path) -> dict[str, Any]:
    md = pq.read_schema(path).metadata or {}
    return json.loads(md.get(META_KEY, b"{}"))


def _cached_meta(path: Path) -> dict[str, Any] | None:
    """A stored step's metadata, or None when it is missing or its footer is unreadable (then removed)."""
    if not path.is_file():
        return None
    try:
        return step_meta(path)
    except (OSError, pa.ArrowException, ValueError):
        discard_entry(path)
        return None


# ---------------------------------------------------------------- ingest


@dataclass
class IngestResult:
    shards: list[Path]
    rejects: list[Path]
    sources: list[dict[str, Any]]

    @property
    def read(self) -> int:
        return sum(s["read"] for s in self.sources)

    @property
    def rejected(self) -> int:
        return sum(s["rejected"] for s in self.sources)


def ingest_source(spec: SourceSpec, out_dir: Path, rejects_dir: Path, shard_rows: int, batch_rows: int,
                  prefix: str = "part-", shard_mb: float | None = None) -> dict[str, Any]:
    """Read one source into canonical shards under ``out_dir`` and rejects under ``rejects_dir``.

    Shards are named ``{prefix}NNNNN.parquet`` and hold at most ``shard_rows`` rows and about
    ``shard_mb`` MB; a source that yields no rows still gets one empty shard.
    """
    writer = ShardWriter(out_dir, shard_rows, CANONICAL, prefix, max_bytes=int(shard_mb * 2**20) if shard_mb else None)
    rj = ShardWriter(rejects_dir, shard_rows, None, prefix)
    read = rejected = 0
    fmt = None
    t0 = time.perf_counter()
    for batch in read_source(spec, batch_rows):
        writer.write(batch.rows)
        rj.write(batch.rejects)
        read += batch.n_read
        rejected += batch.rejects.num_rows
        fmt = batch.format or fmt
    writer.close()
    rj.close()
    reasons: dict[str, int] = {}
    if rejected:
        for p in rj.paths:
            for r, n in pl.read_parquet(p, columns=["reason"])["reason"].value_counts().iter_rows():
                reasons[r] = reasons.get(r, 0) + n
    return {
        "name": spec.source_name,
        "path": spec.path,
        "format": fmt,
        "read": read,
        "rows": read - rejected,
        "rejected": rejected,
        "reject_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:50]),
        "seconds": round(time.perf_counter() - t0, 3),
        "shards": [str(p) for p in writer.paths],
        "rejects": [str(p) for p in rj.paths],
    }


def ingest(cfg: Config, work_dir: Path, rejects_dir: Path, progress: bool = False) -> IngestResult:
    """Uncached ingest of every source of ``cfg`` (kept for callers of the foundation API)."""
    sources = []
    for i, spec in enumerate(source_specs(cfg)):
        sources.append(ingest_source(spec, work_dir, rejects_dir, cfg.run.shard_rows, cfg.run.read_batch_rows,
                                     prefix=f"part-{i:03d}-", shard_mb=cfg.run.shard_mb))
    shards = [Path(p) for s in sources for p in s["shards"]]
    rejects = [Path(p) for s in sources for p in s["rejects"]]
    return IngestResult(shards, rejects, sources)


def source_specs(cfg: Config) -> list[SourceSpec]:
    return [SourceSpec(path=str(cfg.resolve(sc.path)), name=sc.name, container=sc.container, format=sc.format,
                       hf_builder=sc.hf_builder, hf_split=sc.hf_split) for sc in cfg.sources]


def source_key(spec: SourceSpec, shard_rows: int, shard_mb: float | None = None) -> str:
    """Key of a source's ingest: its content hash and every reader setting that shapes the shards."""
    content = file_fingerprint(spec.path) if spec.container != "hf_load" and Path(spec.path).exists() else "-"
    return hkey("ingest", STORE_VERSION, _package_version(), content, spec.source_name, spec.container, spec.format,
                spec.hf_builder, spec.hf_split, json.dumps(spec.hf_kwargs, sort_keys=True, default=str), shard_rows, shard_mb)


@dataclass(frozen=True)
class IngestRef:
    """A source's ingest as stored: its stats, shard chains (named ``{prefix}NNNNN``) and rejects."""

    source: dict[str, Any]
    chains: tuple[ShardChain, ...]
    rejects: tuple[str, ...]
    cached: bool
    seconds: float


def ingest_cached(spec: SourceSpec, store: WorkStore, shard_rows: int, batch_rows: int, prefix: str,
                  shard_mb: float | None = None) -> IngestRef:
    """Ingest one source into the work store, or find it there (same content and reader settings)."""
    key = source_key(spec, shard_rows, shard_mb)
    entry = store.ingest_dir(key)
    cached = WorkStore.done(entry)
    t0 = time.perf_counter()
    if not cached:
        tmp = WorkStore.tmp_for(entry)
        info = ingest_source(spec, tmp, tmp / "rejects", shard_rows, batch_rows, shard_mb=shard_mb)
        info["shards"] = [Path(p).name for p in info["shards"]]
        info["rejects"] = [Path(p).name for p in info["rejects"]]
        info["shard_rows"] = [pq.read_metadata(tmp / n).num_rows for n in info["shards"]]
        WorkStore.commit(tmp, entry, info)
    info = json.loads((entry / "_meta.json").read_text())
    chains = tuple(
        ShardChain(f"{prefix}{n:05d}.parquet", hkey(key, prefix, n), (str(entry / name),), rows)
        for n, (name, rows) in enumerate(zip(info["shards"], info["shard_rows"], strict=True))
    )
    rejects = tuple(str(entry / "rejects" / n) for n in info["rejects"])
    source = {k: v for k, v in info.items() if k not in ("shards", "rejects", "shard_rows")}
    source["path"] = spec.path
    return IngestRef(source, chains, rejects, cached, time.perf_counter() - t0)


# ---------------------------------------------------------------- per-shard steps


@dataclass(frozen=True)
class StepStat:
    stage: int
    kind: str
    cached: bool
    seconds: float  # stage compute (score/decide/score_global, plus setup when this step did it)
    io_seconds: float = 0.0
    dropped: int = 0  # rows this step turned from kept to dropped


@dataclass(frozen=True)
class GlobalRef:
    stage: int
    key: str
    dir: str
    n_shards: int


@dataclass(frozen=True)
class SegmentResult:
    chain: ShardChain
    stats: tuple[StepStat, ...]

    @property
    def cached(self) -> bool:
        return all(s.cached for s in self.stats)


class StepError(RuntimeError):
    """A stage failed on a shard; ``__cause__`` is the original error."""

    def __init__(self, message: str, stage: int) -> None:
        super().__init__(message)
        self.stage = stage


class ChainFrames:
    """Shard chains this process just wrote, held as :func:`read_chain` would return them, so the
    next segment (or finalize) does not read back from disk what it has just written.

    Entries are keyed by the chain's file tuple (content-addressed, immutable), taken out when
    used (each chain state is read once), and bounded by ``max_bytes`` (least recently written
    dropped first); a miss simply reads the files. ``SFT_CURATE_CHAIN_CACHE_MB`` sets the bound
    (default 256; 0 turns it off).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._frames: dict[tuple[str, ...], tuple[pl.DataFrame, int]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, files: tuple[str, ...], df: pl.DataFrame) -> None:
        size = int(df.estimated_size())
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._frames.pop(files, None)
            if old is not None:
                self._bytes -= old[1]
            while self._frames and self._bytes + size > self.max_bytes:
                oldest = next(iter(self._frames))  # dicts keep insertion order
                self._bytes -= self._frames.pop(oldest)[1]
            self._frames[files] = (df, size)
            self._bytes += size

    def take(self, files: tuple[str, ...]) -> pl.DataFrame | None:
        with self._lock:
            hit = self._frames.pop(tuple(files), None)
            if hit is None:
                return None
            self._bytes -= hit[1]
            return hit[0]

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
            self._bytes = 0


CHAIN_FRAMES = ChainFrames(int(os.environ.get("SFT_CURATE_CHAIN_CACHE_MB", "256")) << 20)


def read_chain_cached(files: tuple[str, ...]) -> pl.DataFrame:
    """:func:`read_chain` of a whole chain, from :data:`CHAIN_FRAMES` when this process wrote it."""
    hit = CHAIN_FRAMES.take(tuple(files))
    return hit if hit is not None else read_chain(files)


def _step_key(plan: Plan, chain_key: str, step: Step, gref: GlobalRef | None) -> str:
    spec = plan.spec(step.stage)
    return hkey(step.kind, spec.key, chain_key, gref.key if step.kind == "post" and gref else "")


def run_segment(plan: Plan, seg_index: int, chain: ShardChain, gref: GlobalRef | None = None) -> SegmentResult:
    """Run one segment's per-shard steps on one shard, reusing every step already in the store."""
    seg = plan.segments[seg_index]
    store = plan.store
    keys, paths = [], []
    k = chain.key
    for step in seg.steps:
        spec = plan.spec(step.stage)
        k = _step_key(plan, k, step, gref)
        keys.append(k)
        paths.append(store.step_path(spec.name, step.kind, k))
    metas: list[dict[str, Any]] = []
    for p in paths:
        m = _cached_meta(p)
        if m is None:
            break
        metas.append(m)
    first = len(metas)
    stats = [StepStat(s.stage, s.kind, True, 0.0, 0.0, metas[i].get("dropped", 0))
             for i, s in enumerate(seg.steps[:first])]
    out_chain = chain
    for i in range(first):
        out_chain = out_chain.extend(keys[i], paths[i])
    if first == len(paths):
        return SegmentResult(out_chain, tuple(stats))
    t0 = time.perf_counter()
    chain_df = read_chain_cached(out_chain.files)  # what the chain's files hold, step by step below
    df = with_decision(chain_df)
    io = time.perf_counter() - t0
    for i in range(first, len(paths)):
        step = seg.steps[i]
        spec = plan.spec(step.stage)
        try:
            stage, setup_s = stage_instance(plan, step.stage)
            before = df.columns
            extra: list[str] = []
            if step.kind == "post":
                if gref is None or gref.stage != step.stage:
                    raise RuntimeError("post step without its global result")
                t0 = time.perf_counter()
                slice_path = str(Path(gref.dir) / _slice_name(_shard_pos(chain, gref)))
                add = _guarded(slice_path, lambda p=slice_path: pl.read_parquet(p))
                io += time.perf_counter() - t0
                if add.height != df.height:
                    raise RuntimeError(f"global result has {add.height} rows for a shard of {df.height}")
                extra = add.columns
            t0 = time.perf_counter()
            if step.kind == "row":
                out = stage.decide(stage.score(df))
            elif step.kind == "pre":
                out = stage.score(df)
            else:
                out = stage.decide(df.with_columns(add))
            dt = time.perf_counter() - t0
            if out.height != df.height:
                raise RuntimeError(f"{spec.name}: {step.kind} returned {out.height} rows for {df.height}; "
                                   "stages must not add or remove rows")
        except Exception as e:
            raise StepError(f"stage {spec.label} ({step.kind}) failed on shard {chain.name}: "
                            f"{type(e).__name__}: {e}", step.stage) from e
        t0 = time.perf_counter()
        dropped = int((df["keep"] & ~out["keep"]).sum())
        delta = _delta(stage, before, out, extra)
        _write_delta(delta, paths[i],
                     {"stage": spec.name, "kind": step.kind, "seconds": round(dt + setup_s, 6), "rows": out.height,
                      "dropped": dropped, "pid": os.getpid()})
        chain_df = chain_df.with_columns(delta)  # read_chain's rule: later files override, new columns append
        io += time.perf_counter() - t0
        stats.append(StepStat(step.stage, step.kind, False, dt + setup_s, io, dropped))
        io = 0.0
        df = out
        out_chain = out_chain.extend(keys[i], paths[i])
    CHAIN_FRAMES.put(out_chain.files, chain_df)
    return SegmentResult(out_chain, tuple(stats))


# ---------------------------------------------------------------- global steps

_POSITIONS: dict[str, dict[str, int]] = {}


def _slice_name(i: int) -> str:
    return f"part-{i:05d}.parquet"


def _shard_pos(chain: ShardChain, gref: GlobalRef) -> int:
    pos = _POSITIONS.get(gref.key)
    if pos is None:
        pos = json.loads((Path(gref.dir) / "_meta.json").read_text())["positions"]
        _POSITIONS[gref.key] = pos
    return pos[chain.key]


def gather_global(paths: list[Path], columns: list[str]) -> pl.DataFrame:
    """The named columns of every shard, concatenated, with ``_shard`` and ``_pos`` to slice back."""
    return gather_chains([(str(p),) for p in paths], columns)


def gather_chains(chains: list[tuple[str, ...]], columns: list[str]) -> pl.DataFrame:
    """Like :func:`gather_global` over shard chains: each column read from the file that last wrote it."""
    frames = []
    cols = list(dict.fromkeys(columns))
    for i, files in enumerate(chains):
        df = with_decision(read_chain(files, cols)) if "keep" in cols else read_chain(files, cols)
        df = df.select([c for c in cols if c in df.columns])
        frames.append(df.with_columns(pl.lit(i, dtype=pl.Int32).alias("_shard"),
                                      pl.int_range(pl.len(), dtype=pl.Int64).alias("_pos")))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


class ChainColumnReader:
    """Rows of one column of the gathered pool, read from the shard chains a shard at a time.

    Serves :meth:`Stage.global_column` for a stage's :attr:`Stage.global_lazy_inputs`: only the
    shards that hold requested rows are read, and only that column, so memory is one shard's column
    plus the rows asked for, not the whole pool's."""

    def __init__(self, chains: list[tuple[str, ...]], shard: np.ndarray, pos: np.ndarray) -> None:
        self.chains = chains
        self.shard = np.asarray(shard, dtype=np.int64)
        self.pos = np.asarray(pos, dtype=np.int64)

    def __call__(self, name: str, rows: np.ndarray) -> pl.Series:
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return read_chain(self.chains[0], [name])[name].clear() if self.chains else pl.Series(name, [])
        sh, ps = self.shard[rows], self.pos[rows]
        order = np.lexsort((ps, sh))
        cuts = np.flatnonzero(np.diff(sh[order])) + 1

        def read(seg: np.ndarray) -> pl.Series:
            return read_chain(self.chains[int(sh[seg[0]])], [name])[name].gather(ps[seg])

        # two shards at a time: memory stays at two shards' column, and the reads overlap
        with ThreadPoolExecutor(max_workers=2) as ex:
            parts = list(ex.map(read, np.split(order, cuts)))
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        return pl.concat(parts).gather(inv)


def split_global(result: pl.DataFrame, new_columns: list[str], n_shards: int) -> list[pl.DataFrame]:
    """Per-shard slices (in shard row order) of the columns a global stage added."""
    parts = {k[0]: v for k, v in result.sort(["_shard", "_pos"]).partition_by("_shard", as_dict=True).items()}
    empty = result.select(new_columns).clear()
    return [parts[i].select(new_columns) if i in parts else empty for i in range(n_shards)]


def global_new_columns(stage: Stage, before: list[str], after: pl.DataFrame) -> list[str]:
    """Columns a global step hands back to the shards: new ones, and the stage's declared columns
    unless they are scratch inputs (``_*``) it gathered (writing those back would copy them whole)."""
    return [c for c in after.columns if c not in ("_shard", "_pos")
            and (c not in before or (c in stage.columns and not c.startswith("_")))]


@dataclass(frozen=True)
class GlobalResult:
    ref: GlobalRef
    stat: StepStat
    summary: dict[str, Any] | None = None
    models: dict[str, Any] | None = None


def _saves_state(plan: Plan, index: int) -> bool:
    """Whether a global step also persists the stage's state (only when the run keeps state)."""
    return plan.spec(index).stateful and plan.ctx.state_out is not None


def global_key(plan: Plan, index: int, chains: list[ShardChain]) -> str:
    spec = plan.spec(index)
    return hkey("global", spec.key, "state" if _saves_state(plan, index) else "", *[c.key for c in chains])


def run_global(plan: Plan, index: int, chains: list[ShardChain]) -> GlobalResult:
    """A global stage's ``score_global`` over all shards, stored as per-shard slices (plus its state)."""
    spec = plan.spec(index)
    key = global_key(plan, index, chains)
    entry = plan.store.global_dir(spec.name, key)
    ref = GlobalRef(index, key, str(entry), len(chains))
    if WorkStore.done(entry):
        meta = json.loads((entry / "_meta.json").read_text())
        return GlobalResult(ref, StepStat(index, "global", True, 0.0), meta.get("summary"), meta.get("models"))
    stage: Stage | None = None
    try:  # whatever happens, the stage does not keep the run's column reader
        try:
            stage, setup_s = stage_instance(plan, index)
            t0 = time.perf_counter()
            files = [c.files for c in chains]
            g = gather_chains(files, [c for c in stage.global_frame_columns() if c not in stage.global_lazy_inputs])
            io = time.perf_counter() - t0
            t0 = time.perf_counter()
            before = g.columns
            if stage.global_lazy_inputs and g.height:
                stage.column_reader = ChainColumnReader(files, g["_shard"].to_numpy(), g["_pos"].to_numpy())
            g2 = stage.score_global(g)
            dt = time.perf_counter() - t0
            if g2.height != g.height:
                raise RuntimeError(f"score_global returned {g2.height} rows for {g.height}")
            new = global_new_columns(stage, before, g2)
            slices = split_global(g2, new, len(chains)) if chains else []
        except Exception as e:
            raise StepError(f"stage {spec.label} (global) failed: {type(e).__name__}: {e}", index) from e
        t0 = time.perf_counter()
        tmp = WorkStore.tmp_for(entry)
        for i, s in enumerate(slices):
            write_cache_file(s, tmp / _slice_name(i))
        if _saves_state(plan, index):
            stage.save_state(tmp / "state")
        else:
            stage.release_global()
    finally:
        if stage is not None:
            stage.column_reader = None
    summary = _safe(stage, "summary")
    models = _safe(stage, "models")
    WorkStore.commit(tmp, entry, {
        "stage": spec.name, "kind": "global", "seconds": round(dt + setup_s, 6), "rows": g.height, "pid": os.getpid(),
        "columns": new, "positions": {c.key: i for i, c in enumerate(chains)}, "summary": summary, "models": models,
    })
    io += time.perf_counter() - t0
    return GlobalResult(ref, StepStat(index, "global", False, dt + setup_s, io), summary, models)


def _safe(stage: Stage, attr: str) -> Any:
    fn = getattr(stage, attr, None)
    if fn is None:
        return None
    try:
        return json.loads(json.dumps(fn(), default=str))
    except Exception as e:  # noqa: BLE001 - a summary must never fail a run
        return {"error": f"{type(e).__name__}: {e}"}


# ---------------------------------------------------------------- finalize + manifest


def finalize_frame(df: pl.DataFrame) -> pl.DataFrame:
    """A final shard: scratch columns dropped, selection columns present (selected = keep without a selector)."""
    df = with_decision(df)
    df = df.select([c for c in df.columns if not c.startswith("_")])
    if "selected" not in df.columns:
        df = df.with_columns(pl.when(pl.col("keep")).then(pl.lit(True)).otherwise(None).alias("selected"),
                             pl.lit(None, pl.String).alias("select_reason"), pl.lit(None, pl.Int64).alias("select_rank"))
    return df


def finalize_chain(chain: ShardChain, run_dir: Path, write_shard: bool = True) -> dict[str, Any]:
    """Write one final shard to ``shards/`` and its selected rows to ``selected/``; its counts."""
    df = finalize_frame(read_chain_cached(chain.files))
    if write_shard:
        write_parquet_atomic(df, run_dir / "shards" / chain.name)
    sel = df.filter(pl.col("keep") & pl.col("selected").fill_null(False))
    write_parquet_atomic(sel, run_dir / "selected" / chain.name)
    reasons = {r: n for r, n in df.filter(~pl.col("keep"))["drop_reason"].value_counts().iter_rows()}
    return {"rows": df.height, "kept": int(df["keep"].sum()), "selected": sel.height, "dropped_by_reason": reasons}


def materialize_chain(chain: ShardChain, path: Path, drop: Iterable[str] = ()) -> dict[str, Any]:
    """Write a shard chain as one self-contained Parquet file (all columns but ``drop``)."""
    df = with_decision(read_chain(chain.files))
    df = df.drop([c for c in drop if c in df.columns])
    write_parquet_atomic(df, path)
    return {"name": chain.name, "key": chain.key, "path": str(path), "rows": df.height, "kept": int(df["keep"].sum())}


def merge_outcomes(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": 0, "kept": 0, "selected": 0, "dropped_by_reason": {}}
    for p in parts:
        for k in ("rows", "kept", "selected"):
            out[k] += p[k]
        for r, n in p["dropped_by_reason"].items():
            out["dropped_by_reason"][r] = out["dropped_by_reason"].get(r, 0) + n
    return out


def finalize_shards(paths: list[Path], run_dir: Path, any_selector: bool = False) -> dict[str, Any]:
    """Write ``shards/`` (every row, scratch columns dropped) and ``selected/``; count outcomes."""
    return merge_outcomes(finalize_chain(ShardChain(p.name, "", (str(p),), 0), run_dir) for p in paths)


def copy_rejects(refs: Iterable[IngestRef], prefixes: Iterable[str], run_dir: Path) -> None:
    for ref, prefix in zip(refs, prefixes, strict=True):
        for n, p in enumerate(ref.rejects):
            dst = run_dir / "rejects" / f"{prefix}{n:05d}.parquet"
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(p, tmp)
            os.replace(tmp, dst)


def write_rejects_and_state(plan: Plan, globals_: Iterable[GlobalResult], refs: Iterable[IngestRef],
                            prefixes: Iterable[str], run_dir: Path) -> None:
    """After finalize: the sources' rejects into ``rejects/``, and each stateful stage's state when the
    run keeps state (``run.save_state``)."""
    copy_rejects(refs, prefixes, run_dir)
    if plan.ctx.state_out is not None:
        collect_state(plan, globals_, plan.ctx.state_out)


def collect_state(plan: Plan, globals_: Iterable[GlobalResult], state_out: Path) -> list[str]:
    """Copy each stateful stage's persisted state into ``state_out/<stage>``.

    Global stages saved theirs inside their (cached) global step; row stages that keep state are
    asked here, in this process (only meaningful when they ran in it: the local and threads engines).
    """
    saved = []
    by_stage = {g.ref.stage: g for g in globals_}
    instances = local_instances(plan)
    for spec in plan.stages:
        if not spec.stateful:
            continue
        dst = state_out / spec.name
        if dst.exists():
            shutil.rmtree(dst)
        g = by_stage.get(spec.index)
        if g is not None:
            src = Path(g.ref.dir) / "state"
            if src.exists():
                shutil.copytree(src, dst)
            else:
                dst.mkdir(parents=True, exist_ok=True)
            saved.append(spec.name)
        elif spec.index in instances:
            instances[spec.index].save_state(dst)
            saved.append(spec.name)
    return saved


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
        rep = reports.get(spec.index) or {"summary": _safe(st, "summary"), "models": _safe(st, "models")}
        entry = {
            "name": st.name,
            "scope": st.scope,
            "fingerprint": st.fingerprint(),
            "params": st.params.model_dump(mode="json"),
            "columns": {c: str(t) for c, t in st.output_schema().items()},
            # counted where keep flips, so a stage whose reasons carry another prefix (exact_dedup ->
            # "exact:dup") or a stage used twice is still attributed right
            "dropped": tally.dropped.get(spec.index, 0),
            "seconds": round(tally.seconds.get(spec.index, 0.0), 3),
            "io_seconds": round(tally.io_seconds.get(spec.index, 0.0), 3),
            "steps": tally.steps.get(spec.index, 0),
            "cache_hits": tally.hits.get(spec.index, 0),
        }
        models = g.models if g is not None and g.models is not None else rep["models"]
        if models is not None:
            entry["models"] = models
        summary = g.summary if g is not None and g.summary is not None else rep["summary"]
        if summary is not None:
            entry["summary"] = summary
        out.append(entry)
    return out


def shard_columns(stages: list[Stage]) -> dict[str, str]:
    """The declared schema of a final shard: canonical + every stage's columns + decision + selection."""
    cols: dict[str, str] = {f.name: str(f.type) for f in CANONICAL}
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


# ---------------------------------------------------------------- run directory


def prepare_run_dir(cfg: Config, out: str | Path | None, run_id: str | None) -> tuple[Path, str]:
    """Resolve and clean ``<out>/<run_id>`` for a (re)run; refuses to overwrite a complete run."""
    out_root = Path(out) if out else cfg.resolve(cfg.run.out)
    run_id = run_id or new_run_id(cfg.run.name)
    run_dir = (out_root / run_id).resolve()
    if not run_dir.is_relative_to(out_root.resolve()):
        raise ValueError(f"run id {run_id!r} escapes the output directory {out_root}")
    mf = run_dir / "manifest.json"
    if mf.exists() and json.loads(mf.read_text()).get("status") == "complete":
        raise FileExistsError(f"{run_dir} already holds a complete run; choose another run id")
    for d in ("shards", "selected", "rejects", "state"):
        if (run_dir / d).exists():
            shutil.rmtree(run_dir / d)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, run_id


def start_manifest(cfg: Config, run_id: str, run_dir: Path, engine: str) -> dict[str, Any]:
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
                      globals_: list[GlobalResult], timings: dict[str, float], extra: dict[str, Any] | None = None,
                      reports: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Fill in counts, stages, sources, timings and layout; write ``manifest.json``."""
    read = sum(s["read"] for s in sources)
    rejected = sum(s["rejected"] for s in sources)
    counts = make_counts(read, rejected, outcome)
    manifest.update(
        status="complete",
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        counts=counts,
        sources=[{k: v for k, v in s.items() if k not in ("shards", "rejects")} for s in sources],
        stages=stage_entries(stages, plan.stages, tally, counts, globals_, reports),
        timings={k: round(v, 3) for k, v in timings.items()},
        layout={"shards": "shards/", "selected": "selected/", "rejects": "rejects/",
                "shard_columns": shard_columns(stages)},
        **(extra or {}),
    )
    if not counts["balanced"]:
        manifest["status"] = "unbalanced"
    write_json_atomic(manifest, run_dir / "manifest.json")
    return manifest


def fail_manifest(manifest: dict[str, Any], run_dir: Path, err: BaseException) -> None:
    """Mark the run ``failed`` with the error, best effort (the disk may be what failed)."""
    manifest.update(status="failed", finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
        raise


def finish_run(run_dir: Path, cfg: Config, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """After a complete run: the HTML report (``run.report``) and the configured exports (``export:``).

    ``curate run`` and the Prefect flow call this; :func:`run` itself does not, so library callers
    and tests pay for neither unless they ask.
    """
    log = log or (lambda _m: None)
    out: dict[str, Any] = {}
    if cfg.run.report:
        from pipeline.report import write_report

        out["report"] = str(write_report(run_dir))
        log(f"  report: {out['report']}")
    if cfg.export:
        from pipeline.export import run_exports

        out["exports"] = run_exports(run_dir, cfg.export)
        for e in out["exports"]:
            log(f"  export {e.get('format')}: {e.get('exported', '?')} rows -> {e.get('out')}")
    return out


# ---------------------------------------------------------------- the sequential runner


@dataclass
class RunResult:
    run_dir: Path
    manifest: dict[str, Any]

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest["counts"]


def run(cfg: Config, out: str | Path | None = None, run_id: str | None = None, progress: bool = False,
        log: Callable[[str], None] | None = None) -> RunResult:
    """Run ``cfg`` in this process and return the run directory and its manifest.

    The work store lives in ``<run>/work``: rerunning the same ``run_id`` after a crash resumes from
    the steps already there; it is removed once the run completes.
    """
    log = log or (lambda _m: None)
    if cfg.flow.incremental is not None and not cfg.sources:
        raise ValueError("flow.incremental: incremental nightly curation runs on the Prefect engine "
                         "(`curate run CONFIG --engine prefect` or `python -m flows.curate CONFIG`)")
    t_start = time.perf_counter()
    run_dir, run_id = prepare_run_dir(cfg, out, run_id)
    stages = cfg.build_stages()
    manifest = start_manifest(cfg, run_id, run_dir, "local")
    with failure_recorded(manifest, run_dir):
        store = WorkStore(run_dir / "work")
        store.sweep_temps()
        plan = build_plan(stages, make_context(cfg, run_dir), store.root)

        log(f"run {run_id}: ingesting {len(cfg.sources)} source(s)")
        t0 = time.perf_counter()
        prefixes = [f"part-{i:03d}-" for i in range(len(cfg.sources))]
        refs = [ingest_cached(spec, store, cfg.run.shard_rows, cfg.run.read_batch_rows, prefix, cfg.run.shard_mb)
                for spec, prefix in zip(source_specs(cfg), prefixes, strict=True)]
        t_ingest = time.perf_counter() - t0
        sources = [r.source for r in refs]
        chains = [c for r in refs for c in r.chains]
        log(f"  read {sum(s['read'] for s in sources):,} rows, rejected {sum(s['rejected'] for s in sources):,}, "
            f"{len(chains)} shard(s) in {t_ingest:.1f}s")

        tally = StageTally()
        globals_: list[GlobalResult] = []
        gref: GlobalRef | None = None
        try:
            for si, seg in enumerate(plan.segments):
                results = [run_segment(plan, si, c, gref)
                           for c in _progress(chains, f"pass {si + 1}", len(chains), progress)]
                chains = [r.chain for r in results]
                for r in results:
                    tally.add(r.stats)
                if seg.global_stage is not None:
                    g = run_global(plan, seg.global_stage, chains)
                    globals_.append(g)
                    tally.add([g.stat])
                    gref = g.ref
                    log(f"  {plan.spec(seg.global_stage).name}: global step done")
            t0 = time.perf_counter()
            outcome = merge_outcomes(finalize_chain(c, run_dir) for c in chains)
            write_rejects_and_state(plan, globals_, refs, prefixes, run_dir)
            t_final = time.perf_counter() - t0
            reports = stage_reports(plan)
        finally:
            release_stage(plan)
        shutil.rmtree(store.root, ignore_errors=True)
        timings = {"ingest_s": t_ingest, "finalize_s": t_final, "compute_s": tally.compute_seconds,
                   "total_s": time.perf_counter() - t_start}
        manifest = complete_manifest(manifest, run_dir, stages, plan, sources, outcome, tally, globals_, timings,
                                     reports=reports)
        c = manifest["counts"]
        log(f"  kept {c['kept']:,}, dropped {c['dropped']:,}, rejected {c['rejected']:,}, selected {c['selected']:,}")
        return RunResult(run_dir, manifest)


__all__ = ["run", "RunResult", "ingest", "ingest_source", "ingest_cached", "apply_row_stages", "gather_global",
           "gather_chains", "split_global", "finalize_shards", "finalize_chain", "rejects_frame", "build_plan",
           "run_segment", "run_global", "read_chain", "WorkStore", "ShardChain", "Plan", "pa"]


def apply_row_stages(in_paths: list[Path], out_dir: Path, ops: list[ShardOp], progress: bool = False,
                     desc: str = "stages") -> list[Path]:
    """One pass: read each shard, apply ``ops`` in order, write it to ``out_dir`` (same index)."""
    out = []
    for i, p in enumerate(_progress(in_paths, desc, len(in_paths), progress)):
        df = with_decision(pl.read_parquet(p))
        for op in ops:
            df = op(df, i)
        out.append(write_parquet_atomic(df, out_dir / p.name))
    return out
