"""Exclusive ownership of a run directory or a nightly home, held by an OS-level lock.

``fcntl.flock`` on a lock file: the kernel releases it when the holding process dies (``kill -9``
too), so a lock left by a killed run is never "stale" in a way that blocks the next one, and there
is no race between checking and taking it. The holder writes who it is (pid, host, start time,
command) into the file so a refused run can name it. Nothing of a run (temps, orphans, earlier
outputs) is read, swept or deleted before its lock is held.

flock is advisory and local: it guards every ``curate`` process on this machine, and on network
file systems only where the server supports it (NFSv4 does; see docs/architecture.md).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

LOCK_NAME = ".lock"


class LockHeld(RuntimeError):
    """Another live process holds the lock; the message names it."""

    def __init__(self, what: str, path: Path, holder: dict[str, Any] | None) -> None:
        self.holder = holder or {}
        who = (f"pid {self.holder.get('pid')} on {self.holder.get('host')} since {self.holder.get('started')}"
               if holder else "another process")
        super().__init__(f"{what} is in use by {who} (lock {path}); wait for it to finish or choose another "
                         "run id")


class DirLock:
    """``with DirLock(directory, "run X"):`` holds ``directory/.lock`` exclusively or raises :class:`LockHeld`.

    Parameters
    ----------
    directory:
        The directory to own; created if missing (creating it deletes nothing).
    what:
        How a refusal names the thing (``run demo-1``, ``nightly home /x``).
    """

    def __init__(self, directory: str | Path, what: str) -> None:
        self.dir = Path(directory)
        self.what = what
        self.path = self.dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(self.what, self.path, self.holder()) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "argv": sys.argv[:6]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def holder(self) -> dict[str, Any] | None:
        """Who holds (or last held) the lock, as it wrote itself into the file."""
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
