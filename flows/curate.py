"""Prefect: the engine that runs the curation driver's steps as Prefect tasks.

``flows/`` holds no curation logic. :func:`pipeline.engine.driver.execute` sequences the run (the
same for every engine); :class:`PrefectExecutor` only decides where each step runs: one Prefect task
per source (``ingest``), per shard or batch of shards (``shard``, ``finalize``, ``pool``) and per
global stage (``global``), under the task runner named by ``flow.task_runner`` (``threads``
default, ``processes``, ``dask`` or ``ray``; ``flow.address`` points at an existing cluster), with
retries of transient errors (``flow.retries``, exponential backoff from ``flow.retry_delay_s``) and,
on Ray, placement by the CPUs/GPUs the stages declare. A task whose steps were all found in the work
store ends in a ``Completed`` state named ``Cached``.

``python -m flows.curate CONFIG [--out DIR] [--run-id ID] [--input-dir DIR]`` runs it from a shell;
``curate run CONFIG`` (engine ``prefect``, registered as an entry point) does the same.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import quote

from pipeline import progress
from pipeline.config import FlowSettings, load_config
from pipeline.engine.driver import RunResult, execute
from pipeline.engine.manifest import is_interrupt
from pipeline.engine.steps import is_transient
from pipeline.stages.base import Resources

# ---------------------------------------------------------------- tasks


def _is_cached(r: Any) -> bool:
    if hasattr(r, "cached"):
        return bool(r.cached)
    stat = getattr(r, "stat", None)
    return bool(getattr(stat, "cached", False))


def _call_batch(fn: Callable[[Any], Any], batch: Sequence[Any], label: str) -> Any:
    res = [fn(x) for x in batch]
    if res and all(_is_cached(r) for r in res):
        return Completed(data=res, name="Cached", message=f"{label}: found in the work store")
    return res


@task(name="ingest", cache_policy=NO_CACHE, task_run_name="ingest[{label}]")
def ingest_task(fn: Callable[[Any], Any], batch: Sequence[Any], label: str) -> Any:
    """Read a source into canonical shards in the work store."""
    return _call_batch(fn, batch, label)


@task(name="shard", cache_policy=NO_CACHE, task_run_name="{label}")
def shard_task(fn: Callable[[Any], Any], batch: Sequence[Any], label: str) -> Any:
    """The per-shard steps of one segment on one shard (or a batch: ``flow.shards_per_task``)."""
    return _call_batch(fn, batch, label)


@task(name="global", cache_policy=NO_CACHE, task_run_name="{label}")
def global_task(fn: Callable[[Any], Any], batch: Sequence[Any], label: str) -> Any:
    """A global stage over the whole pool (only its input columns are gathered)."""
    return _call_batch(fn, batch, label)


@task(name="finalize", cache_policy=NO_CACHE, task_run_name="finalize[{label}]")
def finalize_task(fn: Callable[[Any], Any], batch: Sequence[Any], label: str) -> Any:
    """Write final shards and their selected rows."""
    return _call_batch(fn, batch, label)


@task(name="pool", cache_policy=NO_CACHE, task_run_name="pool[{label}]")
def pool_task(fn: Callable[[Any], Any], batch: Sequence[Any], label: str) -> Any:
    """Add tonight's shards to the durable nightly pool."""
    return _call_batch(fn, batch, label)


#: seconds between progress lines of one long task in the task-run log
PROGRESS_LOG_S = 10.0

TASKS = {"ingest": ingest_task, "shard": shard_task, "global": global_task, "finalize": finalize_task,
         "pool": pool_task}
BATCHED = ("shard", "finalize", "pool")


