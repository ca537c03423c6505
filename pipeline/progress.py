"""Row-level progress of long stages (LM scoring, embeddings, k-means, MinHash's global step).

A stage announces the work it is about to do and reports it as it finishes it, in its own unit
(rows, turns, texts)::

    progress.expect("ifd: likelihood", n)       # n more units are coming (summed over shards/threads)
    progress.advance("ifd: likelihood", k)      # k of them are done

Code that does the work without knowing the stage (an LM backend's batch loop) reports to the
thread's current task (:func:`within`, :func:`advance_current`).

The same reports are where a long task stops when the run is interrupted: after :func:`cancel`
(Ctrl-C or SIGTERM in ``curate run``, an interrupt in a notebook), the next report of any task in
any thread raises :class:`Cancelled`, so a step running on a worker thread or a Prefect task ends
within one batch instead of running to the end of its shard.

Nothing is shown unless an engine installs a *sink* for the run (:func:`sink`): the local engine's
draws one terminal bar per task with rate and ETA, the Prefect engine's logs a line per task at a
steady cadence and keeps a Prefect progress artifact. A report costs one lock and a clock read, and
sinks are called at most every ``interval`` seconds per task, so tracking is free next to the work
it tracks (measured in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass
class Task:
    """One tracked task: units expected and done, when it started, when a sink last heard of it."""

    name: str
    total: int = 0
    done: int = 0
    started: float = 0.0
    last_emit: float = 0.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Units per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far (``None`` before the first unit)."""
        if not self.done or self.total <= self.done:
            return None if not self.done else 0.0
        return (self.total - self.done) / self.rate

    def line(self) -> str:
        """``ifd: likelihood: 1,234/2,048 (60%), 5.1/s, ETA 2m40s``."""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = self.eta
        left = f", ETA {format_seconds(eta)}" if eta is not None and self.done < self.total else ""
        return f"{self.name}: {self.done:,}/{self.total:,}{pct}, {self.rate:,.1f}/s{left}"


Sink = Callable[[Task, bool], None]  # (task, finished)

_LOCK = threading.Lock()
_TASKS: dict[str, Task] = {}
_SINKS: list[tuple[Sink, float]] = []


def format_seconds(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Cancelled(Exception):
    """The run is stopping (:func:`cancel`): raised by the next progress report of a long task."""


_CANCEL = threading.Event()
_ON_CANCEL: list[Callable[[], None]] = []


def cancel() -> None:
    """Stop every long task at its next report (and run the hooks of :func:`on_cancel` once)."""
    if _CANCEL.is_set():
        return
    _CANCEL.set()
    for fn in list(_ON_CANCEL):
        with contextlib.suppress(Exception):
            fn()


def cancelled() -> bool:
    """Whether :func:`cancel` was called since the last :func:`reset`."""
    return _CANCEL.is_set()


def reset() -> None:
    """A new run starts: long tasks run again."""
    _CANCEL.clear()


@contextlib.contextmanager
def on_cancel(fn: Callable[[], None]) -> Iterator[None]:
    """While inside, call ``fn()`` when the run is cancelled (an engine quiets its own logging there:
    the tasks it is running are about to fail on purpose)."""
    _ON_CANCEL.append(fn)
    try:
        yield
    finally:
        _ON_CANCEL.remove(fn)


def checkpoint() -> None:
    """Raise :class:`Cancelled` when the run is stopping (long loops without progress reports)."""
    if _CANCEL.is_set():
        raise Cancelled("the run was interrupted")


def _update(name: str, total: int = 0, done: int = 0) -> None:
    """Add ``total`` expected and ``done`` finished units to task ``name`` (created on first use)."""
    checkpoint()
    if not _SINKS or (total <= 0 and done <= 0):
        return
    with _LOCK:
        t = _TASKS.get(name)
        if t is None:
            t = _TASKS[name] = Task(name, started=time.monotonic())
        t.total += max(int(total), 0)
        t.done += max(int(done), 0)
        t.total = max(t.total, t.done)
    _emit(t, force=done > 0 and t.done >= t.total)


def expect(name: str, units: int) -> None:
    """``units`` more units of task ``name`` are coming."""
    _update(name, total=units)


def advance(name: str, units: int) -> None:
    """``units`` units of task ``name`` are done."""
    _update(name, done=units)


_LOCAL = threading.local()


@contextlib.contextmanager
def within(name: str) -> Iterator[list[int]]:
    """Make ``name`` this thread's current task, so code that does not know the stage (a backend's
    batch loop) can report with :func:`advance_current`; yields ``[units reported inside]``."""
    prev = getattr(_LOCAL, "task", None)
    counted = [0]
    _LOCAL.task = (name, counted)
    try:
        yield counted
    finally:
        _LOCAL.task = prev


def advance_current(units: int) -> None:
    """:func:`advance` the thread's current task (see :func:`within`); nothing outside one."""
    checkpoint()
    cur = getattr(_LOCAL, "task", None)
    if cur is not None:
        cur[1][0] += units
        advance(cur[0], units)


def _emit(t: Task, force: bool) -> None:
    now = time.monotonic()
    for fn, interval in list(_SINKS):
        if force or now - t.last_emit >= interval:
            t.last_emit = now
            fn(t, t.done >= t.total)


def tasks() -> list[Task]:
    """The tasks tracked so far (a snapshot)."""
    with _LOCK:
        return [Task(t.name, t.total, t.done, t.started, t.last_emit) for t in _TASKS.values()]


@contextlib.contextmanager
def sink(fn: Sink, interval: float = 1.0) -> Iterator[None]:
    """Send progress to ``fn(task, finished)`` (at most every ``interval`` s per task) while inside.

    Tasks start afresh for each installed sink's lifetime (one run)."""
    with _LOCK:
        _SINKS.append((fn, interval))
        if len(_SINKS) == 1:
            _TASKS.clear()
    try:
        yield
    finally:
        with _LOCK:
            _SINKS.remove((fn, interval))
            if not _SINKS:
                _TASKS.clear()


class TerminalBars:
    """A sink drawing one tqdm bar per task on the terminal (the local engine's)."""

    def __init__(self) -> None:
        self._bars: dict[str, object] = {}
        self._lock = threading.Lock()

    def __call__(self, task: Task, finished: bool) -> None:
        from tqdm.auto import tqdm

        with self._lock:
            bar = self._bars.get(task.name)
            if bar is None:
                bar = self._bars[task.name] = tqdm(desc=task.name, total=task.total, unit="row", leave=False,
                                                   dynamic_ncols=True)
            bar.total = task.total  # type: ignore[attr-defined]
            bar.n = task.done  # type: ignore[attr-defined]
            bar.refresh()  # type: ignore[attr-defined]

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()  # type: ignore[attr-defined]
            self._bars.clear()
