"""The run engine: a run sequenced once (:mod:`~pipeline.engine.driver`), executors that decide only
where steps run (:mod:`~pipeline.engine.executor`), and the parts they share.

Modules, by concern:

* ``keys``: content keys (stage fingerprints + content of every file a stage reads);
* ``store``: the content-addressed work store;
* ``plan``: stages as data, segments and global steps; per-process stage instances;
* ``chains``: a shard as its ingest file + deltas; gathering columns for global steps;
* ``ingest``: sources into canonical shards; ``steps``: segment and global steps;
* ``finalize``: ``shards/``, ``selected/``, rejects, state; ``manifest``: counts, stage entries,
  file records and their verification; ``lock``: exclusive ownership of a run dir or nightly home;
* ``incremental``: nightly curation (ledger, pool, diff); ``driver``: the sequence itself.

``from pipeline.engine import run`` runs a config in this process.
"""

from pipeline.engine.driver import RunLayout, RunResult, decide_layout, execute, finish_run, run, run_config
from pipeline.engine.executor import Executor, LocalExecutor, engine_runner, engines
from pipeline.engine.lock import LockHeld
from pipeline.engine.manifest import RunIntegrityError, verify_run

__all__ = ["run", "run_config", "execute", "finish_run", "RunResult", "RunLayout", "decide_layout", "Executor",
           "LocalExecutor", "engines", "engine_runner", "LockHeld", "RunIntegrityError", "verify_run"]