def _retry_condition(_task: Any, _task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as e:  # noqa: BLE001 - classifying the task's own error
        return is_transient(e)
    return False


def retry_options(fs: FlowSettings) -> dict[str, Any]:
    """Retries with exponential backoff, for transient errors only (:func:`is_transient`)."""
    return {"retries": fs.retries, "retry_delay_seconds": exponential_backoff(backoff_factor=fs.retry_delay_s),
            "retry_condition_fn": _retry_condition}


def shards_per_task(fs: FlowSettings, n_shards: int) -> int:
    """Shards per task: ``flow.shards_per_task``, or by default one, except on a local Dask/Ray
    cluster, where a Prefect task costs ~0.1 s of API round trips from the worker (measured in
    benchmarks/flow_overhead.py), so shards are batched to about four tasks per worker per segment."""
    if fs.shards_per_task is not None:
        return fs.shards_per_task
    if fs.task_runner in ("dask", "ray") and not fs.address:
        return max(1, math.ceil(n_shards / (4 * (fs.max_workers or 2))))
    return 1


def batches(items: Sequence[Any], k: int) -> list[list[Any]]:
    return [list(items[i:i + k]) for i in range(0, len(items), k)]


def batch_label(labels: Sequence[str]) -> str:
    return labels[0] if len(labels) == 1 else f"{labels[0]}..{labels[-1]}"


# ---------------------------------------------------------------- task runners


def make_task_runner(fs: FlowSettings) -> Any:
    """The Prefect task runner named by ``flow.task_runner``."""
    workers = fs.max_workers
    if fs.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers or max(2, os.cpu_count() or 2))
    if fs.task_runner == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    try:
        if fs.task_runner == "dask":
            from prefect_dask import DaskTaskRunner

            if fs.address:
                return DaskTaskRunner(address=fs.address)
            return DaskTaskRunner(cluster_kwargs={"n_workers": workers or 2, "threads_per_worker": 1,
                                                  "processes": True, "dashboard_address": None})
        from prefect_ray import RayTaskRunner

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if fs.address:
            return RayTaskRunner(address=fs.address)
        return RayTaskRunner(init_kwargs={"num_cpus": workers or 2, "include_dashboard": False,
                                          "log_to_driver": False})
    except ImportError as e:
        raise ImportError(f"flow.task_runner: {fs.task_runner} needs `pip install 'sft-curate[scale]'` ({e})") from e


class PrefectExecutor:
    """Runs the driver's steps as Prefect tasks of the current flow run (see the module docstring).

    Parameters
    ----------
    fs:
        The config's ``flow`` settings (task runner, retries, batching, cluster address).
    """

    def __init__(self, fs: FlowSettings) -> None:
        self.fs = fs
        self.name = f"prefect:{fs.task_runner}"
        self._quote = fs.task_runner in ("threads", "processes")

    def _q(self, value: Any) -> Any:
        """Spare Prefect walking big parameters (plans, chain lists) looking for futures. Only for the
        threads/processes runners: Dask and Ray ship parameters through their own serialisation,
        which does not preserve the annotation."""
        return quote(value) if self._quote else value

    @contextlib.contextmanager
    def _placement(self, resources: Resources | None) -> Iterator[None]:
        """On Ray, ask for the CPUs/GPUs the steps' stages declare."""
        if self.fs.task_runner != "ray" or resources is None:
            yield
            return
        from prefect_ray.context import remote_options

        opts: dict[str, Any] = {}
        if resources.gpus:
            opts["num_gpus"] = resources.gpus
        if resources.cpus != 1.0:
            opts["num_cpus"] = resources.cpus
        with remote_options(**opts) if opts else contextlib.nullcontext():
            yield

    def map(self, kind: str, fn: Callable[[Any], Any], items: Sequence[Any], labels: Sequence[str],
            resources: Resources | None = None) -> list[Any]:
        if not items:
            return []
        t = TASKS[kind].with_options(**retry_options(self.fs))
        k = shards_per_task(self.fs, len(items)) if kind in BATCHED else 1
        idx = batches(list(range(len(items))), k)
        qfn = self._q(fn)
        with self._placement(resources):
            futs = [t.submit(qfn, self._q([items[i] for i in b]), label=batch_label([labels[i] for i in b]))
                    for b in idx]
        try:
            return [r for f in futs for r in f.result()]
        except BaseException as e:
            # Ctrl-C / SIGTERM while waiting (in a notebook too): the running tasks stop at their next
            # progress report instead of the task runner waiting for them to finish their shards
            if is_interrupt(e):
                progress.cancel()
            raise

    def log(self, message: str) -> None:
        get_run_logger().info("%s", message.strip())

    def info(self) -> dict[str, Any]:
        """The Prefect flow run this run executed in (to find its tasks, logs and artifact)."""
        from prefect.runtime import flow_run

        return {"prefect": {"flow_run_id": flow_run.get_id(), "flow_run_name": flow_run.get_name(),
                            "parent_flow_run_id": flow_run.get_parent_flow_run_id()}}

    @contextlib.contextmanager
    def progress_sink(self) -> Iterator[None]:
        """Row-level progress of long stages as task-run log lines every ``PROGRESS_LOG_S`` seconds
        (rate, ETA) and one Prefect progress artifact per task (percent), so the UI moves during a
        long LM stage instead of going silent."""
        artifacts: dict[str, Any] = {}
        fallback = logging.getLogger("sft_curate.progress")

        def emit(t: Any, finished: bool) -> None:
            try:
                logger: Any = get_run_logger()
            except Exception:  # noqa: BLE001 - a thread outside any run context
                logger = fallback
            logger.info("%s", t.line())
            pct = 100.0 * t.done / t.total if t.total else 0.0
            try:
                from prefect.artifacts import create_progress_artifact, update_progress_artifact

                if t.name not in artifacts:
                    artifacts[t.name] = create_progress_artifact(progress=pct, description=t.name)
                else:
                    update_progress_artifact(artifacts[t.name], progress=pct)
            except Exception:  # noqa: BLE001 - progress must never fail a run
                pass

        with progress.sink(emit, interval=PROGRESS_LOG_S), progress.on_cancel(_quiet_prefect):
            yield

    def publish(self, manifest: dict[str, Any]) -> None:
        from prefect.artifacts import create_markdown_artifact

        name = manifest.get("config", {}).get("run", {}).get("name", "run")
        key = re.sub(r"[^a-z0-9-]+", "-", f"curate-{name}".lower()).strip("-")[:100]
        if "counts" in manifest:
            create_markdown_artifact(markdown=manifest_markdown(manifest), key=key,
                                     description=f"manifest of run {manifest['run_id']}")


