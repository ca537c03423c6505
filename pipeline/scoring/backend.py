"""Opening scoring backends, shared between the LM stages of one process.

Several LM stages in one config usually score with the same model; loading it once per stage would
cost minutes and memory. :func:`acquire` hands out one backend per (spec, worker, interpreter) and
counts references; :func:`release` closes it when the last stage lets go.

``vllm`` always runs in a worker process (its pins clash with Prefect's); ``transformers`` runs in
process unless a worker is asked for.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from pipeline.scoring.protocol import Backend, BackendSpec

_LOCK = threading.Lock()
_SHARED: dict[tuple[str, bool, str], _Entry] = {}


@dataclass
class _Entry:
    backend: Backend
    refs: int


def open_backend(spec: BackendSpec, worker: bool = False, python: str | None = None) -> Backend:
    """A new backend (not shared): in process, or in a worker started with ``python``."""
    if worker or spec.backend == "vllm":
        from pipeline.scoring.worker import WorkerClient

        return WorkerClient(spec, python=python)
    from pipeline.scoring.worker import load_backend

    return load_backend(spec)


def _key(spec: BackendSpec, worker: bool, python: str | None) -> tuple[str, bool, str]:
    worker = worker or spec.backend == "vllm"
    return (spec.key(), worker, python or "")


def acquire(spec: BackendSpec, worker: bool = False, python: str | None = None) -> Backend:
    """The shared backend for this spec, loading it on first use."""
    key = _key(spec, worker, python)
    with _LOCK:
        entry = _SHARED.get(key)
        if entry is None:
            entry = _SHARED[key] = _Entry(open_backend(spec, worker, python), 0)
        entry.refs += 1
        return entry.backend


def release(backend: Backend) -> None:
    """Drop one reference; the last one closes the backend."""
    with _LOCK:
        for key, entry in list(_SHARED.items()):
            if entry.backend is backend:
                entry.refs -= 1
                if entry.refs <= 0:
                    del _SHARED[key]
                    backend.close()
                return


def register(spec: BackendSpec, backend: Backend, worker: bool = False, python: str | None = None) -> None:
    """Make an already loaded backend the shared one for ``spec`` (holds one reference)."""
    with _LOCK:
        _SHARED[_key(spec, worker, python)] = _Entry(backend, 1)


def shared_backends() -> dict[str, Any]:
    with _LOCK:
        return {k[0]: {"worker": k[1], "refs": e.refs} for k, e in _SHARED.items()}
