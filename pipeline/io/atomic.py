"""The one atomic-write idiom: write under a hidden temp name beside the target, then rename.

A reader never sees half a file: the final name appears whole or not at all, and a killed writer
leaves only a ``.<name>.<random>.tmp`` that no reader globs and that sweeps remove. The random part
lets two writers of the same target (racing twins) never write into each other's temp file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def temp_name(path: Path) -> Path:
    """A hidden, unique temp path beside ``path`` (``.<name>.<8 hex>.tmp``)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path to write; on success rename it to ``path``, on any error remove it.

    Parameters
    ----------
    path:
        The final file name; its parent directory is created.
    fsync:
        Flush the temp file to disk before the rename (survives an OS crash, not only a killed
        process; costs ~1-2 ms a file, so work-store files skip it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(obj: Any, path: str | Path) -> None:
    """``obj`` as indented JSON at ``path``, atomically (non-JSON values via ``str``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str))


def copy_atomic(src: str | Path, dst: str | Path) -> None:
    """Copy a file so that ``dst`` appears whole or not at all."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
