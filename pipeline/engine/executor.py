"""Executors decide only *where* a step runs; :mod:`pipeline.engine.driver` decides what runs when.

An executor maps a function over items (sources to ingest, shards to score, the one global step,
shards to finalize) and returns the results in item order. The driver hands it plain, picklable
functions (module-level functions bound with :func:`functools.partial`) so an executor may run them
on threads, processes or a cluster. Here: :class:`LocalExecutor` (threads in this process, all
cores by default). ``flows/`` adds the Prefect executor (tasks, retries, placement, batching), found
through the engine registry (:func:`engine_runner`) so ``pipeline`` never imports ``flows``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from importlib import metadata
from typing import Any, Protocol, TypeVar

from pipeline import progress
from pipeline.engine.manifest import is_interrupt
from pipeline.engine.steps import is_transient
from pipeline.stages.base import Resources

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Where steps run. ``name`` is recorded in the manifest (``engine``)."""

    name: str

    def map(self, kind: str, fn: Callable[[T], R], items: Sequence[T], labels: Sequence[str],
            resources: Resources | None = None) -> list[R]:
        """``[fn(x) for x in items]``, run wherever the executor runs steps, results in item order.

        Parameters
        ----------
        kind:
            What the steps are (``ingest``, ``shard``, ``global``, ``finalize``, ``pool``): the task
            name on an orchestrator.
        fn:
            A picklable function of one item.
        items:
            The items; may be empty.
        labels:
            One display label per item (task-run names, progress).
        resources:
            What the steps need (CPUs, GPUs), for executors that place work.
        """
        ...

    def log(self, message: str) -> None:
        """Report progress to the user (terminal, or the orchestrator's run log)."""
        ...

    def info(self) -> dict[str, Any]:
        """Engine-specific facts for the manifest (e.g. the Prefect flow run id)."""
        ...

    def publish(self, manifest: dict[str, Any]) -> None:
        """Show the finished manifest where the engine shows results (a Prefect artifact)."""
        ...

    def progress_sink(self) -> AbstractContextManager[Any]:
        """While a run is inside: where the stages' row-level progress goes (:mod:`pipeline.progress`)."""
        ...


class LocalExecutor:
    """Steps on a thread pool in this process (all cores by default).

    Stages release the GIL in their heavy parts (Polars, Arrow, numba ``nogil`` kernels, torch), so
    threads use every core without copying shards between processes, and a model set up once is
    shared by the threads (stage instances are per process). Transient failures (OOM, flaky I/O) are
    retried ``retries`` times with exponential backoff, as the Prefect executor does.

    Parameters
    ----------
    max_workers:
        Threads; ``None`` = the number of CPUs.
    retries:
        Retries of a step whose error :func:`pipeline.engine.steps.is_transient` accepts.
    retry_delay_s:
        Backoff base in seconds (delay ``retry_delay_s * 2**attempt``).
    log:
        Where :meth:`log` messages go (``print`` by the CLI; nothing by default).
    progress:
        Show a progress bar per map.
    """

    def __init__(self, max_workers: int | None = None, retries: int = 0, retry_delay_s: float = 1.0,
                 log: Callable[[str], None] | None = None, progress: bool = False) -> None:
        self.max_workers = max_workers or os.cpu_count() or 1
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self._log = log
        self.progress = progress
        self.name = "local:threads" if self.max_workers > 1 else "local"

    def _call(self, fn: Callable[[T], R], item: T) -> R:
        for attempt in range(self.retries + 1):
            try:
                return fn(item)
            except Exception as e:
                if attempt >= self.retries or not is_transient(e):
                    raise
                time.sleep(self.retry_delay_s * 2**attempt)
        raise AssertionError("unreachable")

    def map(self, kind: str, fn: Callable[[T], R], items: Sequence[T], labels: Sequence[str],
            resources: Resources | None = None) -> list[R]:
        items = list(items)
        bar = None
        if self.progress and len(items) > 1:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc=kind, unit="step", leave=False)
        try:
            if self.max_workers == 1 or len(items) <= 1:
                out = []
                for x in items:
                    out.append(self._call(fn, x))
                    if bar is not None:
                        bar.update()
                return out
            pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix=f"curate-{kind}")
            futs = [pool.submit(self._call, fn, x) for x in items]
            try:
                if bar is not None:
                    for f in futs:
                        f.add_done_callback(lambda _f: bar.update())
                pending = set(futs)
                while pending:
                    # short waits: a signal (Ctrl-C, SIGTERM) may be delivered to a worker thread, and
                    # Python runs its handler only when the main thread runs again, so never block here
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                    for f in done:  # the first error ends the map; queued steps are not started
                        if f.exception() is not None:
                            raise f.exception()  # type: ignore[misc]
                return [f.result() for f in futs]
            except BaseException as e:
                # an error or an interrupt: start nothing more and do not wait for running steps
                # (they write atomically, so abandoning them leaves nothing half-written); on an
                # interrupt, running steps also stop at their next progress report
                pool.shutdown(wait=False, cancel_futures=True)
                if is_interrupt(e):
                    progress.cancel()
                raise
            finally:
                pool.shutdown(wait=False)
        finally:
            if bar is not None:
                bar.close()

    def log(self, message: str) -> None:
        if self._log is not None:
            self._log(message)

    def info(self) -> dict[str, Any]:
        return {"workers": self.max_workers}

    def publish(self, manifest: dict[str, Any]) -> None:
        return None

    @contextlib.contextmanager
    def progress_sink(self) -> Iterator[None]:
        """Terminal bars per long task (rate, ETA) when ``progress`` is on."""
        if not self.progress:
            yield
            return
        bars = progress.TerminalBars()
        try:
            with progress.sink(bars, interval=0.5):
                yield
        finally:
            bars.close()


# ---------------------------------------------------------------- the engine registry

#: engines other packages provide, by name -> ``module:function`` (``curate run --engine NAME``);
#: the function takes ``(config_path, out=, run_id=, input_dir=, quiet=, log=)`` and returns a
#: :class:`pipeline.engine.driver.RunResult`. Installed packages add theirs as entry points in the
#: group ``sft_curate.engines`` (``flows`` registers ``prefect`` in pyproject.toml).
ENGINE_GROUP = "sft_curate.engines"
BUILTIN = {"local": "pipeline.engine.driver:run_config"}


def engines() -> dict[str, str]:
    """Every engine this installation knows: ``local`` and the registered ones."""
    out = dict(BUILTIN)
    for ep in metadata.entry_points(group=ENGINE_GROUP):
        out.setdefault(ep.name, ep.value)
    return out


def engine_runner(name: str) -> Callable[..., Any]:
    """The run function of engine ``name``; :class:`KeyError` naming the known ones, :class:`ImportError`
    when its package cannot be imported."""
    import importlib

    known = engines()
    if name not in known:
        raise KeyError(f"unknown engine {name!r}; known: {', '.join(sorted(known))}")
    module, _, attr = known[name].partition(":")
    return getattr(importlib.import_module(module), attr)