def manifest_markdown(m: dict[str, Any]) -> str:
    """The manifest as markdown tables (counts, stages, top drop reasons) for the Prefect UI."""
    c = m["counts"]
    lines = [f"# curate run `{m['run_id']}`", "", f"status **{m['status']}**, config `{m['config_hash']}`, "
             f"engine `{m.get('engine', '-')}`", "",
             "| read | rejected | kept | dropped | selected | balanced |", "|---:|---:|---:|---:|---:|:---:|",
             f"| {c['read']:,} | {c['rejected']:,} | {c['kept']:,} | {c['dropped']:,} | {c['selected']:,} | "
             f"{'yes' if c['balanced'] else 'NO'} |", "",
             "| stage | scope | dropped | seconds | steps | cached |", "|---|---|---:|---:|---:|---:|"]
    for s in m["stages"]:
        lines.append(f"| {s['name']} | {s['scope']} | {s['dropped']:,} | {s['seconds']:.2f} | {s.get('steps', 0)} | "
                     f"{s.get('cache_hits', 0)} |")
    if c["dropped_by_rule"]:
        lines += ["", "| drop rule | rows |", "|---|---:|"]
        lines += [f"| `{r}` | {n:,} |" for r, n in list(c["dropped_by_rule"].items())[:20]]
    if "incremental" in m:
        inc = m["incremental"]
        lines += ["", f"night {inc['night']}: {len(inc['new_files'])} new file(s); pool {inc['pool_rows']:,} rows, "
                  f"{inc['pool_kept']:,} kept; selection +{inc['added']:,} / -{inc['removed']:,}"]
    return "\n".join(lines)


# ---------------------------------------------------------------- flows


@flow(name="curate-run", log_prints=True)
def curate_run(config_path: str, out: str | None = None, run_id: str | None = None,
               input_dir: str | None = None) -> dict[str, Any]:
    """The run itself, under the configured task runner (a subflow of :func:`curate_flow`; the flow
    :func:`run_flow` and ``curate run`` start directly)."""
    cfg = load_config(config_path)
    res = execute(cfg, PrefectExecutor(cfg.flow), out, run_id, input_dir, finish=True)
    for err in res.errors:
        get_run_logger().error("after the run: %s", err)
    return {"run_dir": str(res.run_dir), "manifest": res.manifest, "finish": res.finish}


@flow(name="curate", log_prints=True)
def curate_flow(config_path: str, out: str | None = None, run_id: str | None = None,
                input_dir: str | None = None) -> dict[str, Any]:
    """Curate with the config at ``config_path``: returns ``{"run_dir", "manifest", "finish"}``.

    ``input_dir`` (or ``flow.incremental`` in the config) switches to incremental nightly curation
    of a growing directory. The task runner comes from ``flow.task_runner``; it is chosen here, at
    run time, so a deployment of this flow follows its config.
    """
    cfg = load_config(config_path)
    runner = make_task_runner(cfg.flow)
    return curate_run.with_options(task_runner=runner)(config_path=config_path, out=out, run_id=run_id,
                                                       input_dir=input_dir)


ENGINE_LOGGERS = ("prefect", "distributed", "ray")


