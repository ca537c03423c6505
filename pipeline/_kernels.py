"""Compiled (numba) loops behind :mod:`pipeline.dedup`'s word and shingle hashing.

Splitting text into words and hashing every word n-gram is a byte-at-a-time job: done with Polars
string ops and NumPy it materialises every word as a string and every intermediate as an array
(about 1.3 s per 50k-row shard on one core); these loops read the UTF-8 buffer once and write the
hashes (about 0.2 s). They release the GIL, so shards hashed on threads run in parallel.

Imported by the functions that need them, not at package import: numba's import and the first
compile (cached on disk next to this file, or under ``NUMBA_CACHE_DIR``) take a second or two.
"""

from __future__ import annotations

import numba as nb
import numpy as np

FNV_OFFSET = np.uint64(0xCBF29CE484222325)  # FNV-1a 64-bit offset basis
FNV_PRIME = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


@nb.njit(cache=True, nogil=True, inline="always")
def _mix64(x: np.uint64) -> np.uint64:  # splitmix64 finaliser, as pipeline.dedup.mix64
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@nb.njit(cache=True, nogil=True, inline="always")
def _code_point(data: np.ndarray, i: int) -> tuple[int, int]:
    """The code point starting at byte ``i`` of valid UTF-8 ``data`` and its length in bytes."""
    b = np.int64(data[i])
    if b < 0x80:
        return b, 1
    if b < 0xE0:
        return ((b & 0x1F) << 6) | (np.int64(data[i + 1]) & 0x3F), 2
    if b < 0xF0:
        return ((b & 0x0F) << 12) | ((np.int64(data[i + 1]) & 0x3F) << 6) | (np.int64(data[i + 2]) & 0x3F), 3
    return (((b & 0x07) << 18) | ((np.int64(data[i + 1]) & 0x3F) << 12)
            | ((np.int64(data[i + 2]) & 0x3F) << 6) | (np.int64(data[i + 3]) & 0x3F)), 4


@nb.njit(cache=True, nogil=True)
def utf8_word_hashes(data: np.ndarray, offsets: np.ndarray, sep_bits: np.ndarray,
                     start: np.uint64, fold_ascii: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Hash the words of each UTF-8 string ``data[offsets[i]:offsets[i+1]]``.

    A word is a maximal run of code points whose bit in ``sep_bits`` is clear; its hash is FNV-1a
    over its UTF-8 bytes from ``start``, finished with splitmix64. With ``fold_ascii``, the bytes
    ``A``-``Z`` are hashed as ``a``-``z`` (what lower-casing does to ASCII text, without a lower-cased
    copy of the buffer). Returns ``(hashes in text order, words per string)``. The input must be
    valid UTF-8 (Arrow strings are).
    """
    rows = len(offsets) - 1
    lens = np.zeros(rows, np.int64)
    # every word of a string but its last is followed by at least one separator byte
    cap = (offsets[rows] - offsets[0] + rows) // 2 + 1
    out = np.empty(cap, np.uint64)
    m = 0
    for r in range(rows):
        i = offsets[r]
        end = offsets[r + 1]
        inword = False
        h = start
        cnt = 0
        while i < end:
            cp, k = _code_point(data, i)
            if (sep_bits[cp >> 3] >> (cp & 7)) & 1:
                if inword:
                    out[m] = _mix64(h)
                    m += 1
                    cnt += 1
                    inword = False
            else:
                if not inword:
                    h = start
                    inword = True
                if k == 1:
                    c = data[i]
                    if fold_ascii and c >= 65 and c <= 90:
                        c += 32
                    h = (h ^ np.uint64(c)) * FNV_PRIME
                else:
                    for j in range(k):
                        h = (h ^ np.uint64(data[i + j])) * FNV_PRIME
            i += k
        if inword:
            out[m] = _mix64(h)
            m += 1
            cnt += 1
        lens[r] = cnt
    return out[:m].copy(), lens


@nb.njit(cache=True, nogil=True)
def ngram_shingles(wh: np.ndarray, lens: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hash every word ``n``-gram inside each row: ``(flat hashes, row offsets)``.

    An n-gram's hash is the FNV-style combine ``h = (h ^ w) * prime`` of its word hashes from the
    FNV offset basis, finished with splitmix64. A row with fewer than ``n`` (but some) words gives
    one shingle, the combine of all its words; a row without words gives none.
    """
    rows = len(lens)
    off = np.zeros(rows + 1, np.int64)
    for r in range(rows):
        w = lens[r]
        off[r + 1] = off[r] + (w - n + 1 if w >= n else (1 if w > 0 else 0))
    out = np.empty(off[rows], np.uint64)
    s = 0
    for r in range(rows):
        w = lens[r]
        o = off[r]
        if w >= n:
            for p in range(w - n + 1):
                h = FNV_OFFSET
                for k in range(n):
                    h = (h ^ wh[s + p + k]) * FNV_PRIME
                out[o + p] = _mix64(h)
        elif w > 0:
            h = FNV_OFFSET
            for k in range(w):
                h = (h ^ wh[s + k]) * FNV_PRIME
            out[o] = _mix64(h)
        s += w
    return out, off


_S32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)


