"""Content hashes of files, cached only while a file is provably untouched.

xxh3-128 of the bytes (of every file under a directory, with relative names). Hashes are cached per
process and, when a ``cache_dir`` is given, across processes, under a key of ``(path, inode, size,
mtime_ns, ctime_ns)``: ``ctime`` changes on every write or rename onto the path and cannot be set
back by a user (unlike ``mtime``), so a cached hash is reused only for a file that has not been
touched since it was hashed. A file that changes while it is being hashed is hashed again and its
hash is not cached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xxhash

from pipeline.io.atomic import atomic_path


def _hkey(*parts: Any) -> str:
    return xxhash.xxh3_128_hexdigest("\x1f".join(str(p) for p in parts).encode())


_FP_CACHE: dict[tuple[Any, ...], str] = {}


def _stat_key(p: Path) -> tuple[Any, ...]:
    st = p.stat()
    return (str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_fingerprint(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """xxh3-128 of a file's bytes, or of every file under a directory (relative names + bytes).

    Parameters
    ----------
    path:
        A file or a directory.
    cache_dir:
        Where hashes persist across processes (one small file per ``(path, inode, size, mtime,
        ctime)``); ``None`` caches in this process only.
    """
    p = Path(path)
    if p.is_dir():
        h = xxhash.xxh3_128()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode() + b"\0" + file_fingerprint(f, cache_dir).encode())
        return h.hexdigest()
    ck = _stat_key(p)
    hit = _FP_CACHE.get(ck)
    if hit is not None:
        return hit
    disk = Path(cache_dir) / _hkey(*ck) if cache_dir is not None else None
    if disk is not None and disk.is_file():
        digest = disk.read_text().strip()
        if len(digest) == 32:
            _FP_CACHE[ck] = digest
            return digest
    h = xxhash.xxh3_128()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    digest = h.hexdigest()
    if _stat_key(p) != ck:  # written while we read it: start again on what is there now
        return file_fingerprint(p, cache_dir)
    _FP_CACHE[ck] = digest
    if disk is not None:
        with atomic_path(disk) as tmp:
            tmp.write_text(digest)
    return digest
