"""Content keys: every work-store entry is named by a hash of what determines it.

A step's key covers its input rows (the key of the step before it, down to the source file's
content hash), the stage's fingerprint (name, version, params) and **the content of every file the
stage reads** (benchmark files, models, persisted state): :func:`stage_input_key`. Replacing a file
at the same path, or a checkpoint with another of the same size, therefore changes the key and the
step is recomputed instead of reused.

File hashes: :func:`pipeline.io.fingerprint.file_fingerprint` (content, cached only while the file
is untouched).
"""

from __future__ import annotations

import platform
import typing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import xxhash
from pydantic import BaseModel

from pipeline.io.fingerprint import file_fingerprint
from pipeline.stages.base import Stage

#: bumped when the layout or meaning of work-store entries changes
STORE_VERSION = "3"  # 3: messages with tool calls/reasoning, tools, user columns


def versions() -> dict[str, str]:
    """Versions of Python and the packages that can change a result (recorded in the manifest)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("sft-curate", "polars", "pyarrow", "pydantic", "numba", "faiss-cpu", "torch", "transformers",
                "sentence-transformers", "model2vec", "prefect"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def package_version() -> str:
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


def _is_local_path(annotation: Any) -> bool:
    """Whether a params field's annotation is (or contains) :data:`pipeline.stages.base.LocalPath`."""
    from pipeline.stages.base import _resolve_path

    for meta in getattr(annotation, "__metadata__", ()):
        if getattr(meta, "func", None) is _resolve_path:
            return True
    return any(_is_local_path(a) for a in typing.get_args(annotation))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def _model_paths(model: BaseModel) -> list[str]:
    """Strings of every ``LocalPath`` field of a params model, nested models and lists included
    (pydantic keeps a bare ``LocalPath``'s validator in ``field.metadata``, a nested one in the
    annotation)."""
    from pipeline.stages.base import _resolve_path

    out: list[str] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if _is_local_path(field.annotation) or any(getattr(m, "func", None) is _resolve_path for m in field.metadata):
            out += _strings(value)
        for v in value if isinstance(value, (list, tuple)) else value.values() if isinstance(value, dict) else [value]:
            if isinstance(v, BaseModel):
                out += _model_paths(v)
    return out


def stage_input_files(stage: Stage) -> list[Path]:
    """Every existing file or directory the stage's params name as a ``LocalPath`` (nested too)."""
    return [Path(s) for s in dict.fromkeys(_model_paths(stage.params)) if Path(s).exists()]


def stage_input_key(stage: Stage, cache_dir: str | Path | None = None, device: str = "auto") -> str:
    """A key of the content of everything a stage reads besides its rows: its ``LocalPath`` files and
    the models it names (their resolved files, by content; ``auto`` as the model it picks on
    ``device``), so a replaced file changes the key."""
    parts = [f"{p}={file_fingerprint(p, cache_dir)}" for p in stage_input_files(stage)]
    for ref in stage_model_refs(stage):
        try:
            from pipeline.embeddings import AUTO_MODELS, pick_model
            from pipeline.models import resolve_model

            if ref.strip().lower() in AUTO_MODELS:
                ref = pick_model(ref, device)

            path = resolve_model(ref).path
        except Exception:  # noqa: BLE001 - an unresolvable model fails the stage's own setup, named there
            parts.append(f"model:{ref}=?")
            continue
        parts.append(f"model:{ref}={file_fingerprint(path, cache_dir)}")
    return hkey(*parts) if parts else "-"


def stage_model_refs(stage: Stage) -> list[str]:
    """Model references in a stage's params (fields named ``model`` or ``*_model``)."""
    refs = []
    for name in type(stage.params).model_fields:
        if name == "model" or name.endswith("_model"):
            refs += [s for s in _strings(getattr(stage.params, name)) if s]
    return refs