@nb.njit(cache=True, nogil=True)
def minhash_matrix(flat: np.ndarray, off: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MinHash signatures: ``sig[r, j] = min over row r's hashes x of ((a[j] * x + b[j]) mod 2^64) >> 32``.

    One multiply-add-shift hash function per signature slot (``a`` odd); a row without hashes
    gets ``2^32 - 1`` everywhere. Four hashes go through the slots per pass, so the running minima
    are loaded and stored a quarter as often (the slot loop vectorises).
    """
    rows = len(off) - 1
    perms = len(a)
    sig = np.empty((rows, perms), np.uint32)
    acc = np.empty(perms, np.uint64)
    for r in range(rows):
        for j in range(perms):
            acc[j] = _LOW32
        t = off[r]
        e = off[r + 1]
        while t + 3 < e:
            x0, x1, x2, x3 = flat[t], flat[t + 1], flat[t + 2], flat[t + 3]
            for j in range(perms):
                aj, bj = a[j], b[j]
                v0 = (aj * x0 + bj) >> _S32
                v1 = (aj * x1 + bj) >> _S32
                v2 = (aj * x2 + bj) >> _S32
                v3 = (aj * x3 + bj) >> _S32
                acc[j] = min(acc[j], min(min(v0, v1), min(v2, v3)))
            t += 4
        while t < e:
            x0 = flat[t]
            for j in range(perms):
                acc[j] = min(acc[j], (a[j] * x0 + b[j]) >> _S32)
            t += 1
        for j in range(perms):
            sig[r, j] = np.uint32(acc[j])
    return sig


@nb.njit(cache=True, nogil=True)
def lsh_band_keys(sig: np.ndarray, bands: int, rows: int, start: np.ndarray) -> np.ndarray:
    """One uint64 key per (row, band): from ``start[band]``, ``h = (h ^ value) * prime`` over the band's
    ``rows`` signature values, finished with splitmix64 (:func:`pipeline.dedup.hashing.band_keys`).
    One pass over the signature matrix; NumPy spends ~2 temporaries per value on the same sum."""
    n = sig.shape[0]
    out = np.empty((n, bands), np.uint64)
    for i in range(n):
        for j in range(bands):
            h = start[j]
            for k in range(j * rows, (j + 1) * rows):
                h = (h ^ np.uint64(sig[i, k])) * FNV_PRIME
            out[i, j] = _mix64(h)
    return out


@nb.njit(cache=True, nogil=True, inline="always")
def _insert(keys: np.ndarray, stamp: np.ndarray, tag: int, x: np.uint64) -> tuple[int, bool]:
    """Find ``x`` in an open-addressing table, adding it if absent: ``(slot, added)``.

    A slot is in use iff its stamp is ``tag`` (a new tag empties the table without clearing it);
    ``len(keys)`` is a power of two and values are well-mixed hashes, so their low bits index it."""
    mask = len(keys) - 1
    s = np.int64(x) & mask
    while stamp[s] == tag and keys[s] != x:
        s = (s + 1) & mask
    if stamp[s] == tag:
        return s, False
    stamp[s] = tag
    keys[s] = x
    return s, True


@nb.njit(cache=True, nogil=True, inline="always")
def _table_size(size: int, need: int) -> int:
    """The power of two at least ``need``, from ``size`` (tables only grow)."""
    while size < need:
        size *= 2
    return size


@nb.njit(cache=True, nogil=True)
def pair_jaccard(va: np.ndarray, oa: np.ndarray, ia: np.ndarray,
                 vb: np.ndarray, ob: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Jaccard similarity of list ``ia[k]`` of ``(va, oa)`` and list ``ib[k]`` of ``(vb, ob)`` as sets,
    for every ``k``. Lists need not be sorted and may repeat values: each pair's values go into one
    table (:func:`_insert`), marked by which list holds them. Two empty lists have similarity 0."""
    res = np.empty(len(ia))
    size = 64
    keys = np.empty(size, va.dtype)
    marks = np.zeros(size, np.uint8)
    stamp = np.zeros(size, np.int64)
    for k in range(len(ia)):
        a0, a1 = oa[ia[k]], oa[ia[k] + 1]
        b0, b1 = ob[ib[k]], ob[ib[k] + 1]
        need = _table_size(size, 2 * ((a1 - a0) + (b1 - b0)))
        if need > size:
            size = need
            keys = np.empty(size, va.dtype)
            marks = np.zeros(size, np.uint8)
            stamp = np.zeros(size, np.int64)
        tag = k + 1
        na = 0
        nb_ = 0
        inter = 0
        for t in range(a0, a1):
            s, added = _insert(keys, stamp, tag, va[t])
            if added:
                marks[s] = 1
                na += 1
        for t in range(b0, b1):
            s, added = _insert(keys, stamp, tag, vb[t])
            if added:
                marks[s] = 2
                nb_ += 1
            elif marks[s] == 1:
                marks[s] = 3
                nb_ += 1
                inter += 1
        union = na + nb_ - inter
        res[k] = inter / union if union > 0 else 0.0
    return res


@nb.njit(cache=True, nogil=True)
def distinct_per_row(h: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Number of distinct values in each row ``h[off[i]:off[i+1]]`` (one table per row,
    :func:`_insert`; no sort)."""
    rows = len(off) - 1
    out = np.zeros(rows, np.int64)
    size = 64
    keys = np.empty(size, h.dtype)
    stamp = np.zeros(size, np.int64)
    for r in range(rows):
        need = _table_size(size, 2 * (off[r + 1] - off[r]))
        if need > size:
            size = need
            keys = np.empty(size, h.dtype)
            stamp = np.zeros(size, np.int64)
        d = 0
        for t in range(off[r], off[r + 1]):
            if _insert(keys, stamp, r + 1, h[t])[1]:  # (adding the bool itself compiles 10x slower)
                d += 1
        out[r] = d
    return out


@nb.njit(cache=True, nogil=True)
def nonseparator_counts(data: np.ndarray, offsets: np.ndarray, sep_bits: np.ndarray) -> np.ndarray:
    """Code points of each UTF-8 string whose bit in ``sep_bits`` is clear (the characters a word
    is made of), counted without decoding more than each lead byte's code point."""
    rows = len(offsets) - 1
    out = np.zeros(rows, np.int64)
    for r in range(rows):
        c = 0
        i = offsets[r]
        end = offsets[r + 1]
        while i < end:
            cp, k = _code_point(data, i)
            c += 1 - ((sep_bits[cp >> 3] >> (cp & 7)) & 1)
            i += k
        out[r] = c
    return out