def _quiet_prefect() -> None:
    """On an interrupt: the tasks still running are about to fail on purpose (and the flow run to
    crash); the user has been told once, so the orchestrator's tracebacks are not shown."""
    for n in ENGINE_LOGGERS:
        logging.getLogger(n).setLevel(logging.CRITICAL + 1)


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TemporaryServer:
    """The temporary Prefect API server of a run started from a shell: what Prefect's ephemeral mode
    starts (``prefect.server.api.server.SubprocessASGIServer``: uvicorn serving ``create_app`` with the
    UI off, the same environment), with two differences. It is spawned without importing Prefect's
    server module in this process (2 s on a 2-core machine, spent before the server even started:
    the server now starts while this process goes on). And it runs in its own session, so a Ctrl-C
    in the terminal stops the run in this process while the server stays up to record the flow run's
    final state. One per process (:meth:`get`); stopped when the process exits, and at once after an
    interrupt (the CLI then leaves with ``os._exit``, which skips exit handlers)."""

    _instance: TemporaryServer | None = None

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @classmethod
    def get(cls) -> TemporaryServer:
        if cls._instance is None or cls._instance.proc is None or cls._instance.proc.poll() is not None:
            cls._instance = cls()
            cls._instance.start()
        return cls._instance

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _spawn(self) -> None:
        import prefect
        from prefect.settings import get_current_settings

        self.port = _free_port()
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
               **get_current_settings().to_environment_variables(exclude_unset=True)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"], env=env, start_new_session=True)

    def start(self) -> None:
        """Spawn the server and wait for its health check (up to Prefect's
        ``server.ephemeral.startup_timeout_seconds``); a port taken meanwhile (uvicorn's exit 3) is retried."""
        from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

        self._spawn()
        atexit.register(self.stop)
        logging.getLogger("prefect").info("Starting temporary server on http://127.0.0.1:%s", self.port)
        deadline = time.monotonic() + PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        try:
            self._wait_healthy(deadline)
        except BaseException:  # a Ctrl-C while it starts too: no server left behind
            self.stop()
            raise

    def _wait_healthy(self, deadline: float) -> None:
        import httpx

        with httpx.Client() as client:
            while time.monotonic() < deadline:
                assert self.proc is not None
                code = self.proc.poll()
                if code == 3:  # the port was taken between choosing and binding it
                    self._spawn()
                    continue
                if code is not None:
                    raise RuntimeError(f"the temporary Prefect API server exited with code {code} while starting")
                try:
                    if client.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise RuntimeError("timed out waiting for the temporary Prefect API server (raise "
                           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or run `prefect server start` "
                           "and set PREFECT_API_URL)")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def api_server() -> Iterator[None]:
    """The Prefect API for a run started from a shell. With ``PREFECT_API_URL`` set: that server.
    Otherwise a :class:`TemporaryServer` (stopped at once after an interrupt)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    server = TemporaryServer.get()
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
    except BaseException as e:
        if is_interrupt(e):
            server.stop()
        raise


@contextlib.contextmanager
def engine_logging(quiet: bool) -> Iterator[None]:
    """With ``quiet``: only warnings from Prefect, Dask and Ray. Their levels come back afterwards
    (also after :func:`_quiet_prefect` silenced them on an interrupt: a notebook goes on)."""
    loggers = [logging.getLogger(n) for n in ENGINE_LOGGERS]
    levels = [lg.level for lg in loggers]
    if quiet:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def run_flow(config_path: str, out: str | None = None, run_id: str | None = None, quiet: bool = False,
             input_dir: str | None = None) -> dict[str, Any]:
    """Run the curation flow once: ``{"run_dir": str, "manifest": dict, "finish": dict}``."""
    config_path = str(Path(config_path).resolve())
    out = str(Path(out).resolve()) if out else None
    with engine_logging(quiet):
        # one flow run, not curate_flow's two (a parent that only picks the task runner, then the run as
        # its subflow): each flow run costs ~0.5-1 s of API round trips; deployments keep curate_flow
        runner = make_task_runner(load_config(config_path).flow)
        return curate_run.with_options(task_runner=runner)(config_path=config_path, out=out, run_id=run_id,
                                                           input_dir=input_dir)


def run_config(config_path: str | Path, out: str | Path | None = None, run_id: str | None = None,
               input_dir: str | None = None, quiet: bool = False,
               log: Callable[[str], None] | None = None) -> RunResult:
    """The ``prefect`` engine's entry for ``curate run`` (registered in pyproject.toml)."""
    with engine_logging(quiet), api_server():
        res = run_flow(str(config_path), out=str(out) if out else None, run_id=run_id, quiet=quiet,
                       input_dir=input_dir)
    return RunResult(Path(res["run_dir"]), res["manifest"], res.get("finish") or {})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.curate", description="Run the curation flow once.")
    ap.add_argument("config")
    ap.add_argument("--out")
    ap.add_argument("--run-id")
    ap.add_argument("--input-dir", help="incremental mode: process new files of this directory")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    with engine_logging(args.quiet), api_server():
        res = run_flow(args.config, out=args.out, run_id=args.run_id, quiet=args.quiet, input_dir=args.input_dir)
    c = res["manifest"]["counts"]
    print(json.dumps({"run_dir": res["run_dir"], "counts": {k: c[k] for k in ("read", "kept", "dropped", "rejected",
                                                                               "selected", "balanced")}}))
    return 0 if c["balanced"] else 1


if __name__ == "__main__":
    sys.exit(main())
